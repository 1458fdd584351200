"""Command line: everything the dashboard does, from a terminal or a cluster script.

    python -m trainer_core prepare-models
    python -m trainer_core check-data FILE_OR_FOLDER [--model DIR] [--max-length N] [--no-tokens] [--json]
    python -m trainer_core plan CONFIG [--set k=v]... [--json]
    python -m trainer_core train CONFIG [--set k=v]... [--detach]
    python -m trainer_core status RUN [--json] | stop RUN [--force] | resume RUN [--checkpoint STEP] [--detach]
    python -m trainer_core runs [--json] | logs RUN [-n N] [--follow]
    python -m trainer_core chat MODEL_OR_RUN --prompt TEXT [--persona TEXT] [--max-new-tokens N]
    python -m trainer_core export RUN [--checkpoint STEP] [--format qwen1]
    python -m trainer_core import-model SRC DEST          (Qwen-1 / Qwen-7B-Chat folder -> native Qwen2 folder)
    python -m trainer_core join RUN --node-rank N         (other nodes of a no_ssh multi-node run)

Exit codes: 0 success, 1 the run failed, 2 bad input (the message says which field or file and how to fix it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from trainer_core.errors import UserError


# The real stdout, kept for our results: while a command runs, sys.stdout points at stderr so that library
# chatter (DeepSpeed logs its accelerator choice on stdout) cannot corrupt `--json` output or the run-dir line.
_STDOUT = [sys.stdout]
MAX_LOG_LINES = 100_000


def emit(*args, **kwargs) -> None:
    print(*args, file=_STDOUT[0], flush=True, **kwargs)


def _print_json(obj) -> None:
    emit(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def cmd_prepare_models(args) -> int:
    from trainer_core.config.hardware import warm_deepspeed_ops
    from trainer_core.models.starter import prepare_models

    emit(prepare_models(force=args.force))
    warm_deepspeed_ops()
    return 0


def cmd_check_data(args) -> int:
    from trainer_core.config.run_config import DEFAULT_PERSONA, MAX_LENGTH_RANGE
    from trainer_core.data.dataset import load_dataset
    from trainer_core.data.token_stats import TokenCounter
    from trainer_core.data.validate import DUPLICATE, Problems, special_warnings

    _bounded(args.max_length, "--max-length", *MAX_LENGTH_RANGE, why="the range data.max_length allows")
    persona = args.persona or DEFAULT_PERSONA
    counter, tok, persona_specials, specials = None, None, [], Problems()
    if not args.no_tokens and (args.model or Path(_default_model()).is_dir()):
        from trainer_core.data.chat_template import specials_in
        from trainer_core.models.local import check_model_dir, load_tokenizer

        model = args.model or _default_model()
        if args.model:
            check_model_dir(model, trust_remote_code=args.trust_remote_code)
        tok = load_tokenizer(model, trust_remote_code=args.trust_remote_code)
        persona_specials = specials_in(tok, persona)
        counter = TokenCounter(tok, persona=persona, max_length=args.max_length)

    def measure(row: int, conversation: list[dict]) -> None:
        counter.add(conversation)
        specials.extend(special_warnings(row, conversation, tok))

    # One pass, nothing kept: each usable record is measured as it is read, so memory does not grow with the file.
    report = load_dataset(args.file, keep=False, on_usable=measure if counter else None)
    report.warnings.extend(specials)
    out = report.to_dict()
    if counter is not None and report.n_usable:
        from trainer_core.data.chat_template import turn_format

        out["tokens"] = counter.result().to_dict()
        out["tokens"].pop("lengths", None)
        out["tokens"]["tokenizer"] = str(model)
        out["tokens"]["end_of_turn"] = turn_format(tok).end_marker
    if persona_specials:
        out["persona_special_tokens"] = persona_specials
    if args.json:
        _print_json(out)
    else:
        dropped = f", {report.n_tool_call_rows} left out: tool-call turns are not trained" \
            if report.n_tool_call_rows else ""
        emit(f"{args.file}: {out['n_rows']} rows, {report.n_usable} usable, {report.n_errors} errors, "
             f"{report.n_warnings} warnings, format {out['format']}{dropped}")
        if persona_specials:
            emit(f"  warning: persona holds special token {', '.join(persona_specials)}; it is read as plain text")
        for e in report.errors[:50]:
            emit(f"  row {e.row}{' ' + e.field if e.field else ''}: {e.message}")
        if report.n_errors > 50:
            emit(f"  ... {report.n_errors - min(50, len(report.errors))} more errors "
                 f"({len(report.errors.counts)} kinds; --json lists the first {report.errors.per_kind} of each)")
        # Duplicates come last: huanhuan.json alone has hundreds, which would hide everything else.
        for w in sorted(report.warnings, key=lambda w: w.message.code == DUPLICATE)[:10]:
            emit(f"  warning: row {w.row}{' ' + w.field if w.field else ''}: {w.message}")
        if report.n_warnings > 10:
            emit(f"  ... {report.n_warnings - 10} more warnings (--json lists the first {report.warnings.per_kind} "
                 "of each kind)")
        t = out.get("tokens")
        if t:
            emit(f"tokens (max_length {args.max_length}): p50 {t['p50']}, p95 {t['p95']}, max {t['max']}, "
                 f"{t['n_truncated']} would be truncated, {t['n_answer_lost']} would lose the whole answer; "
                 f"trained: each answer and its end-of-turn {t['end_of_turn']}")
    return 0 if report.n_usable else 2


def _bounded(value: int | float | None, flag: str, lo, hi, *, why: str = "") -> None:
    """Numbers typed on the command line get the same one-line refusal as config fields (argparse would print
    its usage block)."""
    if value is not None and not lo <= value <= hi:  # also false for NaN
        raise UserError(f"{flag} must be between {lo:,} and {hi:,}{f' ({why})' if why else ''} (got {value})")


def _default_model() -> str:
    from trainer_core import paths

    return str(paths.STARTER_MODEL_DIR)


def cmd_plan(args) -> int:
    from trainer_core.config.run_config import load_config
    from trainer_core.runs.launch import all_node_commands, shell_line
    from trainer_core.config.memory import fmt_bytes, plan_memory
    from trainer_core.runs.registry import preflight

    pf = preflight(load_config(args.config, args.set))
    plan = plan_memory(pf.cfg)
    from trainer_core import paths
    from trainer_core.config.hardware import detect
    from trainer_core.runs.registry import new_run_name

    run = paths.runs_root() / new_run_name(pf.cfg)
    commands = all_node_commands(pf.cfg, run, has_gpu=detect().has_gpu)
    out = {"config": pf.cfg.to_dict(), "ds_config": pf.ds_config, "argv": commands,
           "memory": plan.to_dict(), "lints": [str(x) for x in pf.lints], "records": pf.n_records}
    if args.json:
        _print_json(out)
        return 0
    emit("# DeepSpeed config")
    emit(json.dumps(pf.ds_config, indent=2))
    emit("# launch command" + ("s (one per node)" if len(commands) > 1 else ""))
    for c in commands:
        emit(shell_line(c))
    emit("# memory plan")
    emit(f"  parameters: {plan.params:,}")
    emit(f"  per rank: {fmt_bytes(plan.per_rank_device_bytes)} "
          f"(of {fmt_bytes(plan.device_total_bytes)})" if plan.device_total_bytes else
          f"  per rank: {fmt_bytes(plan.per_rank_device_bytes)}")
    emit(f"  host RAM: {fmt_bytes(plan.host_bytes)} of {fmt_bytes(plan.host_total_bytes)}"
          f" -> {'fits' if plan.fits else 'DOES NOT FIT'}")
    for n in plan.notes:
        emit(f"  note: {n}")
    emit("# lint")
    for x in pf.lints or ["ok"]:
        emit(f"  {x}")
    return 0


def _wait_foreground(run: Path) -> int:
    """Follow a foreground run's log until it ends; Ctrl-C asks for a save-then-stop."""
    from trainer_core.runs import protocol as rd
    from trainer_core.runs.lifecycle import stop
    from trainer_core.runs.state import read_state
    from trainer_core.runs.tailing import read_tail_bytes

    offset = 0
    log = run / rd.LOG

    def on_int(signum, frame):
        print("\nstopping (saving a checkpoint first; Ctrl-C again to force)...", file=sys.stderr)
        signal.signal(signal.SIGINT, lambda s, f: stop(run, force=True))
        stop(run, force=False)

    signal.signal(signal.SIGINT, on_int)
    while True:
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > offset:
            chunk = read_tail_bytes(log, size - offset)
            sys.stderr.write(chunk.decode("utf-8", "replace"))
            sys.stderr.flush()
            offset = size
        state = read_state(run)
        if state.terminal:
            break
        time.sleep(0.5)
    if state.state == rd.FAILED:
        print(f"run failed: {state.error}", file=sys.stderr)
    return 0 if state.state in (rd.COMPLETED, rd.STOPPED) else 1


