"""Persona metrics against hand-computed examples, Chinese and English (pytest tests/evaluation/test_persona_metrics.py)."""

import math
from collections import Counter

import pytest

from trainer_core.evaluation import metrics as m
from trainer_core.evaluation import persona_signals as ps


def test_units_split_cjk_by_character_and_other_text_by_word():
    assert m.units("我用Python写, OK?") == ["我", "用", "python", "写", "ok"]
    assert m.units("…！ ") == []


@pytest.mark.parametrize("reply, reference, expected", [
    ("我是甄嬛", "本宫甄嬛", 0.5),                               # LCS 甄嬛: P = R = 2/4
    ("甄嬛", "我是甄嬛", 2 / 3),                                 # P = 1, R = 1/2, F = 2·½/(3/2)
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat"
    ("", "我是甄嬛", 0.0),
    ("完全不同", "毫无关系", 0.0),
])
def test_rouge_l(reply, reference, expected):
    assert m.rouge_l(reply, reference) == pytest.approx(expected)


def test_bleu4_precisions_and_brevity_penalty():
    # 1- to 4-gram precisions 4/5, 3/4, 2/3, 1/2: geometric mean 0.2 ** 0.25, no brevity penalty (equal lengths).
    assert m.bleu4(["a b c d e"], ["a b c d f"]) == pytest.approx(0.2 ** 0.25)
    assert m.bleu4(["我是甄嬛啊"], ["我是甄嬛呀"]) == pytest.approx(0.2 ** 0.25)
    # Every n-gram matches, but 4 units against 6: penalty exp(1 - 6/4).
    assert m.bleu4(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(-0.5))
    assert m.bleu4(["a b c"], ["a b c"]) == 0.0  # no 4-gram at all: unsmoothed BLEU-4 is 0
    # Pooled over the corpus, not averaged per pair: the second pair adds 4 matching units of each order.
    assert m.bleu4(["a b c d e", "w x y z"], ["a b c d f", "w x y z"]) == pytest.approx(
        ((8 / 9) * (6 / 7) * (4 / 5) * (2 / 3)) ** 0.25)
    with pytest.raises(ValueError):
        m.bleu4(["a"], [])


def test_distinct_2_repetition_and_length_ratio():
    assert m.distinct_2(["好的好的", "你好"]) == pytest.approx(3 / 4)   # bigrams 好的 的好 好的 | 你好
    assert m.distinct_2([]) == 0.0
    assert m.repetition("好的好的好的", n=2) == pytest.approx(1 - 2 / 5)
    assert m.repetition("a b a b", n=2) == pytest.approx(1 / 3)
    assert m.repetition("我是甄嬛", n=4) == 0.0 and m.repetition("短", n=4) == 0.0
    assert m.length_ratio(["我是", "a b c"], ["甄嬛呀", "x"]) == pytest.approx(5 / 4)


def test_js_distance():
    assert m.js_distance(Counter(a=1), Counter(b=1)) == pytest.approx(1.0)
    assert m.js_distance(Counter(a=2, b=2), Counter(a=1, b=1)) == pytest.approx(0.0)
    # P = (½, ½), Q = (1, 0), M = (¾, ¼): JS = ½(½log2(⅔) + ½log2 2) + ½ log2(4/3)
    js = 0.5 * (0.5 * math.log2(2 / 3) + 0.5) + 0.5 * math.log2(4 / 3)
    assert m.js_distance(Counter(a=1, b=1), Counter(a=1)) == pytest.approx(math.sqrt(js))
    assert m.style_js(["本宫乏了"], ["本宫乏了"]) == pytest.approx(0.0)


def test_share_and_perplexity():
    assert m.share([True, False, True, True]) == 0.75 and m.share([]) == 0.0
    assert m.perplexity(math.log(7)) == pytest.approx(7)


@pytest.mark.parametrize("persona, names", [
    ("现在你要扮演皇帝身边的女人--甄嬛", ["甄嬛"]),
    ("你是甄嬛，大理寺少卿甄远道之女。", ["甄嬛"]),
    ("You are Sherlock Holmes, a consulting detective.", ["Sherlock Holmes"]),
    ("你是一个乐于助人的助手", []),
])
def test_persona_names(persona, names):
    assert ps.persona_names(persona) == names


def test_identity_and_character_breaks():
    assert ps.names_persona("臣妾甄嬛，给皇上请安。", ["甄嬛"])
    assert not ps.names_persona("我姓甄。", ["甄嬛"])
    assert ps.names_persona("I am sherlock holmes.", ["Sherlock Holmes"])
    zh, en = ps.AI_CLAIMS["zh"], ps.AI_CLAIMS["en"]
    assert ps.breaks_character("我是一个人工智能语言模型。", zh)
    assert ps.breaks_character("我是AI。", zh)
    assert not ps.breaks_character("本宫乃大理寺少卿之女。", zh)
    assert ps.breaks_character("As an AI assistant, I cannot...", en)
    assert not ps.breaks_character("Elementary, my dear Watson; I said it plainly.", en)  # "said" is not "AI"
    assert ps.language("你是谁") == "zh" and ps.language("who are you") == "en"


def test_lexicon_is_what_training_answers_share_and_the_base_lacks():
    train = ["本宫乏了", "本宫知道了", "臣妾遵旨"]
    # 本宫 is in 2 of 3 training answers and no base reply: log(3/4) - log(1/3) > 0. Everything else is in one
    # answer only (below min_count 2).
    assert ps.mine_lexicon(train, ["我是助手", "I am an assistant"]) == ["本宫"]
    # When the base model says 本宫 as often, it is not the persona's own word.
    assert ps.mine_lexicon(train, ["本宫好", "本宫在"]) == []
    # A longer shared n-gram wins over the shorter ones inside it.
    assert ps.mine_lexicon(["本宫乏了吧", "本宫乏了", "嗯"], ["你好"]) == ["本宫乏了"]
    assert ps.mine_lexicon(["my dear watson", "yes my dear watson"], ["hello"]) == ["my dear watson"]


def test_lexicon_use_counts_whole_units_only():
    assert ps.uses_lexicon("本宫累了", ["本宫"]) and not ps.uses_lexicon("宫本", ["本宫"])
    assert ps.uses_lexicon("Oh, my dear Watson!", ["dear watson"])
    assert not ps.uses_lexicon("dearwatson", ["dear watson"])
    assert not ps.uses_lexicon("回皇上，臣妾告退", ["上臣"])  # n-grams never span punctuation


def test_lexicon_ngrams_stay_inside_phrases():
    assert m.phrases("回皇上，臣妾甄嬛。Yes, my lord") == [["回", "皇", "上"], ["臣", "妾", "甄", "嬛"], ["yes"],
                                                          ["my", "lord"]]
    lexicon = ps.mine_lexicon(["回皇上，臣妾知道", "回皇上，臣妾告退"], ["你好"])
    assert "回皇上" in lexicon and "臣妾" in lexicon and not any("上臣" in w for w in lexicon)
