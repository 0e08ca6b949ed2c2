"""Timestamps for hubert-gpt: a transcript force-aligned to the CTC head's log-posteriors.

Whatever decoding wrote the transcript (greedy, beams, speculative), the CTC head heard the same audio: its
log-posteriors (T frames x its labels and blank) are aligned to the transcript's labels with
`torchaudio.functional.forced_align` (Viterbi over the CTC topology) and the frames of each label are read with
`torchaudio.functional.merge_tokens`. A label is a character for a character head (`ctc_head_config["vocab"]`), an
LLM token for a token head (every character of the token's text gets the token's frames).

Characters the head cannot spell (outside its vocabulary: punctuation, spaces, rare characters) are not aligned;
they are attached to the previous character (the first ones to the next), so the chunks' texts joined give the
transcript back, nothing dropped. A transcript with more labels than the frames can hold (T >= labels + repeated
neighbours) is aligned as far as it fits; the characters after that are attached to the last aligned one.

Output, as transformers' ASR pipeline returns Whisper's: a list of `{"text": str, "timestamp": (start_s, end_s)}`
per transcript, one chunk per character ("char"), per word ("word": whitespace words where the transcript has
spaces; Japanese without spaces is cut into words by SudachiPy when it is installed), or per segment (True: the
transcript cut where the CTC head hears a pause of at least PAUSE_SECONDS). A character's time is its frames' span:
frame t covers [t, t + 1) x seconds_per_frame from the audio's start (plus `offset_s`). Given the input's quiet
frames (the pipeline and `align` always give them), a label's spike is moved onto its sound when it fell in a pause
and widened over the sound around it (`widen_to_sound`), so a sentence starts and ends where its sound does.

The pipeline's "char" and "word" chunks also carry a "confidence" (`align_texts(..., llm_probabilities=)`): from the
LLM's token probabilities and the head's posterior of each character over its aligned frames (confidence_hubert_gpt.py).

Remote code: imports torch only at the top; torchaudio (and SudachiPy for Japanese words) where they are used.
"""

import torch

from .confidence_hubert_gpt import char_confidence, chunk_confidence
from .ctc_head_hubert_gpt import require_ctc_head
from .frames_hubert_gpt import batch_quiet, seconds_per_frame

LEVELS = ("char", "word", True)
PAUSE_SECONDS = 0.5  # return_timestamps=True: a pause this long between two characters starts a new segment


def load_torchaudio():
    """torchaudio, or an ImportError that says what to install."""
    try:
        import torchaudio.functional
    except (ImportError, OSError) as err:  # OSError: an extension built for another torch release
        raise ImportError(
            f"Timestamps need torchaudio's forced_align ({err}). Install the torchaudio release built for your torch "
            f"(torch {torch.__version__.split('+')[0]}: `pip install torchaudio=={torch.__version__.split('+')[0]}`; "
            "this project's set-up pins torch 2.11.0 + torchaudio 2.11.0)."
        ) from err
    return torchaudio


def check_level(level):
    if level not in LEVELS:
        raise ValueError(f'return_timestamps must be "char", "word" or True, got {level!r}')
    return level


# --- labels of a transcript ------------------------------------------------------------------------------------------
def transcript_labels(ctc_head, text, tokenizer=None):
    """The head's labels for `text` and, per label, the character range of `text` it spells: (labels, ranges)."""
    if ctc_head.vocab is not None:
        index = {c: i for i, c in enumerate(ctc_head.vocab)}
        spelled = [(index[c], (k, k + 1)) for k, c in enumerate(text) if c in index]
        return [label for label, _ in spelled], [span for _, span in spelled]
    if tokenizer is None:
        raise ValueError("this model's CTC head labels LLM tokens: aligning text needs the LLM's tokenizer "
                         "(tokenizer=processor.tokenizer; the pipeline passes its own)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    keep = [(t, (a, b)) for t, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"])
            if b > a and t != ctc_head.blank_id]
    return [t for t, _ in keep], [span for _, span in keep]


def fitting(labels, frames):
    """How many leading labels CTC can place in `frames` frames (each label a frame, a blank between repeats)."""
    need = 0
    for count, label in enumerate(labels):
        need += 1 + (count > 0 and labels[count - 1] == label)
        if need > frames:
            return count
    return len(labels)


