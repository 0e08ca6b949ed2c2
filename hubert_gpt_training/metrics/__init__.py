"""Text normalisation and corpus-level CER / WER for evaluating hubert-gpt.

`error_rates(references, hypotheses)` normalises both sides with `normalize_text` and scores
them with the local `evaluate` metric in `error_rate/` (works offline).

CER is the number to read for Japanese. Japanese is written without spaces between words, so
WER (computed on whitespace-separated tokens) treats a whole unspaced sentence as one "word":
on Japanese it is nearly a sentence error rate. WER is meaningful for spaced languages.
"""

import functools
import os
import re
import string
import unicodedata

_METRIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "error_rate")
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def _is_punctuation(char):
    # Unicode "P*" categories cover 、。「」『』・〜【】 etc. (and what NFKC made of ！？…（）);
    # string.punctuation adds the ASCII symbols that Unicode files under "S*" ($+<=>^`|~).
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def normalize_text(text: str) -> str:
    """Normalise a transcript; apply the same function to references and hypotheses.

    1. Unicode NFKC: full-width ASCII becomes ASCII (`Ａ！` -> `A!`), half-width kana becomes
       full-width (`ｶ` -> `カ`), `…` -> `...`, the ideographic space becomes a space.
    2. Lowercase (only Latin-script and other cased letters change; kana and kanji have no case).
    3. Delete punctuation: Japanese 、。「」『』・！？… and brackets, ASCII punctuation and symbols.
       Deleted, not replaced by a space, so that `今日は、晴れ` and `今日は晴れ` are equal for
       CER (spaces count as characters). Hence `state-of-the-art` -> `stateoftheart`.
       The prolonged sound mark ー and the iteration mark 々 are letters and are kept.
    4. Collapse runs of whitespace to one space and strip both ends.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str transcript, got {type(text).__name__}: {text!r}")
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(char for char in text if not _is_punctuation(char))
    return _WHITESPACE.sub(" ", text).strip()


@functools.lru_cache(maxsize=1)
def _error_rate_metric():
    import evaluate

    return evaluate.load(_METRIC_DIR)


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus-level CER and WER of `hypotheses` against `references`, after `normalize_text`.

    Returns `{"cer": float, "wer": float, "num_utterances": int, "num_empty_references": int,
    "num_emptied": int}`; `num_emptied` counts the empty hypotheses of non-empty references (speech lost whole).
    Rates are total edits / total reference units over the corpus, as fractions (0.084, not 8.4).
    A reference that is empty after normalisation (e.g. only punctuation) is kept and counted in
    `num_empty_references`: it adds no reference units, and any hypothesis text for it counts as
    insertions. If every reference is empty, ValueError is raised (the rates are undefined).
    """
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    references, hypotheses = [normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses]
    rates = _error_rate_metric().compute(references=references, predictions=hypotheses)
    return {**rates, "num_emptied": sum(1 for r, h in zip(references, hypotheses) if r and not h)}
