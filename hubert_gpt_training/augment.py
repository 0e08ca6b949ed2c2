"""Training-time audio augmentation: crop the silence around an utterance's sound (`--edge_silence_crop`), and play
it in rooms, with noise and over telephone lines (`--room_augment`; the same pieces make the corpus's noisy test
splits).

A corpus whose every utterance has the same lead and trail silence (the synthetic corpus: about 0.3 s at both ends)
teaches a model that speech starts and ends after that much silence; audio cut right at its sound (a chunk boundary,
a trimmed file) then loses its first and last words. With probability `prob` per utterance and per end, the crop cuts
a uniform share of that end's silence (never into the sound: `sound_bounds`), fresh each time a row is read: in a
DataLoader worker from a generator seeded by the crop's seed and the worker's torch seed (new for every worker and
every epoch), so workers do not repeat each other's crops, nor their own from one epoch to the next.
"""

import functools

import numpy as np
import torch


def sound_bounds(audio, floor_db=40.0, frame=160):
    """(start, end) samples of the sound: the first to the last `frame`-sample frame whose energy is within floor_db
    of the loudest frame's; (0, 0) for audio shorter than a frame or all zeros."""
    audio = np.asarray(audio, dtype=np.float32)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)  # (F, frame)
    if not len(frames):
        return 0, 0
    level = 10 * np.log10((frames.astype(np.float64) ** 2).mean(-1) + 1e-12)  # (F,) dB
    if level.max() <= -119:  # digital silence: no sound anywhere
        return 0, 0
    loud = np.nonzero(level > level.max() - floor_db)[0]
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


class PerWorkerRandom:
    """A numpy generator for a transform: the main process's own, or in a DataLoader worker one of its own seeded by
    the transform's seed and the worker's torch seed (forked copies of the main one would give every worker, every
    epoch, the same draws)."""

    def __init__(self, seed=0):
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.worker_seed, self.worker_rng = None, None

    def generator(self):
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return self.rng
        if worker.seed != self.worker_seed:
            self.worker_seed, self.worker_rng = worker.seed, np.random.default_rng([self.seed, worker.seed])
        return self.worker_rng


class EdgeSilenceCrop(PerWorkerRandom):
    """A `datasets` transform (`Dataset.with_transform`, or `IterableDataset.map(batched=True)`) over rows with
    `audio` (float arrays at one rate) that crops their edge silence; other columns pass through unchanged."""

    def __init__(self, prob, seed=0):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"edge_silence_crop must be a probability in [0, 1], got {prob}")
        super().__init__(seed)
        self.prob = prob

    def crop(self, audio):
        audio = np.asarray(audio, dtype=np.float32)
        start, end = sound_bounds(audio)
        if end <= start:
            return audio
        rng = self.generator()
        cut_lead = int(rng.uniform(0, start)) if rng.random() < self.prob else 0
        cut_trail = int(rng.uniform(0, len(audio) - end)) if rng.random() < self.prob else 0
        return audio[cut_lead: len(audio) - cut_trail]

    def __call__(self, batch):
        if "audio" not in batch:  # e.g. the length sampler reading input_length alone
            return batch
        return {**batch, "audio": [self.crop(a) for a in batch["audio"]]}


