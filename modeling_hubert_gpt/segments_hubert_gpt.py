"""Long audio cut where the CTC head hears pauses, for models with a CTC head.

Fixed chunks cut sentences in two, and an LLM trained on one sentence at a time tends to write the first sentence
of a chunk and stop: a chunked transcription then loses text. With a CTC head the pipeline instead reads the whole
input's CTC posteriors (in windows the model can take, stitched) and cuts the audio in the middle of every pause
of at least PAUSE_SECONDS; a stretch longer than the chunk length is cut further at its longest pause, or, with none,
into equal parts. The pieces on both sides of a cut each keep up to PIECE_MARGIN_SECONDS of the pause next to their
speech (a short pause is shared, the middle of a long one left out), as the utterances a model learns from have some
silence around them (the embedded default, trained with about 0.3 s, drops to CER 0.19 on sentences trimmed to
their sound). A pause frame is one the head gives to blank (probability above frames_hubert_gpt.PAUSE_BLANK_PROB) AND a quiet one
(`quiet_frames`): a CTC head is peaky, and between the spikes of one word it says blank for as long as a pause lasts,
so blank alone would cut sentences in their middle. The posteriors are read from the input as the feature extractor
gives it to the model (normalised once, over the whole input). Each piece is transcribed as an
utterance of its own; the transcripts are joined without any overlap to merge, and timestamps come from the same
whole-input posteriors.

A pause cut can still leave two sentences in one piece (a pause a little short of PAUSE_SECONDS, or one the head
hears as shorter than it is), and the LLM then writes the first and stops. The pipeline checks every transcript
against the head: one with fewer than EARLY_STOP_RATIO * n - EARLY_STOP_BASE of the n labels the head heard
(`stopped_early`) is cut again at its longest inner pause of at least INNER_PAUSE_SECONDS (`split_piece`) and
its parts transcribed; the evidence that text is missing allows a shorter pause than a cut made on pauses alone.

Remote code: imports torch and the leaf frames_hubert_gpt.py only.
"""

import torch

from .frames_hubert_gpt import chunk_spans, pauses, quiet_frames, seconds_per_frame, stitch_posteriors

PAUSE_SECONDS = 0.3
PIECE_MARGIN_SECONDS = 0.3
EARLY_STOP_RATIO, EARLY_STOP_BASE = 0.8, 2  # written < 0.8 n - 2 of the head's n labels: the LLM stopped early
INNER_PAUSE_SECONDS = 0.1


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


