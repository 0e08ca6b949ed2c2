"""CTC-draft speculative decoding: exactly plain greedy's tokens, whatever the draft; far fewer passes when it is right."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CollectStreamer, make_audio
from transformers.generation.streamers import BaseStreamer
from test_model import LENGTHS, padded_batch, strip
from test_model import build as build_model

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptASRPipeline, HubertGptForConditionalGeneration
from modeling_hubert_gpt.ctc_head_hubert_gpt import HubertGptCtcHead
from modeling_hubert_gpt.generation_hubert_gpt import Bounds
from modeling_hubert_gpt.speculative_hubert_gpt import DraftAligner, ngram_proposal, speculative_greedy_decode


def build(**kwargs):
    """A random model with the CTC head's guards off: these tests check the decoder itself on random LLMs, which loop
    (the loop guard would cut them); test_guards.py checks the guards, with ctc_draft=True too."""
    model = build_model(**kwargs)
    model.generation_config.no_speech_threshold = None
    model.generation_config.loop_guard = False
    return model


def greedy_rows(model, tokens):
    """Plain greedy output rows without the padding after them and without a final eos (a CTC draft has none)."""
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    rows = [strip(row, pad) for row in tokens]
    return [row[:-1] if row and row[-1] == eos else row for row in rows]


def ctc_drafts(model, speech):
    """The model's own CTC draft for a SpeechPrompt (the CTC head run): greedy labels as LLM tokens."""
    return model.ctc_head.to_tokens(model.ctc_head.greedy_labels(speech.ctc_logits, speech.frame_lengths))


