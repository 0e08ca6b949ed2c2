"""hubert-gpt: waveform -> speech encoder -> bridge -> causal LLM that writes the transcript.

Shapes: B utterances, S samples, T encoder frames, T' bridge frames, L prompt positions,
Da encoder width, Dt LLM width, V LLM vocabulary.
"""

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.audio_utils import mel_filter_bank
from transformers.utils import ModelOutput, logging

from .configuration_hubert_gpt import HubertGptConfig

logger = logging.get_logger(__name__)


def conv_output_lengths(lengths, kernel_sizes, strides):
    """Output length of a stack of unpadded Conv1d layers for each input length (0 where too short)."""
    for kernel, stride in zip(kernel_sizes, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def receptive_field(kernel_sizes, strides):
    """Input samples one output frame of a stack of Conv1d layers sees."""
    field = 1
    for kernel, stride in zip(reversed(kernel_sizes), reversed(strides)):
        field = (field - 1) * stride + kernel
    return field


def length_groups(lengths, max_padding):
    """Split a batch into groups of similar length, longest first: each group padded to its longest keeps at most
    `max_padding` of its positions as padding. Returns lists of indices into `lengths`."""
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

    One STFT frame per encoder frame (the conv stack's hop and window: 320 and 400 samples for HuBERT), counted as
    the conv stack counts them, so every length, mask and bridge downstream is unchanged. Output (B, C, T) with C the
    conv stack's last width, as the encoder's feature projection expects.
    """

    def __init__(self, audio_config, num_bins, sampling_rate):
        super().__init__()
        self.kernel_sizes, self.strides = list(audio_config.conv_kernel), list(audio_config.conv_stride)
        self.hop = math.prod(self.strides)
        self.window = receptive_field(self.kernel_sizes, self.strides)
        self.n_fft = 2 ** math.ceil(math.log2(self.window))
        self.num_bins, self.sampling_rate = num_bins, sampling_rate
        self._tables = None  # (Hann window, mel matrix): fixed, built on first use (not weights: nothing to save)
        width = audio_config.conv_dim[-1]
        self.proj = nn.Conv1d(num_bins, width, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(width)

    def forward(self, input_values):
        """input_values (B, S) -> features (B, C, T)."""
        frames = int(conv_output_lengths(torch.tensor(input_values.shape[1]), self.kernel_sizes, self.strides))
        # Zeros after the end give one STFT frame past the last counted one (the Conv1d's right neighbour), the same
        # zeros a padded batch has there: a padded utterance gets exactly its features when run alone.
        needed = frames * self.hop + self.n_fft
        audio = F.pad(input_values.float(), (0, max(0, needed - input_values.shape[1])))
        window, mel = self.tables(audio.device)
        spec = torch.stft(audio, self.n_fft, self.hop, self.window, window, center=False, return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)  # |X|^2 (B, F, T+1), without complex abs's sqrt (slow on CPU)
        log_mel = torch.log(mel @ power + 1e-6)  # (M, F) @ (B, F, T+1) -> (B, M, T+1)
        hidden = self.proj(log_mel.to(self.proj.weight.dtype))[..., :frames]  # (B, C, T)
        return F.gelu(self.norm(hidden.transpose(1, 2))).transpose(1, 2)

    def tables(self, device):
        if self._tables is None or self._tables[0].device != device:
            mel = mel_filter_bank(self.n_fft // 2 + 1, self.num_bins, 0.0, self.sampling_rate / 2, self.sampling_rate)
            self._tables = (torch.hann_window(self.window, device=device),
                            torch.tensor(mel.T, dtype=torch.float32, device=device))  # (M, F)
        return self._tables


class UtteranceGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics cover each utterance's real frames only.

    HuBERT-base-style encoders (`feat_extract_norm="group"`) normalise the first conv layer's
    output over the whole time axis, so zero padding would change a padded utterance's features.
    The model sets `valid_lengths` (B,) around each encoder call; parameters are nn.GroupNorm's.
    """

    valid_lengths = None

    def forward(self, x):
        if self.valid_lengths is None:
            return super().forward(x)
        batch, channels, frames = x.shape
        grouped = x.float().reshape(batch, self.num_groups, -1, frames)  # (B, G, C/G, T)
        mask = torch.arange(frames, device=x.device) < self.valid_lengths.to(x.device)[:, None]
        mask = mask[:, None, None, :].to(grouped.dtype)  # (B, 1, 1, T)
        count = (mask.sum(-1, keepdim=True) * grouped.shape[2]).clamp(min=1)  # (B, 1, 1, 1)
        mean = (grouped * mask).sum((2, 3), keepdim=True) / count
        var = ((grouped - mean).pow(2) * mask).sum((2, 3), keepdim=True) / count
        normed = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(batch, channels, frames).to(x.dtype)
        if self.affine:
            normed = normed * self.weight[:, None] + self.bias[:, None]
        return normed


class CtcDraftHead(nn.Module):
    """`ctc_head_kernel_size=k > 1`: Conv1d over k encoder frames (same padding) + GELU + Linear to the CTC labels.

    Frames past each utterance's end are zeroed first, so a padded utterance gets the logits it gets alone.
    """

    def __init__(self, width, num_labels, kernel_size):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2)
        self.out = nn.Linear(width, num_labels)

    def forward(self, hidden, frame_lengths=None):
        """hidden (B, T, Da), frame_lengths (B,) -> logits (B, T, V+1)."""
        if frame_lengths is not None:
            valid = torch.arange(hidden.shape[1], device=hidden.device) < frame_lengths.to(hidden.device)[:, None]
            hidden = hidden * valid[..., None].to(hidden.dtype)
        hidden = F.gelu(self.conv(hidden.transpose(1, 2))).transpose(1, 2)  # (B, Da, T) for Conv1d, back to (B, T, Da)
        return self.out(hidden)


class HubertGptConvBridge(nn.Module):
    """Strided Conv1d + GELU layers (50 Hz -> 12.5 Hz by default), then a Linear to the LLM width.

    With `config.ctc_head`, also a CTC head on the encoder frames: its logits feed the auxiliary CTC loss and the
    speculative draft; the speech prompt does not depend on it. With `config.ctc_head_trains_encoder=False` the head
    sees the encoder output with its gradient stopped, so the CTC loss trains the head alone.
    """

    def __init__(self, config):
        super().__init__()
        width = config.audio_config.hidden_size
        self.kernel_sizes = config.bridge_conv_kernel_size
        self.strides = config.bridge_conv_stride
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size=k, stride=s) for k, s in zip(self.kernel_sizes, self.strides)
        )
        self.proj = nn.Linear(width, config.text_config.hidden_size)
        self.ctc_head = None
        if config.ctc_head:
            kernel = config.ctc_head_kernel_size
            self.ctc_head = (nn.Linear(width, config.ctc_num_labels) if kernel == 1
                             else CtcDraftHead(width, config.ctc_num_labels, kernel))
        self.ctc_head_trains_encoder = config.ctc_head_trains_encoder

    def output_lengths(self, frame_lengths):
        return conv_output_lengths(frame_lengths, self.kernel_sizes, self.strides)

    def draft_logits(self, hidden, frame_lengths):
        """The CTC head's logits (B, T, V+1) for the encoder output (B, T, Da) with frame_lengths (B,)."""
        if isinstance(self.ctc_head, CtcDraftHead):
            return self.ctc_head(hidden, frame_lengths)
        return self.ctc_head(hidden)

    def forward(self, hidden, frame_lengths, with_ctc=True):
        """hidden (B, T, Da), frame_lengths (B,) -> speech (B, T', Dt), speech_lengths (B,), ctc logits (B, T, V+1)
        or None (no CTC head, or `with_ctc=False`: nothing needs them)."""
        ctc_logits = None
        if self.ctc_head is not None and with_ctc:
            ctc_logits = self.draft_logits(hidden if self.ctc_head_trains_encoder else hidden.detach(), frame_lengths)
        hidden = hidden.transpose(1, 2)  # (B, Da, T): channels first for Conv1d
        for conv in self.convs:
            hidden = F.gelu(conv(hidden))
        hidden = hidden.transpose(1, 2)  # (B, T', Da)
        return self.proj(hidden), self.output_lengths(frame_lengths), ctc_logits


