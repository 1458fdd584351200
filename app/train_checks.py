"""The Train page's preflight (model folder, data encoded with the real tokenizer, DeepSpeed lints) off the page's
thread, so the form draws at once and the plan fills in when the checks are done.

Preflight encodes the whole dataset with the model's tokenizer: on a fresh tab or a newly picked data file that took
seconds, during which the page was blank below its title (issue 18 item 6). The work runs through `data_jobs`, so
it is shared by every tab asking for the same config and files and kept once finished; a cached result is used at
once, exactly as a synchronous call would be.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import data_jobs, warmup
from app.i18n import t
from trainer_core import paths
from trainer_core.config.run_config import RunConfig
from trainer_core.data.dataset import modified_time
from trainer_core.errors import UserError

FIRST_WAIT_S = 0.3
"""How long a script run waits for the checks before it draws a placeholder instead of the plan."""
POLL_S = 0.5
"""How often the placeholder looks whether the checks are done."""


def _resolved(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else paths.PROJECT_ROOT / p


def _mtime(path: str) -> float:
    try:
        return _resolved(path).stat().st_mtime
    except OSError:
        return 0.0


def _key(cfg: RunConfig) -> tuple:
    """The config and the modification times of the files preflight reads: an edited file is checked again."""
    stamp = (modified_time(_resolved(cfg.data.path)), _mtime(str(Path(cfg.model.path) / "config.json")),
             _mtime(cfg.deepspeed.config_file) if cfg.deepspeed.config_file else 0.0)
    return ("train-preflight", cfg.to_yaml(), stamp)


def _submit(key: tuple) -> data_jobs.Job:
    def work(report):
        import yaml

        from trainer_core.config.run_config import config_from_dict
        from trainer_core.runs.registry import preflight

        warmup.wait()  # the tokenizer and DeepSpeed imports, once per dashboard process
        return preflight(config_from_dict(yaml.safe_load(key[1])))

    return data_jobs.submit(key, work)


def preflight(cfg: RunConfig):
    """(the `Preflight`, the job) once the checks are done, waiting `FIRST_WAIT_S` at most; (None, the job) while
    they run. A `UserError` is raised for the page to show at its field; anything else is raised after the job is
    dropped, so the next run tries again."""
    key = _key(cfg)
    job = _submit(key)
    if not job.finished.wait(FIRST_WAIT_S):
        return None, job
    if job.error is not None:
        if not isinstance(job.error, UserError):
            data_jobs.forget(key)
        raise job.error
    return job.result, job


def placeholder(job: data_jobs.Job) -> None:
    """Where the plan goes while the checks run; redraws the whole page once they are done (a fragment)."""
    if job.done:
        st.rerun(scope="app")
    st.info(t("train.checking"), icon=":material/hourglass_top:")
