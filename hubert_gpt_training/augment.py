"""Training-time audio augmentation: crop the silence around an utterance's sound (`--edge_silence_crop`).

A corpus whose every utterance has the same lead and trail silence (the synthetic corpus: about 0.3 s at both ends)
teaches a model that speech starts and ends after that much silence; audio cut right at its sound (a chunk boundary,
a trimmed file) then loses its first and last words. With probability `prob` per utterance and per end, the crop cuts
a uniform share of that end's silence (never into the sound: `sound_bounds`), fresh each time a row is read: in a
DataLoader worker from a generator seeded by the crop's seed and the worker's torch seed (new for every worker and
every epoch), so workers do not repeat each other's crops, nor their own from one epoch to the next.
"""

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


class EdgeSilenceCrop:
    """A `datasets` transform (`Dataset.with_transform`, or `IterableDataset.map(batched=True)`) over rows with
    `audio` (float arrays at one rate) that crops their edge silence; other columns pass through unchanged."""

    def __init__(self, prob, seed=0):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"edge_silence_crop must be a probability in [0, 1], got {prob}")
        self.prob, self.seed, self.rng = prob, seed, np.random.default_rng(seed)
        self.worker_seed, self.worker_rng = None, None

    def generator(self):
        """The main process's generator, or in a DataLoader worker one of its own (forked copies of the main one
        would give every worker, every epoch, the same crops)."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return self.rng
        if worker.seed != self.worker_seed:
            self.worker_seed, self.worker_rng = worker.seed, np.random.default_rng([self.seed, worker.seed])
        return self.worker_rng

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
