"""Frames, pauses and chunks: the helpers that timestamps, pause cuts and the pipeline share.

A leaf module: it imports torch only and nothing of this package, so every module above it (alignment, segments,
pipeline) imports it one way. Frame t of an input covers samples [t * hop, (t + 1) * hop) (HuBERT's conv stack: hop
320, 20 ms at 16 kHz).

Remote code: imports torch only.
"""

import math

import torch

PAUSE_BLANK_PROB = 0.9  # a pause frame: the CTC head gives blank more than this (and the frame is quiet)
QUIET_FRACTION = 0.25  # quiet: below the input's floor level + this fraction of its floor-to-loud range (in dB)


def samples_per_frame(model):
    """Audio samples per encoder frame (HuBERT's conv stack: 320)."""
    return math.prod(model.audio_tower.strides)


def seconds_per_frame(model):
    """Seconds between two encoder frames (HuBERT's conv stack: 320 samples, 20 ms at 16 kHz)."""
    return samples_per_frame(model) / model.config.sampling_rate


# --- quiet frames and pauses -----------------------------------------------------------------------------------------
def quiet_frames(audio, hop, num_frames):
    """(num_frames,) bool: frame t (samples t*hop .. (t+1)*hop of a 1-D tensor) is quiet. Levels are in dB (floored at
    -100); floor and loud are the 5th and 95th percentiles of the input's frame levels, so the rule holds at any
    recording level and noise floor."""
    usable = min(len(audio) // hop, num_frames)
    if usable == 0:
        return torch.zeros(num_frames, dtype=torch.bool)
    frames = audio[: usable * hop].float().reshape(usable, hop)  # (usable, hop)
    level = 10 * torch.log10(frames.pow(2).mean(-1).clamp_min(1e-10))  # (usable,)
    floor, loud = torch.quantile(level, torch.tensor([0.05, 0.95]))
    quiet = level < floor + QUIET_FRACTION * (loud - floor)
    return torch.cat([quiet, quiet.new_ones(num_frames - usable)])  # a partial last frame: the input's end


def batch_quiet(model, input_values, attention_mask, num_frames):
    """(B, num_frames) bool: `quiet_frames` of each row of input_values (B, S) over its own samples."""
    hop = samples_per_frame(model)
    samples = [input_values.shape[1]] * len(input_values) if attention_mask is None else attention_mask.sum(-1).tolist()
    return torch.stack([quiet_frames(row[: int(n)].cpu(), hop, num_frames) for row, n in zip(input_values, samples)])


def pause_runs(is_pause):
    """[(start, end)] frame runs where `is_pause` (list of bools) holds."""
    runs, start = [], None
    for t, pause in enumerate(list(is_pause) + [False]):
        if pause and start is None:
            start = t
        elif not pause and start is not None:
            runs.append((start, t))
            start = None
    return runs


def pause_frames(log_probs, blank_id, quiet=None):
    """(T,) bool: the head says blank (above PAUSE_BLANK_PROB) and, where `quiet` is given, the frame is quiet."""
    is_pause = log_probs[:, blank_id].exp() > PAUSE_BLANK_PROB
    return is_pause if quiet is None else is_pause & quiet


def pauses(log_probs, blank_id, quiet=None):
    """[(start, end)] frame runs of `pause_frames` of log_probs (T, C)."""
    return pause_runs(pause_frames(log_probs, blank_id, quiet).tolist())


# --- chunks of a long input ------------------------------------------------------------------------------------------
def chunk_spans(num_samples, chunk_len, overlap, multiple=1):
    """(start, end) sample spans of chunks of `chunk_len` samples covering `num_samples`, consecutive ones sharing at
    least `overlap` samples.

    The last chunk is moved back so it ends at `num_samples` and is about as long as the others (a short tail chunk
    could be below the model's minimum input and would give it little context); it then overlaps its neighbour by more.
    Every start is a multiple of `multiple` when chunk_len - overlap is (the encoder's hop: chunk frames then fall on
    the whole audio's frames), so the last chunk may be up to `multiple` - 1 samples longer.
    """
    step = chunk_len - overlap
    if step <= 0:
        raise ValueError(f"chunk length ({chunk_len} samples) must exceed the overlap ({overlap} samples)")
    if num_samples <= chunk_len:
        return [(0, num_samples)]
    last = (num_samples - chunk_len) // multiple * multiple
    starts = list(range(0, last, step)) + [last]
    return [(start, min(start + chunk_len, num_samples)) for start in starts[:-1]] + [(last, num_samples)]


def stitch_posteriors(chunks, hop):
    """One input's CTC log-posteriors from its chunks' [(first sample, input samples, (T_k, C))], in chunk order:
    (T, C) on the whole input's frames. Each chunk gives the frames up to the middle of its overlap with the next (its
    first sample a multiple of `hop`: its frame t is the input's frame start / hop + t)."""
    parts, done = [], 0  # done: global frames taken so far
    for k, (start, _, log_probs) in enumerate(chunks):
        first = start // hop
        if k + 1 < len(chunks):
            chunk_end = first + len(log_probs)
            stop = (chunks[k + 1][0] // hop + chunk_end) // 2  # the middle of the overlap
        else:
            stop = first + len(log_probs)
        parts.append(log_probs[done - first : stop - first])
        done = stop
    return torch.cat(parts)
