"""What transformers' generation tests check (they prompt with input_ids and are not in its sdist), as equalities on
hubert-gpt's audio prompt: dict outputs and scores, beams with several returns, sampling, static cache, and the
clear refusal of assisted decoding (streamers: tests/test_model.py; speculative decoding: tests/test_speculative.py)."""

import pytest
import torch
from test_model import build, padded_batch

SEED = 4  # a tiny random model whose greedy transcripts differ between the three utterances


@pytest.fixture(scope="module")
def model_and_batch():
    model = build(seed=SEED)
    model.generation_config.eos_token_id = None  # every row runs to its bound: all steps are compared
    return model, *padded_batch()


@pytest.mark.parametrize("max_new_tokens", [6, None], ids=["fixed", "per-utterance-bounds"])
def test_dict_output_has_the_plain_tokens_and_scores_that_chose_them(model_and_batch, max_new_tokens):
    model, values, mask = model_and_batch
    plain = model.generate(values, mask, max_new_tokens=max_new_tokens)
    out = model.generate(values, mask, max_new_tokens=max_new_tokens, return_dict_in_generate=True,
                         output_scores=True, output_logits=True)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    assert len(out.scores) == len(out.logits) == plain.shape[1]
    assert len({tuple(row) for row in plain.tolist()}) == 3
    bounds = [6] * 3 if max_new_tokens else model.max_new_tokens_for(mask.sum(-1)).tolist()
    for step, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        assert scores.shape == logits.shape == (3, model.config.text_config.vocab_size)
        for row in range(3):
            if step < bounds[row]:  # greedy: the chosen token is the best score and the best raw logit
                assert scores[row].argmax() == logits[row].argmax() == plain[row, step]


def test_beams_return_several_sequences_and_the_first_is_the_plain_beam_result(model_and_batch):
    model, values, mask = model_and_batch
    plain = model.generate(values, mask, num_beams=3, max_new_tokens=6)
    out = model.generate(values, mask, num_beams=3, num_return_sequences=2, max_new_tokens=6,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (6, 6) and out.sequences_scores.shape == (6,)
    torch.testing.assert_close(out.sequences[::2], plain, rtol=0, atol=0)
    assert (out.sequences_scores[::2] >= out.sequences_scores[1::2]).all()  # best first for each utterance


def test_sampling_with_top_k_1_is_greedy(model_and_batch):
    model, values, mask = model_and_batch
    greedy = model.generate(values, mask, max_new_tokens=6)
    torch.manual_seed(0)
    torch.testing.assert_close(model.generate(values, mask, max_new_tokens=6, do_sample=True, top_k=1), greedy,
                               rtol=0, atol=0)


def test_static_cache_gives_the_dynamic_cache_tokens(model_and_batch):
    model, values, mask = model_and_batch
    torch.testing.assert_close(model.generate(values, mask, cache_implementation="static"),
                               model.generate(values, mask), rtol=0, atol=0)


@pytest.mark.parametrize("option", [{"assistant_model": "model"}, {"prompt_lookup_num_tokens": 3}], ids=lambda o: next(iter(o)))
def test_assisted_decoding_is_refused_naming_the_ctc_draft(model_and_batch, option):
    model, values, mask = model_and_batch
    if option.get("assistant_model") == "model":
        option = {"assistant_model": build(seed=1)}  # a smaller hubert-gpt with the same tokenizer would fail alike
    with pytest.raises(ValueError, match=r"is not supported: .*ctc_draft=True"):
        model.generate(values[:1], mask[:1], **option)
