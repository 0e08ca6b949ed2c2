"""The CTC head's guards: silence gets "" without an LLM pass (the rest of a batch goes on); a looping LLM is stopped;
audio longer than the model takes is refused by generate and chunked by the pipeline."""

import logging
import types

import numpy as np
import pytest
import torch
from helpers import make_audio
from test_model import padded_batch, strip

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptASRPipeline, HubertGptForConditionalGeneration
from modeling_hubert_gpt.duration_hubert_gpt import fits, longest_input_samples, positions_needed
from modeling_hubert_gpt.guards_hubert_gpt import LOOP_BASE, LOOP_RATIO, Guards, repeat_cut


def build(bridge_type="ctc", seed=0):
    torch.manual_seed(seed)
    return HubertGptForConditionalGeneration(tiny_config(bridge_type, ctc_head_config={"kernel_size": 3})).eval()


def count_llm_batches(model):
    """Record the batch size of every LLM forward pass."""
    seen, forward = [], model.language_model.forward

    def counted(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        seen.append((embeds if embeds is not None else ids).shape[0])
        return forward(*args, **kwargs)

    model.language_model.forward = counted
    return seen


def speech_mass(model, values, mask):
    speech = model.encode_speech(values, mask, ctc_head=True)
    blank = speech.ctc_logits.float().softmax(-1)[..., model.ctc_head.blank_id]
    real = torch.arange(blank.shape[1]) < speech.frame_lengths[:, None]
    return ((1 - blank) * real).sum(-1)


def test_silent_rows_get_eos_without_an_llm_pass_and_the_others_go_on():
    model = build()
    values, mask = padded_batch()
    mass = speech_mass(model, values, mask).detach()
    quiet = int(mass.argmin())
    threshold = float((mass.sort().values[0] + mass.sort().values[1]) / 2)  # only the quietest row is below it
    plain = model.generate(values, mask, no_speech_threshold=None)
    batches = count_llm_batches(model)
    guarded = model.generate(values, mask, no_speech_threshold=threshold)
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    assert strip(guarded[quiet], pad) == [eos]
    for b in range(3):
        if b != quiet:
            assert strip(guarded[b], pad) == strip(plain[b], pad)
    assert batches and set(batches) == {2}  # the LLM never saw the silent row
    batches.clear()
    assert model.generate(values, mask, no_speech_threshold=float(mass.max()) + 1).tolist() == [[eos]] * 3
    assert batches == []  # all silent: no LLM pass at all
    assert model.generate(values, mask, ctc_draft=True, no_speech_threshold=threshold).tolist() == guarded.tolist()


def test_silence_through_the_pipeline_is_empty_text_without_an_llm_pass(tiny_tokenizer, tiny_feature_extractor):
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": list("あいうえお")})).eval()
    with torch.no_grad():  # a head that hears blank everywhere, as a trained head does in silence
        model.ctc_head.out.bias[model.ctc_head.blank_id] = 100.0
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    batches = count_llm_batches(model)
    hiss = 0.05 * np.random.default_rng(1).standard_normal(32000).astype(np.float32)  # steady: it never rises
    silence = [0 * make_audio(1.0, seed=0), hiss]
    assert asr(silence, batch_size=2) == [{"text": ""}, {"text": ""}]
    assert asr(silence[0], return_timestamps="char") == {"text": "", "chunks": []}
    assert batches == []
    assert asr(silence[1], no_speech_threshold=None)["text"]  # the guard off: the random LLM writes something
    assert batches


def test_a_deaf_head_is_doubted_where_the_waveform_rises_like_speech(tiny_tokenizer, tiny_feature_extractor):
    """The head hears blank everywhere; the waveform is the second witness: steady hiss is silence (eos, no LLM
    pass), a sound that rises and falls (make_audio's enveloped glides, as speech does) is doubted: the LLM writes
    what it writes with the guard off, and the output says the guard doubted the head."""
    from modeling_hubert_gpt.sound_hubert_gpt import rising_share

    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": list("あいうえお")})).eval()
    with torch.no_grad():
        model.ctc_head.out.bias[model.ctc_head.blank_id] = 100.0
    hiss = 0.05 * np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    audio = [hiss, make_audio(2.0, seed=1), 0 * hiss]
    inputs = tiny_feature_extractor(audio, sampling_rate=16000, return_tensors="pt", padding=True,
                                    return_attention_mask=True)
    values, mask = inputs["input_values"], inputs["attention_mask"]
    shares = rising_share(values, mask.sum(-1))
    assert shares[0] == 0 and shares[1] >= 0.1 and shares[2] == 0
    out = model.generate(values, mask, loop_guard=False, return_dict_in_generate=True)
    off = model.generate(values, mask, no_speech_threshold=None, loop_guard=False)
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    assert out.no_speech == [True, False, True] and out.no_speech_doubted == [False, True, False]
    assert strip(out.sequences[0], pad) == strip(out.sequences[2], pad) == [eos]
    assert strip(out.sequences[1], pad) == strip(off[1], pad)
    batches = count_llm_batches(model)
    tokens = model.generate(values, mask, loop_guard=False)  # tokens only: the LLM runs for the doubted row alone
    assert set(batches) == {1} and tokens.tolist() == out.sequences.tolist()
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    texts = [o["text"] for o in asr(audio, batch_size=3, loop_guard=False)]
    assert texts == ["", tiny_tokenizer.decode(off[1], skip_special_tokens=True), ""]
    # the loop guard's cap by the head's length (0 here) is lifted for the doubted row, kept for the others
    guards = Guards(1.0, True, speech_mass=[0.0, 0.0, 5.0], hypothesis_lengths=[0, 0, 4], sound_share=[0.0, 0.5, 0.0])
    bounds = guards.cap(types.SimpleNamespace(max_new=[40, 40, 40], per_utterance=False))
    assert bounds.max_new == [LOOP_BASE, 40, int(LOOP_RATIO * 4 + LOOP_BASE)]
    assert guards.silent() == [True, False, False] and guards.doubted() == [False, True, False]


def looping_model(token=7):
    """A model whose LLM writes `token` forever: its LM head is replaced by one whose bias picks it."""
    model = build("conv")
    head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[token] = 10.0
    model.language_model.set_output_embeddings(head)
    with torch.no_grad():  # a CTC head that hears one label in every frame: a one-label hypothesis
        model.ctc_head.out.weight.zero_()
        model.ctc_head.out.bias.zero_()
        model.ctc_head.out.bias[5] = 10.0
    return model


def test_a_looping_llm_is_stopped_by_the_loop_guard():
    model = looping_model(7)
    values, mask = padded_batch()
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    free = model.generate(values, mask, loop_guard=False)
    bounds = model.max_new_tokens_for(mask.sum(-1)).tolist()
    assert [len(strip(row, pad)) for row in free] == bounds  # unguarded: 7 7 7 ... up to nue-asr's bound
    speech = model.encode_speech(values, mask, ctc_head=True)
    heard = [len(h) for h in model.ctc_head.greedy_labels(speech.ctc_logits, speech.frame_lengths)]
    cap = [min(b, int(LOOP_RATIO * n + LOOP_BASE)) for b, n in zip(bounds, heard)]
    assert heard == [1, 1, 1] and cap == [int(LOOP_RATIO + LOOP_BASE)] * 3  # tighter than nue-asr's bound
    batches = count_llm_batches(model)
    guarded = model.generate(values, mask)
    assert [strip(row, pad) for row in guarded] == [[7, eos]] * 3  # the repetition cut after its first copy
    assert len(batches) == max(cap)  # and the LLM stopped at the guard's bound (one pass per token)
    assert model.generate(values, mask, ctc_draft=True).tolist() == guarded.tolist()
    assert model.generate(values, mask, num_beams=2).tolist() == guarded.tolist()
    single = [model.generate(values[b : b + 1, : int(mask[b].sum())]) for b in range(3)]
    assert [strip(s[0], pad) for s in single] == [strip(row, pad) for row in guarded]


def test_repeat_cut():
    assert repeat_cut([1, 2, 3, 4]) is None
    assert repeat_cut([5, 5, 5]) == 1
    assert repeat_cut([1, 2, 3, 4, 3, 4, 3, 4, 9]) == 4  # "3 4" three times from index 2: keep up to its first copy
    assert repeat_cut([1, 1, 2, 1, 2, 1, 2]) == 3  # 1 1 is not a triple; "1 2" from index 1 is
    assert repeat_cut([4, 4, 9, 4, 4]) is None


def test_long_audio_generate_refuses_and_the_pipeline_chunks_it(tiny_tokenizer, tiny_feature_extractor, caplog):
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("conv", tokenizer=tiny_tokenizer)).eval()
    model.config.text_config.max_position_embeddings = 128
    longest = longest_input_samples(model)
    assert int(positions_needed(model, torch.tensor([longest]))) <= 128 < int(
        positions_needed(model, torch.tensor([longest + 320])))
    assert fits(model, longest) and not fits(model, longest + 1)  # the pipeline's one look agrees with the search
    audio = make_audio(2.5 * longest / 16000, seed=0)
    with pytest.raises(ValueError, match=rf"at most {longest / 16000:.1f} s per utterance.*chunk"):
        model.generate(torch.from_numpy(audio)[None])
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    with caplog.at_level(logging.WARNING):
        out = asr(audio)
    chunk_s = int(longest * 0.9 / 16000)
    assert f"in chunks of {chunk_s} s (set chunk_length_s" in caplog.text
    assert out == asr(audio, chunk_length_s=chunk_s)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        asr(audio[:longest])  # the longest input that fits: one piece, no warning
    assert "in chunks of" not in caplog.text
