# .venv/bin/python -m pytest tests/app/test_adapter_view.py -q
"""A lora run on the dashboard: the Monitor and the Runs page name its base, its trainable parameters and its
adapter's size; the Runs page's Merge writes a full model that is then offered for download. The adapter is a real
peft adapter of the starter."""

import dataclasses

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import runs_view
from app.i18n import ZH
from pages_helpers import goto, make_run, texts
from trainer_core.config.run_config import load_config, save_config
from trainer_core.models import adapters
from trainer_core.runs import outputs, protocol


def lora_run(runs_root, starter_model):
    """A completed LoRA run as the trainer leaves it: config.yaml with train.method lora, the parameter counts rank
    0 writes to status.json, and final/ holding the starter's adapter and tokenizer."""
    run = make_run(runs_root, "lora-run", "completed")
    cfg = load_config(run / protocol.CONFIG, ["train.method=lora"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(starter_model)))
    save_config(cfg, run / protocol.CONFIG)
    torch.manual_seed(0)
    model = adapters.wrap_for_training(AutoModelForCausalLM.from_pretrained(starter_model), cfg)
    trainable, total = model.get_nb_trainable_parameters()
    protocol.update_status(run, trainable_params=trainable, total_params=total, final=True)
    final = run / protocol.FINAL
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(starter_model).save_pretrained(final)
    protocol.mark_complete(final, {})
    return run


def test_monitor_names_the_base_trainable_parameters_and_adapter_size(app, runs_root, starter_model):
    run = lora_run(runs_root, starter_model)
    size = (run / protocol.FINAL / "adapter_model.safetensors").stat().st_size
    goto(app, "pages/monitor.py")
    captions = texts(app, "caption")
    line = next(c for c in captions if "qwen2-starter" in c)
    assert ZH["adapter.trainable"].format(trainable="37,376", total="9,854,016", share="0.38") in line
    from trainer_core.config.memory import fmt_bytes
    assert ZH["adapter.size"].format(size=fmt_bytes(size)) in line
    assert runs_view.history_row(run)["model"] == "qwen2-starter + lora"


def test_a_full_run_shows_no_adapter_line(app, runs_root):
    make_run(runs_root, "full-run", "completed")
    goto(app, "pages/monitor.py")
    assert not any(ZH["adapter.trainable"].split("{")[0] in c for c in texts(app, "caption"))
    goto(app, "pages/runs.py")
    assert [b for b in app.button if b.key == "runs.relaunch"] and not [b for b in app.button if b.key == "runs.merge"]


def test_merge_on_the_runs_page_writes_a_full_model_offered_for_download(app, runs_root, starter_model):
    run = lora_run(runs_root, starter_model)
    goto(app, "pages/runs.py")
    app.button(key="runs.merge").click().run()
    assert not app.exception, [e.value for e in app.exception]
    merged = run / protocol.EXPORTS / "final-merged"
    assert ZH["adapter.merged"].format(path=str(merged)) in texts(app, "success")
    assert (merged / "model.safetensors").is_file() and merged in outputs.downloadable(run)
    AutoModelForCausalLM.from_pretrained(merged)  # loads without peft