def label_frames(log_probs, labels, blank):
    """Viterbi alignment of `labels` to log_probs (T, C): a (start, end) frame span per label, end exclusive, and the
    label's mean posterior over its span."""
    if not labels:
        return [], []
    functional = load_torchaudio().functional
    targets = torch.tensor([labels], dtype=torch.int32)
    path, scores = functional.forced_align(log_probs[None].float().cpu(), targets, blank=blank)  # (1, T) each
    spans = functional.merge_tokens(path[0], scores[0].exp(), blank=blank)
    return [(span.start, span.end) for span in spans], [span.score for span in spans]


def snap_into_sound(spans, quiet):
    """Spike spans [(start, end)] in order -> a spike that lies wholly in `quiet` frames moved onto the last sounding
    frame after the previous spike (a head often fires a sentence's last character late, in the pause after it), or,
    with none there, onto the first sounding frame before the next spike."""
    out = []
    for k, (start, end) in enumerate(spans):
        if all(quiet[start:end]):
            low = out[-1][1] if out else 0
            high = spans[k + 1][0] if k + 1 < len(spans) else len(quiet)
            before = [t for t in range(low, start) if not quiet[t]]
            after = [t for t in range(end, high) if not quiet[t]]
            if before or after:
                start = before[-1] if before else after[0]
                end = start + 1
        out.append((start, end))
    return out


def widen_to_sound(spans, quiet):
    """Spike spans [(start, end)] in order -> each on its sound (`snap_into_sound`) and widened over the sounding
    (not `quiet`) frames next to it: its end up to the next label's spike, its start back to the previous label's
    (widened) end. A CTC head fires a label on a frame or two of its sound; a sentence's first and last sounds then
    get their whole extent, and a label ends where a pause begins."""
    spans, out = snap_into_sound(spans, quiet), []
    for k, (start, end) in enumerate(spans):
        low = out[-1][1] if out else 0
        high = spans[k + 1][0] if k + 1 < len(spans) else len(quiet)
        while start > low and not quiet[start - 1]:
            start -= 1
        while end < high and not quiet[end]:
            end += 1
        out.append((start, end))
    return out


def char_alignment(ctc_head, log_probs, text, tokenizer=None, quiet=None):
    """Per character of `text`: its (start, end) frames, and its label's mean posterior over the frames the alignment
    gave it (before widening); None and None for a character the head does not place. With `quiet` ((T,) bool:
    frames without sound), labels are widened over the sound around them (`widen_to_sound`)."""
    labels, ranges = transcript_labels(ctc_head, text, tokenizer)
    count = fitting(labels, log_probs.shape[0])
    spans, posteriors = label_frames(log_probs, labels[:count], ctc_head.blank_id)
    if quiet is not None:
        spans = widen_to_sound(spans, quiet.tolist())
    frames, probabilities = [None] * len(text), [None] * len(text)
    for (a, b), span, posterior in zip(ranges, spans, posteriors):
        for k in range(a, b):
            frames[k], probabilities[k] = span, posterior
    return frames, probabilities


def char_frames(ctc_head, log_probs, text, tokenizer=None, quiet=None):
    """Per character of `text`: its (start, end) frames, or None (see char_alignment)."""
    return char_alignment(ctc_head, log_probs, text, tokenizer, quiet)[0]


# --- characters -> chunks ------------------------------------------------------------------------------------------
def _groups(frames, starts):
    """Cut character indices 0..n-1 at `starts` (sorted), attach groups without a placed character to the previous
    group (the first ones to the next): [(first, last + 1, (start frame, end frame))]."""
    groups = []
    for a, b in zip(starts, starts[1:] + [len(frames)]):
        placed = [f for f in frames[a:b] if f is not None]
        span = (placed[0][0], placed[-1][1]) if placed else None
        if span is None and groups:
            groups[-1] = (groups[-1][0], b, groups[-1][2])
        elif groups and groups[-1][2] is None:
            groups[-1] = (groups[-1][0], b, span)
        else:
            groups.append((a, b, span))
    return groups


def word_starts(text):
    """Index of each word's first character: whitespace words, or SudachiPy's words for text without spaces."""
    if not text:
        return []
    if any(c.isspace() for c in text.strip()) or all(ord(c) < 0x3000 for c in text):
        return [k for k, c in enumerate(text) if not c.isspace() and (k == 0 or text[k - 1].isspace())] or [0]
    try:
        from sudachipy import dictionary
    except ImportError as err:
        raise ImportError(
            'return_timestamps="word" on text without spaces (Japanese) needs a morphological analyser: '
            '`pip install SudachiPy sudachidict-core`; or use return_timestamps="char"'
        ) from err
    found = dictionary.Dictionary()
    analyser = found.tokenizer() if hasattr(found, "tokenizer") else found.create()  # create(): SudachiPy < 0.7
    return [m.begin() for m in analyser.tokenize(text)] or [0]