def cmd_train(args) -> int:
    from trainer_core.runs import protocol as rd
    from trainer_core.config.run_config import load_config
    from trainer_core.runs.registry import create_run
    from trainer_core.runs.supervisor import start

    run = create_run(load_config(args.config, args.set))
    for lint in rd.read_status(run).lints:
        print(lint, file=sys.stderr)
    try:
        start(run, detach=True)
    except UserError:
        import shutil

        shutil.rmtree(run, ignore_errors=True)  # devices busy: leave no run directory behind
        raise
    code = 0 if args.detach else _wait_foreground(run)
    emit(run)
    return code


def _run(ref: str) -> Path:
    from trainer_core.runs.registry import resolve_run_dir

    return resolve_run_dir(ref)


def cmd_status(args) -> int:
    from trainer_core.runs import protocol as rd
    from trainer_core.runs.state import read_state

    st = read_state(_run(args.run))
    if args.json:
        _print_json(st.to_json())
    else:
        eta = st.eta_s if st.phase in (None, rd.PHASE_TRAINING) else None
        phase = st.phase if st.state in (rd.RUNNING, rd.STOPPING) else None
        if phase and st.phase_total:
            phase += f" {st.phase_done or 0}/{st.phase_total}"
        emit(f"{st.name}: {st.state}{f' ({phase})' if phase else ''}  step {st.step}/{st.total_steps or '?'}  "
             f"loss {_num(st.loss)}  eta {'-' if eta is None else f'{eta:.0f}s'}")
        if st.warning:
            emit(f"warning: {st.warning}")
        if st.error:
            emit(f"error: {st.error}")
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else str(value)


