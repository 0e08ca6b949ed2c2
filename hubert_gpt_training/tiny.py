"""Small random-init hubert-gpt configs, for tests, the smoke preset and CPU recipes."""

from transformers import AutoConfig

from modeling_hubert_gpt import HubertGptConfig


def conv_stack(hop=320):
    """(conv_kernel, conv_stride) of a HuBERT-shaped front end with `hop` samples per frame: HuBERT's 7 layers
    (320: 50 Hz, 400-sample window), or with an eighth layer of kernel 2 and stride 2 (640: 25 Hz, 720 samples)."""
    if hop not in (320, 640):
        raise ValueError(f"hop must be 320 (50 Hz) or 640 (25 Hz) samples, got {hop}")
    extra = 1 if hop == 640 else 0
    return (10, 3, 3, 3, 3, 2, 2) + (2,) * extra, (5, 2, 2, 2, 2, 2, 2) + (2,) * extra


def tiny_audio_config(model_type="hubert", feat_extract_norm="layer", hidden_size=32, layers=2, conv_dim=16,
                      dropout=0.05, hop=320, **kwargs):
    """A HuBERT-shaped encoder with `hop` samples per frame (`conv_stack`)."""
    kernel, stride = conv_stack(hop)
    return AutoConfig.for_model(
        model_type,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        conv_dim=(conv_dim,) * len(kernel),
        conv_kernel=kernel,
        conv_stride=stride,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=feat_extract_norm == "layer",
        conv_bias=feat_extract_norm == "layer",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        mask_time_prob=0.0,
        layerdrop=0.0,
        hidden_dropout=dropout,
        attention_dropout=dropout,
        activation_dropout=dropout,
        **kwargs,
    )


def tiny_text_config(model_type="gpt_neox", vocab_size=100, hidden_size=32, layers=2, bos=1, eos=2, pad=0, **kwargs):
    """A GPT-NeoX-shaped (or any causal-LM type) decoder."""
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **kwargs,
    )


def tiny_config(bridge_type="conv", feat_extract_norm="layer", audio_model_type="hubert", text_model_type="gpt_neox",
                vocab_size=100, sep=3, tokenizer=None, width=32, layers=2, conv_dim=None, text_width=None,
                text_layers=None, dropout=0.05, hop=320, **kwargs):
    """A small config; with `tokenizer`, its vocabulary size and bos/eos/pad/[SEP] ids are used.

    The LLM has the encoder's width and depth unless `text_width` / `text_layers` say otherwise. Other keywords
    (`bridge_config`, `ctc_head_config`, `audio_frontend`, ...) go to `HubertGptConfig` as they are."""
    ids = dict(bos=1, eos=2, pad=0)
    if tokenizer is not None:
        vocab_size, sep = len(tokenizer), tokenizer.sep_token_id
        ids = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    return HubertGptConfig(
        audio_config=tiny_audio_config(audio_model_type, feat_extract_norm, hidden_size=width, layers=layers,
                                       conv_dim=conv_dim or max(16, width // 2), dropout=dropout, hop=hop),
        text_config=tiny_text_config(text_model_type, vocab_size, hidden_size=text_width or width,
                                     layers=text_layers or layers, **ids),
        bridge_type=bridge_type,
        prompt_sep_token_id=sep,
        **kwargs,
    )
