"""Compare what two recipes of `bench/peer_bench.py --dump DIR` trained, record by record and step by step.

    .venv/bin/python bench/compare_dumps.py DIR/ours-1 DIR/trl-1

Each steps.jsonl line is one micro-batch as the loss saw it (bench/hooks/step_dump). Rows are split into records where
their position ids restart at 0; a record is identified by its token ids up to its first trained label, so the same
training record is matched across recipes however each packed it. Printed: per step the lr, the number of trained
positions and `num_items_in_batch`, the loss; per recipe the records and trained tokens; for the records both saw,
which tokens only one of them trains (decoded, with a count of each distinct difference); and how the records were
grouped into rows and steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IGNORE = -100


def steps(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "steps.jsonl").read_text(encoding="utf-8").splitlines() if line]


def records(batch: dict) -> list[tuple[list[int], list[int]]]:
    """(ids, next-token labels) of every record in a batch: labels[i] is what position i is trained to predict
    (labels shifted by one, as both losses do), -100 where nothing is."""
    out = []
    for ids, labels, pos in zip(batch["input_ids"], batch["labels"], batch.get("position_ids") or
                                [list(range(len(r))) for r in batch["input_ids"]]):
        nxt = labels[1:] + [IGNORE]
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            # The last position's next token is the next record's first (untrained in both recipes); padding is
            # part of the row's last record (ours) or a run of position 0s (TRL), untrained either way.
            r_ids, r_lab = ids[a:b], nxt[a:b - 1] + [IGNORE]
            if any(x != IGNORE for x in r_lab):
                out.append((r_ids, r_lab))
    return out


def key(ids: list[int], labels: list[int]) -> tuple[int, ...]:
    first = next(i for i, x in enumerate(labels) if x != IGNORE)
    return tuple(ids[:first + 1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "qwen2-starter")
    args = p.parse_args(argv)
    from trainer_core.models.local import load_tokenizer

    tok = load_tokenizer(args.model)
    by_recipe = {}
    for folder in (args.a, args.b):
        st = steps(folder)
        name = folder.name
        print(f"== {name}: {len(st)} micro-batches")
        print("step | lr | rows x width | trained positions | num_items_in_batch | attention mask | packed-mask calls"
              " | loss")
        recs = {}
        for s in st:
            rs = records(s)
            n = sum(x != IGNORE for _, lab in rs for x in lab)
            width = len(s["input_ids"][0])
            print(f"{s['step']} | {s['lr']:.6g} | {len(s['input_ids'])} x {width} | {n} | {s['num_items_in_batch']} | "
                  f"{s['has_attention_mask']} | {s.get('packed_mask_calls')} | {s['loss']:.4f}")
            for ids, lab in rs:
                recs.setdefault(key(ids, lab), []).append((s["step"], ids, lab))
        by_recipe[name] = recs
        setup = folder / "setup.json"
        if setup.is_file():
            print(setup.read_text(encoding="utf-8"))
    (na, ra), (nb, rb) = by_recipe.items()
    both = ra.keys() & rb.keys()
    print(f"\nrecords: {na} {len(ra)}, {nb} {len(rb)}, in both {len(both)}")
    diffs: Counter = Counter()
    same = 0
    for k in both:
        _, ia, la = ra[k][0]
        _, ib, lb = rb[k][0]
        ta = {(i, x) for i, x in enumerate(la) if x != IGNORE}
        tb = {(i, x) for i, x in enumerate(lb) if x != IGNORE}
        if ta == tb and ia[:len(ib)] == ib[:len(ia)]:
            same += 1
            continue
        for i, x in sorted(ta - tb):
            diffs[(f"only {na}", tok.decode([ia[i]]), tok.decode([x]))] += 1
        for i, x in sorted(tb - ta):
            diffs[(f"only {nb}", tok.decode([ib[i]]), tok.decode([x]))] += 1
        if len(ia) != len(ib):
            diffs[("length differs", str(len(ia)), str(len(ib)))] += 1
    print(f"records trained on exactly the same targets: {same} of {len(both)}")
    for (who, at, target), n in diffs.most_common(20):
        print(f"  {who}: input {at!r} -> target {target!r}: {n} records")
    for name, recs in by_recipe.items():
        per_step = Counter(v[0][0] for v in recs.values())
        print(f"{name}: records per step {[per_step[s] for s in sorted(per_step)]}")
    sa = {k: v[0][0] for k, v in ra.items()}
    sb = {k: v[0][0] for k, v in rb.items()}
    together = sum(sa[k] == sb[k] for k in both)
    print(f"records trained at the same step in both: {together} of {len(both)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
