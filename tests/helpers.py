"""Small offline building blocks for tests and scripts: a tiny rinna-style tokenizer and synthetic audio.

Importable as `helpers` from the tests (pytest puts tests/ on sys.path) or as `tests.helpers` from the repo root.
"""

import io
import os
import random
import shutil

import numpy as np

# Special pieces laid out like rinna/japanese-gpt-neox-3.6b: [PAD]=0, <unk>=1, <s>=2, </s>=3, then [SEP], [CLS], [MASK].
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "[SEP]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}

_SUBJECTS = ["今日は", "明日は", "私は", "猫が", "犬が", "東京で", "駅前で", "先生は", "彼女は", "子供たちが", "この本は", "電車が"]
_OBJECTS = ["", "水を", "本を", "魚を", "音楽を", "日本語を", "写真を", "お茶を"]
_PREDICATES = ["晴れです", "雨が降ります", "学校へ行きます", "食べました", "読みます", "遅れています", "とても静かです",
               "聞いています", "話します", "撮りました", "飲みたい", "新しいです"]
_ENDINGS = ["。", "、", "", "ね。", "よ。"]
_ENGLISH = ["hello", "world", "the", "cat", "sat", "on", "a", "mat", "speech", "recognition", "model", "open", "door",
            "good", "morning", "test", "audio", "sample", "one", "two", "three", "GPT", "HuBERT"]


def training_sentences(n_japanese=300, n_english=100, seed=0):
    """Deterministic short Japanese (from a small set of characters) and ASCII sentences."""
    rng = random.Random(seed)
    ja = [rng.choice(_SUBJECTS) + rng.choice(_OBJECTS) + rng.choice(_PREDICATES) + rng.choice(_ENDINGS)
          for _ in range(n_japanese)]
    en = [" ".join(rng.choice(_ENGLISH) for _ in range(rng.randint(2, 6))) + rng.choice(["", ".", "!", " 123"])
          for _ in range(n_english)]
    return ja + en


def train_sentencepiece(sentences, model_file, vocab_size=160, model_type="unigram"):
    """Train a sentencepiece model with rinna's special-piece layout and write it to `model_file`."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,  # every character of the corpus gets a piece: only truly unseen ones become <unk>
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece="[PAD]", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        user_defined_symbols=["[SEP]", "[CLS]", "[MASK]"],
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    with open(model_file, "wb") as f:
        f.write(buffer.getvalue())


def sentencepiece_to_hf_tokenizer(model_file, out_dir):
    """Convert a sentencepiece model into a tokenizer folder that `AutoTokenizer.from_pretrained` loads faithfully.

    Why not a `T5Tokenizer` folder (spiece.model + tokenizer_class "T5Tokenizer", as rinna ships)? In transformers 5
    `T5Tokenizer` is rebuilt from the .model file with T5's assumptions: its Unigram model has `unk_id=2` hard-coded
    (with rinna's layout every unknown character becomes `<s>`), byte fallback is switched off, and it splits on
    whitespace. `TokenizersBackend.convert_to_native_format` instead builds the backend from the model's own
    settings (unk id, byte fallback, normalizer, dummy prefix), and saving writes a `tokenizer.json` with
    tokenizer_class "TokenizersBackend" that loads back unchanged. The .model file is kept beside it as spiece.model.
    """
    from transformers import TokenizersBackend

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = TokenizersBackend(**TokenizersBackend.convert_to_native_format(vocab_file=str(model_file), **SPECIAL_TOKENS))
    tokenizer.save_pretrained(out_dir)
    target = os.path.join(out_dir, "spiece.model")
    if os.path.abspath(model_file) != os.path.abspath(target):
        shutil.copyfile(model_file, target)
    return tokenizer


def build_tiny_tokenizer(out_dir, vocab_size=160):
    """Train a tiny rinna-style sentencepiece tokenizer (a few hundred sentences, ~1 s) and save it in `out_dir`.

    The folder holds tokenizer.json + tokenizer_config.json (what `AutoTokenizer` reads) and spiece.model (the raw
    sentencepiece model, for comparisons). Returns the tokenizer.
    """
    os.makedirs(out_dir, exist_ok=True)
    model_file = os.path.join(out_dir, "spiece.model")
    train_sentencepiece(training_sentences(), model_file, vocab_size=vocab_size)
    return sentencepiece_to_hf_tokenizer(model_file, out_dir)


def make_audio(seconds, seed, sr=16000):
    """Deterministic test audio: a few gliding tones with an envelope plus a little noise, peak 0.5, float32."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    audio = np.zeros(n)
    for _ in range(3):
        f0, f1 = rng.uniform(100.0, 1000.0, size=2)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-3)))  # linear chirp f0 -> f1
        envelope = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(0.5, 3.0) * t))
        audio += rng.uniform(0.2, 1.0) * envelope * np.sin(phase)
    audio += 0.05 * rng.standard_normal(n)
    peak = np.abs(audio).max() if n else 0.0
    return (0.5 * audio / peak if peak > 0 else audio).astype(np.float32)
