"""Configuration of hubert-gpt: a speech encoder, a bridge and a causal language model."""

from transformers import AutoConfig, PretrainedConfig

from .bridges_hubert_gpt import bridge_class
from .ctc_head_hubert_gpt import check_ctc_head_options

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

# Options of earlier versions and where they live now (a clear error instead of a silently ignored keyword).
_MOVED = {
    "ctc_head": "ctc_head_config (a dict; None: no head)",
    "ctc_head_vocab": "ctc_head_config['vocab']",
    "ctc_head_kernel_size": "ctc_head_config['kernel_size']",
    "ctc_blank_id": "ctc_head_config['blank_id']",
    "ctc_merge_repeats": "bridge_config['merge_repeats'] (ctc bridge)",
    "bridge_conv_kernel_size": "bridge_config['kernel_sizes'] (conv bridge)",
    "bridge_conv_stride": "bridge_config['strides'] (conv bridge)",
    "ctc_loss_weight": "a training setting: model(..., ctc_loss_weight=) / train_hf.py --ctc_loss_weight",
    "ctc_head_trains_encoder": "a training setting: model(..., ctc_trains_encoder=) / train_hf.py --ctc_trains_encoder",
    "max_new_tokens_per_second": "model.generation_config.max_new_tokens_per_second",
    "max_new_tokens_base": "model.generation_config.max_new_tokens_base",
    "encoder_max_padding": "model.audio_tower.max_padding (a run-time setting)",
}


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


def attn_implementations(audio_config, text_config):
    """{"audio_config": ..., "text_config": ...}: the attention implementations ("sdpa", "eager", ...) that the parts'
    configs were loaded with, to give back to the parts once a HubertGptConfig holds their configs (composing resets
    them).

    The one private use of transformers in the model: `PretrainedConfig._attn_implementation` has no public getter
    (transformers 5.24; `set_attn_implementation` is the public setter). tests/test_public_api.py fails if it changes.
    """
    return {"audio_config": audio_config._attn_implementation, "text_config": text_config._attn_implementation}


