"""The speech encoder side of hubert-gpt: `HubertGptAudioEncoder` wraps a Hugging Face encoder (HuBERT, WavLM,
wav2vec 2.0) and owns what hubert-gpt changes about running it.

- Front end: the encoder's own conv stack on raw audio (pretrained encoders), or with `audio_frontend="log_mel"`
  a log-mel spectrogram + Conv1d + LayerNorm + GELU in its place (encoders trained from scratch).
- Padding: every utterance of a batch gets exactly the frames it gets alone. Encoders with
  `feat_extract_norm="group"` (HuBERT base, rinna/japanese-hubert-base) normalise the first conv layer's output over
  the whole time axis, padding included, so they are run in groups of utterances of equal length (no padding at all;
  nothing is changed in the encoder, so gradient checkpointing and every attention implementation work as they do
  upstream). Other encoders run padded with an attention mask.
- On CPU, where an encoder is compute-bound and padding is pure cost, a batch of mixed lengths runs in
  length-sorted groups with at most `max_padding` (a share, default 0.1; a run-time setting, not saved) of padded
  samples each; `max_padding=None` encodes in one call, as accelerators do best.

Remote code: imports torch and the public transformers API only.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.audio_utils import mel_filter_bank

from .bridges_hubert_gpt import conv_input_length, conv_output_lengths

DEFAULT_MAX_PADDING = 0.1


def length_groups(lengths, max_padding):
    """Split a batch into groups of similar length, longest first: each group padded to its longest keeps at most
    `max_padding` of its positions as padding (0: equal lengths only). Returns lists of indices into `lengths`."""
    groups, real = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (real + lengths[i]) >= (1 - max_padding) * lengths[groups[-1][0]] * (len(groups[-1]) + 1):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


class LogMelFrontEnd(nn.Module):
    """`audio_frontend="log_mel"`: a log-mel spectrogram + Conv1d(k=3) + LayerNorm + GELU in place of the conv stack.

    One encoder frame per conv-stack hop, counted as the conv stack counts them, so every length, mask and bridge
    downstream is unchanged. stack=1: one STFT frame per encoder frame (the conv stack's hop and window: 320 and
    400 samples for HuBERT). stack=k > 1: k STFT frames of a 25 ms window at hop/k samples, their log-mels side by
    side (k x num_bins features per encoder frame: the time detail inside a frame that one window blurs). Output
    (B, C, T) with C the conv stack's last width, as the encoder's feature projection expects.
    """

    def __init__(self, audio_config, num_bins, sampling_rate, stack=1):
        super().__init__()
        self.kernel_sizes, self.strides = list(audio_config.conv_kernel), list(audio_config.conv_stride)
        self.hop = math.prod(self.strides)
        if stack < 1 or self.hop % stack:
            raise ValueError(f"log_mel_stack must be a whole divisor of the encoder's hop ({self.hop} samples), "
                             f"got {stack}")
        self.stack, self.sub_hop = stack, self.hop // stack
        one_window = conv_input_length(1, self.kernel_sizes, self.strides)  # the conv stack's receptive field
        self.window = one_window if stack == 1 else round(0.025 * sampling_rate)  # stacked: 25 ms each
        self.n_fft = 2 ** math.ceil(math.log2(self.window))
        self.num_bins, self.sampling_rate = num_bins, sampling_rate
        self._tables = None  # (Hann window, mel matrix): fixed, built on first use (not weights: nothing to save)
        width = audio_config.conv_dim[-1]
        self.proj = nn.Conv1d(num_bins * stack, width, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(width)

    def forward(self, input_values):
        """input_values (B, S) -> features (B, C, T)."""
        frames = int(conv_output_lengths(torch.tensor(input_values.shape[1]), self.kernel_sizes, self.strides))
        # Zeros after the end give one frame past the last counted one (the Conv1d's right neighbour), the same
        # zeros a padded batch has there: a padded utterance gets exactly its features when run alone.
        steps = (frames + 1) * self.stack  # STFT frames used
        needed = (steps - 1) * self.sub_hop + self.n_fft
        audio = F.pad(input_values.float(), (0, max(0, needed - input_values.shape[1])))
        window, mel = self.tables(audio.device)
        spec = torch.stft(audio, self.n_fft, self.sub_hop, self.window, window, center=False, return_complex=True)
        power = torch.view_as_real(spec[..., :steps]).pow(2).sum(-1)  # |X|^2 (B, F, K(T+1)), no sqrt (slow on CPU)
        log_mel = torch.log(mel @ power + 1e-6)  # (M, F) @ (B, F, K(T+1)) -> (B, M, K(T+1))
        batch = log_mel.shape[0]
        stacked = log_mel.view(batch, self.num_bins, frames + 1, self.stack).transpose(2, 3)  # (B, M, K, T+1)
        stacked = stacked.reshape(batch, self.num_bins * self.stack, frames + 1)  # (B, M*K, T+1)
        hidden = self.proj(stacked.to(self.proj.weight.dtype))[..., :frames]  # (B, C, T)
        return F.gelu(self.norm(hidden.transpose(1, 2))).transpose(1, 2)

    def tables(self, device):
        if self._tables is None or self._tables[0].device != device:
            mel = mel_filter_bank(self.n_fft // 2 + 1, self.num_bins, 0.0, self.sampling_rate / 2, self.sampling_rate)
            self._tables = (torch.hann_window(self.window, device=device),
                            torch.tensor(mel.T, dtype=torch.float32, device=device))  # (M, F)
        return self._tables


class HubertGptAudioEncoder(nn.Module):
    """Audio (B, S) + sample lengths (B,) -> encoder frames (B, T, Da), each row as its utterance gives alone.

    `model` is the Hugging Face encoder (weights under `audio_tower.model.*` with the encoder's own names).
    """

    def __init__(self, config, model=None):
        super().__init__()
        audio = config.audio_config
        for key in ("conv_kernel", "conv_stride", "hidden_size"):
            if not hasattr(audio, key):
                raise ValueError(
                    f"audio_config (model_type {audio.model_type!r}) has no {key!r}; hubert-gpt needs an encoder with "
                    "HuBERT's interface (hubert, wavlm, wav2vec2, ...)"
                )
        if config.audio_frontend == "log_mel" and model is not None:
            raise ValueError(
                "audio_frontend='log_mel' replaces the encoder's conv stack, which would drop the given encoder's "
                "weights; use it for encoders built from a config (trained from scratch)"
            )
        self.model = model if model is not None else AutoModel.from_config(audio)
        if config.audio_frontend == "log_mel":
            self.model.feature_extractor = LogMelFrontEnd(audio, config.log_mel_bins, config.sampling_rate,
                                                          config.log_mel_stack)
        self.kernel_sizes, self.strides = list(audio.conv_kernel), list(audio.conv_stride)
        # the first GroupNorm of a "group" encoder sees the whole time axis: such encoders never see padding
        self.equal_lengths_only = config.audio_frontend == "conv" and getattr(audio, "feat_extract_norm", None) == "group"
        self.max_padding = DEFAULT_MAX_PADDING

    @property
    def max_padding(self):
        """CPU batches: the most padding (a share) a group of the encoder's length-sorted groups may have; None: one call."""
        return self._max_padding

    @max_padding.setter
    def max_padding(self, value):
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"max_padding must be None or a share in [0, 1), got {value!r}")
        self._max_padding = value

    @property
    def dtype(self):
        return self.model.dtype

    def output_lengths(self, sample_lengths):
        """Encoder frames (B,) for audio of `sample_lengths` (B,) samples."""
        return conv_output_lengths(sample_lengths, self.kernel_sizes, self.strides)

    def min_samples(self, frames=1):
        """The fewest audio samples that give `frames` encoder frames."""
        return conv_input_length(frames, self.kernel_sizes, self.strides)

    def groups(self, input_values, sample_lengths):
        """How a batch is split into encoder calls: lists of row indices, or None for one call."""
        lengths = sample_lengths.tolist()
        if self.equal_lengths_only:
            groups = length_groups(lengths, 0.0)
        elif input_values.device.type == "cpu" and self.max_padding is not None:
            groups = length_groups(lengths, self.max_padding)
        else:
            return None
        return None if len(groups) == 1 else groups

    def forward(self, input_values, sample_lengths, attention_mask=None):
        """input_values (B, S) with zeros after each row's `sample_lengths` (B,), attention_mask (B, S) or None (no
        padding) -> hidden (B, T, Da).

        Frames past a row's end (see `output_lengths`) are whatever its group's padding gave (zeros past the longest
        row of its group): read only the real ones."""
        groups = None if attention_mask is None else self.groups(input_values, sample_lengths)
        if groups is None:
            return self.run(input_values, attention_mask)
        frames = int(self.output_lengths(sample_lengths).max())
        parts = []
        for group in groups:
            index = torch.tensor(group, device=input_values.device)
            samples = int(sample_lengths[index].max())
            hidden = self.run(input_values[index, :samples], attention_mask[index, :samples])
            parts.append(F.pad(hidden, (0, 0, 0, frames - hidden.shape[1])))  # (G, T, Da): zeros after the longest
        order = torch.tensor([i for group in groups for i in group], device=input_values.device)
        return torch.cat(parts)[torch.argsort(order)]  # (B, T, Da) back in the batch's order

    def run(self, input_values, attention_mask):
        """One encoder call: (B, S) zero-padded audio, (B, S) mask or None -> (B, T, Da)."""
        return self.model(input_values.to(self.model.dtype), attention_mask=attention_mask).last_hidden_state
