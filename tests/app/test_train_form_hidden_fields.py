"""Train-page fields drawn only for some choices (the adapters' under lora/qlora, the swap folder under nvme offload,
the other nodes' under a multi-node launcher, the typed model path under "other"): a value typed there survives
the choice going away and coming back, and the planned config gets it only while it applies.

Run: .venv/bin/python -m pytest tests/app/test_train_form_hidden_fields.py -q
"""

from __future__ import annotations

import yaml

from pages_helpers import goto, texts


def planned(app) -> dict:
    """The config the page planned, from its config.yaml section (opened as the expander's click does)."""
    app.session_state["train.yaml_open"] = True
    app.run()
    assert not [e for e in texts(app, "error")], texts(app, "error")
    (shown,) = [c.value for c in app.code if c.value.startswith("name:")]
    return yaml.safe_load(shown)


def choose(app, field: str, option) -> None:
    app.selectbox(key=f"p.f.{field}").set_value(option).run()
    assert not app.exception, [e.value for e in app.exception]


def test_adapter_fields_keep_their_values_while_full_fine_tuning_hides_them(app):
    goto(app, "pages/train.py")
    choose(app, "train.method", "lora")
    app.number_input(key="p.f.lora.rank").set_value(8)
    app.number_input(key="p.f.lora.dropout").set_value(0.2)
    app.text_input(key="p.f.lora.target_modules").set_value("q_proj, v_proj")
    app.checkbox(key="p.f.lora.use_dora").check().run()
    lora = planned(app)["lora"]
    assert (lora["rank"], lora["dropout"], lora["target_modules"], lora["use_dora"]) == (8, 0.2, ["q_proj", "v_proj"], True)
    choose(app, "train.method", "full")
    assert app.get("number_input") and not [w for w in app.number_input if w.key == "p.f.lora.rank"], "hidden"
    assert planned(app)["lora"]["rank"] == 16, "a full fine-tune's config carries no adapter the page hides"
    choose(app, "train.method", "lora")
    assert app.number_input(key="p.f.lora.rank").value == 8
    assert app.number_input(key="p.f.lora.dropout").value == 0.2
    assert app.text_input(key="p.f.lora.target_modules").value == "q_proj, v_proj"
    assert app.checkbox(key="p.f.lora.use_dora").value is True
    assert planned(app)["lora"]["rank"] == 8


def test_an_invalid_adapter_value_does_not_block_a_full_fine_tune_that_hides_it(app, runs_root):
    goto(app, "pages/train.py")
    choose(app, "train.method", "lora")
    app.number_input(key="p.f.lora.dropout").set_value(1.5).run()
    assert any(e.startswith("lora.dropout") for e in texts(app, "error")), texts(app, "error")
    choose(app, "train.method", "full")
    assert planned(app)["train"]["method"] == "full"
    assert app.button(key="train.launch").disabled is False
    choose(app, "train.method", "lora")
    assert app.number_input(key="p.f.lora.dropout").value == 1.5, "kept, and refused again where it applies"
    assert any(e.startswith("lora.dropout") for e in texts(app, "error")), texts(app, "error")
    assert list(runs_root.iterdir()) == []


def test_the_nvme_folder_is_kept_while_offload_goes_to_cpu_and_not_planned_meanwhile(app, tmp_path):
    goto(app, "pages/train.py")
    choose(app, "deepspeed.offload_optimizer", "nvme")
    app.text_input(key="p.f.deepspeed.nvme_path").set_value("swap-here").run()  # relative: refused while used
    assert any(e.startswith("deepspeed.nvme_path") for e in texts(app, "error")), texts(app, "error")
    app.text_input(key="p.f.deepspeed.nvme_path").set_value(str(tmp_path)).run()
    choose(app, "deepspeed.offload_optimizer", "cpu")
    assert not [w for w in app.text_input if w.key == "p.f.deepspeed.nvme_path"], "hidden"
    assert planned(app)["deepspeed"]["nvme_path"] == ""
    choose(app, "deepspeed.offload_optimizer", "nvme")
    assert app.text_input(key="p.f.deepspeed.nvme_path").value == str(tmp_path)


def test_the_other_nodes_fields_are_kept_while_local_and_do_not_block_a_local_launch(app, runs_root):
    """A hidden num_nodes of 2 used to refuse every local launch, with its error under a field not on the page."""
    goto(app, "pages/train.py")
    choose(app, "placement.launcher", "no_ssh")
    app.text_area(key="p.f.placement.hostfile").set_value("gpu1 slots=1\ngpu2 slots=1")
    app.number_input(key="p.f.placement.num_nodes").set_value(2)
    app.text_input(key="p.f.placement.master_addr").set_value("10.0.0.7").run()
    choose(app, "placement.launcher", "local")
    assert not [w for w in app.number_input if w.key == "p.f.placement.num_nodes"], "hidden"
    placement = planned(app)["placement"]
    assert (placement["num_nodes"], placement["hostfile"], placement["master_addr"]) == (1, "", "127.0.0.1")
    assert app.button(key="train.launch").disabled is False
    choose(app, "placement.launcher", "no_ssh")
    assert app.text_area(key="p.f.placement.hostfile").value == "gpu1 slots=1\ngpu2 slots=1"
    assert app.number_input(key="p.f.placement.num_nodes").value == 2
    assert app.text_input(key="p.f.placement.master_addr").value == "10.0.0.7"
    assert list(runs_root.iterdir()) == []


def test_a_typed_model_folder_is_kept_while_a_listed_model_is_picked(app, starter_model):
    from app.train_form import MODEL_CHOICE, OTHER_MODEL

    goto(app, "pages/train.py")
    choose(app, "model.choice", OTHER_MODEL)
    app.text_input(key="p.f.model.path").set_value("/data/models/mine").run()
    app.selectbox(key=MODEL_CHOICE).set_value(str(starter_model.resolve())).run()
    assert planned(app)["model"]["path"] == str(starter_model.resolve())
    choose(app, "model.choice", OTHER_MODEL)
    assert app.text_input(key="p.f.model.path").value == "/data/models/mine"