def pause_starts(frames, pause_frames):
    """Index of each segment's first character: a new segment where the head hears >= pause_frames of pause."""
    starts, last_end = [0], None
    for k, span in enumerate(frames):
        if span is None:
            continue
        if last_end is not None and span[0] - last_end >= pause_frames:
            starts.append(k)
        last_end = span[1]
    return starts


def chunks_of(text, frames, level, frame_s, offset_s=0.0, confidence=None):
    """Whisper-style chunks [{"text", "timestamp": (start_s, end_s)}] of a transcript whose characters have
    `frames` (see char_frames). A transcript with no placed character is one chunk spanning nothing: (None, None).
    With `confidence` (per character, a float or None), each chunk gets "confidence": the mean of its characters'
    (confidence_hubert_gpt.chunk_confidence)."""
    if not text:
        return []
    if level == "char":
        starts = list(range(len(text)))
    elif level == "word":
        starts = word_starts(text)
    else:
        starts = pause_starts(frames, PAUSE_SECONDS / frame_s)
    chunks = []
    for a, b, span in _groups(frames, sorted(set(starts) | {0})):
        piece = text[a:b].strip() if level != "char" else text[a:b]
        stamp = (None, None) if span is None else (round(offset_s + span[0] * frame_s, 3),
                                                   round(offset_s + span[1] * frame_s, 3))
        chunks.append({"text": piece, "timestamp": stamp})
        if confidence is not None:
            chunks[-1]["confidence"] = chunk_confidence(confidence[a:b])
    return chunks


def align_texts(model, log_probs, frame_lengths, texts, level="char", tokenizer=None, offsets_s=None, quiet=None,
                llm_probabilities=None):
    """Chunks with timestamps per transcript: log_probs (B, T, C) of the CTC head, frame_lengths (B,), B texts;
    `quiet` (B, T) bool (`quiet_frames` of each input) widens labels over their sound. With `llm_probabilities` (per
    text, per character: the LLM's probability of the token that wrote it, or None), each chunk also gets a
    "confidence" from them and the CTC head's posteriors over the character's aligned frames
    (confidence_hubert_gpt.py)."""
    head = require_ctc_head(model, "Timestamps come from")
    check_level(level)
    frame_s = seconds_per_frame(model)
    out = []
    for b, text in enumerate(texts):
        n = int(frame_lengths[b])
        frames, ctc = char_alignment(head, log_probs[b, :n], text, tokenizer, None if quiet is None else quiet[b, :n])
        confidence = None
        if llm_probabilities is not None:
            confidence = [char_confidence(llm, posterior) for llm, posterior in zip(llm_probabilities[b], ctc)]
        out.append(chunks_of(text, frames, level, frame_s, 0.0 if offsets_s is None else offsets_s[b], confidence))
    return out


def align(model, input_values, attention_mask=None, transcripts=None, tokenizer=None, level="char"):
    """`model.align`: timestamps of given transcripts (B strings, or B rows of LLM token ids, decoded with
    `tokenizer`) for audio (B, S); a list of chunk lists (see the module doc)."""
    require_ctc_head(model, "Timestamps come from")
    check_level(level)
    if transcripts is None:
        raise ValueError("align needs the transcripts: B strings, or B rows of token ids with the tokenizer")
    if isinstance(transcripts, torch.Tensor) or (len(transcripts) and not isinstance(transcripts[0], str)):
        if tokenizer is None:
            raise ValueError("transcripts given as token ids need the LLM's tokenizer (tokenizer=processor.tokenizer)")
        transcripts = tokenizer.batch_decode(transcripts, skip_special_tokens=True)
    posteriors = model.ctc_posteriors(input_values, attention_mask)
    if len(transcripts) != posteriors.log_probs.shape[0]:
        raise ValueError(f"{len(transcripts)} transcripts for {posteriors.log_probs.shape[0]} utterances")
    quiet = batch_quiet(model, input_values, attention_mask, posteriors.log_probs.shape[1])
    return align_texts(model, posteriors.log_probs, posteriors.frame_lengths, list(transcripts), level, tokenizer,
                       quiet=quiet)
