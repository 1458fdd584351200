"""The lint type: one finding about a config, an error that refuses a run or a warning that lets it go on."""

from __future__ import annotations

from dataclasses import dataclass

from trainer_core.common.errors import Text


@dataclass
class Lint:
    level: str
    """"error" (the run cannot work) or "warning" (it works, but not as intended)."""

    code: str
    """Stable short id, e.g. offload-param-stage."""

    message: Text
    """What is wrong and the fix; the dashboard shows it in the tab's language (`app.i18n.say`)."""

    def __str__(self) -> str:
        return f"{self.level}: {self.message} [{self.code}]"
