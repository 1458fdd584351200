"""What the user is told: sentences with a stable code, and the one exception type for mistakes a user can fix.

Every sentence a user reads about their input (a `UserError`, a data row's problem, a DeepSpeed lint, a planner
note) is a `Text`: a stable `code`, an English `template` with `{placeholders}` and the `params` that fill them.
The CLI prints the English; the dashboard looks the code up in its own tables (`app/messages_zh.py`) and fills the
same params, so a message is translated once, where it is shown, and never parsed back out of English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

CODE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class Text:
    """One user-facing sentence, kept as code + template + params until it is shown."""

    code: str
    """Stable id, "<area>.<what>", e.g. "config.not_a_number"; the dashboard's translation key."""

    template: str
    """The English sentence with `{name}` placeholders (str.format syntax, format specs allowed)."""

    params: Mapping[str, Any] = field(default_factory=dict)
    """Values for the placeholders. A value that is itself a `Text` is rendered in the same language."""

    def __post_init__(self) -> None:
        if not CODE.match(self.code):
            raise ValueError(f"message code {self.code!r} must look like area.name (lowercase, dots)")

    def render(self, lookup=None) -> str:
        """The sentence; `lookup(code)` may supply another language's template (None: use the English one)."""
        template = (lookup(self.code) if lookup else None) or self.template
        values = {k: (v.render(lookup) if isinstance(v, Text) else v) for k, v in self.params.items()}
        return template.format(**values)

    def __str__(self) -> str:
        return self.render()


def text(code: str, template: str, **params: Any) -> Text:
    """Shorthand used at the point where a message is written: text("data.empty", "{path} has no records", path=p)."""
    return Text(code, template, params)


class UserError(Exception):
    """A problem with the user's input; the message names the field or file and the fix.

    Raised as UserError(code, english_template, **params); `str()` is the English sentence, `.text` the `Text`.
    """

    def __init__(self, code: str | Text, template: str = "", /, **params: Any):
        self.text = code if isinstance(code, Text) else Text(code, template, params)
        super().__init__(str(self.text))

    @property
    def code(self) -> str:
        return self.text.code


class UserErrors(UserError):
    """Several problems found in one pass (every invalid field of a config), so the user fixes them all at once.

    `errors` holds each problem as its own `UserError`; the message joins them. Code that catches `UserError` still
    works; code that can show a list (the Train form, the CLI) reads `errors`."""

    def __init__(self, errors: list[UserError]):
        self.errors = list(errors)
        joined = self.errors[-1].text
        for e in reversed(self.errors[:-1]):
            joined = text("config.problems_joined", "{first}; {rest}", first=e.text, rest=joined)
        super().__init__(text("config.problems", "{count} problems: {problems}", count=len(self.errors),
                              problems=joined))


def each_error(e: UserError) -> list[UserError]:
    """The problems a `UserError` carries: its own list for `UserErrors`, else itself."""
    return list(e.errors) if isinstance(e, UserErrors) else [e]
