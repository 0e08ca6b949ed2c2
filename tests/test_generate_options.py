"""generate's front door: every hubert-gpt option named in its signature, defaults from the (saved) generation config,
one error per bad value, what the features decided in the dict output (nothing left on the model), and no call that
raises for one batch and not for another."""

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_audio
from test_guards import build, looping_model
from test_model import padded_batch

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration
from modeling_hubert_gpt.generation_hubert_gpt import OPTIONS, HubertGptGenerateOutput

WORDS = ["東京で", "先生は"]
PER_CALL = ("hotwords", "draft_override", "tokenizer", "speech_prompt")


def test_the_signature_names_every_option_and_the_config_holds_the_defaults():
    generate = HubertGptForConditionalGeneration.generate
    parameters = inspect.signature(generate).parameters
    assert set(OPTIONS) | set(PER_CALL) <= set(parameters)
    assert all(parameters[name].kind == inspect.Parameter.KEYWORD_ONLY for name in (*OPTIONS, *PER_CALL))
    assert all(f"{name} (" in generate.__doc__ or f"{name}:" in generate.__doc__ for name in (*OPTIONS, *PER_CALL))
    config = build().generation_config
    assert {name: getattr(config, name) for name in OPTIONS} == {name: default for name, (default, _, _) in OPTIONS.items()}


@pytest.mark.parametrize("name, value", [("no_speech_threshold", -1.0), ("loop_guard", "yes"), ("hotword_boost", -1),
                                         ("hotword_threshold", 0.5), ("ctc_draft", 1), ("ctc_draft_window", -2),
                                         ("ctc_draft_ngram", None), ("max_new_tokens_per_second", "4"),
                                         ("max_new_tokens_base", -1)])
def test_one_clear_error_per_bad_value_from_the_call_or_the_config(name, value):
    model = build()
    values, mask = padded_batch()
    with pytest.raises(ValueError, match=f"^{name} must be .*, got {value!r}$"):
        model.generate(values, mask, **{name: value})
    setattr(model.generation_config, name, value)
    with pytest.raises(ValueError, match=f"^{name} must be .*, got {value!r}$"):
        model.generate(values, mask)


def test_the_call_wins_over_the_config_and_the_config_over_the_defaults():
    model = looping_model(7)
    values, mask = padded_batch()
    guarded = model.generate(values, mask)
    model.generation_config.loop_guard = False
    free = model.generate(values, mask)
    assert free.tolist() != guarded.tolist()
    assert free.tolist() == model.generate(values, mask, generation_config=model.generation_config).tolist()
    assert model.generate(values, mask, loop_guard=True).tolist() == guarded.tolist()
    model.generation_config.max_new_tokens_base = 5  # nue-asr's bound from the config: 4 tokens per second + 5
    assert model.generate(values, mask).shape[1] == int(4.0 * 16000 / 16000 + 5 + 0.5)
    assert model.generate(values, mask, max_new_tokens_base=2).shape[1] == int(4.0 + 2 + 0.5)


def test_the_guards_decisions_come_back_in_the_output_and_nothing_is_left_on_the_model():
    model = looping_model(7)
    values, mask = padded_batch()
    attributes = set(vars(model))
    tokens = model.generate(values, mask)
    for ctc_draft in (False, True):
        out = model.generate(values, mask, ctc_draft=ctc_draft, return_dict_in_generate=True)
        assert isinstance(out, HubertGptGenerateOutput) and out.sequences.tolist() == tokens.tolist()
        assert out.ctc_lengths == [1, 1, 1]  # the head hears one label
        assert out.loop_cuts == [1, 1, 1]  # 7 7 7 ... cut after its first copy: eos at index 1
        assert out.no_speech == [False] * 3 and len(out.speech_mass) == 3
        assert (out.draft_stats is not None) == ctc_draft and out.hotwords_active is None
    free = model.generate(values, mask, loop_guard=False, no_speech_threshold=None, return_dict_in_generate=True)
    assert free.loop_cuts is None and free.no_speech is None and free.speech_mass is None and free.ctc_lengths is None
    assert set(vars(model)) == attributes and not any(name.startswith("last_") for name in dir(model))


