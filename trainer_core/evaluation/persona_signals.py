"""Does a reply speak as the persona? Names, out-of-character claims and the persona's own vocabulary.

These are the judge-free signals of the persona evaluation: who the persona is (names read from the persona text,
editable), what breaking character sounds like (claims to be an AI, an assistant or a model, patterns per language,
editable), and which words are the persona's own (a lexicon mined from the training answers against the base
model's replies, shown and editable). Each is a plain function of texts, so the figures are repeatable.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

from trainer_core.evaluation.metrics import ngrams, phrases, units

# What introduces a name in a persona text. After a dash or colon the name usually stands alone ("扮演皇帝身边的女人
# --甄嬛"); after 你是/名叫 it starts the clause ("你是甄嬛，…").
_ZH_NAME = re.compile(r"(?:--|——|—|：|:|你是|你叫|名叫|名为|我是|扮演)\s*([\u4e00-\u9fff]{2,4})(?![\u4e00-\u9fff])")
_ZH_NAME_SOFT = re.compile(r"(?:你是|你叫|名叫|名为|我是)\s*([\u4e00-\u9fff]{2,4})")
# Words that make a CJK run a description rather than a name ("一个助手", "皇帝身边的女人").
_NOT_A_NAME = set("的一个位名是了在和与")
_EN_NAME = re.compile(r"\b(?:[Yy]ou are|[Yy]ou play|named|called|I am|I'm)\s+((?:[A-Z][\w'-]+)(?:\s+[A-Z][\w'-]+){0,2})")

# Out-of-character claims: the reply says it is a program rather than the persona.
AI_CLAIMS = {
    "zh": [r"人工智能", r"(?<![A-Za-z])AI(?![A-Za-z])", r"语言模型", r"大模型", r"模型", r"助手", r"机器人", r"程序",
           r"ChatGPT", r"OpenAI", r"通义", r"千问"],
    "en": [r"\bAI\b", r"artificial intelligence", r"language model", r"\bassistant\b", r"chat ?bot", r"\bmodel\b",
           r"\bbot\b", r"ChatGPT", r"OpenAI", r"\bprogram\b"],
}


def language(text: str) -> str:
    """'zh' when the text has any CJK character, else 'en' (what picks the default claim patterns and probes)."""
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def persona_names(persona: str) -> list[str]:
    """The names a persona text gives its character, in order of appearance, without repeats. Empty when none is
    found; the dashboard and `--names` let the user say them instead."""
    found: list[str] = []
    for pattern in (_ZH_NAME, _ZH_NAME_SOFT):
        for m in pattern.finditer(persona):
            name = m.group(1)
            if not (set(name) & _NOT_A_NAME) and name not in found:
                found.append(name)
    for m in _EN_NAME.finditer(persona):
        if m.group(1) not in found:
            found.append(m.group(1))
    return found


def names_persona(reply: str, names: Sequence[str]) -> bool:
    """`identity_in_persona` for one reply: it contains one of the persona's names (case-insensitive)."""
    low = reply.lower()
    return any(n and n.lower() in low for n in names)


def breaks_character(reply: str, patterns: Sequence[str]) -> bool:
    """`breaks_character` for one reply: it matches one of the out-of-character patterns (case-insensitive)."""
    return any(re.search(p, reply, flags=re.IGNORECASE) for p in patterns)


def mine_lexicon(training_answers: Iterable[str], base_replies: Iterable[str], *, top: int = 40,
                 min_count: int = 2, sizes: Sequence[int] = (2, 3, 4)) -> list[str]:
    """The persona's vocabulary: unit n-grams (within a phrase) that many training answers use and the base model's replies do not.

    Each n-gram is scored by the log ratio of the share of documents containing it, add-one smoothed:
    log((df_train + 1) / (N_train + 1)) - log((df_base + 1) / (N_base + 1)). Those in at least `min_count` training
    answers with a positive score are ranked by score (longer first on ties), an n-gram inside a better-ranked
    longer one is dropped, and the best `top` kept. CJK n-grams are joined without spaces, words with one space.
    """
    train_df, n_train = _document_frequency(training_answers, sizes)
    base_df, n_base = _document_frequency(base_replies, sizes)
    scored = []
    for gram, df in train_df.items():
        if df < min_count:
            continue
        score = math.log((df + 1) / (n_train + 1)) - math.log((base_df.get(gram, 0) + 1) / (n_base + 1))
        if score > 0:
            scored.append((score, len(gram), gram))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    kept: list[tuple[str, ...]] = []
    for _, _, gram in scored:
        if any(_contains(k, gram) for k in kept):
            continue
        kept.append(gram)
        if len(kept) == top:
            break
    return [_join(g) for g in kept]


def uses_lexicon(reply: str, lexicon: Sequence[str]) -> bool:
    """`lexicon_rate` for one reply: it contains at least one lexicon entry as a run of whole units."""
    wanted = [tuple(units(entry)) for entry in lexicon]
    for phrase in phrases(reply):
        for want in wanted:
            if want and any(tuple(phrase[i:i + len(want)]) == want for i in range(len(phrase) - len(want) + 1)):
                return True
    return False


def _document_frequency(texts: Iterable[str], sizes: Sequence[int]) -> tuple[Counter, int]:
    df: Counter = Counter()
    n = 0
    for t in texts:
        n += 1
        df.update({g for phrase in phrases(t) for size in sizes for g in ngrams(phrase, size)})
    return df, n


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    k = len(shorter)
    return k < len(longer) and any(longer[i:i + k] == shorter for i in range(len(longer) - k + 1))


def _join(gram: tuple[str, ...]) -> str:
    out = gram[0]
    for prev, cur in zip(gram, gram[1:]):
        out += cur if (len(prev) == 1 and len(cur) == 1 and not prev.isascii()) else " " + cur
    return out
