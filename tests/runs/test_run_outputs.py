# .venv/bin/python -m pytest tests/runs/test_run_outputs.py -q
"""What a run produced, asked of its one owner (trainer_core/runs/outputs.py): the model folders a run has, a
checkpoint by step, where an export goes, and the persona a model folder speaks with and where it came from.

Run directories are written by hand as the trainer leaves them (config.yaml, checkpoint folders with or without their
COMPLETE marker, final/ and exports/ with persona.json); nothing is mocked.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from trainer_core.common import paths
from trainer_core.common.errors import UserError
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.config.run_config import load_config, save_config
from trainer_core.runs import outputs
from trainer_core.runs import protocol


def _run(root: Path, name: str = "r", *, persona: str = "你是华妃") -> Path:
    run = root / name
    (run / protocol.CHECKPOINTS).mkdir(parents=True)
    cfg = load_config(paths.CONFIGS_DIR / "quickstart.yaml", [f"name={name}", f"data.persona={persona}"])
    save_config(cfg, run / protocol.CONFIG)
    return run


def _folder(path: Path, *, complete: bool = True, persona: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if persona is not None:
        (path / protocol.PERSONA).write_text(json.dumps({"persona": persona}), encoding="utf-8")
    if complete:
        (path / protocol.COMPLETE_MARKER).write_text("{}")
    return path


def _ckpt(run: Path, step: int, complete: bool = True) -> Path:
    return _folder(protocol.checkpoint_dir(run, step), complete=complete)


def _export(run: Path, step: int, complete: bool = True, persona: str | None = "导出的人设") -> Path:
    return _folder(run / protocol.EXPORTS / f"checkpoint-{step}", complete=complete, persona=persona)


@pytest.fixture
def full_run(tmp_path):
    """Complete checkpoints 4, 8 and 12 (plus a partial 16), exports of 4 and 12 (plus a partial one of 8), a
    complete final/ and the temporary folder a killed final save leaves."""
    run = _run(tmp_path)
    for step in (12, 4, 8):
        _ckpt(run, step)
    _ckpt(run, 16, complete=False)
    _export(run, 12)
    _export(run, 4)
    _export(run, 8, complete=False)
    _folder(run / protocol.FINAL, persona="你是华妃")
    _folder(run / protocol.FINAL_TMP, complete=False)
    return run


# ---------------------------------------------------------------------------------------------------- model folders


def test_the_folders_a_run_has_partial_ones_never_offered(full_run):
    run = full_run
    assert outputs.final_model(run) == run / protocol.FINAL
    assert [p.name for p in outputs.checkpoints(run)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert [p.name for p in outputs.exports(run)] == ["checkpoint-12", "checkpoint-4"]
    assert outputs.chat_models(run) == {
        "final": run / protocol.FINAL, "export-12": run / protocol.EXPORTS / "checkpoint-12",
        "export-4": run / protocol.EXPORTS / "checkpoint-4", "checkpoint-12": protocol.checkpoint_dir(run, 12),
        "checkpoint-8": protocol.checkpoint_dir(run, 8), "checkpoint-4": protocol.checkpoint_dir(run, 4)}
    assert outputs.downloadable(run) == [run / protocol.FINAL, run / protocol.EXPORTS / "checkpoint-12",
                                         run / protocol.EXPORTS / "checkpoint-4"]
    assert [p.name for p in outputs.trained_models(run)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12",
                                                             "final"]


def test_a_final_folder_without_its_marker_is_not_a_model(tmp_path):
    run = _run(tmp_path)
    _folder(run / protocol.FINAL, complete=False, persona="x")
    _ckpt(run, 3)
    assert outputs.final_model(run) is None
    assert list(outputs.chat_models(run)) == ["checkpoint-3"]
    assert outputs.downloadable(run) == []
    assert outputs.model_dir(run) == protocol.checkpoint_dir(run, 3), "no final: the newest complete checkpoint"


def test_a_run_that_produced_nothing_yet(tmp_path):
    run = _run(tmp_path)
    _ckpt(run, 2, complete=False)
    assert outputs.chat_models(run) == {} and outputs.downloadable(run) == [] and outputs.trained_models(run) == []
    assert outputs.resume_checkpoint(run, None) is None, "resume starts from the beginning"
    with pytest.raises(UserError, match="^run r has no final model and no complete checkpoint yet$"):
        outputs.model_dir(run)
    with pytest.raises(UserError, match="^run r has no complete checkpoint to export$"):
        outputs.export_source(run, None)


# ---------------------------------------------------------------------------------------------------- checkpoint by step


def test_a_checkpoint_by_step(full_run):
    run = full_run
    assert outputs.checkpoint(run, 8) == protocol.checkpoint_dir(run, 8)
    assert outputs.model_dir(run, 8) == protocol.checkpoint_dir(run, 8)
    assert outputs.model_dir(run) == run / protocol.FINAL, "a run without a step: its final model"
    assert outputs.resume_checkpoint(run, None) == protocol.checkpoint_dir(run, 12)
    assert outputs.resume_checkpoint(run, 4) == protocol.checkpoint_dir(run, 4)
    assert outputs.export_source(run, None) == protocol.checkpoint_dir(run, 12)
    assert outputs.export_target(run, protocol.checkpoint_dir(run, 8)) == run / protocol.EXPORTS / "checkpoint-8"


@pytest.mark.parametrize("step", [16, 7])  # partial, absent
def test_a_missing_step_is_one_line_naming_the_complete_ones(full_run, step):
    """The same refusal whoever asks (chat, export, resume, evaluation)."""
    for ask in (outputs.checkpoint, outputs.model_dir, outputs.resume_checkpoint, outputs.export_source):
        with pytest.raises(UserError) as e:
            ask(full_run, step)
        assert e.value.code == "runs.no_such_checkpoint"
        assert str(e.value) == f"run r has no complete checkpoint {step}; complete checkpoints: 4, 8, 12"
        assert "\n" not in str(e.value)


def test_a_step_for_a_run_without_checkpoints_says_none(tmp_path):
    with pytest.raises(UserError, match="^run r has no complete checkpoint 3; complete checkpoints: none$"):
        outputs.checkpoint(_run(tmp_path), 3)


def test_a_step_for_a_plain_model_folder_is_refused(starter_model):
    assert outputs.model_dir(starter_model) == starter_model
    with pytest.raises(UserError, match="--checkpoint 5 applies to runs only"):
        outputs.model_dir(starter_model, 5)


# ---------------------------------------------------------------------------------------------------- persona


def test_the_persona_a_model_speaks_with_and_its_source(full_run, starter_model):
    run = full_run
    final = outputs.trained_persona(run / protocol.FINAL)
    assert final == outputs.Persona("你是华妃", outputs.PERSONA_FILE) and final.trained
    assert outputs.trained_persona(run / protocol.EXPORTS / "checkpoint-12") == outputs.Persona("导出的人设",
                                                                                          outputs.PERSONA_FILE)
    ckpt = outputs.trained_persona(protocol.checkpoint_dir(run, 8))  # checkpoints carry no persona.json
    assert ckpt == outputs.Persona("你是华妃", outputs.PERSONA_RUN_CONFIG) and ckpt.trained
    plain = outputs.trained_persona(starter_model)
    assert plain == outputs.Persona("", outputs.PERSONA_NONE) and not plain.trained
    given = outputs.chat_persona(protocol.checkpoint_dir(run, 8), "你是甄嬛")
    assert given == outputs.Persona("你是甄嬛", outputs.PERSONA_GIVEN) and not given.trained
    assert outputs.chat_persona(run / protocol.FINAL) == final


def test_an_export_without_persona_json_has_none(tmp_path):
    """Only checkpoints fall back to the run's config; an export always carries its own persona.json."""
    run = _run(tmp_path)
    export = _export(run, 4, persona=None)
    assert outputs.trained_persona(export) == outputs.Persona("", outputs.PERSONA_NONE)


