"""Persona metrics: plain arithmetic over reply texts, no model and no external service.

Every figure the persona evaluation reports that is not a model likelihood is computed here, so the formulas in
docs/persona_eval.md have exactly one implementation. Texts are split into *units*: each CJK character is one unit
and each run of other letters or digits is one (lower-cased) word, so Chinese is measured on characters and English
on words by the same rule, and mixed text ("我用Python写") works as a reader would count it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

# CJK ideographs (unified + extension A + compatibility), kana and hangul: scripts written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+", re.UNICODE)


def units(text: str) -> list[str]:
    """The text as metric units: CJK characters one by one, other words whole and lower-cased; punctuation and
    spaces dropped."""
    return [u.lower() for u in _UNIT.findall(text)]


def phrases(text: str) -> list[list[str]]:
    """The text's units, split where punctuation stands: n-grams taken per phrase never join the end of one clause
    to the start of the next ("回皇上，臣妾" has no 上臣)."""
    return [u for piece in re.split(r"[^\w\s]|_", text) if (u := units(piece))]


def ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one row of the dynamic programme at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F1 of one reply against one reference: LCS over units, P = LCS/|reply|, R = LCS/|reference|,
    F = 2PR/(P+R); 0 when either side has no units."""
    hyp, ref = units(reply), units(reference)
    if not hyp or not ref:
        return 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def bleu4(replies: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 over units (Papineni et al. 2002): the geometric mean of the clipped 1- to 4-gram precisions
    pooled over all pairs, times the brevity penalty exp(1 - R/H) when the replies are shorter in total (H < R).
    0 when any order has no match, as the unsmoothed definition says."""
    _pairs(replies, references)
    matched, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for reply, reference in zip(replies, references):
        hyp, ref = units(reply), units(reference)
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, 5):
            h, r = Counter(ngrams(hyp, n)), Counter(ngrams(ref, n))
            matched[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def distinct_2(replies: Iterable[str]) -> float:
    """Distinct-2 (Li et al. 2016): distinct unit bigrams over all bigrams, pooled over the replies; 0 with none."""
    grams = [g for reply in replies for g in ngrams(units(reply), 2)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(reply: str, n: int = 4) -> float:
    """Share of a reply's unit n-grams that repeat an earlier n-gram of the same reply: 1 - distinct/total.
    A degenerate loop ("好的好的好的…") tends to 1; a reply shorter than n units scores 0."""
    grams = ngrams(units(reply), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def length_ratio(replies: Sequence[str], references: Sequence[str]) -> float:
    """Mean reply length over mean reference length, in units; 0 when the references are empty."""
    _pairs(replies, references)
    ref = sum(len(units(r)) for r in references)
    return sum(len(units(r)) for r in replies) / ref if ref else 0.0


def share(flags: Iterable[bool]) -> float:
    """The fraction of true flags (0 for none): how `ends_by_itself`, `identity_in_persona`, `breaks_character`
    and `lexicon_rate` turn per-reply answers into one figure."""
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def bigram_distribution(texts: Iterable[str]) -> Counter:
    """Counts of unit bigrams over the texts (the style fingerprint `style_js` compares)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(ngrams(units(t), 2))
    return counts


def js_distance(p: Counter, q: Counter) -> float:
    """Jensen–Shannon distance between two count distributions: sqrt of the JS divergence in bits, so 0 for equal
    distributions and 1 for disjoint ones. 1 when either side is empty (nothing in common can be shown)."""
    sp, sq = sum(p.values()), sum(q.values())
    if not sp or not sq:
        return 1.0
    div = 0.0
    for key in p.keys() | q.keys():
        a, b = p.get(key, 0) / sp, q.get(key, 0) / sq
        m = (a + b) / 2
        if a:
            div += a / 2 * math.log2(a / m)
        if b:
            div += b / 2 * math.log2(b / m)
    return math.sqrt(max(div, 0.0))


def style_js(replies: Iterable[str], training_answers: Iterable[str]) -> float:
    """`style_js`: JS distance between the unit-bigram distributions of the replies and of the training answers."""
    return js_distance(bigram_distribution(replies), bigram_distribution(training_answers))


def perplexity(nll: float) -> float:
    """exp(mean negative log-likelihood per token), capped where exp overflows."""
    return math.exp(min(nll, 700.0))


def _pairs(replies: Sequence[str], references: Sequence[str]) -> None:
    if len(replies) != len(references):
        raise ValueError(f"{len(replies)} replies for {len(references)} references")
