"""`prepare-models` and `check-data`: the starter model, and a dataset validated in one pass."""

from __future__ import annotations

from pathlib import Path

from trainer_core.cli.common import bounded, emit, print_json
from trainer_core.common.errors import text


def cmd_prepare_models(args) -> int:
    from trainer_core.config.hardware import warm_deepspeed_ops
    from trainer_core.models.starter import prepare_models

    emit(prepare_models(force=args.force))
    warm_deepspeed_ops()
    return 0


def _default_model() -> str:
    from trainer_core.common import paths

    return str(paths.STARTER_MODEL_DIR)


def _token_counter(args, persona: str):
    """(counter, tokenizer, special tokens in the persona, model) for token statistics, or Nones without them."""
    from trainer_core.data.chat_template import specials_in
    from trainer_core.data.light_tokenizer import load_light_tokenizer
    from trainer_core.data.token_stats import TokenCounter
    from trainer_core.models.local import check_model_dir, load_tokenizer

    if args.no_tokens or not (args.model or Path(_default_model()).is_dir()):
        return None, None, [], None
    model = args.model or _default_model()
    if args.model:
        check_model_dir(model, trust_remote_code=args.trust_remote_code)
    # Without transformers where the folder allows it: importing it (and torch) was ~5 s of a 6 s check.
    tok = None if args.trust_remote_code else load_light_tokenizer(model)
    tok = tok or load_tokenizer(model, trust_remote_code=args.trust_remote_code)
    return TokenCounter(tok, persona=persona, max_length=args.max_length), tok, specials_in(tok, persona), model


def cmd_check_data(args) -> int:
    from trainer_core.config.run_config import DEFAULT_PERSONA, MAX_LENGTH_RANGE
    from trainer_core.data.dataset import load_dataset
    from trainer_core.data.validate import Problems, special_warnings

    bounded(args.max_length, "--max-length", *MAX_LENGTH_RANGE,
            why=text("cli.max_length_range", "the range data.max_length allows"))
    counter, tok, persona_specials, model = _token_counter(args, args.persona or DEFAULT_PERSONA)
    specials = Problems()

    def measure(row: int, conversation: list[dict]) -> None:
        counter.add(conversation)
        specials.extend(special_warnings(row, conversation, tok))

    # One pass, nothing kept: each usable record is measured as it is read, so memory does not grow with the file.
    try:
        report = load_dataset(args.file, keep=False, on_usable=measure if counter else None)
    except BaseException:
        if counter is not None:
            counter.close()  # its encoding thread, before the error is reported
        raise
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
        print_json(out)
    else:
        _print_report(args, report, out, persona_specials)
    return 0 if report.n_usable else 2


def _print_report(args, report, out: dict, persona_specials: list[str]) -> None:
    from trainer_core.data.validate import DUPLICATE

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


def add_parsers(sub) -> None:
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