@pytest.mark.parametrize("ctc_draft", [False, True])
def test_silent_rows_never_decide_whether_dict_outputs_raise(ctc_draft):
    """Dict outputs with no, one or every row silent: the tokens of the tokens-only call, every row's scores."""
    model = build()
    values, mask = padded_batch()
    mass = model.generate(values, mask, no_speech_threshold=None, return_dict_in_generate=True).speech_mass
    low, second = sorted(mass)[:2]
    for threshold in (None, (low + second) / 2, max(mass) + 1):
        tokens = model.generate(values, mask, no_speech_threshold=threshold, ctc_draft=ctc_draft)
        extra = {} if ctc_draft else {"output_scores": True}
        out = model.generate(values, mask, no_speech_threshold=threshold, ctc_draft=ctc_draft,
                             return_dict_in_generate=True, **extra)
        assert out.sequences.tolist() == tokens.tolist()
        assert out.no_speech == (None if threshold is None else [m < threshold for m in mass])
        if not ctc_draft:
            assert len(out.scores) == out.sequences.shape[1] and out.scores[0].shape[0] == 3
    assert sum(out.no_speech) == 3 and tokens.tolist() == [[model.generation_config.eos_token_id]] * 3


def test_beams_with_per_utterance_bounds_refuse_dict_outputs_whatever_the_lengths():
    model = looping_model(7)
    values, mask = padded_batch([16000, 16000, 16000])  # equal bounds: no groups needed, refused all the same
    for options in ({}, {"max_new_tokens": 6}, {"loop_guard": False}):  # a bound per row: length, or the loop guard
        with pytest.raises(ValueError, match="pass max_new_tokens"):
            model.generate(values, mask, num_beams=2, return_dict_in_generate=True, **options)
    out = model.generate(values, mask, num_beams=2, return_dict_in_generate=True, max_new_tokens=6, loop_guard=False)
    assert out.sequences.tolist() == model.generate(values, mask, num_beams=2, max_new_tokens=6, loop_guard=False).tolist()


def test_the_ctc_head_is_read_once_per_call(tiny_tokenizer):
    """The guards, the hotword gate and the draft share one log-softmax of the head's logits."""
    torch.manual_seed(0)
    chars = sorted(set("".join(WORDS) + "今日は明日"))
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": chars})).eval()
    values, mask = padded_batch()
    calls, log_softmax = [], torch.Tensor.log_softmax

    def counted(self, *args, **kwargs):
        calls.append(self.shape)
        return log_softmax(self, *args, **kwargs)

    torch.Tensor.log_softmax = counted
    try:
        out = model.generate(values, mask, ctc_draft=True, hotwords=WORDS, tokenizer=tiny_tokenizer,
                             return_dict_in_generate=True)
    finally:
        torch.Tensor.log_softmax = log_softmax
    assert len(calls) == 1 and calls[0][0] == 3 and calls[0][-1] == len(chars) + 1  # (B, T, C): once
    assert out.hotword_scores is not None and out.draft_stats is not None and out.ctc_lengths is not None


FRESH = r"""
import json, sys
import numpy as np
sys.modules["modeling_hubert_gpt"] = None  # only the folder's remote code
sys.modules["hubert_gpt_training"] = None
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
folder, audio_dir = sys.argv[1], sys.argv[2]
audios = [np.load(f"{audio_dir}/audio{i}.npy") for i in range(3)]
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
out = model.generate(**processor(audio=audios, sampling_rate=16000, return_tensors="pt"), tokenizer=processor.tokenizer,
                     return_dict_in_generate=True)
asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
print(json.dumps({"tokens": out.sequences.tolist(), "no_speech": out.no_speech, "active": out.hotwords_active,
                  "pipeline": [o["text"] for o in asr(audios, batch_size=3)]}))
"""


