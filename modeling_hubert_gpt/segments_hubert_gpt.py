"""Long audio cut where the CTC head hears pauses, for models with a CTC head.

Fixed chunks cut sentences in two, and an LLM trained on one sentence at a time tends to write the first sentence
of a chunk and stop: a chunked transcription then loses text. With a CTC head the pipeline instead reads the whole
input's CTC posteriors (in windows the model can take, stitched) and cuts the audio in the middle of every pause
of at least PAUSE_SECONDS (frames whose blank probability exceeds PAUSE_BLANK_PROB); a stretch longer than the
chunk length is cut further at its longest pause, or, with none, into equal parts. Each piece is transcribed as an
utterance of its own; the transcripts are joined without any overlap to merge, and timestamps come from the same
whole-input posteriors.

Remote code: imports torch only.
"""

import torch

PAUSE_SECONDS = 0.3
PAUSE_BLANK_PROB = 0.9


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


def split_long(start, end, runs, max_frames):
    """Cut frames [start, end) into pieces of at most max_frames: at the longest pause inside, else evenly."""
    if end - start <= max_frames:
        return [(start, end)]
    inside = [(a, b) for a, b in runs if start < (a + b) // 2 < end]
    if inside:
        a, b = max(inside, key=lambda r: r[1] - r[0])
        cut = (a + b) // 2
    else:
        parts = -(-(end - start) // max_frames)
        cut = start + (end - start) // parts
    return split_long(start, cut, runs, max_frames) + split_long(cut, end, runs, max_frames)


def pause_segments(log_probs, blank_id, max_frames, frame_s):
    """(start, end) frame spans covering log_probs' (T, C) T frames, cut in the middle of each pause of at least
    PAUSE_SECONDS and then to at most max_frames each."""
    is_pause = (log_probs[:, blank_id].exp() > PAUSE_BLANK_PROB).tolist()
    runs = pause_runs(is_pause)
    min_run = PAUSE_SECONDS / frame_s
    cuts = [(a + b) // 2 for a, b in runs if b - a >= min_run and a > 0 and b < len(is_pause)]
    bounds = [0] + cuts + [len(is_pause)]
    segments = []
    for a, b in zip(bounds, bounds[1:]):
        segments += split_long(a, b, runs, max_frames)
    return [(a, b) for a, b in segments if b > a]


def whole_posteriors(model, audio, window, overlap, hop):
    """The CTC head's log-posteriors (T, C) over a long 1-D float tensor `audio`, computed in windows of `window`
    samples overlapping by `overlap` (multiples of `hop`) and stitched in the middle of each overlap."""
    from .pipeline_hubert_gpt import chunk_spans, stitch_posteriors  # relative imports: the files are saved alongside

    spans = chunk_spans(len(audio), window, overlap, multiple=hop)
    parts = []
    for start, end in spans:
        posteriors = model.ctc_posteriors(audio[None, start:end].to(model.device, model.dtype))
        parts.append((start, len(audio), posteriors.log_probs[0].cpu()))
    return stitch_posteriors(parts, hop)


@torch.no_grad()
def cut_at_pauses(model, audio, chunk_len, hop):
    """A long input's pieces cut at pauses: ([(start sample, end sample)], whole-input log-posteriors (T, C))."""
    from .alignment_hubert_gpt import seconds_per_frame

    audio = torch.as_tensor(audio)
    overlap = min(chunk_len // 3 // hop * hop, 2 * model.config.sampling_rate // hop * hop)
    log_probs = whole_posteriors(model, audio, chunk_len, overlap, hop)
    segments = pause_segments(log_probs, model.ctc_head.blank_id, chunk_len // hop, seconds_per_frame(model))
    cuts = [a * hop for a, _ in segments[1:]]
    shortest = model.min_input_samples
    kept = []  # cuts that leave every piece at least the model's shortest input
    for cut in cuts:
        if cut - (kept[-1] if kept else 0) >= shortest and len(audio) - cut >= shortest:
            kept.append(cut)
    edges = [0] + kept + [len(audio)]
    return list(zip(edges, edges[1:])), log_probs