class HubertGptCtcBridge(nn.Module):
    """CTC compression: a CTC head over the LLM vocabulary (+ blank) picks the frames that carry a label.

    Frames whose greedy label is blank are dropped; with `ctc_merge_repeats`, each run of consecutive
    frames with one label is averaged into one frame. The kept frames are projected to the LLM width.
    """

    def __init__(self, config):
        super().__init__()
        width = config.audio_config.hidden_size
        self.blank_id = config.ctc_blank_id
        self.merge_repeats = config.ctc_merge_repeats
        self.ctc_head = nn.Linear(width, config.ctc_num_labels)
        self.proj = nn.Linear(width, config.text_config.hidden_size)

    def output_lengths(self, frame_lengths):
        """Upper bound: the kept frames depend on the CTC predictions, never more than the encoder frames."""
        return frame_lengths

    def forward(self, hidden, frame_lengths, with_ctc=True):
        """hidden (B, T, Da), frame_lengths (B,) -> speech (B, T', Dt), speech_lengths (B,), ctc logits (B, T, V+1)
        (always: they pick the frames)."""
        batch, frames, width = hidden.shape
        logits = self.ctc_head(hidden)
        labels = logits.argmax(-1)  # (B, T)
        valid = torch.arange(frames, device=hidden.device) < frame_lengths[:, None]
        keep = valid & (labels != self.blank_id)
        empty = ~keep.any(-1)
        if empty.any():
            # All frames blank: keep the frame least sure to be blank, so the LLM still hears something.
            blank_logprob = logits.float().log_softmax(-1)[..., self.blank_id].masked_fill(~valid, float("inf"))
            fallback = F.one_hot(blank_logprob.argmin(-1), frames).bool() & empty[:, None]
            keep = keep | fallback
            if not self.training:  # early in training all-blank is the norm, not news
                logger.warning(
                    f"CTC bridge: every frame of utterance(s) {empty.nonzero().flatten().tolist()} was predicted "
                    "blank; kept the one frame least likely blank."
                )
        starts = keep.clone()
        if self.merge_repeats:
            same_as_previous = torch.zeros_like(keep)
            same_as_previous[:, 1:] = keep[:, :-1] & (labels[:, 1:] == labels[:, :-1])
            starts = keep & ~same_as_previous
        segment = starts.long().cumsum(-1) - 1  # (B, T): output index of each kept frame
        out_lengths = starts.sum(-1)
        out_frames = int(out_lengths.max())
        flat_index = (torch.arange(batch, device=hidden.device)[:, None] * out_frames + segment)[keep]
        summed = hidden.new_zeros(batch * out_frames, width).index_add(0, flat_index, hidden[keep])
        counts = hidden.new_zeros(batch * out_frames).index_add(0, flat_index, hidden.new_ones(flat_index.shape))
        merged = (summed / counts.clamp(min=1)[:, None]).view(batch, out_frames, width)  # (B, T', Da)
        return self.proj(merged), out_lengths, logits


