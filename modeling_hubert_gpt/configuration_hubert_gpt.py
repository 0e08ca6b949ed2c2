"""Configuration of hubert-gpt: a speech encoder, a bridge and a causal language model."""

from transformers import AutoConfig, PretrainedConfig

# The paper's LLM (rinna/japanese-gpt-neox-3.6b) is the default text model's shape.
_DEFAULT_TEXT_CONFIG = {
    "model_type": "gpt_neox",
    "vocab_size": 32000,
    "hidden_size": 2816,
    "num_hidden_layers": 36,
    "num_attention_heads": 22,
    "intermediate_size": 11264,
    "use_parallel_residual": False,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "pad_token_id": 3,
}

AUDIO_FRONTENDS = ("conv", "log_mel")
BRIDGE_TYPES = ("conv", "ctc")


def _as_config(value, default_model_type, name):
    """Turn None, a dict (with optional `model_type`) or a config object into a config object."""
    if value is None:
        return AutoConfig.for_model(default_model_type)
    if isinstance(value, dict):
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type", default_model_type), **value)
    if isinstance(value, PretrainedConfig):
        return value
    raise TypeError(f"{name} must be a PretrainedConfig, a dict or None, got {type(value).__name__}")


class HubertGptConfig(PretrainedConfig):
    r"""
    Configuration of [`HubertGptForConditionalGeneration`].

    Args:
        audio_config (`PretrainedConfig` or `dict`, *optional*):
            The speech encoder's config: any encoder with HuBERT's interface (HuBERT, WavLM, wav2vec 2.0).
            Defaults to HuBERT base.
        text_config (`PretrainedConfig` or `dict`, *optional*):
            The causal language model's config: anything `AutoModelForCausalLM` knows. Defaults to the shape of
            rinna/japanese-gpt-neox-3.6b.
        audio_frontend (`str`, *optional*, defaults to `"conv"`):
            `"conv"`: the encoder's own conv stack on raw audio (what pretrained encoders have).
            `"log_mel"`: a log-mel spectrogram (one frame per encoder frame) + Conv1d + LayerNorm + GELU in place of
            the conv stack, for encoders trained from scratch: it learns many times faster than a conv stack on raw
            audio and costs a fraction of its compute. Frames are counted as the conv stack counts them.
        log_mel_bins (`int`, *optional*, defaults to 80):
            Mel bands of the `"log_mel"` front end.
        bridge_type (`str`, *optional*, defaults to `"conv"`):
            `"conv"`: strided Conv1d + GELU layers, then a Linear to the LLM width (50 Hz -> 12.5 Hz).
            `"ctc"`: a CTC head over the LLM vocabulary plus blank; blank frames are dropped, then a Linear.
        bridge_conv_kernel_size (`list[int]`, *optional*, defaults to `[4, 4]`):
            Kernel size of each bridge Conv1d (conv bridge).
        bridge_conv_stride (`list[int]`, *optional*, defaults to `[2, 2]`):
            Stride of each bridge Conv1d (conv bridge).
        ctc_head (`bool`, *optional*):
            Whether the model has a CTC head over the LLM vocabulary (+ blank) on the encoder frames. The ctc bridge
            always has one (it picks the frames); a conv bridge gets one with `ctc_head=True`: trained by the
            auxiliary CTC loss, it adds nothing to the speech prompt, but its greedy hypothesis is the draft of
            `generate(..., ctc_draft=True)` (lossless speculative decoding). Defaults to `bridge_type == "ctc"`.
        ctc_head_trains_encoder (`bool`, *optional*, defaults to `True`):
            Conv bridge with `ctc_head=True`: whether the auxiliary CTC loss also trains the encoder (joint CTC
            training) or only the CTC head, on the encoder's output with its gradient stopped: a pure draft head,
            the recognizer trains exactly as without it. The ctc bridge's head always trains the encoder. Give
            such a head a small `ctc_loss_weight` (0.01): Adam's step does not depend on the scale of its gradient,
            but gradient clipping over all parameters does, and a large CTC gradient would shrink every step.
        ctc_head_vocab (`list[str]`, *optional*):
            Conv bridge with `ctc_head=True`: the characters of a character-level CTC draft head. Unset, the head
            predicts LLM tokens. With characters, the head is trained on the transcript's characters (`ctc_targets`,
            which the training collator builds) and its greedy text is tokenized by the LLM's tokenizer to draft
            (`generate(..., ctc_draft=True, tokenizer=...)`; the pipeline passes its own): it matches the LLM's
            pieces far better than token-level CTC, which cannot spell long sentencepiece pieces.
        ctc_head_kernel_size (`int`, *optional*, defaults to 1):
            Conv bridge with `ctc_head=True`: 1 makes the draft head one Linear per frame; an odd k > 1 puts a
            Conv1d over k frames (the encoder's width, same padding) and a GELU before it, so each frame's label sees
            its neighbours: a far better draft for little compute (the head does not touch the prompt).
        ctc_blank_id (`int`, *optional*):
            Index of the blank label in the CTC head's output. Defaults to an extra class after the labels
            (`text_config.vocab_size`, or `len(ctc_head_vocab)`).
        ctc_merge_repeats (`bool`, *optional*, defaults to `True`):
            Average runs of consecutive frames with the same CTC label into one frame (ctc bridge).
        ctc_loss_weight (`float`, *optional*, defaults to `0.3`):
            Weight of the auxiliary CTC loss added to the LLM loss in training (models with a CTC head; 0 turns it
            off).
        prompt_bos_token_id (`int`, *optional*):
            Token placed before the speech in the LLM prompt. Defaults to `text_config.bos_token_id`.
        prompt_sep_token_id (`int`, *optional*):
            Token placed after the speech, where the transcript begins. Defaults to `prompt_bos_token_id`; the
            paper uses `[SEP]`.
        max_new_tokens_per_second (`float`, *optional*, defaults to `4.0`):
        max_new_tokens_base (`int`, *optional*, defaults to `20`):
            Unless `max_new_tokens`/`max_length` is given, an utterance of `s` seconds may generate at most
            `int(max_new_tokens_per_second * s + max_new_tokens_base + 0.5)` tokens (nue-asr's bound), so a
            looping LLM cannot run away.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the encoder's input audio.
        encoder_max_padding (`float`, *optional*, defaults to 0.1):
            On CPU, a batch of audio of mixed lengths is encoded in length-sorted groups, each with at most this
            share of padded samples: a CPU encoder is compute-bound, so batching saves it nothing while padding costs
            its full share. `None` encodes every batch in one call, as accelerators always do (there one large call
            beats several small ones). Outputs are the same either way.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the bridge weights' initialisation.
    """

    model_type = "hubert_gpt"
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_config=None,
        text_config=None,
        bridge_type="conv",
        audio_frontend="conv",
        log_mel_bins=80,
        bridge_conv_kernel_size=(4, 4),
        bridge_conv_stride=(2, 2),
        ctc_head=None,
        ctc_head_trains_encoder=True,
        ctc_head_vocab=None,
        ctc_head_kernel_size=1,
        ctc_blank_id=None,
        ctc_merge_repeats=True,
        ctc_loss_weight=0.3,
        prompt_bos_token_id=None,
        prompt_sep_token_id=None,
        max_new_tokens_per_second=4.0,
        max_new_tokens_base=20,
        sampling_rate=16000,
        encoder_max_padding=0.1,
        initializer_range=0.02,
        **kwargs,
    ):
        if text_config is None:
            text_config = dict(_DEFAULT_TEXT_CONFIG)
        self.audio_config = _as_config(audio_config, "hubert", "audio_config")
        self.text_config = _as_config(text_config, "gpt_neox", "text_config")
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(
                f"text_config (model_type {self.text_config.model_type!r}) is an encoder-decoder; "
                "hubert-gpt needs a decoder-only causal LM (gpt_neox, llama, ...)"
            )
        if bridge_type not in BRIDGE_TYPES:
            raise ValueError(f"bridge_type must be one of {BRIDGE_TYPES}, got {bridge_type!r}")
        if len(bridge_conv_kernel_size) != len(bridge_conv_stride):
            raise ValueError(
                f"bridge_conv_kernel_size {list(bridge_conv_kernel_size)} and bridge_conv_stride "
                f"{list(bridge_conv_stride)} must have the same length (one entry per Conv1d)"
            )
        self.bridge_type = bridge_type
        if bridge_type == "ctc" and ctc_head is False:
            raise ValueError("ctc_head=False with bridge_type='ctc': the CTC bridge needs its CTC head to pick frames")
        self.ctc_head = bridge_type == "ctc" if ctc_head is None else bool(ctc_head)
        if bridge_type == "ctc" and not ctc_head_trains_encoder:
            raise ValueError("ctc_head_trains_encoder=False is for a conv bridge's draft head; the ctc bridge's CTC "
                             "head picks the prompt's frames, so its loss always trains the encoder")
        self.ctc_head_trains_encoder = bool(ctc_head_trains_encoder)
        if audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio_frontend must be one of {AUDIO_FRONTENDS}, got {audio_frontend!r}")
        self.audio_frontend = audio_frontend
        self.log_mel_bins = log_mel_bins
        self.bridge_conv_kernel_size = list(bridge_conv_kernel_size)
        self.bridge_conv_stride = list(bridge_conv_stride)
        if ctc_head_vocab is not None:
            if bridge_type != "conv" or not self.ctc_head:
                raise ValueError("ctc_head_vocab (a character-level CTC draft head) needs bridge_type='conv' and "
                                 "ctc_head=True; the ctc bridge's head predicts LLM tokens")
            if len(set(ctc_head_vocab)) != len(ctc_head_vocab) or not all(isinstance(c, str) and c for c in ctc_head_vocab):
                raise ValueError("ctc_head_vocab must be a list of distinct, non-empty strings (characters)")
        self.ctc_head_vocab = None if ctc_head_vocab is None else list(ctc_head_vocab)
        if not (isinstance(ctc_head_kernel_size, int) and ctc_head_kernel_size >= 1 and ctc_head_kernel_size % 2):
            raise ValueError(f"ctc_head_kernel_size must be an odd int >= 1, got {ctc_head_kernel_size!r}")
        if ctc_head_kernel_size > 1 and (bridge_type != "conv" or not self.ctc_head):
            raise ValueError("ctc_head_kernel_size > 1 (a conv draft head) needs bridge_type='conv' and ctc_head=True; "
                             "the ctc bridge's head labels each frame alone to pick the prompt's frames")
        self.ctc_head_kernel_size = ctc_head_kernel_size
        vocab_size = self.ctc_label_vocab_size
        self.ctc_blank_id = vocab_size if ctc_blank_id is None else ctc_blank_id
        if not 0 <= self.ctc_blank_id <= vocab_size:
            raise ValueError(f"ctc_blank_id must be in [0, {vocab_size}] ({vocab_size} is the extra class), got {ctc_blank_id}")
        self.ctc_merge_repeats = ctc_merge_repeats
        self.ctc_loss_weight = ctc_loss_weight
        self.prompt_bos_token_id = getattr(self.text_config, "bos_token_id", None) if prompt_bos_token_id is None else prompt_bos_token_id
        self.prompt_sep_token_id = self.prompt_bos_token_id if prompt_sep_token_id is None else prompt_sep_token_id
        for name in ("prompt_bos_token_id", "prompt_sep_token_id"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} is not set and text_config has no bos_token_id to default to")
        self.max_new_tokens_per_second = max_new_tokens_per_second
        self.max_new_tokens_base = max_new_tokens_base
        self.sampling_rate = sampling_rate
        if encoder_max_padding is not None and not 0 <= encoder_max_padding < 1:
            raise ValueError(f"encoder_max_padding must be None or a share in [0, 1), got {encoder_max_padding!r}")
        self.encoder_max_padding = encoder_max_padding
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def ctc_head_alone(self):
        """A conv bridge's CTC draft head whose loss trains the head alone (the encoder's gradient stopped)."""
        return self.bridge_type == "conv" and self.ctc_head and not self.ctc_head_trains_encoder

    @property
    def ctc_label_vocab_size(self):
        """What the CTC head spells: the LLM vocabulary, or the characters of `ctc_head_vocab`."""
        return self.text_config.vocab_size if self.ctc_head_vocab is None else len(self.ctc_head_vocab)

    @property
    def ctc_num_labels(self):
        """Size of the CTC head's output: its labels, plus one when blank is an extra class."""
        vocab_size = self.ctc_label_vocab_size
        return vocab_size + 1 if self.ctc_blank_id == vocab_size else vocab_size


HubertGptConfig.register_for_auto_class()
