"""Bridges: encoder frames (B, T, Da) -> the LLM's speech prompt (B, T', Dt), behind one interface and a registry.

A bridge is a `HubertGptBridge` subclass registered under a `bridge_type` with `register_bridge`. It reads its own
options from `config.bridge_config` (a dict: `default_options` filled in, checked by `check_options`), and it says
how long its output is (`output_lengths`) and how many encoder frames one output frame needs (`min_frames`). A
bridge that picks frames with the CTC head (`uses_ctc_head = True`) gets the head's logits in `forward`.

Remote code: imports torch and the public transformers API only.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


def conv_output_lengths(lengths, kernel_sizes, strides):
    """Output length of a stack of unpadded Conv1d layers for each input length (0 where too short)."""
    for kernel, stride in zip(kernel_sizes, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        lengths = lengths.clamp(min=0)
    return lengths


def conv_input_length(output_length, kernel_sizes, strides):
    """The fewest inputs a stack of unpadded Conv1d layers needs for `output_length` outputs."""
    for kernel, stride in zip(reversed(kernel_sizes), reversed(strides)):
        output_length = (output_length - 1) * stride + kernel
    return output_length


class BridgeOutput(NamedTuple):
    """embeds (B, T', Dt): the speech prompt, padded after each row's `lengths` (B,) real frames."""

    embeds: torch.Tensor
    lengths: torch.LongTensor


class HubertGptBridge(nn.Module):
    """Base class of bridges. Subclasses set `default_options`, build themselves from `config` and implement
    `forward`, `output_lengths` and (when above 1) `min_frames`."""

    default_options = {}
    uses_ctc_head = False  # True: forward receives the CTC head's logits (B, T, C) and the model must have a head

    @classmethod
    def check_options(cls, options):
        """`config.bridge_config` -> the complete, checked options (defaults filled in). Unknown keys are errors."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.default_options))
        if unknown:
            raise ValueError(
                f"bridge_config for {cls.__name__} has unknown option(s) {unknown}; it takes {sorted(cls.default_options)}"
            )
        return {**cls.default_options, **options}

    @property
    def min_frames(self):
        """The fewest encoder frames that give one output frame."""
        return 1

    def output_lengths(self, frame_lengths):
        """Output frames for each input length (B,): exact, or an upper bound where the data decides."""
        raise NotImplementedError

    def forward(self, hidden, frame_lengths, ctc_logits=None):
        """hidden (B, T, Da), frame_lengths (B,), ctc_logits (B, T, C) or None -> BridgeOutput."""
        raise NotImplementedError


_BRIDGES = {}


def register_bridge(name, bridge_class):
    """Make `bridge_type=name` build `bridge_class` (a `HubertGptBridge` subclass). Re-registering a name replaces it."""
    if not (isinstance(bridge_class, type) and issubclass(bridge_class, HubertGptBridge)):
        raise TypeError(f"register_bridge({name!r}, ...) needs a HubertGptBridge subclass, got {bridge_class!r}")
    _BRIDGES[name] = bridge_class
    return bridge_class


def bridge_class(name):
    """The bridge class registered under `name`."""
    if name not in _BRIDGES:
        raise ValueError(
            f"bridge_type {name!r} is not registered; registered: {sorted(_BRIDGES)} "
            "(a bridge of your own: modeling_hubert_gpt.register_bridge(name, cls) before building the model)"
        )
    return _BRIDGES[name]


class HubertGptConvBridge(HubertGptBridge):
    """Strided Conv1d + GELU layers (50 Hz -> 12.5 Hz by default), then a Linear to the LLM width (the paper's)."""

    default_options = {"kernel_sizes": [4, 4], "strides": [2, 2]}

    @classmethod
    def check_options(cls, options):
        options = super().check_options(options)
        kernels, strides = list(options["kernel_sizes"]), list(options["strides"])
        if len(kernels) != len(strides) or not all(isinstance(x, int) and x >= 1 for x in kernels + strides):
            raise ValueError(
                f"conv bridge: kernel_sizes {kernels} and strides {strides} must be lists of positive ints of the same "
                "length (one entry per Conv1d)"
            )
        return {"kernel_sizes": kernels, "strides": strides}

    def __init__(self, config):
        super().__init__()
        options = self.check_options(config.bridge_config)
        width = config.audio_config.hidden_size
        self.kernel_sizes, self.strides = options["kernel_sizes"], options["strides"]
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size=k, stride=s) for k, s in zip(self.kernel_sizes, self.strides)
        )
        self.proj = nn.Linear(width, config.text_config.hidden_size)

    @property
    def min_frames(self):
        return conv_input_length(1, self.kernel_sizes, self.strides)

    def output_lengths(self, frame_lengths):
        return conv_output_lengths(frame_lengths, self.kernel_sizes, self.strides)

    def forward(self, hidden, frame_lengths, ctc_logits=None):
        hidden = hidden.transpose(1, 2)  # (B, Da, T): channels first for Conv1d
        for conv in self.convs:
            hidden = F.gelu(conv(hidden))
        hidden = hidden.transpose(1, 2)  # (B, T', Da)
        return BridgeOutput(self.proj(hidden), self.output_lengths(frame_lengths))


class HubertGptCtcBridge(HubertGptBridge):
    """CTC compression: frames whose greedy CTC label is blank are dropped; with `merge_repeats`, each run of
    consecutive frames with one label is averaged into one frame. The kept frames are projected to the LLM width."""

    default_options = {"merge_repeats": True}
    uses_ctc_head = True

    def __init__(self, config):
        super().__init__()
        self.merge_repeats = bool(self.check_options(config.bridge_config)["merge_repeats"])
        self.config = config  # the blank id is read at each call: resize_token_embeddings moves it
        self.proj = nn.Linear(config.audio_config.hidden_size, config.text_config.hidden_size)

    def output_lengths(self, frame_lengths):
        """Upper bound: the kept frames depend on the CTC predictions, never more than the encoder frames."""
        return frame_lengths

    def forward(self, hidden, frame_lengths, ctc_logits=None):
        if ctc_logits is None:
            raise ValueError("the ctc bridge picks frames with the CTC head's logits; forward got none")
        batch, frames, width = hidden.shape
        blank_id = self.config.ctc_head_config["blank_id"]
        labels = ctc_logits.argmax(-1)  # (B, T)
        valid = torch.arange(frames, device=hidden.device) < frame_lengths[:, None]
        keep = valid & (labels != blank_id)
        empty = ~keep.any(-1)
        if empty.any():
            # All frames blank: keep the frame least sure to be blank, so the LLM still hears something.
            blank_logprob = ctc_logits.float().log_softmax(-1)[..., blank_id].masked_fill(~valid, float("inf"))
            keep = keep | (F.one_hot(blank_logprob.argmin(-1), frames).bool() & empty[:, None])
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
        return BridgeOutput(self.proj(merged), out_lengths)


register_bridge("conv", HubertGptConvBridge)
register_bridge("ctc", HubertGptCtcBridge)