class _PerUtteranceLimit(StoppingCriteria):
    """Stops each utterance at its own new-token bound, so batched decoding equals one-at-a-time."""

    def __init__(self, limits):
        self.limits = limits  # (B,)

    def __call__(self, input_ids, scores, **kwargs):
        limits = self.limits.to(input_ids.device).repeat_interleave(input_ids.shape[0] // self.limits.shape[0])
        return input_ids.shape[1] >= limits


class SpeechPrompt(NamedTuple):
    embeds: torch.Tensor  # (B, T', Dt) bridge output, padded
    lengths: torch.LongTensor  # (B,) real bridge frames
    ctc_logits: torch.Tensor | None  # (B, T, V+1), ctc bridge only
    frame_lengths: torch.LongTensor  # (B,) real encoder frames
    sample_lengths: torch.LongTensor  # (B,) real audio samples


@dataclass
class HubertGptOutput(ModelOutput):
    """loss = llm_loss + ctc_loss_weight * ctc_loss; logits (B, L, V) over the packed prompt."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    llm_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    speech_lengths: torch.LongTensor | None = None


class HubertGptForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = HubertGptConfig
    base_model_prefix = "hubert_gpt"
    main_input_name = "input_values"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HubertGptConvBridge", "HubertGptCtcBridge"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: HubertGptConfig, audio_tower=None, language_model=None):
        super().__init__(config)
        for key in ("conv_kernel", "conv_stride", "hidden_size"):
            if not hasattr(config.audio_config, key):
                raise ValueError(
                    f"audio_config (model_type {config.audio_config.model_type!r}) has no {key!r}; hubert-gpt needs "
                    "an encoder with HuBERT's interface (hubert, wavlm, wav2vec2, ...)"
                )
        self.audio_tower = audio_tower if audio_tower is not None else AutoModel.from_config(config.audio_config)
        if config.audio_frontend == "log_mel":
            if audio_tower is not None:
                raise ValueError(
                    "audio_frontend='log_mel' replaces the encoder's conv stack, which would drop the given encoder's "
                    "weights; use it for encoders built from a config (trained from scratch)"
                )
            self.audio_tower.feature_extractor = LogMelFrontEnd(config.audio_config, config.log_mel_bins,
                                                                config.sampling_rate)
        if language_model is None:
            try:
                language_model = AutoModelForCausalLM.from_config(config.text_config)
            except ValueError as err:
                raise ValueError(
                    f"text_config (model_type {config.text_config.model_type!r}) is not a causal language model "
                    "that AutoModelForCausalLM knows; use a decoder-only LM config such as gpt_neox or llama"
                ) from err
        self.language_model = language_model
        self.bridge = HubertGptConvBridge(config) if config.bridge_type == "conv" else HubertGptCtcBridge(config)
        if config.audio_frontend == "conv" and getattr(config.audio_config, "feat_extract_norm", None) == "group":
            self._use_utterance_group_norm()
        self.post_init()
        # Some encoders name only one of their layer classes (HuBERT omits its stable-layer-norm layer).
        encoder_layers = getattr(getattr(self.audio_tower, "encoder", None), "layers", None)
        if encoder_layers:
            self._no_split_modules.add(type(encoder_layers[0]).__name__)
        eos_id = getattr(config.text_config, "eos_token_id", None)
        pad_id = getattr(config.text_config, "pad_token_id", None)
        self.generation_config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            bos_token_id=config.prompt_bos_token_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id if pad_id is None else pad_id,
        )

    def _use_utterance_group_norm(self):
        """Swap the first conv layer's GroupNorm for UtteranceGroupNorm (same parameters) on 'group' encoders."""
        layer = self.audio_tower.feature_extractor.conv_layers[0]
        norm = layer.layer_norm
        replacement = UtteranceGroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        replacement.load_state_dict(norm.state_dict())
        layer.layer_norm = replacement

    @property
    def _frame_norm(self):
        """The encoder's UtteranceGroupNorm, or None when the encoder normalises per frame."""
        extractor = getattr(self.audio_tower, "feature_extractor", None)
        layers = getattr(extractor, "conv_layers", None)
        norm = getattr(layers[0], "layer_norm", None) if layers else None
        return norm if isinstance(norm, UtteranceGroupNorm) else None

    @classmethod
    def from_pretrained_components(cls, audio_model, text_model, bridge_type="conv", dtype=None, **config_kwargs):
        """Build a model from a pretrained encoder and a pretrained causal LM (hub ids, folders or models).

        The bridge is initialised at random; the encoder and LLM keep their pretrained weights.
        e.g. `from_pretrained_components("rinna/japanese-hubert-base", "rinna/japanese-gpt-neox-3.6b")`.
        """
        if isinstance(audio_model, str):
            audio_model = AutoModel.from_pretrained(audio_model, dtype=dtype)
        if isinstance(text_model, str):
            text_model = AutoModelForCausalLM.from_pretrained(text_model, dtype=dtype)
        config = HubertGptConfig(
            audio_config=audio_model.config, text_config=text_model.config, bridge_type=bridge_type, **config_kwargs
        )
        model = cls(config, audio_tower=audio_model, language_model=text_model)
        return model.to(text_model.dtype)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also records the ASR pipeline in config.json, so the folder works with `pipeline(..., trust_remote_code=True)`."""
        from .pipeline_hubert_gpt import register_pipeline_in_config  # a relative import: the file is saved alongside

        register_pipeline_in_config(self.config)
        # custom_object_save adds the AutoModelForSpeechSeq2Seq entry; plain AutoModel opens the same class.
        name = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": name}
        return super().save_pretrained(save_directory, *args, **kwargs)

    # --- embeddings, delegated to the LLM ---------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    # --- lengths -----------------------------------------------------------------------------------
    def encoder_output_lengths(self, sample_lengths):
        audio = self.config.audio_config
        return conv_output_lengths(sample_lengths, audio.conv_kernel, audio.conv_stride)

    def output_lengths(self, sample_lengths):
        """Speech-prompt length for each audio length in samples (for the CTC bridge, an upper bound)."""
        return self.bridge.output_lengths(self.encoder_output_lengths(sample_lengths))

    @property
    def min_input_samples(self):
        """The fewest audio samples that give at least one bridge frame."""
        audio = self.config.audio_config
        length = 1  # one bridge frame; the CTC bridge keeps at least one encoder frame
        stacks = [(audio.conv_kernel, audio.conv_stride)]  # walked back from the output: bridge first, then encoder
        if self.config.bridge_type == "conv":
            stacks.insert(0, (self.config.bridge_conv_kernel_size, self.config.bridge_conv_stride))
        for kernels, strides in stacks:
            for kernel, stride in reversed(list(zip(kernels, strides))):
                length = (length - 1) * stride + kernel
        return length

    def max_new_tokens_for(self, sample_lengths):
        """nue-asr's generation bound per utterance: int(per_second * seconds + base + 0.5)."""
        seconds = sample_lengths.double() / self.config.sampling_rate
        bound = self.config.max_new_tokens_per_second * seconds + self.config.max_new_tokens_base + 0.5
        return bound.floor().long()

    def generation_config_for(self, generation_config, kwargs):
        """This call's GenerationConfig (generate() keywords moved in from `kwargs`), and whether each utterance
        gets its own new-token bound: yes unless the call gives max_new_tokens/max_length or the config sets
        max_new_tokens. A config's max_length alone is not a bound here: it counts the speech prompt, and
        Seq2SeqTrainer writes the legacy default (20) into the model's config."""
        config = copy.deepcopy(generation_config or self.generation_config)
        asked = any(kwargs.get(k) is not None for k in ("max_new_tokens", "max_length"))
        config.update(**{k: kwargs.pop(k) for k in list(kwargs) if hasattr(config, k)})
        per_utterance = not asked and config.max_new_tokens is None
        if per_utterance:
            config.max_length = None
        return config, per_utterance

    # --- speech -> speech prompt ---------------------------------------------------------------------
    def _sample_lengths(self, input_values, attention_mask):
        if input_values is None:
            raise ValueError("input_values (B, S) float audio is required")
        if input_values.dim() == 1:
            input_values = input_values[None]
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples) mono audio, got shape {tuple(input_values.shape)}")
        if not input_values.is_floating_point():
            raise ValueError(
                f"input_values must be float audio in [-1, 1], got dtype {input_values.dtype}; "
                "the processor converts int16/int32 PCM"
            )
        if attention_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[1], device=input_values.device)
        else:
            lengths = attention_mask.long().sum(-1)
        real = torch.arange(input_values.shape[1], device=input_values.device) < lengths[:, None]
        bad = ~torch.isfinite(input_values).logical_or(~real).all(-1)
        if bad.any():
            raise ValueError(f"input_values of utterance(s) {bad.nonzero().flatten().tolist()} contain NaN or Inf samples")
        short = lengths < self.min_input_samples
        if short.any():
            index = int(short.nonzero()[0])
            raise ValueError(
                f"utterance {index} has {int(lengths[index])} samples; this model needs at least "
                f"{self.min_input_samples} ({self.min_input_samples / self.config.sampling_rate:.3f} s at "
                f"{self.config.sampling_rate} Hz)"
            )
        return input_values, lengths

    def encode_speech(self, input_values, attention_mask=None, with_ctc=True):
        """Audio (B, S) -> SpeechPrompt: speech (B, T', Dt) and lengths, CTC logits, encoder and sample lengths.

        with_ctc=False: a conv bridge's draft head is not run (ctc_logits None); the ctc bridge always runs its head.
        """
        hidden, frame_lengths, sample_lengths = self.encode_audio(input_values, attention_mask)
        speech, speech_lengths, ctc_logits = self.bridge(hidden, frame_lengths, with_ctc=with_ctc)
        return SpeechPrompt(speech, speech_lengths, ctc_logits, frame_lengths, sample_lengths)

    def encode_audio(self, input_values, attention_mask=None):
        """Audio (B, S) -> the encoder's output (B, T, Da), its frame lengths (B,) and the sample lengths (B,).

        On CPU a batch of mixed lengths runs in length-sorted groups (`config.encoder_max_padding`); frames past
        the longest utterance of a group are zeros then.
        """
        input_values, sample_lengths = self._sample_lengths(input_values, attention_mask)
        if attention_mask is not None:
            # Padded samples are zeros, as they are for a single utterance run without padding.
            attention_mask = attention_mask.to(input_values.device).long()
            input_values = input_values * attention_mask
        frame_lengths = self.encoder_output_lengths(sample_lengths)
        groups = None
        if input_values.device.type == "cpu" and self.config.encoder_max_padding is not None and attention_mask is not None:
            groups = length_groups(sample_lengths.tolist(), self.config.encoder_max_padding)
        if groups is None or len(groups) == 1:
            return self._run_encoder(input_values, attention_mask, sample_lengths), frame_lengths, sample_lengths
        frames = int(frame_lengths.max())
        parts = []
        for group in groups:
            index = torch.tensor(group, device=input_values.device)
            samples = int(sample_lengths[index].max())
            hidden = self._run_encoder(input_values[index, :samples], attention_mask[index, :samples], sample_lengths[index])
            parts.append(F.pad(hidden, (0, 0, 0, frames - hidden.shape[1])))  # (G, T, Da): zeros after the longest
        order = torch.tensor([i for group in groups for i in group], device=input_values.device)
        hidden = torch.cat(parts)[torch.argsort(order)]  # (B, T, Da) back in the batch's order
        return hidden, frame_lengths, sample_lengths

    def _run_encoder(self, input_values, attention_mask, sample_lengths):
        """One encoder call: (B, S) zero-padded audio -> (B, T, Da)."""
        audio = self.config.audio_config
        if self._frame_norm is not None:
            self._frame_norm.valid_lengths = conv_output_lengths(sample_lengths, audio.conv_kernel[:1], audio.conv_stride[:1])
        try:
            return self.audio_tower(
                input_values.to(self.audio_tower.dtype), attention_mask=attention_mask
            ).last_hidden_state  # (B, T, Da)
        finally:
            if self._frame_norm is not None:
                self._frame_norm.valid_lengths = None

    def pack_prompt(self, speech, speech_lengths, text_ids=None, left_pad=False):
        """Lay out [bos] + speech + [sep] (+ transcript) per utterance.

        speech (B, T', Dt), speech_lengths (B,), text_ids (B, N) with -100 padding or None.
        Returns inputs_embeds (B, L, Dt), attention_mask (B, L), position_ids (B, L), labels (B, L) or None
        (labels are -100 everywhere but on the transcript tokens).
        """
        batch = speech.shape[0]
        device = speech.device
        text_lengths = (text_ids != -100).sum(-1) if text_ids is not None else torch.zeros_like(speech_lengths)
        lengths = speech_lengths + 2 + text_lengths  # (B,)
        total = int(lengths.max())
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and total > context:
            index = int(lengths.argmax())
            raise ValueError(
                f"utterance {index}: speech prompt {int(speech_lengths[index]) + 2} + transcript "
                f"{int(text_lengths[index])} tokens = {total} positions, more than the LLM's context of {context}; "
                "drop or shorten such utterances"
            )
        start = (total - lengths) if left_pad else torch.zeros_like(lengths)  # (B,) first real position
        pad_id = self.generation_config.pad_token_id
        token_ids = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        is_speech = torch.zeros((batch, total), dtype=torch.bool, device=device)
        labels = torch.full((batch, total), -100, dtype=torch.long, device=device) if text_ids is not None else None
        for i in range(batch):
            s, n = int(start[i]), int(speech_lengths[i])
            token_ids[i, s] = self.config.prompt_bos_token_id
            is_speech[i, s + 1 : s + 1 + n] = True
            token_ids[i, s + 1 + n] = self.config.prompt_sep_token_id
            if text_ids is not None:
                text = text_ids[i][text_ids[i] != -100]
                token_ids[i, s + 2 + n : s + 2 + n + len(text)] = text
                labels[i, s + 2 + n : s + 2 + n + len(text)] = text
        embeds = self.get_input_embeddings()(token_ids)  # (B, L, Dt)
        speech_valid = torch.arange(speech.shape[1], device=device) < speech_lengths[:, None]
        embeds = embeds.masked_scatter(is_speech[..., None], speech[speech_valid].to(embeds.dtype))
        positions = torch.arange(total, device=device)[None] - start[:, None]
        attention_mask = (positions >= 0) & (positions < lengths[:, None])
        position_ids = positions.clamp(min=0).masked_fill(~attention_mask, 0)
        return embeds, attention_mask.long(), position_ids, labels

    # --- training -----------------------------------------------------------------------------------
    def forward(self, input_values=None, attention_mask=None, labels=None, ctc_targets=None, **kwargs):
        """LLM loss on the transcript tokens (labels (B, N), -100 padded, ending with eos) + aux CTC loss.

        ctc_targets (B, C), -100 padded: the transcript's character ids for a character-level CTC head
        (`config.ctc_head_vocab`); a token-level head takes its targets from `labels`.
        """
        needs_ctc = labels is not None and self.config.ctc_loss_weight > 0  # the aux loss; inference skips a draft head
        speech = self.encode_speech(input_values, attention_mask, with_ctc=needs_ctc)
        embeds, prompt_mask, position_ids, llm_labels = self.pack_prompt(speech.embeds, speech.lengths, labels)
        outputs = self.language_model(
            inputs_embeds=embeds, attention_mask=prompt_mask, position_ids=position_ids, labels=llm_labels, **kwargs
        )
        llm_loss, ctc_loss, loss = outputs.loss, None, outputs.loss
        if needs_ctc and speech.ctc_logits is not None:  # None: no CTC head
            targets = self.ctc_targets_for(labels, ctc_targets).to(speech.ctc_logits.device)
            ctc_loss = self.ctc_loss(speech.ctc_logits, speech.frame_lengths, targets)
            loss = llm_loss + self.config.ctc_loss_weight * ctc_loss
        return HubertGptOutput(
            loss=loss, logits=outputs.logits, llm_loss=llm_loss, ctc_loss=ctc_loss, speech_lengths=speech.lengths
        )

    def ctc_targets_for(self, labels, ctc_targets=None):
        """What the CTC head learns to spell (B, N), -100 padded: the transcript tokens of `labels` without eos, or
        for a character-level head (`config.ctc_head_vocab`) the character ids `ctc_targets`."""
        if self.config.ctc_head_vocab is None:
            return labels.masked_fill(labels == self.generation_config.eos_token_id, -100)
        if ctc_targets is None:
            raise ValueError(
                "this model's CTC head spells characters (config.ctc_head_vocab): training needs ctc_targets, the "
                "transcript's character ids (hubert_gpt_training.data.SpeechCollator builds them), or set "
                "ctc_loss_weight=0"
            )
        return ctc_targets

    def ctc_loss(self, ctc_logits, frame_lengths, targets):
        """CTC loss of the targets (B, N) (-100 padded: tokens or characters) against the encoder frames."""
        if (targets == self.config.ctc_blank_id).any():
            raise ValueError(f"CTC targets contain the blank id {self.config.ctc_blank_id}; set ctc_blank_id to an unused id")
        target_lengths = (targets != -100).sum(-1)
        log_probs = ctc_logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V+1) as F.ctc_loss wants
        return F.ctc_loss(
            log_probs,
            targets[targets != -100],
            frame_lengths,
            target_lengths,
            blank=self.config.ctc_blank_id,
            zero_infinity=True,
        )

    # --- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_values=None, attention_mask=None, generation_config=None, **kwargs):
        """Transcribe a batch: returns only the new tokens (B, N), padded with pad_token_id after eos.

        Any `GenerationConfig` option or generate() keyword works (num_beams, do_sample, streamer, ...).
        Without max_new_tokens/max_length each utterance stops at its own bound (`max_new_tokens_for`).
        """
        kwargs.pop("labels", None)  # Seq2SeqTrainer passes the training batch; transcripts are not a prompt here
        kwargs.pop("ctc_targets", None)
        if kwargs.pop("ctc_draft", False):  # lossless CTC-draft speculative greedy decoding (ctc bridge)
            from .speculative_hubert_gpt import ctc_draft_generate  # a relative import: the file is saved alongside

            return ctc_draft_generate(self, input_values, attention_mask, generation_config, **kwargs)
        speech = self.encode_speech(input_values, attention_mask, with_ctc=False)  # plain decoding drafts nothing
        embeds, prompt_mask, position_ids, _ = self.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
        generation_config, per_utterance = self.generation_config_for(generation_config, kwargs)
        if per_utterance:
            limits = self.max_new_tokens_for(speech.sample_lengths)
            generation_config.max_new_tokens = int(limits.max())
            if generation_config.num_beams == 1:
                kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [*kwargs.get("stopping_criteria", []), _PerUtteranceLimit(limits)]
                )
        if (generation_config.num_beams == 1 and generation_config.use_cache is not False
                and generation_config.cache_implementation is None and not {"cache", "past_key_values"} & set(kwargs)):
            # a KV cache that appends in place (beam search reorders its cache every step: it keeps the default)
            from .cache_hubert_gpt import cache_keyword, new_cache  # a relative import: the file is saved alongside

            kwargs[cache_keyword(self.language_model)[0]] = new_cache(self.language_model)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=prompt_mask,
            position_ids=position_ids,
            generation_config=generation_config,
            **kwargs,
        )


HubertGptForConditionalGeneration.register_for_auto_class("AutoModelForSpeechSeq2Seq")
