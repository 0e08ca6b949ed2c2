"""The model card: rendered from a results dict, parsed back with the exact numbers; no card without numbers."""

import platform

import pytest
import transformers
from huggingface_hub import ModelCard

from hub_card import render_card

RESULTS = {
    "cer": 0.08437,
    "wer": 0.31254,
    "num_utterances": 250,
    "dataset_name": "tiny pyopenjtalk speech",
    "split": "test",
    "bridge_type": "ctc",
    "num_empty_references": 0,  # extra keys are ignored
}
SUMMARY = {
    "hours_of_audio": 2.4,
    "epochs": 3,
    "steps": 1200,
    "learning_rate": 1e-4,
    "trained": ["audio_tower", "bridge"],
    "frozen": ["language_model"],
    "deepspeed_config": "configs/zero2.json",
    "seed": 7,
}


def render(tmp_path, results=RESULTS, **overrides):
    kwargs = dict(
        model_name="example-org/hubert-gpt-tiny-ja",
        base_models=None,
        dataset_name="tiny pyopenjtalk speech",
        dataset_id="example-org/tiny-ja-speech",
        training_summary=SUMMARY,
    )
    kwargs.update(overrides)
    return render_card(results, str(tmp_path), **kwargs)


def test_card_round_trips_the_measured_numbers(tmp_path):
    render(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.language == "ja" and data.license == "apache-2.0"
    assert data.library_name == "transformers" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.datasets == ["example-org/tiny-ja-speech"]
    assert data.model_name == "example-org/hubert-gpt-tiny-ja"
    assert "base_model" not in data.to_dict()
    by_metric = {r.metric_type: r for r in data.eval_results}
    assert sorted(by_metric) == ["cer", "wer"]
    assert by_metric["cer"].metric_value == RESULTS["cer"]
    assert by_metric["wer"].metric_value == RESULTS["wer"]
    for r in data.eval_results:
        assert r.task_type == "automatic-speech-recognition"
        assert r.dataset_type == "example-org/tiny-ja-speech"  # same dataset as training: its Hub id
        assert r.dataset_name == "tiny pyopenjtalk speech"
        assert r.dataset_split == "test"


def test_body_has_numbers_usage_recipe_and_versions(tmp_path):
    card = render(tmp_path)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text == str(card)  # the returned card is what was written
    assert "| tiny pyopenjtalk speech | test | 250 | 8.44 | 31.25 |" in text
    assert "arXiv:2312.03668" in text
    assert 'pipeline("automatic-speech-recognition", model="example-org/hubert-gpt-tiny-ja", trust_remote_code=True)' in text
    assert 'AutoModelForSpeechSeq2Seq.from_pretrained("example-org/hubert-gpt-tiny-ja", trust_remote_code=True)' in text
    assert "model.generate(**inputs)" in text
    assert "processor.batch_decode(generated_ids, skip_special_tokens=True)" in text
    for row in [
        "| Bridge | ctc |",
        "| Training audio (hours) | 2.4 |",
        "| Epochs | 3 |",
        "| Optimizer steps | 1200 |",
        "| Peak learning rate | 0.0001 |",
        "| Trained | audio_tower, bridge |",
        "| Frozen | language_model |",
        "| DeepSpeed | configs/zero2.json |",
        "| seed | 7 |",
    ]:
        assert row in text
    assert "Trained from random initialisation" in text
    assert f"Python {platform.python_version()}" in text
    assert f"transformers {transformers.__version__}" in text
    assert "close to a sentence error rate" in text  # Japanese: WER caveat
    assert "{{" not in text and "{%" not in text


def test_base_models_other_eval_set_and_deepspeed_dict(tmp_path):
    results = dict(RESULTS, dataset_name="JSUT basic5000", split="basic5000")
    summary = dict(SUMMARY, deepspeed_config={"zero_optimization": {"stage": 2}})
    render(tmp_path, results, base_models=["rinna/japanese-hubert-base", "rinna/japanese-gpt-neox-3.6b"],
           training_summary=summary, language="en")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == ["rinna/japanese-hubert-base", "rinna/japanese-gpt-neox-3.6b"]
    assert card.data.language == "en"
    # Evaluated on another set than the training one: the training set's Hub id must not be claimed for it.
    assert {r.dataset_type for r in card.data.eval_results} == {"JSUT basic5000"}
    text = card.text
    assert "| JSUT basic5000 | basic5000 | 250 | 8.44 | 31.25 |" in text
    assert '"stage": 2' in text and "| DeepSpeed | yes, config below |" in text
    assert "close to a sentence error rate" not in text


@pytest.mark.parametrize("key", ["cer", "wer", "num_utterances", "dataset_name", "split", "bridge_type"])
def test_missing_result_raises_and_writes_nothing(tmp_path, key):
    results = {k: v for k, v in RESULTS.items() if k != key}
    with pytest.raises(ValueError, match=rf"results is missing \['{key}'\]"):
        render(tmp_path, results)
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize(
    "bad", [{"cer": None}, {"cer": float("nan")}, {"cer": "8.4"}, {"wer": -0.1}, {"num_utterances": 0}, {"cer": True}]
)
def test_unreal_numbers_raise(tmp_path, bad):
    with pytest.raises(ValueError, match="results"):
        render(tmp_path, dict(RESULTS, **bad))


def test_bridge_type_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="bridge_type"):
        render(tmp_path, training_summary=dict(SUMMARY, bridge_type="conv"))