class HubertGptConfig(PretrainedConfig):
    r"""
    Configuration of [`HubertGptForConditionalGeneration`]: the architecture only. Training settings (CTC loss weight,
    whether the CTC loss trains the encoder) are arguments of `forward` / the trainer; decoding settings (nue-asr's
    per-utterance new-token bound, the CTC head's guards, hotwords, ctc_draft: generate's options) live in
    `model.generation_config`; the CPU encoder's length grouping is
    `model.audio_tower.max_padding`.

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
        log_mel_stack (`int`, *optional*, defaults to 1):
            STFT frames per encoder frame of the `"log_mel"` front end: 1 = one window as long as the conv stack's;
            k > 1 = k windows of 25 ms at a k-th of the hop, stacked (k x `log_mel_bins` features per frame).
        bridge_type (`str`, *optional*, defaults to `"conv"`):
            A registered bridge (`register_bridge`): `"conv"`, strided Conv1d + GELU layers then a Linear to the LLM
            width (50 Hz -> 12.5 Hz); `"ctc"`, CTC compression (frames the CTC head calls blank are dropped, repeats
            averaged), then a Linear.
        bridge_config (`dict`, *optional*):
            The bridge's own options, checked and completed by its class: conv `{"kernel_sizes": [4, 4],
            "strides": [2, 2]}`, ctc `{"merge_repeats": True}`.
        ctc_head_config (`dict`, *optional*):
            A CTC head on the encoder frames (`model.ctc_head`), with options `vocab` (None: LLM tokens; a list of
            characters), `kernel_size` (1: Linear; odd k > 1: Conv1d over k frames + GELU + Linear) and `blank_id`
            (None: an extra class after the labels); see ctc_head_hubert_gpt.py. None: no head, except that a bridge
            that picks frames with it (ctc) gets the default `{}`. With a conv bridge it adds nothing to the prompt:
            it trains by the auxiliary CTC loss and drafts for `generate(..., ctc_draft=True)`.
        prompt_bos_token_id (`int`, *optional*):
            Token placed before the speech in the LLM prompt. Defaults to `text_config.bos_token_id`.
        prompt_sep_token_id (`int`, *optional*):
            Token placed after the speech, where the transcript begins. Defaults to `prompt_bos_token_id`; the
            paper uses `[SEP]`.
        prompt_audio_token_id (`int`, *optional*):
            The in-vocabulary token that stands for each speech position in a token-id prompt: what vLLM's renderer
            needs (hubert_gpt_vllm/; the HF model places speech by position and never reads it). Defaults to
            `text_config.pad_token_id` (None where that is the prompt's bos or sep token, which it must differ from).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the encoder's input audio.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the bridge and CTC head weights' initialisation.
    """

    model_type = "hubert_gpt"
    sub_configs = {"audio_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        audio_config=None,
        text_config=None,
        audio_frontend="conv",
        log_mel_bins=80,
        log_mel_stack=1,
        bridge_type="conv",
        bridge_config=None,
        ctc_head_config=None,
        prompt_bos_token_id=None,
        prompt_sep_token_id=None,
        prompt_audio_token_id=None,
        sampling_rate=16000,
        initializer_range=0.02,
        **kwargs,
    ):
        moved = sorted(set(kwargs) & set(_MOVED))
        if moved:
            raise ValueError("HubertGptConfig options moved: " + "; ".join(f"{k} -> {_MOVED[k]}" for k in moved))
        if text_config is None:
            text_config = dict(_DEFAULT_TEXT_CONFIG)
        self.audio_config = _as_config(audio_config, "hubert", "audio_config")
        self.text_config = _as_config(text_config, "gpt_neox", "text_config")
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(
                f"text_config (model_type {self.text_config.model_type!r}) is an encoder-decoder; "
                "hubert-gpt needs a decoder-only causal LM (gpt_neox, llama, ...)"
            )
        if audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio_frontend must be one of {AUDIO_FRONTENDS}, got {audio_frontend!r}")
        self.audio_frontend = audio_frontend
        self.log_mel_bins, self.log_mel_stack = log_mel_bins, log_mel_stack
        bridge = bridge_class(bridge_type)
        self.bridge_type = bridge_type
        self.bridge_config = bridge.check_options(bridge_config)
        if ctc_head_config is None and bridge.uses_ctc_head:
            ctc_head_config = {}
        self.ctc_head_config = (None if ctc_head_config is None
                                else check_ctc_head_options(ctc_head_config, self.text_config.vocab_size))
        if bridge.uses_ctc_head and self.ctc_head_config["vocab"] is not None:
            raise ValueError(f"the {bridge_type!r} bridge picks frames by LLM-token CTC labels; a character head "
                             "(ctc_head_config['vocab']) is for drafting next to a bridge that does not use the head")
        self.prompt_bos_token_id = getattr(self.text_config, "bos_token_id", None) if prompt_bos_token_id is None else prompt_bos_token_id
        self.prompt_sep_token_id = self.prompt_bos_token_id if prompt_sep_token_id is None else prompt_sep_token_id
        for name in ("prompt_bos_token_id", "prompt_sep_token_id"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} is not set and text_config has no bos_token_id to default to")
        prompt_ids = (self.prompt_bos_token_id, self.prompt_sep_token_id)
        if prompt_audio_token_id is None:
            pad_id = getattr(self.text_config, "pad_token_id", None)
            prompt_audio_token_id = None if pad_id in prompt_ids else pad_id
        elif prompt_audio_token_id in prompt_ids or not 0 <= prompt_audio_token_id < self.text_config.vocab_size:
            raise ValueError(f"prompt_audio_token_id {prompt_audio_token_id} must be an in-vocabulary token id (0 <= id < "
                             f"{self.text_config.vocab_size}) other than the prompt's bos and sep tokens {prompt_ids}")
        self.prompt_audio_token_id = prompt_audio_token_id
        self.sampling_rate = sampling_rate
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


HubertGptConfig.register_for_auto_class()
