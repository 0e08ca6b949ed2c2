"""Text normalisation, corpus-level CER/WER on hand-checked examples, offline evaluate.load."""

import json
import os
import subprocess
import sys

import pytest

from hubert_gpt_training.metrics import _METRIC_DIR, error_rates, normalize_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("今日は晴れです。", "今日は晴れです"),
        ("「こんにちは」、世界！", "こんにちは世界"),
        ("『東京』・大阪", "東京大阪"),
        ("えーと…本当？", "えーと本当"),  # ー is a letter; … is punctuation
        ("時々【速報】〜", "時々速報"),
        ("ＡＢＣ　ｄｅｆ", "abc def"),  # full-width letters and ideographic space
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width kana
        ("  Hello,   World!! ", "hello world"),
        ("Don't stop (now) $5 a+b", "dont stop now 5 ab"),
        ("\t\n", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_rejects_non_strings():
    with pytest.raises(TypeError, match="NoneType"):
        normalize_text(None)


def test_japanese_cer_after_punctuation_removal():
    # 今日は晴れです (7 chars) vs 今日は雨です: 晴->雨 substituted, れ deleted = 2 edits.
    # No spaces, so each side is one "word": WER = 1 substitution / 1 word.
    result = error_rates(["今日は晴れです。"], ["今日は雨です"])
    assert result["cer"] == pytest.approx(2 / 7)
    assert result["wer"] == pytest.approx(1.0)
    assert result["num_utterances"] == 1
    assert result["num_empty_references"] == 0


def test_english_wer_and_cer():
    # "the cat sat on the mat": 6 words, 22 characters with spaces.
    # "the" -> "a": 1 word substitution; 3 character edits (1 substitution + 2 deletions).
    result = error_rates(["The cat sat on the mat."], ["the cat sat on a mat"])
    assert result["wer"] == pytest.approx(1 / 6)
    assert result["cer"] == pytest.approx(3 / 22)


def test_punctuation_and_width_differences_are_not_errors():
    result = error_rates(["「ＡＢＣ」です。"], ["abcです"])
    assert result["cer"] == 0.0
    assert result["wer"] == 0.0


def test_rates_are_corpus_level_not_mean_of_utterances():
    # 0 + 2 edits over 4 + 2 reference chars = 1/3 (the mean of per-utterance CERs would be 1/2).
    result = error_rates(["abcd", "ab"], ["abcd", "xy"])
    assert result["cer"] == pytest.approx(1 / 3)
    # words: 0 + 1 substitution over 1 + 1 words.
    assert result["wer"] == pytest.approx(1 / 2)
    assert result["num_utterances"] == 2


def test_empty_reference_counts_insertions_and_does_not_crash():
    # "。" normalises to "": its hypothesis "あ" is 1 insertion, reference units come from 今日は only.
    result = error_rates(["。", "今日は"], ["あ", "今日は"])
    assert result["cer"] == pytest.approx(1 / 3)
    assert result["wer"] == pytest.approx(1 / 1)
    assert result["num_utterances"] == 2
    assert result["num_empty_references"] == 1
    # An empty reference with an empty hypothesis costs nothing.
    assert error_rates(["、", "abc"], ["", "abc"])["cer"] == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="all references are empty"):
        error_rates(["。", "！"], ["a", ""])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        error_rates([], [])


def test_evaluate_load_works_offline(tmp_path):
    # A fresh process with the Hub switched off and an empty HF cache: the local metric must load
    # both from its folder and from its file, and error_rates must work.
    script = f"""
import json
import evaluate
from hubert_gpt_training.metrics import error_rates
by_dir = evaluate.load({_METRIC_DIR!r})
by_file = evaluate.load({os.path.join(_METRIC_DIR, "error_rate.py")!r})
print(json.dumps([
    by_dir.compute(references=["abc"], predictions=["abd"]),
    by_file.compute(references=["abc"], predictions=["abd"]),
    error_rates(["今日は晴れです。"], ["今日は雨です"]),
]))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    by_dir, by_file, japanese = json.loads(completed.stdout.strip().splitlines()[-1])
    assert by_dir["cer"] == pytest.approx(1 / 3) and by_file["cer"] == pytest.approx(1 / 3)
    assert japanese["cer"] == pytest.approx(2 / 7)
