"""HubertGptProcessor: raw audio and transcripts -> HubertGpt model inputs and labels.

Remote code: depends on numpy, torch and the public transformers API only.
"""

import numbers

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

# A 2-D array whose shorter side is at most this long is one multi-channel recording, downmixed by the mean.
MAX_CHANNELS = 8

# Integer PCM -> float in [-1, 1): divide by full scale (uint8 PCM is offset by 128).
_PCM_SCALE = {
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2.0**31),
    np.dtype(np.uint8): (128.0, 128.0),
}


class HubertGptProcessor(ProcessorMixin):
    r"""
    Turns raw audio and transcripts into inputs for `HubertGptForConditionalGeneration`.

    Args:
        feature_extractor ([`Wav2Vec2FeatureExtractor`]-style):
            Raw waveform in, `input_values` out. Its `sampling_rate` is the only rate accepted, and its `do_normalize`
            is honoured (normalisation is per utterance, over its real samples only).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer (sentencepiece, rinna/japanese-gpt-neox-3.6b-style). Must have an
            `eos_token`.

    Call `processor(audio=..., text=..., sampling_rate=16000, return_tensors="pt")`:

    - `audio`: one utterance or a list of them. An utterance is a 1-D array/tensor/list of samples, or a 2-D array
      `(channels, samples)` / `(samples, channels)` with at most `MAX_CHANNELS` channels (downmixed by the mean). So a
      batch must be a list: a single 2-D array is read as ONE multi-channel recording. Floats are taken as they are
      (expected in [-1, 1]); int16 / int32 / uint8 PCM is scaled to [-1, 1).
    - `text`: a transcript or a list of them, one per utterance.
    - `sampling_rate`: required with `audio`; it must equal the feature extractor's (resample beforehand: the
      HubertGpt ASR pipeline does).

    Returns a [`BatchFeature`] with, for audio, `input_values` `(B, S)` float32 right-padded with the feature
    extractor's `padding_value` and `attention_mask` `(B, S)` long (1 on real samples), which go straight into
    `model.generate(**inputs)`; and for text, `labels` `(B, N)` long: the transcript's token ids (no special tokens)
    followed by `eos_token_id`, right-padded with -100.
    """

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    def __call__(self, audio=None, text=None, sampling_rate=None, return_tensors="pt"):
        if audio is None and text is None:
            raise ValueError("Pass `audio` (waveforms), `text` (transcripts) or both; got neither.")
        outputs = {}
        if audio is not None:
            waves = self._prepare_audio(audio, sampling_rate)
            features = self.feature_extractor(
                waves, sampling_rate=sampling_rate, padding="longest", return_attention_mask=True, return_tensors="np"
            )
            outputs.update(features)
            outputs["attention_mask"] = np.asarray(features["attention_mask"], dtype=np.int64)
        if text is not None:
            texts = self._prepare_text(text)
            if audio is not None and len(texts) != len(waves):
                raise ValueError(
                    f"Got {len(waves)} audio utterances but {len(texts)} transcripts; pass one per utterance (a batch "
                    f"of audio is a list: a single 2-D array is read as one multi-channel recording)."
                )
            outputs["labels"] = self._make_labels(texts)
        return BatchFeature(outputs, tensor_type=return_tensors)

    @property
    def pad_token_id(self):
        """The tokenizer's pad id (Seq2SeqTrainer pads generated tokens with it)."""
        return self.tokenizer.pad_token_id

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.feature_extractor.model_input_names + ["attention_mask", "labels"]))

    # ---- audio ----

    def _prepare_audio(self, audio, sampling_rate):
        """Check the rate and turn `audio` into a list of mono float32 1-D arrays."""
        expected = self.feature_extractor.sampling_rate
        if sampling_rate is None:
            raise ValueError(
                f"`sampling_rate` is required with `audio` (the rate it was recorded at, in Hz); this processor does "
                f"not guess it. The feature extractor expects {expected} Hz."
            )
        if sampling_rate != expected:
            raise ValueError(
                f"Audio is sampled at {sampling_rate} Hz but the feature extractor expects {expected} Hz. Resample it "
                f"first (the HubertGpt ASR pipeline does; or torchaudio.functional.resample / "
                f"scipy.signal.resample_poly)."
            )
        utterances = _split_batch(audio)
        return [to_mono_float32(x, f"audio[{i}]") for i, x in enumerate(utterances)]

    # ---- text ----

    def _prepare_text(self, text):
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"`text` must be a str or a list of str; got {type(text).__name__}.")
        if len(texts) == 0:
            raise ValueError("`text` is an empty list; pass at least one transcript.")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}] is a {type(t).__name__}; every transcript must be a str.")
        return list(texts)

    def _make_labels(self, texts):
        """Token ids + eos per transcript, right-padded with -100: (B, N) int64."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("The tokenizer has no `eos_token`; labels need one to mark the end of a transcript.")
        rows = [ids + [eos] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        labels = np.full((len(rows), max(len(r) for r in rows)), -100, dtype=np.int64)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = row
        return labels


def _split_batch(audio):
    """One utterance or a list of them -> list of utterances (not yet converted)."""
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return [audio]
    if isinstance(audio, (list, tuple)):
        if len(audio) == 0:
            raise ValueError("`audio` is an empty list; pass at least one utterance.")
        if all(isinstance(x, numbers.Number) for x in audio):
            return [audio]  # a plain list of samples is one utterance
        return list(audio)
    raise TypeError(
        f"`audio` must be a numpy array, a torch tensor, a list of samples, or a list of those; "
        f"got {type(audio).__name__}."
    )


def to_mono_float32(x, name):
    """One utterance (float or int PCM, mono or multi-channel) -> 1-D float32 array; errors name it `name`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    elif isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} is a {type(x).__name__}; expected a numpy array, torch tensor or list of samples."
        )

    if x.dtype in _PCM_SCALE:
        offset, scale = _PCM_SCALE[x.dtype]
        x = (x.astype(np.float64) - offset) / scale
    elif not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{name} has dtype {x.dtype}; expected float samples in [-1, 1] or int16 / int32 / uint8 PCM."
        )

    if x.size == 0:
        raise ValueError(f"{name} is empty (0 samples, shape {x.shape}); every utterance needs samples.")
    if x.ndim == 2:
        channel_axis = int(np.argmin(x.shape))
        if x.shape[channel_axis] > MAX_CHANNELS:
            raise ValueError(
                f"{name} has shape {x.shape}: a 2-D array is read as one multi-channel recording, "
                f"(channels, samples) or (samples, channels) with at most {MAX_CHANNELS} channels. To pass a batch, "
                f"pass a list of 1-D arrays."
            )
        x = x.mean(axis=channel_axis)
    elif x.ndim != 1:
        raise ValueError(
            f"{name} has shape {x.shape}; expected 1-D (samples,) or 2-D (channels, samples) / "
            f"(samples, channels)."
        )

    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(
            f"{name} contains {bad} NaN or Inf samples (of {x.size}); clean or drop this utterance."
        )
    return x.astype(np.float32)


HubertGptProcessor.register_for_auto_class()
