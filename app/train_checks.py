"""The Train page's preflight (model folder, data encoded with the real tokenizer, DeepSpeed lints) off the page's
thread, so the form draws at once and the plan fills in when the checks are done.

Preflight encodes the whole dataset with the model's tokenizer: on a fresh tab or a newly picked data file that took
seconds, during which the page was blank below its title (issue 18 item 6). The page starts the checks before it
draws the form and waits for them only below it, so the form is on screen while they run; checks that outlast
`WAIT_S` leave a placeholder that fills in. The work runs through `data_jobs`: shared by every tab asking for the
same config and files, and kept once finished. The finished `Plan` is the one Launch runs (orchestrate.launch's
`checked`), planned again only when it no longer holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app import data_jobs, warmup
from app.i18n import t
from trainer_core.common import paths
from trainer_core.config.run_config import RunConfig
from trainer_core.data.dataset import modified_time
from trainer_core.common.errors import UserError

WAIT_S = 5.0
"""How long the page waits, below the drawn form, for checks still running before it shows a placeholder instead
of the plan (a large dataset takes minutes)."""
POLL_S = 0.5
"""How often the placeholder looks whether the checks are done."""


def _mtime(path: str) -> float:
    try:
        return paths.resolve(path).stat().st_mtime
    except OSError:
        return 0.0


def _key(cfg: RunConfig) -> tuple:
    """The config and the modification times of the files preflight reads: an edited file is checked again."""
    stamp = (modified_time(paths.resolve(cfg.data.path)), _mtime(str(Path(cfg.model.path) / "config.json")),
             _mtime(cfg.deepspeed.config_file) if cfg.deepspeed.config_file else 0.0)
    return ("train-preflight", cfg.to_yaml(), stamp)


@dataclass
class Checks:
    """The preflight of one config, running or done, shared by every tab asking for the same config and files."""

    key: tuple
    job: data_jobs.Job

    @property
    def done(self) -> bool:
        return self.job.done

    def result(self, wait_s: float):
        """The `Plan` once done (waiting `wait_s` at most), else None. A `UserError` is raised for the page to
        show at its field; anything else after the job is dropped, so the next run tries again."""
        if not self.job.finished.wait(wait_s):
            return None
        if self.job.error is not None:
            if not isinstance(self.job.error, UserError):
                data_jobs.forget(self.key)
            raise self.job.error
        return self.job.result


def start(cfg: RunConfig) -> Checks:
    """Begin the checks of this config in the background (or find them running or done)."""
    key = _key(cfg)

    def work(report):
        import yaml

        from trainer_core.config.run_config import config_from_dict
        from trainer_core.runs.orchestrate import plan

        warmup.wait()  # the tokenizer and DeepSpeed imports, once per dashboard process
        return plan(config_from_dict(yaml.safe_load(key[1])))

    return Checks(key, data_jobs.submit(key, work))


def result_or_rerun(checks: Checks):
    """Wait, below the drawn form, for checks still running when it was drawn: the `Plan`, or None if they
    outlast `WAIT_S`. A problem they find reruns the page, which then shows it under its field."""
    try:
        return checks.result(WAIT_S)
    except UserError:
        st.rerun()


def placeholder(checks: Checks) -> None:
    """Where the plan goes while the checks run; redraws the whole page once they are done (a fragment)."""
    if checks.done:
        st.rerun(scope="app")
    st.info(t("train.checking"), icon=":material/hourglass_top:")