def corrupt(row, vocab_size, seed):
    """A 'partly right' draft: substitutions, a deleted token, an inserted token, a doubled token, a dropped tail."""
    rng = np.random.default_rng(seed)
    row = list(row)
    for i in rng.choice(len(row), size=max(1, len(row) // 6), replace=False):
        row[i] = (row[i] + 1 + int(rng.integers(vocab_size - 5))) % vocab_size
    row.insert(len(row) // 3, (row[0] + 7) % vocab_size)  # an extra token
    del row[len(row) // 2]  # a missing one
    row.insert(2 * len(row) // 3, row[2 * len(row) // 3])  # a doubled one
    return row[: len(row) - 2]


@pytest.fixture(scope="module")
def ctc_model():
    model = build(bridge_type="ctc")
    values, mask = padded_batch()
    return model, values, mask, model.generate(values, mask)


# --- drafts and alignment ----------------------------------------------------------------------------------------
def test_ctc_greedy_labels_collapse_repeats_drop_blanks_and_padding():
    blank = 9
    frames = [[blank, 5, 5, blank, 5, 7, 7, 7, blank, 3], [4, 4, blank, 4, 6, 6, 8, 8, 8, 8]]
    logits = torch.nn.functional.one_hot(torch.tensor(frames), 10).float()
    head = HubertGptCtcHead(tiny_config(vocab_size=10, ctc_head_config={"blank_id": blank}))  # labels 0..9, 9 blank
    assert head.blank_id == blank and head.label_count == 10
    drafts = head.greedy_labels(logits, torch.tensor([9, 6]))
    assert drafts == [[5, 5, 7], [4, 4, 6]]  # frame 9 of row 0 and frames 6.. of row 1 are padding
    assert head.to_tokens(drafts) == drafts  # a token head's labels are the LLM's tokens
    head = HubertGptCtcHead(tiny_config(vocab_size=8))  # labels 0..7, blank 8: the 9s are no label either
    assert head.blank_id == 8 and head.label_count == 8
    assert head.greedy_labels(logits, torch.tensor([10, 10])) == [[5, 5, 7, 3], [4, 4, 6]]


def test_aligner_follows_the_llm_after_mismatches():
    aligner = DraftAligner([10, 11, 12, 13, 14, 15], eos_token_id=2, window=8)
    assert aligner.propose([], room=100) == ([10, 11, 12, 13, 14, 15, 2], "ctc")
    aligner.update("ctc", 7, 1, 20)  # 10 kept, the LLM said 20 for 11: a substitution
    assert aligner.window == 4  # shrank after the mismatch (never below MIN_WINDOW)
    assert aligner.propose([10, 20], room=100)[0] == [12, 13, 14, 15]
    aligner.update("ctc", 4, 0, 13)  # the draft's 12 was extra: skip it
    assert aligner.propose([10, 20, 13], room=100)[0] == [14, 15, 2]
    aligner.update("ctc", 3, 0, 13)  # the LLM repeats 13 (CTC collapsed a real double): 14 is still next
    assert aligner.propose([10, 20, 13, 13], room=2)[0] == [14, 15]
    aligner.update("ctc", 2, 2, 2)  # all accepted, then eos: the draft is used up
    assert aligner.window == 8 and aligner.propose([10, 20, 13, 13, 14, 15, 2], room=5)[1] == "ngram"


def test_aligner_recovers_when_the_draft_lacks_tokens():
    aligner = DraftAligner([10, 11, 14, 15], eos_token_id=2, window=8)  # the LLM will say 10 11 12 13 14 15
    aligner.propose([], room=100)
    aligner.update("ctc", 5, 2, 12)  # 12 is nowhere in the draft: taken for a substitution of 14
    assert aligner.propose([10, 11, 12], room=100)[0] == [15, 2]
    aligner.update("ctc", 2, 0, 13)  # 13 is nowhere either: taken for a substitution of 15
    assert aligner.propose([10, 11, 12, 13], room=100)[0] == [2]
    aligner.update("ctc", 1, 0, 14)  # the LLM says 14, two back: 12 and 13 were missing, not substitutions
    assert aligner.propose([10, 11, 12, 13, 14], room=100) == ([15, 2], "ctc")


def test_ngram_proposal_continues_a_repeated_pattern():
    assert ngram_proposal([], [5, 6, 7, 5, 6], window=3) == [7, 5, 6]
    assert ngram_proposal([1, 2, 3, 4], [9, 2], window=2) == [3, 4]  # found in the CTC draft
    assert ngram_proposal([], [1, 2, 3], window=3) == []


# --- lossless on constructed drafts: right, wrong, partly right ---------------------------------------------------
@pytest.mark.parametrize("kind", ["right", "wrong", "partly", "empty", "too_long"])
def test_constructed_drafts_give_plain_greedy_tokens(ctc_model, kind):
    model, values, mask, greedy = ctc_model
    vocab = model.config.text_config.vocab_size
    rows = greedy_rows(model, greedy)
    drafts = {
        "right": rows,
        "wrong": [[(t + 1) % vocab for t in row] for row in rows],  # every token wrong
        "partly": [corrupt(row, vocab, seed=i) for i, row in enumerate(rows)],
        "empty": [[] for _ in rows],
        "too_long": [row + row for row in rows],
    }[kind]
    out = model.generate(values, mask, ctc_draft=True, draft_override=drafts, return_dict_in_generate=True)
    torch.testing.assert_close(out.sequences, greedy, rtol=0, atol=0)
    stats = out.draft_stats
    assert sum(stats["row_proposed"]) == sum(stats["proposed_tokens"].values())
    assert sum(stats["row_accepted"]) == sum(stats["accepted_tokens"].values())
    assert stats["row_tokens"] == [len(strip(row, model.generation_config.pad_token_id)) for row in greedy]
    assert stats["llm_forward_passes"] <= greedy.shape[1]  # never more passes than plain greedy
    if kind == "right":
        # every row's whole transcript in one pass: the prefill verifies the draft
        assert stats["llm_forward_passes"] == 1 and stats["new_tokens"] >= 60
        assert stats["accepted_tokens"]["ctc"] >= stats["new_tokens"] - len(rows)  # all but an own token per row
    if kind == "partly":
        assert 1 < stats["llm_forward_passes"] < greedy.shape[1] / 2
    if kind == "wrong":
        assert stats["accepted_tokens"]["ctc"] == 0


def test_right_draft_with_a_small_window_still_takes_few_passes(ctc_model):
    model, values, mask, greedy = ctc_model
    out = model.generate(values, mask, ctc_draft=True, draft_override=greedy_rows(model, greedy), ctc_draft_window=4,
                         return_dict_in_generate=True)
    torch.testing.assert_close(out.sequences, greedy, rtol=0, atol=0)
    passes, tokens = out.draft_stats["llm_forward_passes"], greedy.shape[1]
    assert passes <= 5 and tokens >= 20  # windows of 4, 8, 16: 5 + 9 + 17 tokens


def test_verifier_without_drafts_is_one_token_per_pass(ctc_model):
    model, values, mask, greedy = ctc_model
    speech = model.encode_speech(values, mask)
    embeds, prompt_mask, positions, _ = model.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
    limits = model.max_new_tokens_for(speech.sample_lengths).tolist()
    bounds = Bounds(max_new=limits, per_utterance=True, min_new=0, eos_ids=[2], pad_id=0)
    out, stats = speculative_greedy_decode(
        model.language_model, embeds, prompt_mask, positions, [[], [], []], bounds, window=0, ngram=False
    )
    torch.testing.assert_close(out, greedy, rtol=0, atol=0)
    assert stats["llm_forward_passes"] == greedy.shape[1] and sum(stats["proposed_tokens"].values()) == 0


# --- lossless with the model's own CTC draft ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant",
    [
        dict(seed=0, feat_extract_norm="layer"),
        dict(seed=1, feat_extract_norm="group"),
        dict(seed=2, feat_extract_norm="layer", audio_model_type="wavlm", text_model_type="llama"),
        dict(seed=3, feat_extract_norm="layer", bridge_type="conv", ctc_head_config={}),  # conv bridge + draft head
        dict(seed=4, feat_extract_norm="layer", bridge_type="conv", ctc_head_config={"kernel_size": 5}),
    ],
    ids=lambda v: "-".join(str(x) if not isinstance(x, dict) else "ctc_head" + "".join(f"-{k}{x[k]}" for k in x)
                           for x in v.values()),
)
def test_random_models_ctc_draft_equals_greedy(variant):
    model = build(**{"bridge_type": "ctc", **variant})
    values, mask = padded_batch(seed=variant["seed"])
    greedy = model.generate(values, mask)
    out = model.generate(values, mask, ctc_draft=True, return_dict_in_generate=True)
    torch.testing.assert_close(out.sequences, greedy, rtol=0, atol=0)
    assert model.ctc_head.label_count == 100
    assert out.draft_stats["draft_lengths"] == [
        len(d) for d in ctc_drafts(model, model.encode_speech(values, mask, ctc_head=True))
    ]
    for i, n in enumerate(LENGTHS):  # one utterance at a time too
        single = model.generate(values[i : i + 1, :n], ctc_draft=True)
        assert strip(single[0], 0) == strip(greedy[i], 0)


def test_eos_stops_rows_at_different_steps_and_min_new_tokens(ctc_model):
    """Pick eos ids the model does emit, so rows end early (and leave the batch) at different steps; bounds, minimums."""
    model, values, mask, greedy = ctc_model
    model = build(bridge_type="ctc")
    for eos in (None, int(greedy[0, 4]), [int(greedy[1, 6]), int(greedy[2, 3])]):  # None: the LLM's own eos
        model.generation_config.eos_token_id = eos
        for kwargs in ({}, {"min_new_tokens": 6}, {"max_new_tokens": 9}, {"max_length": 60}, {"min_length": 55}):
            plain = model.generate(values, mask, **kwargs)
            rows = greedy_rows(model, plain) if isinstance(eos, int) else [strip(r, 0) for r in plain]
            rows = [r[:-1] if r and r[-1] == 2 else r for r in rows]
            for draft in (None, rows):
                out = model.generate(values, mask, ctc_draft=True, draft_override=draft, **kwargs)
                torch.testing.assert_close(out, plain, rtol=0, atol=0, msg=f"eos={eos} {kwargs} draft={draft}")
    lengths = [len(strip(r, 0)) for r in plain]
    assert len(set(lengths)) > 1 and min(lengths) < 20  # eos did end some rows early


def test_streamer_sees_exactly_the_generated_tokens():
    model = build(bridge_type="ctc")
    values, _ = padded_batch([16000])
    streamer = CollectStreamer()
    out = model.generate(values, ctc_draft=True, streamer=streamer)
    assert streamer.ended and streamer.tokens == out[0].tolist() == model.generate(values)[0].tolist()


def test_clear_errors():
    values, mask = padded_batch()
    with pytest.raises(ValueError, match="bridge_type 'conv'.*has no CTC head"):
        build(bridge_type="conv").generate(values, mask, ctc_draft=True)
    model = build(bridge_type="ctc")
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(values, mask, ctc_draft=True, num_beams=3)
    with pytest.raises(ValueError, match="do_sample"):
        model.generate(values, mask, ctc_draft=True, do_sample=True)
    with pytest.raises(ValueError, match="repetition_penalty"):
        model.generate(values, mask, ctc_draft=True, repetition_penalty=1.3)
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(values, mask, ctc_draft=True, streamer=BaseStreamer())
    with pytest.raises(TypeError, match="not_an_option"):
        model.generate(values, mask, ctc_draft=True, not_an_option=1)
    with pytest.raises(ValueError, match="3 utterances"):
        model.generate(values, mask, ctc_draft=True, draft_override=[[5]])


def test_character_draft_head_drafts_through_the_tokenizer(tiny_tokenizer, tiny_feature_extractor):
    torch.manual_seed(0)
    chars = sorted(set("今日は明日学校で本を読みます"))
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": chars})).eval()
    values, mask = padded_batch()
    greedy = model.generate(values, mask)
    out = model.generate(values, mask, ctc_draft=True, tokenizer=tiny_tokenizer, return_dict_in_generate=True)
    torch.testing.assert_close(out.sequences, greedy, rtol=0, atol=0)
    speech = model.encode_speech(values, mask, ctc_head=True)
    assert model.ctc_head.label_count == len(chars) and model.ctc_head.blank_id == len(chars)
    labels = model.ctc_head.greedy_labels(speech.ctc_logits, speech.frame_lengths)
    texts = ["".join(chars[i] for i in d) for d in labels]
    assert all(texts)  # the random head spells something, so the tokenizer's drafts are exercised
    assert out.draft_stats["draft_lengths"] == [
        len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    with pytest.raises(ValueError, match="needs the LLM's tokenizer .*tokenizer=processor.tokenizer"):
        model.generate(values, mask, ctc_draft=True)
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.5, 0.7])]
    plain = [o["text"] for o in asr(audios, batch_size=3)]
    assert [o["text"] for o in asr(audios, batch_size=3, generate_kwargs={"ctc_draft": True})] == plain


# --- through the pipeline and from a saved folder -----------------------------------------------------------------
def test_pipeline_generate_kwargs(tiny_tokenizer, tiny_feature_extractor):
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("ctc", tokenizer=tiny_tokenizer)).eval()
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.5, 0.7])]
    plain = [out["text"] for out in asr(audios, batch_size=3)]
    outputs, generate = [], model.generate  # what generate returned to the pipeline, as a dict output
    model.generate = lambda *args, **kwargs: outputs.append(generate(*args, return_dict_in_generate=True, **kwargs)) or outputs[-1]
    assert [out["text"] for out in asr(audios, batch_size=3, generate_kwargs={"ctc_draft": True})] == plain
    assert outputs[-1].draft_stats["llm_forward_passes"] >= 1


FRESH = r"""
import json, sys
import torch
sys.modules["modeling_hubert_gpt"] = None  # only the folder's remote code
sys.modules["hubert_gpt_training"] = None
from transformers import AutoModelForSpeechSeq2Seq
model = AutoModelForSpeechSeq2Seq.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
values = torch.load(sys.argv[2])
plain = model.generate(values["input_values"], values["attention_mask"])
spec = model.generate(values["input_values"], values["attention_mask"], ctc_draft=True, return_dict_in_generate=True)
print(json.dumps({"equal": bool(torch.equal(plain, spec.sequences)), "stats": spec.draft_stats,
                  "module": type(model).__module__}))
"""


def test_saved_folder_runs_ctc_draft_as_remote_code(tmp_path):
    model = build(bridge_type="ctc")
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "speculative_hubert_gpt.py").exists()
    values, mask = padded_batch()
    torch.save({"input_values": values, "attention_mask": mask}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    run = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "model"), str(tmp_path / "inputs.pt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["equal"] and got["module"].startswith("transformers_modules") and got["stats"]["llm_forward_passes"] >= 1