def test_summary_shaped_like_train_hf(tmp_path):
    # The keys train_hf.py sends: None = unknown (no row), no DeepSpeed = "not used", card arguments not repeated.
    summary = {"bridge_type": "ctc", "ctc_head": True, "ctc_loss_weight": 1.0, "ctc_trains_encoder": True,
               "steps": 40, "learning_rate": 0.001, "batch_size": 4, "deepspeed": None,
               "lora": None, "frozen": [], "base_models": [], "dataset_id": None, "train_utterances": None}
    text = render(tmp_path, training_summary=summary, dataset_id=None).text
    for row in ["| Optimizer steps | 40 |", "| Batch size per device | 4 |", "| DeepSpeed | not used |",
                "| Frozen | nothing |", "| CTC head (aux loss; drafts for `ctc_draft=True`) | True |",
                "| CTC loss weight | 1 |", "| CTC loss trains the encoder | True |"]:
        assert row in text
    for absent in ["Training utterances", "LoRA", "base_models", "dataset_id"]:
        assert absent not in text
    assert "(not published on the Hugging Face Hub)" in text
    assert "dataset = ...  # tiny pyopenjtalk speech" in text
    assert ModelCard.load(tmp_path / "README.md").data.datasets is None
    # a model without a CTC head: train_hf.py sends None for the CTC settings, so no rows
    headless = dict(summary, bridge_type="conv", ctc_head=False, ctc_loss_weight=None, ctc_trains_encoder=None)
    text = render(tmp_path, dict(RESULTS, bridge_type="conv"), training_summary=headless, dataset_id=None).text
    assert "| CTC head (aux loss; drafts for `ctc_draft=True`) | False |" in text
    assert "CTC loss weight" not in text and "CTC loss trains the encoder" not in text


SPEED = {"speed": {"steps": 24, "training_s": 8.0, "audio_s": 151.3, "steps_per_s": 3.0, "audio_s_per_s": 18.9125,
                   "device": "cpu, 2 threads"},
         "phases_s": {"data": 2.41, "model": 0.13, "training": 8.0, "draft_head_refit": 61.0, "test_evaluation": 0.77},
         "wall_s": 72.4}


def test_speed_and_phases_are_a_table_in_the_card(tmp_path):
    text = render(tmp_path, dict(RESULTS, **SPEED)).text
    rows = ["| Training steps per second | 3 |", "| Audio seconds trained per second | 18.91 |",
            "| Measured on | cpu, 2 threads |", "| Data (corpus build or load, decoding), wall | 2.4 s |",
            "| Model and tokenizer build, wall | 0.1 s |", "| Training (periodic evaluation excluded), wall | 8.0 s |",
            "| CTC draft head refit, wall | 61.0 s |", "| Test evaluation, wall | 0.8 s |",
            "| Whole run before the folder is written, wall | 72.4 s |"]
    at = [text.index(row) for row in rows]
    assert at == sorted(at)  # in this order, one table
    assert "Evaluation during training" not in text and "cut short" not in text
    resumed_at_the_end = dict(RESULTS, speed=dict(SPEED["speed"], steps=0, steps_per_s=None, audio_s_per_s=None),
                              phases_s={"training": 0.0})  # no step trained: no rates, a 0 s phase is a time
    text = render(tmp_path, resumed_at_the_end).text
    assert "steps per second" not in text and "| Training (periodic evaluation excluded), wall | 0.0 s |" in text
    plain = render(tmp_path, RESULTS).text  # results without speed: no such table
    assert "Training steps per second" not in plain and "wall |" not in plain


def test_a_run_cut_short_by_the_time_limit_is_flagged_at_the_top(tmp_path):
    message = "Training stopped at step 877 of 4000 by the time limit (--max_train_minutes 20); expect a worse CER"
    limit = {"max_train_minutes": 20, "cut_short": True, "stopped_at_step": 877, "max_steps": 4000, "message": message}
    text = render(tmp_path, dict(RESULTS, time_limit=limit)).text
    assert text.lstrip().startswith(f"# example-org/hubert-gpt-tiny-ja\n\n> **Warning: this model's training was "
                                    f"cut short.** {message}.\n\n`example-org/hubert-gpt-tiny-ja` transcribes")
    not_cut = dict(limit, cut_short=False, stopped_at_step=None, message=None)
    assert "cut short" not in render(tmp_path, dict(RESULTS, time_limit=not_cut)).text


@pytest.mark.parametrize("bad, error", [
    ({"speed": dict(SPEED["speed"], steps_per_s=0.0)}, "speed.steps_per_s must be a finite, positive number"),
    ({"phases_s": {"training": float("nan")}}, "phases_s.training must be a finite, non-negative number"),
    ({"phases_s": {"training": -1.0}}, "phases_s.training must be a finite, non-negative number"),
    ({"time_limit": {"cut_short": True}}, "says cut_short but has no message"),
])
def test_bad_speed_or_time_limit_raises(tmp_path, bad, error):
    with pytest.raises(ValueError, match=error):
        render(tmp_path, dict(RESULTS, **bad))
    assert not (tmp_path / "README.md").exists()
