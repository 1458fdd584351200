"""`evaluate`: did a run's model become its persona? Held-out answers and identity probes, base model as reference."""

from __future__ import annotations

import math
import sys
import threading

from trainer_core.cli.common import emit, print_json, run_dir

# The table's columns, in order; arrows say which way is better.
COLUMNS = (("answer_nll", "↓"), ("rouge_l", "↑"), ("bleu4", "↑"), ("ends_by_itself", "↑"),
           ("identity_in_persona", "↑"), ("breaks_character", "↓"), ("lexicon_rate", "↑"), ("style_js", "↓"),
           ("distinct_2", "↑"), ("repetition", "↓"), ("length_ratio", "≈1"))


def cmd_evaluate(args) -> int:
    from trainer_core.evaluation import persona_eval as pe

    run = run_dir(args.run)
    settings = pe.EvalSettings(max_records=args.max_records, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, seed=args.seed)
    cancel = threading.Event()
    last = {}

    def progress(label: str, done: int, total: int) -> None:
        if last.get(label) != done:
            last[label] = done
            print(f"[evaluate] {label}: {done}/{total}", file=sys.stderr, flush=True)

    try:
        results = pe.evaluate_run(run, checkpoint=args.checkpoint, base=args.base, probes_file=args.probes,
                                  settings=settings, cancel=cancel, progress=progress)
    except KeyboardInterrupt:
        cancel.set()
        print("evaluation stopped; results of models finished before the stop are kept, nothing partial is "
              "written", file=sys.stderr)
        return 130
    if args.json:
        print_json({label: {k: v for k, v in r.items() if k != "replies"} for label, r in results.items()})
        return 0
    emit(table(results, pe.compare_to_base(results)))
    return 0


def table(results: dict[str, dict], deltas: dict[str, dict]) -> str:
    """The stored results as a text table: one row per model, each figure with its change against base."""
    head = ["model"] + [f"{name} {arrow}" for name, arrow in COLUMNS]
    rows = [head]
    for label, r in results.items():
        cells = [label]
        for name, _ in COLUMNS:
            value = r["metrics"].get(name)
            cell = "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
            if name in deltas.get(label, {}):
                cell += f" ({deltas[label][name]:+.3f})"
            cells.append(cell)
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def add_parsers(sub) -> None:
    s = sub.add_parser("evaluate", help="persona evaluation of a run's models, base model as reference")
    s.add_argument("run")
    s.add_argument("--checkpoint", default=None, help="a step, or \"all\" (every complete checkpoint and final); "
                                                      "default: final (or the newest complete checkpoint)")
    s.add_argument("--base", action="store_true", help="also evaluate the base model, the reference row")
    s.add_argument("--probes", default=None, help="probe file (JSON: identity, names, ai_patterns); default: the "
                                                  "run's eval/probes.json, else the default set for its language")
    s.add_argument("--max-records", type=int, default=200)
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_evaluate)
