"""Runs on disk and as processes.

protocol (every file, state and record of a run directory) · orchestrate (plan, create, launch: what front-ends
call) · preflight (the checks a run must pass) · launch (DeepSpeed argv) · cluster (node and Slurm scripts) ·
supervisor (the process that owns a run) · state (a run's state from its directory) · lifecycle (stop, resume) ·
registry (names, listing, deleting) · outputs (what a run produced: model folders, a checkpoint by step, exports,
the persona a model speaks with) · device_locks · processes (a run's process group) · tailing · checkpoints ·
atomic (whole-or-nothing files).
"""
