"""HubertGptASRPipeline: the "automatic-speech-recognition" pipeline for HubertGpt, saved with the model.

The stock `AutomaticSpeechRecognitionPipeline` treats a remote-code model as CTC (`model(...).logits.argmax(-1)`),
adds `num_beams=5, max_new_tokens=256`, needs the ffmpeg binary for files, torchaudio for resampling, and with
`chunk_length_s` joins the chunk texts with their overlaps duplicated. This pipeline runs `model.generate()`, leaves
generation settings to the model's `generation_config`, decodes files with soundfile, resamples with scipy, and merges
the chunk transcripts on their common tokens (`merge_overlapping_tokens`), chunks audio longer than the model takes
without being asked, and returns timestamps (`return_timestamps`) for models with a CTC head.

It subclasses `transformers.Pipeline` through its documented extension points only (`_sanitize_parameters`,
`preprocess`, `_forward`, `postprocess`; `custom_pipelines` in config.json for `pipeline(..., trust_remote_code=True)`),
plus the public `__call__` and `save_pretrained`.

Remote code: torch, numpy and the public transformers API at the top; soundfile and scipy are imported where used.
"""

import io
import itertools
import math
import os
import shutil
import sys
import types
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path

import numpy as np
import torch
from transformers import Pipeline, logging

from .alignment_hubert_gpt import align_texts, check_level, load_torchaudio
from .cache_hubert_gpt import cache_keyword
from .confidence_hubert_gpt import char_probabilities, transcript_probabilities
from .ctc_head_hubert_gpt import require_ctc_head
from .duration_hubert_gpt import fits, longest_input_samples
from .frames_hubert_gpt import batch_quiet, chunk_spans, samples_per_frame, seconds_per_frame, stitch_posteriors
from .processing_hubert_gpt import to_mono_float32
from .segments_hubert_gpt import cut_at_pauses, split_piece, stopped_early

TASK = "automatic-speech-recognition"
CONFIDENCE_LEVELS = ("char", "word")  # return_timestamps levels whose chunks carry a "confidence"
logger = logging.get_logger(__name__)

ACCEPTED_FORMATS = "wav, flac, ogg (vorbis/opus) and mp3 (what libsndfile decodes; no ffmpeg)"


