"""`plan`, `train`, `status`, `stop`, `resume`, `runs`, `logs`, `join`: runs, through the orchestration API."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from trainer_core.cli.common import add_config_args, bounded, emit, print_json, run_dir, write_out
from trainer_core.common.errors import UserError

MAX_LOG_LINES = 100_000


def cmd_plan(args) -> int:
    from trainer_core.config.run_config import load_config
    from trainer_core.runs.launch import shell_line
    from trainer_core.runs.orchestrate import device_busy, plan

    p = plan(load_config(args.config, args.set))
    if p.memory_problem is not None:
        raise UserError(p.memory_problem)
    busy = device_busy(p.cfg, p.hardware)  # a launch now would be refused: say so in the plan, not only at train
    if args.json:
        print_json({"config": p.cfg.to_dict(), "ds_config": p.ds_config, "argv": p.argv,
                    "memory": p.memory.to_dict(), "lints": [str(x) for x in p.lints], "records": p.n_records,
                    "device_busy": str(busy) if busy else None})
        return 0
    emit("# DeepSpeed config")
    emit(json.dumps(p.ds_config, indent=2))
    emit("# launch command" + ("s (one per node)" if len(p.argv) > 1 else ""))
    for argv in p.argv:
        emit(shell_line(argv))
    _print_memory(p)
    emit("# lint")
    for x in p.lints or ["ok"]:
        emit(f"  {x}")
    emit("# devices")
    emit(f"  busy: {busy}" if busy else "  free")
    return 0


def _print_memory(p) -> None:
    from trainer_core.config.memory import fmt_bytes

    m, ds = p.memory, p.cfg.deepspeed
    emit(f"# memory plan (ZeRO stage {ds.stage}, offload optimizer {ds.offload_optimizer}, "
         f"param {ds.offload_param})")
    emit(f"  parameters: {m.params:,}")
    if m.trainable is not None:
        emit(f"  {m.method}: {m.trainable:,} trainable ({100 * m.trainable / max(m.params, 1):.2f}%), "
             f"frozen base {fmt_bytes(m.breakdown.get('frozen_base'))}, "
             f"adapter states {fmt_bytes(m.breakdown.get('adapter_states'))}")
    emit(f"  per rank: {fmt_bytes(m.per_rank_device_bytes)}"
         + (f" (of {fmt_bytes(m.device_total_bytes)})" if m.device_total_bytes else ""))
    emit(f"  host RAM: {fmt_bytes(m.host_bytes)} of {fmt_bytes(m.host_total_bytes)}"
         f" -> {'fits' if m.fits else 'DOES NOT FIT'}")
    for n in m.notes:
        emit(f"  note: {n}")


class _Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP to a foreground `train` or `resume`: the first asks the run to save and stop, the
    next forces the stop. The CLI never exits leaving its run training unseen (a terminal closed, `timeout`). A
    signal that comes while the run is still being started stops it as soon as it exists."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.run: Path | None = None
        self.count = 0
        self.stopping = False
        for sig in self.SIGNALS:
            signal.signal(sig, self)

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.stopping:  # a second signal while the save-and-stop is under way: force it
            self._stop(force=True)

    def poll(self, run: Path) -> None:
        """Called by the loop that follows the run: stop it if a signal came (also while it was being started)."""
        self.run = run
        if self.count and not self.stopping:
            self.stopping = True
            self._stop(force=self.count > 1)

    def _stop(self, force: bool) -> None:
        from trainer_core.runs.lifecycle import stop

        _say("\nstopping without saving..." if force else
             "\nstopping (saving a checkpoint first; Ctrl-C again to force)...")
        stop(self.run, force=force)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal is gone (SIGHUP): the run is stopped all the same


def _wait_foreground(run: Path, interrupts: _Interrupts) -> int:
    """Follow a foreground run's log until it ends and its last process is gone; a signal stops it (_Interrupts)."""
    from trainer_core.runs import processes as run_processes
    from trainer_core.runs import protocol
    from trainer_core.runs.state import read_state
    from trainer_core.common.tailing import read_tail_bytes

    offset = 0
    log = run / protocol.LOG
    while True:
        interrupts.poll(run)
        size = log.stat().st_size if log.exists() else 0
        if size > offset:
            try:
                sys.stderr.write(read_tail_bytes(log, size - offset).decode("utf-8", "replace"))
                sys.stderr.flush()
            except OSError:
                pass
            offset = size
        state = read_state(run)
        if state.terminal:
            break
        time.sleep(0.5)
    # The supervisor writes the end a moment before it exits: return only once nothing of the run is left, so the
    # devices are free for whatever comes next.
    run_processes.wait_gone(run, protocol.read_manifest(run), 30)
    if state.state == protocol.FAILED:
        _say(f"run failed: {state.error}")
    return 0 if state.state in (protocol.COMPLETED, protocol.STOPPED) else 1


