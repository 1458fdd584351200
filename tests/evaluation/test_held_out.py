"""The persona evaluation's held-out records: the split training uses, read from the dataset in one pass
(pytest tests/evaluation/test_held_out.py)."""

from trainer_core.config.run_config import RunConfig
from trainer_core.data import dataset
from trainer_core.data.split import held_out_split
from trainer_core.evaluation import persona_eval as pe


def test_held_out_reads_the_dataset_once_and_picks_the_training_split(monkeypatch):
    cfg = RunConfig()
    cfg.data.eval_ratio = 0.1
    every = dataset.load_dataset(cfg.data.path).conversations
    reads = []
    scan = dataset.scan_dataset

    def counting_scan(*args, **kwargs):
        reads.append(args[0])
        return scan(*args, **kwargs)

    monkeypatch.setattr(dataset, "scan_dataset", counting_scan)
    data = pe.held_out(cfg, max_records=5)
    assert len(reads) == 1
    eval_idx, train_idx = held_out_split(len(every), seed=cfg.train.seed, eval_ratio=0.1,
                                         max_eval=cfg.data.max_eval_records)
    assert data.conversations == [every[i] for i in eval_idx[:5]]
    assert data.references == [every[i][-1]["content"] for i in eval_idx[:5]]
    assert data.training_answers == [t["content"] for i in sorted(train_idx[:pe.MAX_TRAINING_ANSWERS])
                                     for t in every[i] if t["role"] == "assistant"]
