# .venv/bin/python -m pytest tests/data/test_packing.py -q
"""Packing trains each example as if it were alone: no attention and no loss across example boundaries.

The packed row has no attention mask and per-example position ids; transformers derives a block-diagonal causal
mask from them. If it did not, later examples would see earlier ones and their logits would change.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer_core.data.batching import IGNORE, Collator, pack_rows
from trainer_core.data.chat_format import encode_conversations
from trainer_core.config.run_config import DEFAULT_PERSONA
from trainer_core.data.dataset import load_dataset
from trainer_core.common.paths import SAMPLE_DATA


@pytest.fixture(scope="module")
def model(starter_model):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(starter_model, dtype=torch.float32).eval()
    # The starter's weights are small random numbers, so every token's logits look alike; scaling them up makes
    # attention sharp enough that a leak across examples would move the logits far beyond the tolerance.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    return m


@pytest.fixture(scope="module")
def examples(starter_tokenizer):
    convs = list(load_dataset(SAMPLE_DATA).conversations)[:12]
    return encode_conversations(starter_tokenizer, convs, persona=DEFAULT_PERSONA, max_length=256)


def alone(model, e) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]


def test_packed_rows_give_each_example_its_own_logits(model, examples):
    rows = pack_rows(examples, max_length=256, seed=0)
    assert any(len(r.position_ids) > max(r.position_ids) + 1 for r in rows), "nothing was packed together"
    batch = Collator(pad_token_id=151643, packed=True)([
        {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows[:2]])
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as the trainer passes it: with a cache transformers skips the packed-sequence mask.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    by_ids = {tuple(e.input_ids): e for e in examples}
    checked = 0
    for b, row in enumerate(rows[:2]):
        starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row)]
        for s, t in zip(starts, starts[1:]):
            e = by_ids[tuple(row.input_ids[s:t])]
            assert torch.allclose(packed[b, s:t], alone(model, e), atol=1e-4), f"example at {s}:{t} of row {b}"
            checked += 1
    assert checked >= 4


def test_leak_would_be_detected(model, examples):
    """The same row with one running position count (one long sequence) does change later examples' logits, so the
    test above can fail."""
    row = pack_rows(examples, max_length=256, seed=0)[0]
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([row.input_ids]), use_cache=False).logits[0]
    second = row.position_ids.index(0, 1)
    tail = alone(model, next(e for e in examples if e.input_ids == row.input_ids[second:second + len(e.input_ids)]))
    assert not torch.allclose(joined[second:second + len(tail)], tail, atol=1e-4)


def test_no_label_crosses_a_boundary(examples):
    for row in pack_rows(examples, max_length=256, seed=0):
        for i, p in enumerate(row.position_ids):
            if p == 0:
                assert row.labels[i] == IGNORE, "an example's first token would be trained from the previous one"


def _scan_ffd(lengths, capacity):
    """The first packer, kept here as the reference: scan every open bin in order."""
    bins, space = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(space):
            if lengths[i] <= free:
                bins[b].append(i)
                space[b] -= lengths[i]
                break
        else:
            bins.append([i])
            space.append(capacity - lengths[i])
    return bins


def test_tree_packing_gives_the_same_bins_as_the_scan():
    import random

    from trainer_core.data.batching import first_fit_decreasing

    rnd = random.Random(3)
    for capacity in (16, 64, 256):
        lengths = [rnd.randint(1, capacity) for _ in range(3000)] + [capacity, 1, 1]
        assert first_fit_decreasing(lengths, capacity) == _scan_ffd(lengths, capacity)
    assert first_fit_decreasing([], 8) == []


def test_record_lengths_are_computed_once_and_match_each_record(tmp_path, monkeypatch, starter_tokenizer):
    """The trainer's packing reads every record's length; a length array rebuilt on each read made packing a
    million records quadratic (bench/scale_bench.py: 460 CPU s before, 146 s with the lengths computed once)."""
    from trainer_core.common import paths
    from trainer_core.data.encoded_set import encode_file

    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    enc = encode_file(SAMPLE_DATA, starter_tokenizer, persona=DEFAULT_PERSONA, max_length=128)
    assert enc.lengths is enc.lengths
    assert enc.lengths.tolist() == [len(enc.example(i).input_ids) for i in range(len(enc))] and len(enc) > 10


def test_a_flattened_batch_keeps_examples_apart(model, examples):
    """The flattened batch that flash_attention_2 gets (one row, positions restarting at each example) keeps each
    example's logits. Here SDPA runs it with the mask transformers derives from the position ids, the same
    boundaries flash_attention_2's variable-length kernel takes from them on a GPU (not available here)."""
    rows = pack_rows(examples, max_length=256, seed=0)[:2]
    batch = Collator(pad_token_id=151643, packed=True, flatten=True)([
        {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows])
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    by_ids = {tuple(e.input_ids): e for e in examples}
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    for s, t in zip(starts, starts[1:]):
        assert torch.allclose(flat[s:t], alone(model, by_ids[tuple(batch["input_ids"][0, s:t].tolist())]), atol=1e-4)
    assert len(starts) > 3