def cmd_train(args) -> int:
    from trainer_core.config.run_config import load_config
    from trainer_core.runs import protocol
    from trainer_core.runs.orchestrate import launch

    interrupts = None if args.detach else _Interrupts()
    run = launch(load_config(args.config, args.set))
    for lint in protocol.read_status(run).lints:
        print(lint, file=sys.stderr)
    code = 0 if interrupts is None else _wait_foreground(run, interrupts)
    emit(run)
    return code


def _value(value) -> str:
    return "-" if value is None else str(value)


def cmd_status(args) -> int:
    from trainer_core.runs import protocol
    from trainer_core.runs.registry import read_listed

    run = run_dir(args.run)
    st, problem = read_listed(run)
    if st is None:
        raise UserError("runs.damaged_run", "run {name}: {problem}", name=run.name, problem=problem)
    if args.json:
        print_json(st.to_json())
        return 0
    if st.terminal:  # over: no phase, no time left, the loss is the last one it logged
        emit(f"{st.name}: {st.state}  step {st.step}/{st.total_steps or '?'}  last loss {_value(st.loss)}")
    else:
        eta = st.eta_s if st.phase in (None, protocol.PHASE_TRAINING) else None
        phase = st.phase if st.live else None
        if phase and st.phase_total:
            phase += f" {st.phase_done or 0}/{st.phase_total}"
        emit(f"{st.name}: {st.state}{f' ({phase})' if phase else ''}  step {st.step}/{st.total_steps or '?'}  "
             f"loss {_value(st.loss)}  eta {'-' if eta is None else f'{eta:.0f}s'}")
    if st.warning:
        emit(f"warning: {st.warning}")
    if st.note:
        emit(f"note: {st.note}")
    if st.error:
        emit(f"error: {st.error}")
    return 0


def cmd_stop(args) -> int:
    from trainer_core.runs.lifecycle import stop

    done = stop(run_dir(args.run), force=args.force)
    st, ended = done.state, done.ended
    if done.already_ended:
        emit(f"{st.name}: already ended, {st.state} (checkpoints: {st.checkpoints}; no process left to end)")
        return 0
    emit(f"{st.name}: {st.state} (checkpoints: {st.checkpoints}; "
         f"{'ended ' + ', '.join(ended) if ended else 'no process left to end'})")
    return 0


def cmd_resume(args) -> int:
    from trainer_core.runs.lifecycle import resume

    run = run_dir(args.run)
    interrupts = None if args.detach else _Interrupts()
    ckpt = resume(run, checkpoint=args.checkpoint)
    print(f"resuming {run.name} from {ckpt.name if ckpt else 'the start (no complete checkpoint)'}",
          file=sys.stderr)
    code = 0 if interrupts is None else _wait_foreground(run, interrupts)
    emit(run)
    return code


def cmd_runs(args) -> int:
    from trainer_core.runs.registry import DAMAGED, list_runs, read_listed

    rows = [(run, *read_listed(run)) for run in list_runs()]
    if args.json:
        print_json([st.to_json() if st else {"name": run.name, "run_dir": str(run), "state": DAMAGED,
                                             "error": str(problem)} for run, st, problem in rows])
        return 0
    for run, st, problem in rows:
        if st is None:
            emit(f"{run.name:<32} {DAMAGED:<10} {problem}")
        else:
            emit(f"{st.name:<32} {st.state:<10} step {st.step}/{st.total_steps or '?'} loss {_value(st.loss)}")
    return 0


