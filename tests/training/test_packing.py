# .venv/bin/python -m pytest tests/training/test_packing.py -q
"""Packing as training does it (training.train.build_rows: encoded records laid end to end in ArrayRows rows) trains
each example as if it were alone: no example split across rows, no attention and no loss across example boundaries,
no row longer than data.max_length, and the same rows for the same seed.

The packed row has no attention mask and per-example position ids; transformers derives a block-diagonal causal
mask from them. If it did not, later examples would see earlier ones and their logits would change.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer_core.common import paths
from trainer_core.common.paths import SAMPLE_DATA
from trainer_core.config.run_config import DEFAULT_PERSONA, load_config
from trainer_core.data.batching import Collator
from trainer_core.data.chat_format import IGNORE_INDEX
from trainer_core.data.chat_format import encode_conversations
from trainer_core.data.dataset import load_dataset
from trainer_core.training.train import build_rows


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
def twelve(tmp_path_factory):
    """The first 12 records of the sample: short enough to run through the model, enough to pack together."""
    path = tmp_path_factory.mktemp("data") / "twelve.jsonl"
    path.write_text("".join(SAMPLE_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rows_of(starter_tokenizer, tmp_path_factory):
    """build_rows for a data file and config overrides, with the encoding cache in a folder of this module's."""
    cache = tmp_path_factory.mktemp("cache")

    def build(data, *sets: str, seed: int = 0):
        cfg = load_config(None, [f"data.path={data}", f"train.seed={seed}", "data.eval_ratio=0", *sets])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(paths, "CACHE_DIR", cache)
            return build_rows(cfg, starter_tokenizer, log=lambda _line: None)

    return build


def segments(row: dict) -> list[tuple[int, int]]:
    """(start, end) of each example in a row: its position ids restart at 0 where one begins."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return list(zip(starts, starts[1:]))


def alone(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def test_packed_rows_give_each_example_its_own_logits(model, rows_of, twelve):
    train, _ = rows_of(twelve, "data.max_length=256")
    rows = [train[k] for k in range(2)]
    assert all(len(segments(r)) > 1 for r in rows), "nothing was packed together"
    batch = Collator(pad_token_id=151643, packed=True)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as the trainer passes it: with a cache transformers skips the packed-sequence mask.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    checked = 0
    for b, row in enumerate(rows):
        for s, t in segments(row):
            assert torch.allclose(packed[b, s:t], alone(model, row["input_ids"][s:t]), atol=1e-4), \
                f"example at {s}:{t} of row {b}"
            checked += 1
    assert checked >= 4


def test_leak_would_be_detected(model, rows_of, twelve):
    """The same row with one running position count (one long sequence) does change later examples' logits, so the
    test above can fail."""
    train, _ = rows_of(twelve, "data.max_length=256")
    row = train[0]
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
    s, t = segments(row)[1]
    assert not torch.allclose(joined[s:t], alone(model, row["input_ids"][s:t]), atol=1e-4)


@pytest.mark.parametrize("max_length", [48, 128, 512])
def test_no_example_is_split_and_no_row_is_longer_than_max_length(rows_of, max_length):
    """Every trained record lies whole in exactly one row, in the order of the row's members; the held-out records
    are one per row and never trained; a row holds at most data.max_length tokens."""
    train, held_out = rows_of(SAMPLE_DATA, f"data.max_length={max_length}", "data.eval_ratio=0.1")
    enc = train.encoded
    seen = []
    for k in range(len(train)):
        row = train[k]
        assert len(row["input_ids"]) <= max_length
        spans = segments(row)
        assert len(spans) == len(train.members[k])
        for (s, t), i in zip(spans, train.members[k]):
            whole = enc.example(i)
            assert row["input_ids"][s:t] == whole.input_ids and row["labels"][s:t] == whole.labels
        seen += train.members[k]
    lost = {i for i in range(len(enc)) if enc.n_labels[i] == 0}
    held = [m for ms in held_out.members for m in ms]
    assert all(len(ms) == 1 for ms in held_out.members)
    assert len(seen) == len(set(seen)) and not set(seen) & set(held)
    assert sorted(seen + held) == sorted(set(range(len(enc))) - lost)
    # At 48 tokens the sample's records are cut to fit alone (and some lose their answer); above, they pack.
    assert max_length == 48 or any(len(ms) > 1 for ms in train.members), "nothing was packed together"
    assert max_length > 48 or (lost and enc.truncated.any())


def test_labels_train_only_each_answer_and_never_cross_a_boundary(rows_of, starter_tokenizer):
    """Each example's labels in a packed row are its own, as chat_format masks them (prompt and persona -100), and
    an example's first token is never trained from the previous example's last."""
    train, _ = rows_of(SAMPLE_DATA, "data.max_length=256")
    assert train.encoded.n_errors == 0  # so record i is conversation i of the file
    conversations = list(load_dataset(SAMPLE_DATA).conversations)
    for k in range(len(train)):
        row = train[k]
        for (s, t), i in zip(segments(row), train.members[k]):
            assert row["labels"][s] == IGNORE_INDEX, "an example's first token would be trained from the previous one"
            own = encode_conversations(starter_tokenizer, [conversations[i]], persona=DEFAULT_PERSONA,
                                       max_length=256)[0]
            assert row["labels"][s:t] == own.labels
            trained = [j for j in range(s, t) if row["labels"][j] != IGNORE_INDEX]
            assert trained and len(trained) < t - s  # the answer is trained, the prompt is not
            assert all(row["labels"][j] == row["input_ids"][j] for j in trained)


def test_the_same_seed_packs_the_same_rows_and_another_seed_shuffles_them(rows_of):
    first, _ = rows_of(SAMPLE_DATA, "data.max_length=256", seed=0)
    again, _ = rows_of(SAMPLE_DATA, "data.max_length=256", seed=0)
    other, _ = rows_of(SAMPLE_DATA, "data.max_length=256", seed=1)
    assert first.members == again.members
    assert [first[k] for k in range(len(first))] == [again[k] for k in range(len(again))]
    assert other.members != first.members
    assert sorted(i for ms in other.members for i in ms) == sorted(i for ms in first.members for i in ms)


def test_unpacked_rows_are_one_example_each(rows_of):
    train, _ = rows_of(SAMPLE_DATA, "data.max_length=256", "data.packing=false")
    assert all(len(ms) == 1 for ms in train.members) and len(train) == len(train.encoded)
    row = train[0]
    assert row["position_ids"] == list(range(len(row["input_ids"])))


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
    from trainer_core.data.encoded_set import encode_file

    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    enc = encode_file(SAMPLE_DATA, starter_tokenizer, persona=DEFAULT_PERSONA, max_length=128)
    assert enc.lengths is enc.lengths
    assert enc.lengths.tolist() == [len(enc.example(i).input_ids) for i in range(len(enc))] and len(enc) > 10


def test_a_flattened_batch_keeps_examples_apart(model, rows_of, twelve):
    """The flattened batch that flash_attention_2 gets (one row, positions restarting at each example) keeps each
    example's logits. Here SDPA runs it with the mask transformers derives from the position ids, the same
    boundaries flash_attention_2's variable-length kernel takes from them on a GPU (not available here)."""
    train, _ = rows_of(twelve, "data.max_length=256")
    batch = Collator(pad_token_id=151643, packed=True, flatten=True)([train[0], train[1]])
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    ids = batch["input_ids"][0].tolist()
    spans = segments({"position_ids": batch["position_ids"][0].tolist()})
    for s, t in spans:
        assert torch.allclose(flat[s:t], alone(model, ids[s:t]), atol=1e-4)
    assert len(spans) > 3
