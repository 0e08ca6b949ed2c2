"""Tone "speech" for smoke runs: each character is a short tone of its own pitch, so transcripts are learnable."""

import numpy as np

SMOKE_ALPHABET = "あいうえおかきくけこさしすせそ"


def tone_utterance(text, rng, sampling_rate=16000, alphabet=SMOKE_ALPHABET, tone_s=0.12, gap_s=0.03):
    """float32 audio: per character a tone at 300 + 120 * index Hz with a random level, then a short gap."""
    pieces = []
    for char in text:
        t = np.arange(int(tone_s * sampling_rate)) / sampling_rate
        freq = 300.0 + 120.0 * alphabet.index(char)
        pieces.append(rng.uniform(0.3, 0.6) * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)))
        pieces.append(np.zeros(int(gap_s * sampling_rate)))
    audio = np.concatenate(pieces) + 0.01 * rng.standard_normal(sum(len(p) for p in pieces))
    return audio.astype(np.float32)


def tone_rows(n, seed=0, sampling_rate=16000, alphabet=SMOKE_ALPHABET, min_chars=2, max_chars=6):
    """n rows {"audio": {"array", "sampling_rate"}, "transcription": str}, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        text = "".join(rng.choice(list(alphabet), size=rng.integers(min_chars, max_chars + 1)))
        rows.append({"audio": {"array": tone_utterance(text, rng, sampling_rate, alphabet), "sampling_rate": sampling_rate},
                     "transcription": text})
    return rows