def edges_in_pauses(start, end, runs, hop, longest, total, margin):
    """A piece's samples [start, end), each cut edge that lies in a pause run of `runs` ([(start, end)] frames, from
    `pause_runs`) moved to `margin` frames of pause from the speech next to it: the piece keeps that much silence
    (sharing a short pause with its neighbour, leaving out the middle of a long one), as the utterances a model learns
    from have some silence around them. The input's own ends (0, total) stay; a piece that would grow past `longest`
    samples keeps its cuts."""
    def run_holding(sample):
        return next(((a, b) for a, b in runs if a <= sample // hop < b), None)

    new_start, new_end = start, end
    if start > 0 and (run := run_holding(start)):
        new_start = max(run[0], run[1] - margin) * hop
    if end < total and (run := run_holding(end)):
        new_end = min(total, min(run[1], run[0] + margin) * hop)
    return (new_start, new_end) if new_end - new_start <= longest else (start, end)


def inner_runs(log_probs, blank_id, quiet, runs, min_frames):
    """The pause runs of `runs` at least min_frames long with speech on both sides (a frame where the head writes a
    label and, where `quiet` is given, that is not quiet): a cut there leaves no piece of silence alone."""
    spoken = log_probs.argmax(-1) != blank_id  # (T,): the head writes a label here
    if quiet is not None:
        spoken &= ~quiet
    said = spoken.nonzero()[:, 0].tolist()
    return [(a, b) for a, b in runs if b - a >= min_frames and said and said[0] < a and b <= said[-1]]


def stopped_early(written, heard):
    """Whether a transcript of `written` labels (in the CTC head's units) stopped well short of the `heard` labels of
    the head's greedy hypothesis for the same audio."""
    return written < EARLY_STOP_RATIO * heard - EARLY_STOP_BASE


def split_piece(log_probs, blank_id, quiet, hop, frame_s, num_samples, shortest):
    """A piece of `num_samples` samples (its CTC log-posteriors (T, C) and quiet frames (T,)) cut in the middle of its
    longest inner pause of at least INNER_PAUSE_SECONDS: two (start, end) sample spans, each keeping up to
    PIECE_MARGIN_SECONDS of that pause, or None when it has no such pause or a part would be shorter than `shortest`
    samples."""
    runs = pauses(log_probs, blank_id, quiet)
    inside = inner_runs(log_probs, blank_id, quiet, runs, INNER_PAUSE_SECONDS / frame_s)
    if not inside:
        return None
    a, b = max(inside, key=lambda r: r[1] - r[0])  # the longest; the first of equals
    cut = (a + b) // 2 * hop
    if cut < shortest or num_samples - cut < shortest:
        return None
    margin = round(PIECE_MARGIN_SECONDS / frame_s)
    return [edges_in_pauses(s, e, runs, hop, num_samples, num_samples, margin) for s, e in ((0, cut), (cut, num_samples))]


def pause_segments(log_probs, blank_id, max_frames, frame_s, quiet=None, runs=None):
    """(start, end) frame spans covering log_probs' (T, C) T frames, cut in the middle of each pause of at least
    PAUSE_SECONDS between two frames where the head writes a label, and then to at most max_frames each. A pause
    frame: blank above PAUSE_BLANK_PROB and, where `quiet` ((T,) bool) is given, quiet (and a frame with a label
    counts as speech only where it is not quiet). `runs`: those frames' runs (`pauses`), when the caller has them."""
    runs = pauses(log_probs, blank_id, quiet) if runs is None else runs
    cuts = [(a + b) // 2 for a, b in inner_runs(log_probs, blank_id, quiet, runs, PAUSE_SECONDS / frame_s)]
    bounds = [0] + cuts + [len(log_probs)]
    segments = []
    for a, b in zip(bounds, bounds[1:]):
        segments += split_long(a, b, runs, max_frames)
    return [(a, b) for a, b in segments if b > a]


def whole_posteriors(model, values, window, overlap, hop):
    """The CTC head's log-posteriors (T, C) over a long input's 1-D `values` (as the feature extractor gives them),
    computed in windows of `window` samples overlapping by `overlap` (multiples of `hop`), stitched in the middle of
    each overlap."""
    spans = chunk_spans(len(values), window, overlap, multiple=hop)
    parts = []
    for start, end in spans:
        posteriors = model.ctc_posteriors(values[None, start:end].to(model.device, model.dtype))
        parts.append((start, len(values), posteriors.log_probs[0].cpu()))
    return stitch_posteriors(parts, hop)


@torch.no_grad()
def cut_at_pauses(model, feature_extractor, audio, chunk_len, hop):
    """A long input's pieces cut at pauses: ([(start sample, end sample)], whole-input log-posteriors (T, C), its quiet
    frames (T,) bool). Each piece keeps up to PIECE_MARGIN_SECONDS of the pauses at its cuts (`edges_in_pauses`)."""
    values = feature_extractor(audio, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    values = values["input_values"][0]  # (S,): normalised as the model is given it, where the extractor does
    overlap = min(chunk_len // 3 // hop * hop, 2 * model.config.sampling_rate // hop * hop)
    log_probs = whole_posteriors(model, values, chunk_len, overlap, hop)
    quiet = quiet_frames(values, hop, len(log_probs))
    runs = pauses(log_probs, model.ctc_head.blank_id, quiet)
    segments = pause_segments(log_probs, model.ctc_head.blank_id, chunk_len // hop, seconds_per_frame(model), quiet,
                              runs)
    cuts = [a * hop for a, _ in segments[1:]]
    shortest = model.min_input_samples
    kept = []  # cuts that leave every piece at least the model's shortest input
    for cut in cuts:
        if cut - (kept[-1] if kept else 0) >= shortest and len(audio) - cut >= shortest:
            kept.append(cut)
    edges = [0] + kept + [len(audio)]
    margin = round(PIECE_MARGIN_SECONDS / seconds_per_frame(model))
    pieces = [edges_in_pauses(a, b, runs, hop, chunk_len, len(audio), margin) for a, b in zip(edges, edges[1:])]
    return pieces, log_probs, quiet