def test_the_chat_page_starts_with_the_same_persona_as_the_cli(full_run, starter_model):
    from app import chat_view

    for folder in (full_run / protocol.FINAL, protocol.checkpoint_dir(full_run, 4), full_run / protocol.EXPORTS / "checkpoint-4",
                   starter_model):
        assert chat_view.persona_for(folder) == outputs.chat_persona(folder).text


# ---------------------------------------------------------------------------------------------------- who knows runs


def _imports(rel: str) -> set[str]:
    tree = ast.parse((PROJECT_ROOT / rel).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("rel", ["trainer_core/models/inference.py", "trainer_core/models/export.py",
                                 "trainer_core/models/archive.py"])
def test_models_know_nothing_of_runs(rel):
    """Models sit below runs: they write and read a folder they are given."""
    assert not [m for m in _imports(rel) if m.startswith("trainer_core.runs")]


def test_the_chat_page_calls_app_only_and_the_runs_page_exports_through_it():
    assert not [m for m in _imports("pages/chat.py") if m.startswith("trainer_core")]
    assert not [m for m in _imports("pages/runs.py") if m.startswith("trainer_core.models")]


def test_persona_evaluation_picks_models_through_the_owner(full_run):
    from trainer_core.evaluation.persona_eval import models_of

    assert models_of(full_run, "all") == [(p.name, p) for p in outputs.trained_models(full_run)]
    assert models_of(full_run, None) == [("final", full_run / protocol.FINAL)]
    assert models_of(full_run, "8") == [("checkpoint-8", protocol.checkpoint_dir(full_run, 8))]
