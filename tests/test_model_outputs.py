"""What forward returns (LLM cache, hidden states, attentions; tuples with return_dict=False), model.base_model, and
resize_token_embeddings with a CTC head: regression tests for what transformers' common tests found."""

import pytest
import torch
from test_model import build, padded_batch

from modeling_hubert_gpt import HubertGptForConditionalGeneration

LABELS = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])


def test_forward_returns_the_llm_cache_hidden_states_and_attentions():
    model = build()
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    values, mask = padded_batch()
    out = model(values, mask, output_hidden_states=True, output_attentions=True, use_cache=True)
    embeds, prompt_mask, positions, _ = model.pack_prompt(*model.encode_speech(values, mask)[:2])
    llm = model.language_model(inputs_embeds=embeds, attention_mask=prompt_mask, position_ids=positions,
                               output_hidden_states=True, output_attentions=True)
    layers, length = model.config.text_config.num_hidden_layers, embeds.shape[1]
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert out.hidden_states[-1].shape == (3, length, 32) and out.attentions[0].shape == (3, 2, length, length)
    for ours, reference in zip(out.hidden_states + out.attentions, llm.hidden_states + llm.attentions):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    # the cache continues the prompt: one more token through it == the same token appended without a cache
    token = torch.full((3, 1), 7)
    step_mask = torch.cat([prompt_mask, torch.ones(3, 1, dtype=prompt_mask.dtype)], 1)
    step = model.language_model(input_ids=token, cache=out.cache, attention_mask=step_mask,
                                position_ids=positions[:, -1:] + 1)
    whole = model.language_model(inputs_embeds=torch.cat([embeds, model.get_input_embeddings()(token)], 1),
                                 attention_mask=step_mask, position_ids=torch.cat([positions, positions[:, -1:] + 1], 1))
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], rtol=1e-5, atol=1e-5)
    plain = model(values, mask)
    assert plain.hidden_states is None and plain.attentions is None


def test_return_dict_false_gives_the_same_values_as_a_tuple():
    model = build(bridge_type="ctc")
    values, mask = padded_batch()
    as_dict = model(values, mask, labels=LABELS)
    as_tuple = model(values, mask, labels=LABELS, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = [v for v in as_dict.to_tuple()]
    assert len(as_tuple) == len(expected)  # loss, logits, cache, llm_loss, ctc_loss, speech_lengths
    for ours, reference in zip(as_tuple, expected):
        if isinstance(reference, torch.Tensor):
            torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    model.config.return_dict = False  # the config's setting is honoured too
    torch.testing.assert_close(model(values, mask, labels=LABELS)[0], as_dict.loss, rtol=0, atol=0)
    assert not isinstance(model(values, mask, labels=LABELS, return_dict=True), tuple)


def test_base_model_is_the_language_model():
    model = build()
    assert model.base_model is model.language_model


@pytest.mark.parametrize("bridge_type", ["conv", "ctc"])
def test_resize_token_embeddings_keeps_the_ctc_blank_apart_and_saves(tmp_path, bridge_type):
    model = build(bridge_type=bridge_type, ctc_head_config={})
    values, mask = padded_batch()
    vocab = model.config.text_config.vocab_size
    assert model.ctc_head.blank_id == vocab
    before = model.encode_speech(values, mask, ctc_head=True)
    model.resize_token_embeddings(vocab + 3)
    head = model.ctc_head
    assert head.blank_id == vocab + 3 == model.config.ctc_head_config["blank_id"]
    assert head.out.out_features == vocab + 4 and head.label_count == vocab + 3
    after = model.encode_speech(values, mask, ctc_head=True)
    # old labels and blank score as before; the new tokens score the mean of the old label rows
    torch.testing.assert_close(after.ctc_logits[..., :vocab], before.ctc_logits[..., :vocab], rtol=0, atol=0)
    torch.testing.assert_close(after.ctc_logits[..., -1], before.ctc_logits[..., -1], rtol=0, atol=0)
    torch.testing.assert_close(after.ctc_logits[..., vocab], before.ctc_logits[..., :vocab].mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.embeds, before.embeds, rtol=0, atol=0)  # the ctc bridge keeps the same frames
    # a transcript with a new token trains (before the fix it was the blank: "CTC targets contain the blank id")
    labels = LABELS.clone()
    labels[0, 0] = vocab
    out = model(values, mask, labels=labels, ctc_loss_weight=0.5)
    assert torch.isfinite(out.ctc_loss) and out.ctc_loss > 0
    model.save_pretrained(tmp_path)
    loaded = HubertGptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.ctc_head.blank_id == vocab + 3
    torch.testing.assert_close(loaded(values, mask, labels=labels, ctc_loss_weight=0.5).loss, out.loss, rtol=0, atol=0)


def test_shrinking_the_vocabulary_moves_the_extra_blank_and_refuses_to_drop_a_token_blank():
    model = build(ctc_head_config={})
    vocab = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocab - 10)
    assert model.ctc_head.blank_id == vocab - 10 and model.ctc_head.out.out_features == vocab - 9
    token_blank = build(ctc_head_config={"blank_id": vocab - 5})  # the blank is an LLM token the new size drops
    with pytest.raises(ValueError, match=f"blank is LLM token {vocab - 5}"):
        token_blank.resize_token_embeddings(vocab - 10)


def test_character_head_does_not_follow_the_llm_vocabulary():
    model = build(ctc_head_config={"vocab": list("abc")})
    model.resize_token_embeddings(model.config.text_config.vocab_size + 3)
    assert model.ctc_head.out.out_features == 4 and model.config.ctc_head_config["blank_id"] == 3