class Chain:
    """Transforms applied in turn, as one `datasets` transform (with_transform keeps only one)."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, batch):
        for step in self.steps:
            batch = step(batch)
        return batch


# --- rooms, noise and telephone lines (`--room_augment`, and the corpus's test_noisy / test_reverb / test_phone) ----
NOISE_KINDS = ("white", "pink", "babble", "hum", "tones")


def noise_of(kind, length, rng, others=(), rate=16000):
    """`length` samples of unit-RMS noise. babble: 3-5 of `others` (other utterances, float arrays) at random offsets,
    summed (white noise when there are none); hum: mains hum (50 or 60 Hz and its harmonics); tones: a run of
    music-like notes (a few partials each, with an attack and a decay)."""
    t = np.arange(length) / rate
    if kind == "white" or (kind == "babble" and not len(others)):
        noise = rng.standard_normal(length)
    elif kind == "pink":  # white noise shaped to 1/f power in the frequency domain
        spectrum = np.fft.rfft(rng.standard_normal(length))
        noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), n=length)
    elif kind == "babble":
        noise = np.zeros(length)
        for i in rng.choice(len(others), size=min(len(others), int(rng.integers(3, 6))), replace=False):
            voice = np.resize(np.asarray(others[i], dtype=np.float64), length)  # tiled to the length
            noise += np.roll(voice, int(rng.integers(length))) / (np.std(voice) + 1e-8)
    elif kind == "hum":
        base = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    elif kind == "tones":
        noise, start = np.zeros(length), 0
        while start < length:
            note = int(rate * rng.uniform(0.1, 0.5))
            pitch = 110.0 * 2 ** (rng.integers(0, 36) / 12)
            env = np.minimum(1.0, np.arange(note) / (0.01 * rate)) * np.exp(-np.arange(note) / (rng.uniform(0.1, 0.4) * rate))
            wave = sum(np.sin(2 * np.pi * pitch * k * t[:note]) / k for k in (1, 2, 3))
            noise[start:start + note] += (wave * env)[: length - start]
            start += note
    else:
        raise ValueError(f"unknown noise kind {kind!r}; known: {NOISE_KINDS}")
    return (noise / (np.std(noise) + 1e-12)).astype(np.float32)


def mix_at_snr(speech, noise, snr_db):
    """speech + noise scaled to `snr_db` (torchaudio.functional.add_noise)."""
    import torchaudio.functional

    mixed = torchaudio.functional.add_noise(torch.as_tensor(speech)[None], torch.as_tensor(noise)[None],
                                            torch.tensor([float(snr_db)]))
    return mixed[0].numpy()


def room_impulse_responses(count, seed, rt60=(0.2, 0.8), rate=16000):
    """`count` impulse responses of simulated shoebox rooms (pyroomacoustics' image source method, up to order 40),
    each with random size, reverberation time in `rt60` (s) and source / microphone positions."""
    import pyroomacoustics

    rng = np.random.default_rng(seed)
    responses = []
    while len(responses) < count:
        size = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
        try:
            absorption, order = pyroomacoustics.inverse_sabine(rng.uniform(*rt60), size)
        except ValueError:  # a reverberation time this room cannot have
            continue
        room = pyroomacoustics.ShoeBox(size, fs=rate, materials=pyroomacoustics.Material(absorption),
                                       max_order=min(order, 40))
        room.add_source(rng.uniform(0.5, size - 0.5))
        room.add_microphone(rng.uniform(0.5, size - 0.5))
        room.compute_rir()
        response = np.asarray(room.rir[0][0], dtype=np.float32)
        responses.append(response / np.abs(response).max())
    return responses


def reverberate(audio, response):
    """`audio` in a room: convolved with its impulse response (torchaudio.functional.fftconvolve), the same length
    and RMS as before."""
    import torchaudio.functional

    wet = torchaudio.functional.fftconvolve(torch.as_tensor(audio), torch.as_tensor(response))[: len(audio)].numpy()
    return wet * (np.std(audio) / (np.std(wet) + 1e-12))


def telephone(audio, rate=16000):
    """`audio` through a narrowband telephone line: down to 8 kHz and back (torchaudio.functional.resample), the
    300-3400 Hz band (biquad high- and low-pass) and 8-bit mu-law companding, as G.711 does."""
    import torchaudio.functional as F

    line = resampler(rate, 8000)(torch.as_tensor(audio)[None])
    line = F.lowpass_biquad(F.highpass_biquad(line, 8000, 300.0), 8000, 3400.0)
    peak = line.abs().max().clamp(min=1e-8)
    line = F.mu_law_decoding(F.mu_law_encoding(line / peak, 256), 256) * peak
    return resampler(8000, rate)(line)[0, : len(audio)].numpy()


@functools.lru_cache(maxsize=None)
def resampler(source, target):
    """torchaudio's Resample, its filter kernel computed once per pair of rates."""
    import torchaudio

    return torchaudio.transforms.Resample(source, target)


class RoomAugment(PerWorkerRandom):
    """A `datasets` transform like EdgeSilenceCrop: with probability `prob` per utterance (fresh each time a row is
    read), the utterance is played in a simulated room (reverb, probability 0.4), over a telephone line (0.25) and/or
    with noise (0.7: white, pink, babble of the batch's other utterances, hum or tones, at an SNR uniform in
    `snr_db`); at least one of the three. Rooms come from a pool of `rooms` impulse responses simulated once. With
    probability `non_speech` a row becomes sound without speech and an empty transcript. With `ramp_rows`, both
    probabilities are 0 for the first `ramp_start` rows read and grow linearly to full at `ramp_rows` (per process:
    each DataLoader worker counts its own), so that a model from scratch first learns to hear clean speech."""

    def __init__(self, prob, seed=0, snr_db=(0.0, 25.0), rooms=48, non_speech=0.0, ramp_rows=0, ramp_start=0):
        for name, value in (("room_augment", prob), ("non_speech", non_speech)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        super().__init__(seed)
        if not 0 <= ramp_start <= ramp_rows or (ramp_start and ramp_start == ramp_rows):
            raise ValueError(f"the ramp must start before it ends: start {ramp_start}, end {ramp_rows}")
        self.prob, self.snr_db, self.non_speech, self.rows_read = prob, snr_db, non_speech, 0
        self.ramp_start, self.ramp_rows = ramp_start, ramp_rows
        self.responses = room_impulse_responses(rooms, seed) if prob else []

    def ramp(self):
        """The share of the probabilities in force for the next row (1 without a ramp)."""
        if not self.ramp_rows:
            return 1.0
        return min(1.0, max(0.0, (self.rows_read - self.ramp_start) / (self.ramp_rows - self.ramp_start)))

    def sound_without_speech(self, length, rng):
        """`length` samples of noise, hum, tones or near-silent room tone (a level from -60 to -10 dB full scale),
        sometimes in a room: what a row with an empty transcript sounds like."""
        kind = rng.choice(("white", "pink", "hum", "tones", "room tone"))
        level = 10 ** (rng.uniform(-60.0, -10.0) / 20)
        noise = noise_of("pink" if kind == "room tone" else kind, length, rng) * (level if kind != "room tone" else 3e-4)
        if self.responses and rng.random() < 0.4:
            noise = reverberate(noise, self.responses[rng.integers(len(self.responses))])
        return noise.astype(np.float32)

    def degrade(self, audio, rng, others=()):
        audio = np.asarray(audio, dtype=np.float32)
        if rng.random() >= self.prob * self.ramp() or not len(audio):
            return audio
        reverb, phone, noise = rng.random(3) < (0.4, 0.25, 0.7)
        if not (reverb or phone or noise):
            noise = True
        if reverb:
            audio = reverberate(audio, self.responses[rng.integers(len(self.responses))])
        if noise:
            kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
            audio = mix_at_snr(audio, noise_of(kind, len(audio), rng, others), rng.uniform(*self.snr_db))
        if phone:
            audio = telephone(audio)
        return audio.astype(np.float32)

    def __call__(self, batch):
        """Rows degraded; with probability `non_speech` a row's audio is replaced by sound without speech of its
        length and its `text` by "" (the model learns to write nothing there; other text columns are kept)."""
        if "audio" not in batch:
            return batch
        rng, rows = self.generator(), batch["audio"]
        audio = [self.degrade(a, rng, rows[:i] + rows[i + 1:]) for i, a in enumerate(rows)]
        texts = list(batch.get("text", [None] * len(rows)))
        emptied = np.nonzero(rng.random(len(rows)) < self.non_speech * self.ramp())[0]
        self.rows_read += len(rows)
        for i in emptied:
            audio[i], texts[i] = self.sound_without_speech(len(rows[i]), rng), ""
        return {**batch, "audio": audio, **({"text": texts} if "text" in batch else {})}