def cmd_logs(args) -> int:
    from trainer_core.runs import protocol
    from trainer_core.runs.state import read_state
    from trainer_core.common.tailing import read_tail_bytes, tail_lines

    bounded(args.n, "-n", 0, MAX_LOG_LINES)
    run = run_dir(args.run)
    log = run / protocol.LOG
    for line in tail_lines(log, args.n) if args.n else []:
        emit(line)
    if args.follow:
        offset = log.stat().st_size if log.exists() else 0
        while True:
            size = log.stat().st_size if log.exists() else 0
            if size > offset:
                write_out(read_tail_bytes(log, size - offset).decode("utf-8", "replace"))
                offset = size
            elif read_state(run).terminal:
                break
            time.sleep(0.5)
    return 0


def cmd_join(args) -> int:
    """Run one node of a multi-node (no_ssh) run in the foreground; node 0 is started with `train`."""
    import subprocess

    from trainer_core.common import paths
    from trainer_core.config.hardware import detect
    from trainer_core.config.run_config import load_config
    from trainer_core.runs import protocol
    from trainer_core.runs.device_locks import acquire
    from trainer_core.runs.launch import launch_env, node_argv
    from trainer_core.runs.supervisor import device_keys

    run = run_dir(args.run)
    cfg = load_config(run / protocol.CONFIG)
    if cfg.placement.launcher != "no_ssh":
        raise UserError("cli.join_not_no_ssh", "run {name} uses placement.launcher {launcher}; join is for no_ssh "
                        "runs", name=run.name, launcher=cfg.placement.launcher)
    if not 0 < args.node_rank < cfg.placement.num_nodes:
        raise UserError("cli.join_node_rank", "--node-rank must be between 1 and {last} for run {name}",
                        last=cfg.placement.num_nodes - 1, name=run.name)
    fds = [] if args.no_lock else acquire(run.resolve(), device_keys(run))
    has_gpu = detect().has_gpu
    argv = node_argv(cfg, run, node_rank=args.node_rank, has_gpu=has_gpu)
    try:
        return subprocess.call(argv, cwd=paths.PROJECT_ROOT, env=launch_env(cfg, has_gpu))
    finally:
        for fd in fds:
            os.close(fd)


def add_parsers(sub) -> None:
    s = sub.add_parser("plan", help="resolved DeepSpeed JSON, launch argv, memory plan, lint")
    add_config_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("train", help="create a run and train it")
    add_config_args(s)
    s.add_argument("--detach", action="store_true", help="print the run directory and return at once")
    s.set_defaults(fn=cmd_train)

    for name, fn, hlp in (("status", cmd_status, "state of a run from its directory"),
                          ("runs", cmd_runs, "list runs")):
        s = sub.add_parser(name, help=hlp)
        if name == "status":
            s.add_argument("run")
        s.add_argument("--json", action="store_true")
        s.set_defaults(fn=fn)

    s = sub.add_parser("stop", help="save a checkpoint, then stop (--force: no save)")
    s.add_argument("run")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("resume", help="continue a stopped or failed run from its newest complete checkpoint")
    s.add_argument("run")
    s.add_argument("--checkpoint", type=int, default=None, metavar="STEP",
                   help="resume from this complete checkpoint instead; the run's later checkpoints and metric rows "
                        "are removed")
    s.add_argument("--detach", action="store_true")
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("logs", help="tail a run's log")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=50)
    s.add_argument("--follow", action="store_true")
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("join", help="start node N (>= 1) of a no_ssh multi-node run in the foreground")
    s.add_argument("run")
    s.add_argument("--node-rank", type=int, required=True)
    s.add_argument("--no-lock", action="store_true",
                   help="do not lock this host's devices (several 'nodes' on one test machine)")
    s.set_defaults(fn=cmd_join)