# --- merging the transcripts of overlapping chunks ---------------------------------------------------------------
def merge_overlapping_tokens(left, right):
    """Join the tokens of two chunks whose audio overlapped, keeping the overlap once.

    The tail of `left` and the head of `right` transcribe the same audio. Every overlap size k is tried: the last k
    tokens of `left` are laid on the first k of `right` and the positions where they agree are counted. The k with
    the most agreeing positions wins (the smaller k on a tie), among those where at least half the positions agree.
    The join is made at the middle agreeing position: tokens before it come from `left`, the rest from `right`, so
    each side keeps the part of the overlap that lay far from its own cut edge (words cut by a chunk edge are the
    ones a model gets wrong). When no k qualifies, the lists are concatenated: a repeated word is better than a lost
    one.

    Args:
        left, right: token ids (any sequence of ints).
    Returns:
        list[int]

    >>> merge_overlapping_tokens([1, 2, 3, 4], [3, 4, 5])
    [1, 2, 3, 4, 5]
    """
    left, right = list(left), list(right)
    best_k, best_hits = 0, []
    for k in range(1, min(len(left), len(right)) + 1):
        hits = [i for i in range(k) if left[len(left) - k + i] == right[i]]
        if 2 * len(hits) >= k and len(hits) > len(best_hits):
            best_k, best_hits = k, hits
    if not best_hits:
        return left + right
    cut = best_hits[len(best_hits) // 2]  # left[len(left) - best_k + cut] == right[cut]
    return left[: len(left) - best_k + cut] + right[cut:]


def merge_chunk_tokens(chunks):
    """Merge the token lists of consecutive overlapping chunks, left to right. `[]` for no chunks."""
    return reduce(merge_overlapping_tokens, chunks, [])


def join_pieces(texts):
    """The transcripts of consecutive pieces cut at pauses, as one text: joined with a space, but none between two
    characters of scripts written without spaces (kana, CJK, full-width forms: code points from U+3000), so Japanese
    sentences follow each other as they are written. Empty pieces add nothing."""
    return join_with_values(list(texts), None)[0]


def join_with_values(texts, values):
    """`join_pieces(texts)` and, given `values` (per piece, one value per character of its text; or None), the joined
    text's values: (text, values or None), None for an added space."""
    out, kept = "", []
    for k, text in enumerate(texts):
        stripped = text.strip()
        if stripped and out:
            space = "" if ord(out[-1]) >= 0x3000 and ord(stripped[0]) >= 0x3000 else " "
            out, kept = out + space, kept + [None] * len(space)
        lead = len(text) - len(text.lstrip())
        out += stripped
        kept += [] if values is None else values[k][lead : lead + len(stripped)]
    return out, None if values is None else kept


def char_probabilities_of_text(token_lists, pieces, decode):
    """Per character of an input's transcript (as postprocess builds it from its pieces' `token_lists`): the LLM's
    probability of the token that wrote it (None for a space joining two pieces)."""
    per_piece = [char_probabilities(decode, ids, piece.token_probabilities) for ids, piece in zip(token_lists, pieces)]
    if pieces[0].overlapping:  # with a CTC head, as confidence needs, an input has one such chunk: longer audio is cut
        return per_piece[0] if len(per_piece) == 1 else [None] * len(decode(merge_chunk_tokens(token_lists)))
    return join_with_values([decode(ids) for ids in token_lists], per_piece)[1]


# --- audio loading ------------------------------------------------------------------------------------------------
def load_audio(inputs, sampling_rate):
    """Any accepted pipeline input -> mono float32 1-D numpy array at `sampling_rate`.

    Accepted: a path (str / os.PathLike) or the bytes of an audio file (decoded with soundfile: ACCEPTED_FORMATS,
    at the file's rate); a numpy array or torch tensor (taken to be at `sampling_rate` already); a dict
    `{"raw" or "array": array, "sampling_rate": rate}` (a `datasets` Audio row; resampled). Arrays may be float or
    signed-integer PCM (int16 is divided by 32768, int32 by 2**31), mono `(samples,)` or multi-channel
    `(channels, samples)` / `(samples, channels)` (downmixed by the mean).
    """
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if path.startswith(("http://", "https://")):
            raise ValueError(f"URLs are not fetched by this pipeline; download {path!r} and pass the local path.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No audio file at {path!r}")
        audio, rate = _decode(path, f"file {path!r}")
        return _resample(to_mono_float32(audio, f"file {path!r}"), rate, sampling_rate)
    if isinstance(inputs, (bytes, bytearray)):
        name = f"bytes input ({len(inputs)} bytes)"
        audio, rate = _decode(io.BytesIO(inputs), name)
        return _resample(to_mono_float32(audio, name), rate, sampling_rate)
    if isinstance(inputs, dict):
        return _load_dict(inputs, sampling_rate)
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        return to_mono_float32(inputs, "array input")
    raise TypeError(
        f"Cannot transcribe a {type(inputs).__name__}: pass a file path, the bytes of an audio file, a 1-D/2-D numpy "
        f'array or torch tensor at {sampling_rate} Hz, or {{"raw": array, "sampling_rate": rate}}. '
        "A list is read as several inputs."
    )


def _load_dict(inputs, sampling_rate):
    audio = inputs.get("raw", inputs.get("array"))
    if audio is None or "sampling_rate" not in inputs:
        raise ValueError(
            'A dict input needs the audio under "raw" (or "array", as in `datasets`) and its rate under '
            f'"sampling_rate"; got keys {sorted(inputs)}.'
        )
    if inputs.get("stride") is not None:
        raise ValueError('"stride" in a dict input is for CTC models; use `chunk_length_s` / `stride_length_s`.')
    rate = inputs["sampling_rate"]
    return _resample(to_mono_float32(audio, "dict input"), rate, sampling_rate)


def _decode(source, name):
    try:
        import soundfile
    except ImportError as err:
        raise ImportError(f"Reading audio files needs soundfile (`pip install soundfile`), for {name}.") from err
    try:
        audio, rate = soundfile.read(source, dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError depending on the damage
        raise ValueError(f"Could not decode {name} as audio ({err}). Accepted formats: {ACCEPTED_FORMATS}.") from err
    return audio, rate


def _resample(audio, rate, target_rate):
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {rate!r}")
    if rate == target_rate:
        return audio
    try:
        from scipy.signal import resample_poly
    except ImportError as err:
        raise ImportError(
            f"Resampling {rate} Hz audio to {target_rate} Hz needs scipy (`pip install scipy`), or pass audio at "
            f"{target_rate} Hz."
        ) from err
    g = math.gcd(int(rate), int(target_rate))
    return resample_poly(audio, target_rate // g, int(rate) // g).astype(np.float32)


# --- the pipeline -------------------------------------------------------------------------------------------------
def input_duration_s(inputs, sampling_rate):
    """Seconds of audio in one pipeline input, read without decoding it (file headers, array shapes); 0.0 when it
    cannot be told (the input's own error is raised later, when it is decoded)."""
    try:
        if isinstance(inputs, (str, os.PathLike, bytes, bytearray)):
            import soundfile

            info = soundfile.info(io.BytesIO(inputs) if isinstance(inputs, (bytes, bytearray)) else os.fspath(inputs))
            return info.frames / info.samplerate
        if isinstance(inputs, dict):
            audio, sampling_rate = inputs.get("raw", inputs.get("array")), inputs["sampling_rate"]
        else:
            audio = inputs
        return max(audio.shape) / sampling_rate  # (samples,), (channels, samples) or (samples, channels)
    except Exception:  # any unreadable input sorts as empty
        return 0.0


@dataclass
class _Inputs:
    """Every input of one call, handed to `preprocess` as a single pipeline input.

    `Pipeline.__call__` batches a list of inputs only through its DataLoader collate, which pads with the tokenizer's
    settings and refuses an LLM tokenizer that has no pad token or pads on the left. Passed as one input, the list
    goes through `preprocess` -> `_forward` -> `postprocess` once, and `_forward` runs the `generate` batches.
    """

    items: list
    batch_size: int


def transcript_ids(row, ends, special):
    """A generated row (N,) -> its transcript's token ids: cut at the first id of `ends` (eos, and the padding after
    it), ids of `special` dropped."""
    ids = row.tolist()
    ids = ids[: next((i for i, t in enumerate(ids) if t in ends), len(ids))]
    return [t for t in ids if t not in special]


@dataclass
class _Chunk:
    """A piece of one input: its audio, where it starts in the input, the input's length; whether it overlaps its
    neighbours (fixed chunks, merged on tokens) or not (cut at pauses, joined); the CTC log-posteriors of the whole
    input (cut at pauses: on the input's first piece) or, once transcribed with timestamps, of the piece."""

    audio: np.ndarray
    start: int
    total: int
    overlapping: bool = False
    whole_posteriors: torch.Tensor | None = None  # (T, C) of the whole input
    whole_quiet: torch.Tensor | None = None  # (T,) bool: its frames without sound
    posteriors: torch.Tensor | None = None  # (T_k, C) of this piece
    quiet: torch.Tensor | None = None  # (T_k,) bool
    token_probabilities: list | None = None  # the LLM's, of each transcript token (confidence_hubert_gpt.py)


class HubertGptASRPipeline(Pipeline):
    """Speech recognition with `model.generate()`.

    `pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)` gives this class when the
    folder's config.json carries `custom_pipelines` (see `register_pipeline_in_config`; `save_pretrained` writes it).

    Inputs: see `load_audio`; a list of inputs gives a list of outputs, a generator or torch Dataset of inputs an
    iterator of outputs. Call options:
        chunk_length_s (`float`): transcribe audio longer than this in overlapping chunks of this length and merge
            the chunk transcripts on their shared tokens.
        stride_length_s (`float` or `(left, right)`, defaults to chunk_length_s / 6 each side): the overlap of
            consecutive chunks is left + right (only the sum matters: the merge aligns tokens, not times).
        batch_size (`int`): chunks per `generate` call, padded with an attention mask (chunks of several inputs share
            a batch). A list of more inputs than that is transcribed longest first, so that each batch holds similar
            lengths (little padding); the outputs come back in the order of the inputs.
        generate_kwargs (`dict`) or generation keywords (`num_beams=3`, `no_speech_threshold=None`, ...): passed to
            `generate`, which names and documents every option (the guards, hotwords, ctc_draft, ...). Nothing is
            added (but this pipeline's tokenizer where ctc_draft or hotwords are on, by the call or by the model's
            generation_config): the model's generation_config decides the rest.
        return_timestamps (`"char"`, `"word"` or `True`; models with a CTC head): the transcript force-aligned to
            the CTC head's posteriors (alignment_hubert_gpt.py): `"chunks"` per character, word or pause-separated
            segment, times in seconds from the input's start (global across chunks, read from the whole input's
            posteriors stitched from its chunks). "char" and "word" chunks carry a "confidence" in [0, 1] (as
            faster-whisper's word probability; low flags a doubtful word): the mean over the chunk's characters of the
            geometric mean of the LLM's probability of the token that wrote the character and the CTC head's mean
            posterior of the character over its aligned frames (confidence_hubert_gpt.py; costs one LLM pass more).
        hotwords (`list[str]`, or one such list per input of a list): `generate`'s hotwords, given per input: every
            chunk of an input gets its input's words.
        split_at_pauses (`bool`, default False; models with a CTC head): cut every input where the head hears a pause
            (segments_hubert_gpt.py) and transcribe the pieces one by one, for audio of several sentences that a
            model trained on one sentence at a time would stop after the first of; costs one more encoder pass per
            input. Audio longer than chunk_length_s (or than the model takes) is always cut so with a CTC head.
        early_stop_split (`bool`, default True for models with a CTC head): an input or piece whose transcript stopped
            well short of what the CTC head heard (fewer than 0.8 n - 2 of its n labels: an LLM trained on one
            sentence at a time writes the first of two and stops) is cut at its longest inner pause of at least 0.1 s
            and the parts transcribed in turn (segments_hubert_gpt.py); no extra model pass where nothing stopped early.
    Audio longer than the model takes (its LLM context must hold the speech prompt and the transcript bound;
    duration_hubert_gpt.py) is chunked without being asked, with a one-line warning naming `chunk_length_s`.
    Output: `{"text": str}`, plus `"chunks": [{"text": str, "timestamp": (start_s, end_s)}]` with return_timestamps
    (and `"confidence": float` in each chunk for "char" and "word").
    """

    def __init__(self, model, feature_extractor=None, tokenizer=None, batch_size=None, **kwargs):
        if feature_extractor is None or tokenizer is None:
            raise ValueError("HubertGptASRPipeline needs both a feature_extractor and a tokenizer")
        self.batch_size = batch_size or 1  # used by __call__, never by the base class's DataLoader
        super().__init__(model, feature_extractor=feature_extractor, tokenizer=tokenizer, **kwargs)

    def __call__(self, inputs, batch_size=None, **kwargs):
        """Transcribe one input (-> `{"text": str}`), a list of them (-> list) or a generator / torch Dataset of
        them (-> iterator, `batch_size` inputs read at a time); see the class docstring."""
        batch_size = batch_size or self.batch_size
        if isinstance(inputs, list):
            return super().__call__(_Inputs(inputs, batch_size), **kwargs)
        if isinstance(inputs, (types.GeneratorType, torch.utils.data.Dataset)):
            return self._stream(inputs, batch_size, kwargs)
        return super().__call__(_Inputs([inputs], batch_size), **kwargs)[0]

    def _stream(self, inputs, batch_size, kwargs):
        if isinstance(inputs, torch.utils.data.Dataset):
            inputs = map(inputs.__getitem__, range(len(inputs)))
        while group := list(itertools.islice(inputs, batch_size)):
            yield from self(group, batch_size=batch_size, **kwargs)

    def _sanitize_parameters(
        self,
        chunk_length_s=None,
        stride_length_s=None,
        ignore_warning=None,  # the stock pipeline's chunking warning; accepted, nothing to silence here
        return_timestamps=None,
        return_language=None,
        decoder_kwargs=None,
        generate_kwargs=None,
        split_at_pauses=None,
        early_stop_split=None,
        **more_generate_kwargs,
    ):
        if return_timestamps is not None and return_timestamps is not False:
            require_ctc_head(self.model, "Timestamps come from")
            check_level(return_timestamps)
            load_torchaudio()  # a missing or mismatched torchaudio fails before any audio is read
        if return_language:
            raise ValueError("HubertGptASRPipeline does not detect the language.")
        if decoder_kwargs is not None:
            raise ValueError("decoder_kwargs are for CTC models with a pyctcdecode decoder; this model generates.")
        preprocess_params = {}
        if chunk_length_s is not None:
            preprocess_params["chunk_length_s"] = chunk_length_s
        if stride_length_s is not None:
            preprocess_params["stride_length_s"] = stride_length_s
        if split_at_pauses:
            require_ctc_head(self.model, "split_at_pauses reads pauses from")
            preprocess_params["split_at_pauses"] = True
        forward_params = {**(generate_kwargs or {}), **more_generate_kwargs}
        if early_stop_split is None:
            early_stop_split = getattr(self.model, "ctc_head", None) is not None
        elif early_stop_split:
            require_ctc_head(self.model, "early_stop_split compares the transcript with")
        forward_params["early_stop_split"] = bool(early_stop_split)
        postprocess_params = {}
        if return_timestamps is not None and return_timestamps is not False:
            forward_params["return_timestamps"] = postprocess_params["return_timestamps"] = return_timestamps
        return preprocess_params, forward_params, postprocess_params

    def _chunk_sizes(self, chunk_length_s, stride_length_s):
        """Chunk length and overlap in samples."""
        rate = self.feature_extractor.sampling_rate
        if stride_length_s is None:
            stride_length_s = chunk_length_s / 6
        if isinstance(stride_length_s, (int, float)):
            stride_length_s = (stride_length_s, stride_length_s)
        left, right = stride_length_s
        if chunk_length_s <= 0 or left < 0 or right < 0:
            raise ValueError(f"need chunk_length_s > 0 and strides >= 0, got {chunk_length_s}, {stride_length_s}")
        hop = self._hop()  # lengths in whole encoder frames: chunk frames fall on the whole audio's frames
        chunk_len = int(round(chunk_length_s * rate / hop)) * hop
        overlap = (int(round(left * rate / hop)) + int(round(right * rate / hop))) * hop
        if chunk_len <= overlap:
            raise ValueError(
                f"chunk_length_s ({chunk_length_s}) must exceed the two strides together ({left} + {right})"
            )
        return chunk_len, overlap

    def _hop(self):
        return samples_per_frame(self.model) if hasattr(self.model, "audio_tower") else 1

    def _auto_chunk_length_s(self, num_samples):
        """chunk_length_s for audio longer than the model takes (duration_hubert_gpt.py), or None when it fits."""
        if not hasattr(self.model, "audio_tower") or fits(self.model, num_samples):
            return None
        longest = longest_input_samples(self.model)
        rate = self.feature_extractor.sampling_rate
        chunk_length_s = math.floor(longest * 0.9 / rate)  # a margin below the limit: the last chunk may be longer
        logger.warning(f"{num_samples / rate:.1f} s of audio is more than this model takes at once ({longest / rate:.1f} s): "
                       f"transcribing it in chunks of {chunk_length_s} s (set chunk_length_s to choose)")
        return chunk_length_s

    def _check_length(self, num_samples, what):
        shortest = getattr(self.model, "min_input_samples", 1)
        if num_samples < shortest:
            rate = self.feature_extractor.sampling_rate
            raise ValueError(
                f"{what} has {num_samples} samples at {rate} Hz; the model needs at least {shortest} "
                f"({shortest / rate:.3f} s)"
            )

    def _chunks(self, inputs, chunk_length_s, stride_length_s, split_at_pauses=False):
        """One input -> its chunks: (audio (float32 array), first sample, samples of the whole input) each; the whole
        audio as one chunk when it needs no chunking and is not to be split at pauses."""
        audio = load_audio(inputs, self.feature_extractor.sampling_rate)
        is_path = isinstance(inputs, (str, os.PathLike))
        self._check_length(len(audio), f"audio file {os.fspath(inputs)!r}" if is_path else "the audio")
        if not chunk_length_s:
            chunk_length_s = self._auto_chunk_length_s(len(audio))
            stride_length_s = None
        if not chunk_length_s and not split_at_pauses:
            return [_Chunk(audio, 0, len(audio))]
        if chunk_length_s:
            chunk_len, overlap = self._chunk_sizes(chunk_length_s, stride_length_s)
            self._check_length(min(chunk_len, len(audio)), f"a chunk of chunk_length_s={chunk_length_s}")
        else:  # split at pauses only: the input fits, so one window reads it and a piece may be all of it
            chunk_len = -(-len(audio) // self._hop()) * self._hop()
        if getattr(self.model, "ctc_head", None) is not None and (split_at_pauses or len(audio) > chunk_len):
            spans, whole, quiet = cut_at_pauses(self.model, self.feature_extractor, audio, chunk_len, self._hop())
            chunks = [_Chunk(audio[start:end], start, len(audio)) for start, end in spans]
            chunks[0].whole_posteriors, chunks[0].whole_quiet = whole, quiet
            return chunks
        spans = chunk_spans(len(audio), chunk_len, overlap, multiple=self._hop())
        return [_Chunk(audio[start:end], start, len(audio), overlapping=True) for start, end in spans]

    def preprocess(self, inputs, chunk_length_s=None, stride_length_s=None, split_at_pauses=False):
        """`_Inputs` -> `{"batches": iterator of (input indices, audio chunks), "num_inputs": int}`.

        Each batch holds up to `batch_size` chunks, in the order of the inputs' chunks; the inputs are taken longest
        first when they fill more than one batch. Audio is read lazily, as `_forward` takes the batches, so a long
        list of files is never in memory at once.
        """
        if chunk_length_s:
            self._chunk_sizes(chunk_length_s, stride_length_s)  # bad options fail before any audio is read
        items, batch_size = inputs.items, inputs.batch_size
        order = range(len(items))
        if 1 < batch_size < len(items):
            rate = self.feature_extractor.sampling_rate
            durations = [input_duration_s(x, rate) for x in items]
            order = sorted(order, key=lambda i: -durations[i])  # stable: equal lengths keep their order
        chunks = ((i, chunk) for i in order
                  for chunk in self._chunks(items[i], chunk_length_s, stride_length_s, split_at_pauses))

        def batches():
            while batch := list(itertools.islice(chunks, batch_size)):
                yield [i for i, _ in batch], [chunk for _, chunk in batch]

        return {"batches": batches(), "num_inputs": len(items)}

    def _forward(self, model_inputs, return_timestamps=None, hotwords=None, early_stop_split=False, **generate_kwargs):
        config = getattr(self.model, "generation_config", None)
        if hotwords or any(generate_kwargs.get(name, getattr(config, name, None)) for name in ("ctc_draft", "hotwords")):
            generate_kwargs.setdefault("tokenizer", self.tokenizer)  # the model decides whether its draft needs it
        per_input = self._hotwords_per_input(hotwords, model_inputs["num_inputs"])
        tokens, pieces = [], []  # per chunk: (input index, (N,) new tokens); its _Chunk
        for indices, chunks in model_inputs["batches"]:
            for results in self._transcribe(indices, chunks, per_input, return_timestamps, early_stop_split,
                                            generate_kwargs):
                for index, row, chunk in results:
                    tokens.append((index, row))
                    pieces.append(chunk)
        return {"tokens": tokens, "chunks": pieces, "num_inputs": model_inputs["num_inputs"]}

    def _transcribe(self, indices, chunks, per_input, timestamps, early_stop_split, generate_kwargs):
        """One batch of chunks -> per chunk, its [(input index, (N,) new tokens, _Chunk)]: its own, or with
        `early_stop_split`, for a chunk whose transcript stopped well short of what the CTC head heard, those of its two
        parts cut at its longest inner pause (segments_hubert_gpt.py), transcribed in turn (and split again where they
        stop early too). With `timestamps` (the CTC head read), also each chunk's posteriors and quiet frames, and for
        "char" / "word" its transcript tokens' LLM probabilities (confidence_hubert_gpt.py)."""
        if per_input is not None:  # each chunk's row gets its input's words
            generate_kwargs = {**generate_kwargs, "hotwords": [per_input[i] for i in indices]}
        features = self.feature_extractor(
            [chunk.audio for chunk in chunks],
            sampling_rate=self.feature_extractor.sampling_rate,
            padding="longest",
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_values = features["input_values"].to(self.device, self.model.dtype)  # (B, S)
        attention_mask = features["attention_mask"].to(self.device, torch.long)  # (B, S)
        speech = {}
        if timestamps or early_stop_split:  # the CTC head read once: for the guards, timestamps and early stops
            speech["speech_prompt"] = self.model.encode_speech(input_values, attention_mask, ctc_head=True)
            log_probs = speech["speech_prompt"].ctc_logits.float().log_softmax(-1).cpu()  # (B, T, C)
            quiet = batch_quiet(self.model, input_values, attention_mask, log_probs.shape[1])  # (B, T)
            for chunk, rows, still, n in zip(chunks, log_probs, quiet, speech["speech_prompt"].frame_lengths.tolist()):
                chunk.posteriors, chunk.quiet = rows[:n], still[:n]
        out = self.model.generate(input_values=input_values, attention_mask=attention_mask, **speech, **generate_kwargs)
        if not isinstance(out, torch.Tensor):  # return_dict_in_generate=True
            out = out.sequences
        done = [[(index, row, chunk)] for index, row, chunk in zip(indices, out, chunks)]  # per chunk: its results
        ends, special = self._end_and_special_ids()
        if timestamps in CONFIDENCE_LEVELS:
            found = transcript_probabilities(self.model, speech["speech_prompt"],
                                             [transcript_ids(row, ends, special) for row in out],
                                             cache_keyword(self.model.language_model)[1])
            for chunk, probabilities in zip(chunks, found):
                chunk.token_probabilities = probabilities
        if early_stop_split:
            parts = [(k, part) for k, (row, chunk) in enumerate(zip(out, chunks))
                     for part in self._early_stop_parts(transcript_ids(row, ends, special), chunk)]
            redone = []  # per part: its results
            for at in range(0, len(parts), len(chunks)):  # batches no larger than this one
                some = parts[at : at + len(chunks)]
                redone += self._transcribe([indices[k] for k, _ in some], [part for _, part in some], per_input,
                                           timestamps, early_stop_split, generate_kwargs)
            for k in {k for k, _ in parts}:  # a split chunk's results: its parts', in order
                done[k] = [result for (j, _), results in zip(parts, redone) if j == k for result in results]
        for chunk in chunks:
            chunk.audio = None  # read; the rest is kept for postprocess
        return done

    def _early_stop_parts(self, ids, chunk):
        """[] or the two _Chunks of `chunk` cut at its longest inner pause when its transcript (token `ids`, from
        `transcript_ids`) stopped early."""
        head = self.model.ctc_head
        written = len(ids) if head.vocab is None else len(head.char_ids(self.tokenizer.decode(ids)))
        heard = len(head.greedy_labels(chunk.posteriors[None], torch.tensor([len(chunk.posteriors)]))[0])
        if not stopped_early(written, heard):
            return []
        spans = split_piece(chunk.posteriors, head.blank_id, chunk.quiet, self._hop(), seconds_per_frame(self.model),
                            len(chunk.audio), getattr(self.model, "min_input_samples", 1))
        if spans is None:
            return []
        parts = [_Chunk(chunk.audio[start:end], chunk.start + start, chunk.total) for start, end in spans]
        if chunk.whole_posteriors is not None:  # the input's first piece: its first part keeps the whole input's
            parts[0].whole_posteriors, parts[0].whole_quiet = chunk.whole_posteriors, chunk.whole_quiet
        elif chunk.start == 0 and len(chunk.audio) == chunk.total:  # the whole input: its posteriors are the whole's
            parts[0].whole_posteriors, parts[0].whole_quiet = chunk.posteriors, chunk.quiet
        return parts

    @staticmethod
    def _hotwords_per_input(hotwords, num_inputs):
        """`hotwords` (one list of words for every input, or one list per input) -> a list per input, or None."""
        if not hotwords:
            return None
        if not isinstance(hotwords, (list, tuple)):
            raise ValueError(f"hotwords must be a list of words or one list per input, got {type(hotwords).__name__}")
        if all(isinstance(h, (list, tuple)) for h in hotwords):
            if len(hotwords) != num_inputs:
                raise ValueError(f"hotwords has {len(hotwords)} lists for {num_inputs} inputs; give one list per "
                                 "input, or one list of words for all")
            return [list(h) for h in hotwords]
        return [list(hotwords)] * num_inputs

    def _end_and_special_ids(self):
        """(ids that end a transcript: eos and pad, ids dropped anywhere: all special ids)"""
        ends = set()
        for source in (self.model.generation_config, self.tokenizer):
            for name in ("eos_token_id", "pad_token_id"):
                value = getattr(source, name, None)
                if isinstance(value, int):
                    ends.add(value)
                elif value is not None:  # a list of eos ids
                    ends.update(value)
        return ends, ends | set(self.tokenizer.all_special_ids)

    def postprocess(self, model_outputs, return_timestamps=None):
        """-> one `{"text": str}` per input, in the order of the inputs; with return_timestamps also `"chunks"`:
        [{"text", "timestamp": (start_s, end_s)}] of the whole input (alignment_hubert_gpt.py), for "char" and "word"
        with a "confidence" each (confidence_hubert_gpt.py)."""
        ends, special = self._end_and_special_ids()
        chunks = [[] for _ in range(model_outputs["num_inputs"])]  # per input, its chunks' token lists in order
        pieces = [[] for _ in range(model_outputs["num_inputs"])]  # per input, its _Chunks in order
        for (index, row), piece in zip(model_outputs["tokens"], model_outputs["chunks"]):
            chunks[index].append(transcript_ids(row, ends, special))
            pieces[index].append(piece)
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        outputs = [{"text": decode(merge_chunk_tokens(c)) if p[0].overlapping else join_pieces(map(decode, c))}
                   for c, p in zip(chunks, pieces)]
        if return_timestamps:
            hop = self._hop()
            stitched = [p[0].whole_posteriors if p[0].whole_posteriors is not None else
                        stitch_posteriors([(c.start, c.total, c.posteriors) for c in p], hop) for p in pieces]
            quiet = [p[0].whole_quiet if p[0].whole_quiet is not None else  # (T, 1) -> (T,)
                     stitch_posteriors([(c.start, c.total, c.quiet[:, None]) for c in p], hop)[:, 0] for p in pieces]
            lengths = torch.tensor([len(p) for p in stitched])
            log_probs = torch.nn.utils.rnn.pad_sequence(stitched, batch_first=True)  # (inputs, T, C)
            quiet = torch.nn.utils.rnn.pad_sequence(quiet, batch_first=True, padding_value=True)  # (inputs, T)
            llm = None
            if return_timestamps in CONFIDENCE_LEVELS:
                llm = [char_probabilities_of_text(c, p, decode) for c, p in zip(chunks, pieces)]
            for out, found in zip(outputs, align_texts(self.model, log_probs, lengths, [o["text"] for o in outputs],
                                                       return_timestamps, self.tokenizer, quiet=quiet,
                                                       llm_probabilities=llm)):
                out["chunks"] = found
        return outputs

    def save_pretrained(self, save_directory, **kwargs):
        """`Pipeline.save_pretrained` (model, tokenizer, feature extractor), plus what makes the folder open with this
        class: `custom_pipelines` in config.json, and the remote-code files (this folder's `*_hubert_gpt.py`: the
        ones this file imports, and theirs).

        The base class writes those only for a class registered with `PIPELINE_REGISTRY.register_pipeline`, which
        would also replace the stock automatic-speech-recognition pipeline for every model in the process.
        """
        register_pipeline_in_config(self.model.config)
        super().save_pretrained(save_directory, **kwargs)
        if os.path.isdir(save_directory):  # the base class logs an error and saves nothing for a file path
            for path in sorted(Path(sys.modules[__name__].__file__).parent.glob("*_hubert_gpt.py")):
                shutil.copy(path, save_directory)


# --- saving with the model ----------------------------------------------------------------------------------------
def register_pipeline_in_config(config, model_auto_class="AutoModelForSpeechSeq2Seq"):
    """Set `config.custom_pipelines` so that a saved folder opens with this pipeline.

    `pipeline(TASK, model=folder, trust_remote_code=True)` reads `config.custom_pipelines[TASK]`: `"impl"` is
    "<module file>.<class>" loaded from the folder (so pipeline_hubert_gpt.py must be saved there too), `"pt"` the
    names of transformers auto classes it tries to load the model with (so `model_auto_class` must be a key of the
    config's `auto_map`, or registered). This is what `Pipeline.save_pretrained` writes after
    `PIPELINE_REGISTRY.register_pipeline`, without registering anything globally.
    """
    module = HubertGptASRPipeline.__module__.split(".")[-1]
    config.custom_pipelines = {
        TASK: {"impl": f"{module}.{HubertGptASRPipeline.__name__}", "pt": [model_auto_class]},
    }
    return config