def cmd_stop(args) -> int:
    from trainer_core.runs.lifecycle import stop

    done = stop(_run(args.run), force=args.force)
    st, ended = done.state, done.ended
    emit(f"{st.name}: {st.state} (checkpoints: {st.checkpoints}; "
         f"{'ended ' + ', '.join(ended) if ended else 'no process left to end'})")
    return 0


def cmd_resume(args) -> int:
    from trainer_core.runs.lifecycle import resume

    run = _run(args.run)
    ckpt = resume(run, checkpoint=args.checkpoint)
    print(f"resuming {run.name} from {ckpt.name if ckpt else 'the start (no complete checkpoint)'}",
          file=sys.stderr)
    code = 0 if args.detach else _wait_foreground(run)
    emit(run)
    return code


def cmd_runs(args) -> int:
    from trainer_core.runs.registry import list_runs
    from trainer_core.runs.state import read_state

    rows = [read_state(r) for r in list_runs()]
    if args.json:
        _print_json([st.to_json() for st in rows])
        return 0
    for st in rows:
        emit(f"{st.name:<32} {st.state:<10} step {st.step}/{st.total_steps or '?'} loss {_num(st.loss)}")
    return 0


def cmd_logs(args) -> int:
    from trainer_core.runs import protocol as rd
    from trainer_core.runs.state import read_state
    from trainer_core.runs.tailing import read_tail_bytes, tail_lines

    _bounded(args.n, "-n", 0, MAX_LOG_LINES)
    run = _run(args.run)
    log = run / rd.LOG
    for line in tail_lines(log, args.n) if args.n else []:
        emit(line)
    if args.follow:
        offset = log.stat().st_size if log.exists() else 0
        while True:
            size = log.stat().st_size if log.exists() else 0
            if size > offset:
                _STDOUT[0].write(read_tail_bytes(log, size - offset).decode("utf-8", "replace"))
                _STDOUT[0].flush()
                offset = size
            elif read_state(run).terminal:
                break
            time.sleep(0.5)
    return 0