def test_a_saved_generation_config_with_its_own_guard_and_hotword_values_is_honoured_in_a_fresh_process(
        tmp_path, tiny_processor):
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("ctc", tokenizer=tiny_processor.tokenizer)).eval()
    hiss = 0.05 * np.random.default_rng(0).standard_normal(9600).astype(np.float32)  # steady: no speech in it
    audios = [make_audio(1.0, seed=0), hiss, make_audio(0.8, seed=2)]
    inputs = tiny_processor(audio=audios, sampling_rate=16000, return_tensors="pt")
    mass = model.generate(**inputs, return_dict_in_generate=True).speech_mass
    threshold = mass[1] + 1e-3  # the hiss is taken for silence (rising audio below it is doubted, not silenced)
    shipped = {"no_speech_threshold": threshold, "hotwords": WORDS, "hotword_boost": 6.0, "hotword_threshold": -2.0}
    expected = model.generate(**inputs, tokenizer=tiny_processor.tokenizer, return_dict_in_generate=True, **shipped)
    default = model.generate(**inputs)
    assert expected.sequences.tolist() != default.tolist() and sum(expected.no_speech) == 1
    for name, value in shipped.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert {name: saved[name] for name in shipped} == shipped
    for i, audio in enumerate(audios):
        np.save(tmp_path / f"audio{i}.npy", audio)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    run = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "model"), str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["tokens"] == expected.sequences.tolist() and got["no_speech"] == expected.no_speech
    assert got["active"] == [{w: list(v) for w, v in a.items()} for a in expected.hotwords_active]
    texts = tiny_processor.batch_decode(expected.sequences, skip_special_tokens=True)
    assert got["pipeline"] == texts and "" in texts


# --- transformers' conventions for the dict output -----------------------------------------------------------------
def test_the_first_step_covers_the_whole_prompt_speech_included_as_forward_does():
    model = build(bridge_type="ctc")
    model.set_attn_implementation("eager")  # attention weights
    values, _ = padded_batch([16000])
    out = model.generate(values, max_new_tokens=3, loop_guard=False, return_dict_in_generate=True,
                         output_hidden_states=True, output_attentions=True)
    forward = model(values, output_hidden_states=True, output_attentions=True)  # the same prompt: [bos] speech [sep]
    prompt = forward.logits.shape[1]
    assert prompt == int(model.encode_speech(values).lengths[0]) + 2
    assert [h.shape[1] for h in out.hidden_states[0]] == [prompt] * len(forward.hidden_states)
    assert [a.shape[-2:] for a in out.attentions[0]] == [(prompt, prompt)] * len(forward.attentions)
    assert [h.shape[1] for h in out.hidden_states[1]] == [1] * len(forward.hidden_states)  # then one position a step
    for generated, forwarded in zip(out.hidden_states[0], forward.hidden_states):
        torch.testing.assert_close(generated, forwarded, rtol=0, atol=0)
    for generated, forwarded in zip(out.attentions[0], forward.attentions):
        torch.testing.assert_close(generated, forwarded, rtol=0, atol=0)


def test_the_returned_cache_continues_the_decoding():
    model = build(bridge_type="ctc")
    values, mask = padded_batch()
    out = model.generate(values, mask, max_new_tokens=3, loop_guard=False, return_dict_in_generate=True)
    longer = model.generate(values, mask, max_new_tokens=4, loop_guard=False)
    speech = model.encode_speech(values, mask)
    _, prompt_mask, positions, _ = model.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
    assert out.cache.get_seq_length() == prompt_mask.shape[1] + 2  # the prompt and every token but the last
    step = model.language_model(input_ids=out.sequences[:, -1:], cache=out.cache, use_cache=True,
                                attention_mask=torch.cat([prompt_mask, torch.ones_like(out.sequences)], 1),
                                position_ids=positions[:, -1:] + out.sequences.shape[1])
    assert step.logits[:, -1].argmax(-1).tolist() == longer[:, 3].tolist()


def test_the_pipeline_follows_a_config_that_turns_ctc_draft_on(tiny_tokenizer, tiny_feature_extractor):
    """A character head drafts through the tokenizer: the pipeline hands over its own when the config asks for drafts."""
    from modeling_hubert_gpt import HubertGptASRPipeline

    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": sorted(set("今日は明日学校で本を読みます"))})).eval()
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.5, 0.7])]
    plain = asr(audios, batch_size=3)
    outputs, generate = [], model.generate
    model.generate = lambda *args, **kwargs: outputs.append(generate(*args, return_dict_in_generate=True, **kwargs)) or outputs[-1]
    model.generation_config.ctc_draft = True
    assert asr(audios, batch_size=3) == plain
    assert outputs[-1].draft_stats["llm_forward_passes"] >= 1
