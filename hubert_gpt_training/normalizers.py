"""The text normalisers Japanese ASR results are published with, to score a model the way others score theirs.

Each maps a transcript to the string whose characters are compared (CER = edits / reference characters):
- raw: the text as it is.
- kotoba_whisper: what kotoba-whisper's evaluation (and the test sets' own leaderboard) uses: Whisper's
  BasicTextNormalizer (lowercase; drop `[...]`, `<...>` and `(...)`; NFKC; every Unicode mark, symbol and punctuation
  character becomes a space), then every space removed.
- reazonspeech: ReazonSpeech's own evaluator: delete 、。「」『』，,？！!?, full-width ASCII letters and digits ->
  half-width, each number (digits with an optional decimal part) -> its Japanese reading (num2words, lang="ja").
- hubert_gpt: this project's training metric (`hubert_gpt_training.metrics.normalize_text`: NFKC, lowercase,
  punctuation deleted, spaces collapsed).
"""

import re
import string

from hubert_gpt_training.metrics import normalize_text

_REAZONSPEECH_PUNCTUATION = str.maketrans("", "", "、。「」『』，,？！!?")
_FULL_WIDTH = str.maketrans(
    "".join(chr(ord(c) + 0xFEE0) for c in string.ascii_letters + string.digits), string.ascii_letters + string.digits
)
_NUMBER = re.compile(r"\d+\.?\d*")


def raw(text):
    return text


def kotoba_whisper(text):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.basic_normalize(text).replace(" ", "")


def reazonspeech(text):
    from num2words import num2words

    text = text.translate(_REAZONSPEECH_PUNCTUATION).translate(_FULL_WIDTH)
    return _NUMBER.sub(lambda number: num2words(number.group(0), lang="ja"), text)


NORMALIZERS = {"raw": raw, "kotoba_whisper": kotoba_whisper, "reazonspeech": reazonspeech, "hubert_gpt": normalize_text}
LABELS = {
    "raw": "no normalisation",
    "kotoba_whisper": "kotoba-whisper's normaliser",
    "reazonspeech": "ReazonSpeech's normaliser",
    "hubert_gpt": "hubert-gpt's normaliser",
}