def cmd_chat(args) -> int:
    from trainer_core.data.chat_template import specials_in
    from trainer_core.models.inference import (PERSONA_GIVEN, PERSONA_TRAINED, GenParams, chat_persona, load_chat_model,
                                        resolve_model_dir, stream_reply)

    if not args.prompt.strip():
        raise UserError("--prompt is empty; give the line the model should answer")
    _bounded(args.max_new_tokens, "--max-new-tokens", 1, 8192)
    _bounded(args.temperature, "--temperature", 0.0, 10.0)
    _bounded(args.seed, "--seed", 0, 2**32 - 1)
    _bounded(args.checkpoint, "--checkpoint", 0, 10**9)
    model_dir = resolve_model_dir(_model_or_run(args.model), args.checkpoint)
    model, tok = load_chat_model(model_dir, trust_remote_code=args.trust_remote_code)
    persona, source = chat_persona(model_dir, args.persona)
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    # Which system prompt is in use goes to stderr, so stdout stays the reply alone.
    said = {PERSONA_GIVEN: "persona: --persona", PERSONA_TRAINED: "persona: the one the run was trained with"}
    print(said.get(source, "persona: none; the model's own default system prompt (--persona sets one)"),
          file=sys.stderr, flush=True)
    for text, what in ((persona, "persona"), (args.prompt, "prompt")):
        if found := specials_in(tok, text):
            print(f"warning: the {what} holds special token {', '.join(found)}; it is read as plain text",
                  file=sys.stderr, flush=True)
    for piece in stream_reply(model, tok, [{"role": "user", "content": args.prompt}], persona=persona,
                              params=params):
        _STDOUT[0].write(piece)
        _STDOUT[0].flush()
    emit()
    return 0


def _model_or_run(ref: str) -> Path:
    """A model folder, a run directory, or a run's name (as status/stop/export accept it)."""
    from trainer_core.runs import protocol as rd

    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if "/" not in ref and (_runs_root() / ref / rd.CONFIG).is_file():
        return _run(ref)
    raise UserError(f"{ref}: no such model folder or run; give a model directory, a run directory or a run name "
                    "(`python -m trainer_core runs` lists them)")


def _runs_root() -> Path:
    from trainer_core import paths

    return paths.runs_root()


def cmd_join(args) -> int:
    """Run one node of a multi-node (no_ssh) run in the foreground; node 0 is started with `train`."""
    import subprocess

    from trainer_core import paths
    from trainer_core.runs import protocol as rd
    from trainer_core.config.run_config import load_config
    from trainer_core.config.hardware import detect
    from trainer_core.runs.launch import launch_env, node_argv
    from trainer_core.runs.device_locks import acquire
    from trainer_core.runs.supervisor import device_keys

    run = _run(args.run)
    cfg = load_config(run / rd.CONFIG)
    if cfg.placement.launcher != "no_ssh":
        raise UserError(f"run {run.name} uses placement.launcher {cfg.placement.launcher}; join is for no_ssh runs")
    if not 0 < args.node_rank < cfg.placement.num_nodes:
        raise UserError(f"--node-rank must be between 1 and {cfg.placement.num_nodes - 1} for run {run.name}")
    fds = [] if args.no_lock else acquire(run.resolve(), device_keys(run))
    has_gpu = detect().has_gpu
    argv = node_argv(cfg, run, node_rank=args.node_rank, has_gpu=has_gpu)
    try:
        return subprocess.call(argv, cwd=paths.PROJECT_ROOT, env=launch_env(cfg, has_gpu))
    finally:
        for fd in fds:
            os.close(fd)


