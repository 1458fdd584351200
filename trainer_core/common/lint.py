"""The lint type: one finding about a config, an error that refuses a run or a warning that lets it go on."""

from __future__ import annotations

from dataclasses import dataclass

from trainer_core.common.errors import Text, text


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


def lints_text(lints: list[Lint]) -> Text:
    """The lints' messages as one sentence, e.g. for an error that refuses a run; shown in the reader's language."""
    first, *rest = [x.message for x in lints]
    return first if not rest else text("lint.list", "{first}; {rest}", first=first, rest=lints_text(lints[1:]))
