"""Gradient checkpointing with the paper's kind of encoder (feat_extract_norm="group", rinna/japanese-hubert-base):
the first backward runs with either use_reentrant setting, and a padded batch's gradients equal the per-utterance
ones (the encoder never sees padding, so recomputation in backward runs exactly the forward's graph)."""

import pytest
import torch

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration

LENGTHS = [12000, 7000, 5000]
LABELS = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])


def no_dropout_model(feat_extract_norm):
    config = tiny_config(feat_extract_norm=feat_extract_norm)
    for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout"):
        setattr(config.audio_config, name, 0.0)  # training mode (checkpointing is on only then) without random draws
    torch.manual_seed(0)
    return HubertGptForConditionalGeneration(config).train()


def batch():
    generator = torch.Generator().manual_seed(1)
    values = torch.zeros(len(LENGTHS), max(LENGTHS))
    mask = torch.zeros_like(values, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        values[i, :n] = 0.1 * torch.randn(n, generator=generator)
        mask[i, :n] = 1
    return values, mask


def gradients(model, values, mask, labels):
    model.zero_grad()
    model(values, mask, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("feat_extract_norm", ["group", "layer"])
def test_checkpointed_padded_batch_gradients_equal_per_utterance(feat_extract_norm, use_reentrant):
    model = no_dropout_model(feat_extract_norm)
    values, mask = batch()
    plain = gradients(model, values, mask, LABELS)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert model.language_model.is_gradient_checkpointing and model.audio_tower.model.is_gradient_checkpointing
    checkpointed = gradients(model, values, mask, LABELS)
    # the padded batch's loss is the token-weighted mean of the utterances' losses
    tokens = (LABELS != -100).sum(-1)
    single = {}
    for i, n in enumerate(LENGTHS):
        for name, grad in gradients(model, values[i : i + 1, :n], None, LABELS[i : i + 1, : int(tokens[i])]).items():
            single[name] = single.get(name, 0) + grad * tokens[i] / tokens.sum()
    assert checkpointed.keys() == plain.keys() == single.keys()
    assert any(name.startswith("audio_tower.model.feature_extractor.conv_layers.0") for name in checkpointed)
    for name, grad in checkpointed.items():
        # recomputation runs the forward's graph: the same gradients as without checkpointing
        torch.testing.assert_close(grad, plain[name], atol=1e-8, rtol=1e-5, msg=name)
        # fp32 noise only (the broken per-utterance norm was 5e-4 off); k_proj.bias's true gradient is zero
        torch.testing.assert_close(grad, single[name], atol=1e-6, rtol=1e-3, msg=name)
