"""Command line: everything the dashboard does, from a terminal or a cluster script.

    python -m trainer_core prepare-models
    python -m trainer_core check-data FILE_OR_FOLDER [--model DIR] [--max-length N] [--no-tokens] [--json]
    python -m trainer_core plan CONFIG [--set k=v]... [--json]
    python -m trainer_core train CONFIG [--set k=v]... [--detach]
    python -m trainer_core status RUN [--json] | stop RUN [--force] | resume RUN [--checkpoint STEP] [--detach]
    python -m trainer_core runs [--json] | logs RUN [-n N] [--follow]
    python -m trainer_core chat MODEL_OR_RUN --prompt TEXT [--persona TEXT] [--max-new-tokens N]
    python -m trainer_core export RUN [--checkpoint STEP] [--format qwen1] [--merge]
    python -m trainer_core evaluate RUN [--checkpoint STEP|all] [--base] [--probes FILE] [--max-records N] [--json]
    python -m trainer_core import-model SRC DEST          (Qwen-1 / Qwen-7B-Chat folder -> native Qwen2 folder)
    python -m trainer_core join RUN --node-rank N         (other nodes of a no_ssh multi-node run)

Exit codes: 0 success, 1 the run failed, 2 bad input (the message says which field or file and how to fix it).
One module per command group: data_cmds, run_cmds, model_cmds, eval_cmds; each imports its heavy libraries only when run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from trainer_core.cli import common, data_cmds, eval_cmds, model_cmds, run_cmds
from trainer_core.common.errors import UserError, each_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer_core", description="Role-play fine-tuning studio CLI")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data_cmds, run_cmds, model_cmds, eval_cmds):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.STDOUT[0] = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.fn(args)
    except UserError as e:
        for problem in each_error(e):  # every invalid field of a config on its own line
            print(f"error: {problem}", file=sys.stderr)
        return 2
