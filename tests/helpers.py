"""Small offline building blocks for tests and scripts: a tiny rinna-style tokenizer and synthetic audio.

Importable as `helpers` from the tests (pytest puts tests/ on sys.path) or as `tests.helpers` from the repo root.
"""

import os
import random

import json
import subprocess
import sys

import numpy as np
from transformers.generation.streamers import BaseStreamer

from hubert_gpt_training.tokenizer import train_tokenizer

_SUBJECTS = ["今日は", "明日は", "私は", "猫が", "犬が", "東京で", "駅前で", "先生は", "彼女は", "子供たちが",
             "この本は", "電車が"]
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


def build_tiny_tokenizer(out_dir, vocab_size=160):
    """Train a tiny rinna-style sentencepiece tokenizer (a few hundred sentences, ~1 s) and save it in `out_dir`.

    The folder holds tokenizer.json + tokenizer_config.json (what `AutoTokenizer` reads) and spiece.model (the raw
    sentencepiece model, for comparisons). Returns the tokenizer.
    """
    return train_tokenizer(training_sentences(), out_dir, vocab_size=vocab_size)


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


# Runs in a fresh interpreter where our packages cannot be imported: only the folder's remote code.
FRESH_PROCESS = r"""
import json, sys
import numpy as np, torch
sys.modules["modeling_hubert_gpt"] = None  # the package must not be importable: only the folder's remote code
sys.modules["hubert_gpt_training"] = None
from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
folder, audio_dir = sys.argv[1], sys.argv[2]
HOTWORDS = ["東京で", "先生は"]
audios = [np.load(f"{audio_dir}/audio{i}.npy") for i in range(3)]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
plain = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(audio=audios, sampling_rate=16000, return_tensors="pt")
tokens = model.generate(**inputs)
asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
print(json.dumps({
    "config": type(config).__name__, "model": type(model).__name__, "plain": type(plain).__name__,
    "processor": type(processor).__name__, "pipeline": type(asr).__name__,
    "remote_module": type(model).__module__,
    "tokens": tokens.tolist(),
    "decoded": processor.batch_decode(tokens, skip_special_tokens=True),
    "pipeline_text": [out["text"] for out in asr(audios, batch_size=2)],
    "pipeline_single": asr(audios[0])["text"],
    "pipeline_hotwords": [out["text"] for out in asr(audios, batch_size=2, hotwords=HOTWORDS, hotword_boost=6.0)],
}))
"""


def transcribe_in_fresh_process(folder, audio_dir):
    """Load `folder` with every Auto class and pipeline() in a new process; transcribe audio_dir/audio{0,1,2}.npy."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=os.path.join(str(audio_dir), "hf_modules"))
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(audio_dir)], cwd=audio_dir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


class CollectStreamer(BaseStreamer):
    """Records every token generate() streams, and whether it said the end."""

    def __init__(self):
        self.tokens, self.ended = [], False

    def put(self, value):
        self.tokens += value.flatten().tolist()

    def end(self):
        self.ended = True


def wav_column(audios, sr=16000):
    """A datasets column of WAV bytes for float32 arrays: [{"bytes", "path": None}], as the corpus builder stores."""
    import io

    import soundfile

    out = []
    for audio in audios:
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, sr, format="WAV")
        out.append({"bytes": buffer.getvalue(), "path": None})
    return out


def save_audio_split(folder, split, audios, texts, sr=16000, **columns):
    """datasets.save_to_disk folder with one split (or the same rows under each name of a tuple of splits): an Audio
    column (WAV bytes, decode=False), transcription, more."""
    import datasets

    table = datasets.Dataset.from_dict({"audio": wav_column(audios, sr), "transcription": texts, **columns})
    table = table.cast_column("audio", datasets.Audio(sr, decode=False))
    names = split if isinstance(split, tuple) else (split,)
    (datasets.DatasetDict({name: table for name in names}) if split else table).save_to_disk(str(folder))
