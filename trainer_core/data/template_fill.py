"""Chat templates rendered by filling a cached skeleton instead of running Jinja per conversation, where that is
provably the same text.

Encoding a million records renders the template twice a record (the conversation, and the prompt before each
answer): in Jinja that was most of the time spent per record. Most templates (ChatML, Qwen2/2.5) print a message's
content as it is and otherwise look only at the roles and whether a content is empty. For such a template the text
of a conversation is a fixed sequence of literal pieces and contents, decided by its shape: each message's role and
whether its content is empty, and `add_generation_prompt`. That skeleton is rendered once per shape by the real
template with placeholder contents, then filled with each conversation's contents.

`fill_renderer(template)` decides whether a template is such a one by reading its syntax tree: message contents may
only be printed (alone or concatenated with `+`/`~`) or tested for truth, and messages may only be read field by
field, indexed, sliced, iterated or counted. Anything else (a filter such as `trim`, a method such as `split`, a
test such as `is string`, a message passed to a macro, output captured by `{% set %}` or a filter block) leaves the
template to Jinja. Each skeleton is also checked on a second set of placeholders before it is used. Time-dependent
templates (`strftime_now`) get the date of the skeleton's rendering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_SKELETONS_MAX = 4096  # shapes kept per template; a dataset of varied multi-turn records has a few dozen
_MARK = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class Skeleton:
    """A rendered shape: text = pieces[0] + contents[slots[0]] + pieces[1] + ... + pieces[-1]."""

    pieces: tuple[str, ...]
    slots: tuple[int, ...]

    def fill(self, contents: list[str]) -> str:
        out = [self.pieces[0]]
        for slot, piece in zip(self.slots, self.pieces[1:]):
            out += (contents[slot], piece)
        return "".join(out)


class FillRenderer:
    """Renders conversations of a content-independent template from skeletons, one per shape.

    `render_jinja(conversations, add_generation_prompt)` is the template's real renderer (the tokenizer's
    apply_chat_template); it renders the skeletons and every conversation the skeleton cannot take."""

    def __init__(self, render_jinja: Callable[[list[list[dict]], bool], list[str]]):
        self.render_jinja = render_jinja
        self.skeletons: dict[tuple, Skeleton | None] = {}

    def render(self, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list[str]:
        out: list[str | None] = []
        left: list[int] = []
        for k, messages in enumerate(conversations):
            text = self._fill(messages, add_generation_prompt)
            if text is None:
                left.append(k)
            out.append(text)
        if left:
            for k, text in zip(left, self.render_jinja([conversations[k] for k in left], add_generation_prompt)):
                out[k] = text
        return out  # type: ignore[return-value]

    def _fill(self, messages: list[dict], add_generation_prompt: bool) -> str | None:
        # The shape, flat: (add_generation_prompt, role 0, content 0 non-empty, role 1, ...). Messages with other
        # fields or non-str values go to Jinja, which may treat them differently.
        shape, contents = [add_generation_prompt], []
        for m in messages:
            if type(m) is not dict or len(m) != 2:
                return None
            role, content = m.get("role"), m.get("content")
            if type(role) is not str or type(content) is not str:
                return None
            shape += (role, content != "")
            contents.append(content)
        key = tuple(shape)
        skeleton = self.skeletons.get(key, False)
        if skeleton is False:
            skeleton = self._build(key)
            if len(self.skeletons) < _SKELETONS_MAX:
                self.skeletons[key] = skeleton
        return None if skeleton is None else skeleton.fill(contents)

    def _build(self, shape: tuple) -> Skeleton | None:
        """The shape's skeleton, or None where the template raises on it or its text is not contents between fixed
        pieces."""
        agp, roles = shape[0], list(zip(shape[1::2], shape[2::2]))

        def probe(mark: Callable[[int], str]) -> str | None:
            messages = [{"role": role, "content": mark(i) if nonempty else ""} for i, (role, nonempty) in
                        enumerate(roles)]
            try:
                return self.render_jinja([messages], agp)[0]
            except Exception:  # the real render raises the same for the conversation itself, with its own words
                return None

        text = probe(lambda i: f"\ue000{i}\ue001")
        if text is None:
            return None
        pieces, slots, pos = [], [], 0
        for m in _MARK.finditer(text):
            pieces.append(text[pos:m.start()])
            slots.append(int(m.group(1)))
            pos = m.end()
        pieces.append(text[pos:])
        # A content may be printed once, several times or not at all (a template that skips the system turn).
        nonempty = {i for i, (_, has) in enumerate(roles) if has}
        if not set(slots) <= nonempty or any("\ue000" in p or "\ue001" in p for p in pieces):
            return None
        skeleton = Skeleton(tuple(pieces), tuple(slots))
        # A second set of placeholders, of other lengths and characters, must give the same skeleton.
        other = [f"\ue002{i}-x{'y' * i}\ue003" for i in range(len(roles))]
        if probe(lambda i: other[i]) != skeleton.fill(other):
            return None
        return skeleton


def content_independent(source: str) -> bool:
    """Whether the template's output depends on message contents only by printing them as they are or by their
    being empty (see the module docstring). False for anything not proven so, or that Jinja cannot parse."""
    import jinja2
    from jinja2 import nodes

    try:
        tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except jinja2.TemplateError:
        return False
    # Names holding messages: `messages` and every loop variable over messages (to a fixed point, for nesting).
    names = {"messages"}
    while True:
        more = {f.target.name for f in tree.find_all(nodes.For)
                if isinstance(f.target, nodes.Name) and _message_valued(f.iter, names)}
        if more <= names:
            break
        names |= more
    for assign in tree.find_all((nodes.Assign, nodes.AssignBlock)):
        if any(isinstance(t, nodes.Name) and t.name in names for t in assign.target.find_all(nodes.Name)) or \
                (isinstance(assign.target, nodes.Name) and assign.target.name in names):
            return False  # a rebound `messages` or loop variable
    return _uses_ok(tree, (), names)


def _message_valued(node, names: set[str]) -> bool:
    """A message or a list of them: a message name, or an item/slice of one (not a field: a string key)."""
    from jinja2 import nodes

    if isinstance(node, nodes.Name):
        return node.ctx == "load" and node.name in names
    if isinstance(node, nodes.Getitem):
        return not _is_field_key(node.arg) and _message_valued(node.node, names)
    return False


def _is_field_key(arg) -> bool:
    from jinja2 import nodes

    return isinstance(arg, nodes.Const) and isinstance(arg.value, str)


def _field(node) -> str | None:
    """The field a Getattr/Getitem reads (`m.content`, `m['content']`), else None."""
    from jinja2 import nodes

    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and _is_field_key(node.arg):
        return node.arg.value
    return None


def _uses_ok(node, ancestors: tuple, names: set[str]) -> bool:
    """Walk the tree; every use of a message value and of a content must be one the module docstring allows."""
    chain = (*ancestors, node)
    if _message_valued(node, names) and not _message_use_ok(node, ancestors):
        return False
    if _field(node) == "content" and _message_valued(node.node, names) and not _content_use_ok(chain):
        return False
    return all(_uses_ok(child, chain, names) for child in node.iter_child_nodes())


def _message_use_ok(node, ancestors: tuple) -> bool:
    from jinja2 import nodes

    parent = ancestors[-1] if ancestors else None
    if isinstance(parent, (nodes.Getattr, nodes.Getitem)) and parent.node is node:
        return True  # a field read (checked on its own), an item or a slice (itself a message value, checked)
    if isinstance(parent, nodes.For) and parent.iter is node:
        return True
    if isinstance(parent, nodes.Filter) and parent.node is node and parent.name == "length" and not parent.args:
        return True
    return False


def _content_use_ok(chain: tuple) -> bool:
    """A content read (chain[-1]) that is printed verbatim, possibly concatenated, or only tested for truth."""
    from jinja2 import nodes

    i = len(chain) - 1
    # Printed: through string concatenation into an {{ }} that writes to the template's own output.
    j = i
    while j > 0 and isinstance(chain[j - 1], (nodes.Add, nodes.Concat)):
        j -= 1
    if j > 0 and isinstance(chain[j - 1], nodes.Output) and chain[j] in chain[j - 1].nodes:
        captured = (nodes.FilterBlock, nodes.AssignBlock, nodes.Macro, nodes.CallBlock)
        return not any(isinstance(a, captured) for a in chain[:j - 1])
    # Tested for truth: through not/and/or into the test of an if or a conditional expression.
    j = i
    while j > 0 and isinstance(chain[j - 1], (nodes.Not, nodes.And, nodes.Or)):
        j -= 1
    if j > 0 and isinstance(chain[j - 1], (nodes.If, nodes.CondExpr)) and chain[j - 1].test is chain[j]:
        return True
    return False