def cmd_export(args) -> int:
    from trainer_core.models.export import export_checkpoint

    _bounded(args.checkpoint, "--checkpoint", 0, 10**9)
    run = _run(args.run)
    if args.format == "qwen1":  # checked before the consolidation, which can take minutes
        from trainer_core.runs import protocol as rd
        from trainer_core.config.run_config import load_config
        from trainer_core.models.qwen1_import import export_qwen1, imported_from

        original = imported_from(load_config(run / rd.CONFIG).model.path)
    out = export_checkpoint(run, args.checkpoint)
    if args.format == "qwen1":
        out = export_qwen1(out, original, out.with_name(f"{out.name}-qwen1"))
    emit(out)
    return 0


def cmd_import_model(args) -> int:
    from trainer_core.config.memory import fmt_bytes
    from trainer_core.models.qwen1_import import import_qwen1

    shown = [-1]

    def progress(done: int, total: int, name: str) -> None:
        percent = 100 * done // max(total, 1)
        if percent != shown[0] or done == total:  # one line per percent, however many tensors
            shown[0] = percent
            print(f"[import] {percent:3d}%  {fmt_bytes(done)} / {fmt_bytes(total)}  {name}", file=sys.stderr,
                  flush=True)

    result = import_qwen1(args.src, args.dest, progress=progress)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"imported {result.n_tensors} tensors ({fmt_bytes(result.nbytes)}) as a Qwen2 model; no remote code "
          "needed", file=sys.stderr)
    emit(result.dest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer_core", description="Role-play fine-tuning studio CLI")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare-models", help="build the starter model under models/ (idempotent)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_prepare_models)

    s = sub.add_parser("check-data", help="validate a dataset; exit 0 usable, 2 not")
    s.add_argument("file", help=".json, .jsonl, .parquet or .csv file, or a datasets save_to_disk folder")
    s.add_argument("--model", help="tokenizer for token statistics (default: the starter model)")
    s.add_argument("--max-length", type=int, default=512)
    s.add_argument("--persona", default=None)
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--no-tokens", action="store_true", help="validate only, without token statistics (fast)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_check_data)

    for name, fn, hlp in (("plan", cmd_plan, "resolved DeepSpeed JSON, launch argv, memory plan, lint"),
                          ("train", cmd_train, "create a run and train it")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("config")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.learning_rate=2e-5")
        if name == "plan":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--detach", action="store_true", help="print the run directory and return at once")
        s.set_defaults(fn=fn)

    s = sub.add_parser("status", help="state of a run from its directory")
    s.add_argument("run")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

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

    s = sub.add_parser("runs", help="list runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("logs", help="tail a run's log")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=50)
    s.add_argument("--follow", action="store_true")
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("chat", help="one reply from a model folder or a run")
    s.add_argument("model")
    s.add_argument("--prompt", required=True)
    s.add_argument("--persona", default=None, help="system prompt (default: the run's persona; for a plain model "
                                                   "folder, the model's own default system prompt)")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--checkpoint", type=int, default=None)
    s.add_argument("--trust-remote-code", action="store_true")
    s.set_defaults(fn=cmd_chat)

    s = sub.add_parser("join", help="start node N (>= 1) of a no_ssh multi-node run in the foreground")
    s.add_argument("run")
    s.add_argument("--node-rank", type=int, required=True)
    s.add_argument("--no-lock", action="store_true",
                   help="do not lock this host's devices (several 'nodes' on one test machine)")
    s.set_defaults(fn=cmd_join)

    s = sub.add_parser("export", help="consolidate a ZeRO checkpoint to safetensors")
    s.add_argument("run")
    s.add_argument("--checkpoint", type=int, default=None)
    s.add_argument("--format", choices=("hf", "qwen1"), default="hf",
                   help="qwen1: also write the weights back in Qwen-1 names next to the original folder's code, "
                        "for runs of a model brought in with import-model")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("import-model", help="convert a Qwen-1 (Qwen-7B-Chat) folder into a native Qwen2 folder")
    s.add_argument("src", help="the downloaded Qwen-1 folder (config.json, *.safetensors, qwen.tiktoken)")
    s.add_argument("dest", help="new folder to create, e.g. models/qwen-7b-chat")
    s.set_defaults(fn=cmd_import_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _STDOUT[0] = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
