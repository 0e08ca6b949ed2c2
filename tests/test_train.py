"""train_hf.py end to end, each run in its own process: smoke preset, DeepSpeed ZeRO-2/3, two ranks, LoRA,
frozen parts, resume, export, and its errors."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_audio, transcribe_in_fresh_process
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from step_driver import one_step, tiny_model_and_rows

from hubert_gpt_training.data import SpeechCollator
from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "train_driver.py")


def run(args, cwd, launcher=(), check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def driver(tmp_path, *args, launcher=None):
    """train_driver.py's JSON line: results, logged losses, in-memory vs saved-folder tokens."""
    launcher = launcher or (sys.executable,)
    proc = run([DRIVER, "--preset", "smoke", "--output_dir", str(tmp_path / "out"), *args], tmp_path, launcher)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The README's main command, with an export folder too."""
    tmp = tmp_path_factory.mktemp("smoke")
    run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--output_dir", str(tmp / "out"),
         "--export_dir", str(tmp / "export")], tmp)
    return tmp


def test_smoke_preset_writes_a_complete_hub_folder(smoke):
    export = smoke / "export"
    results = json.loads((export / "results.json").read_text())
    assert results == json.loads((smoke / "out" / "results.json").read_text())
    losses = [row["loss"] for row in results["log_history"] if "loss" in row]
    assert len(losses) == 6 and losses[-1] < losses[0]  # it learns something in 60 steps
    card = ModelCard.load(export / "README.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics == {"cer": results["cer"], "wer": results["wer"]}
    assert not (export / "training_args.bin").exists() and not (export / "work").exists()
    assert (export / "model.safetensors").exists() and (export / "pipeline_hubert_gpt.py").exists()


def test_exported_folder_transcribes_in_a_fresh_process(smoke, tmp_path):
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.5, 0.7])]
    for i, audio in enumerate(audios):
        np.save(tmp_path / f"audio{i}.npy", audio)
    got = transcribe_in_fresh_process(smoke / "export", tmp_path)
    model = HubertGptForConditionalGeneration.from_pretrained(smoke / "export")
    processor = HubertGptProcessor.from_pretrained(smoke / "export")
    expected = model.generate(**processor(audio=audios, sampling_rate=16000))
    assert got["tokens"] == expected.tolist()
    assert got["pipeline_text"] == processor.batch_decode(expected, skip_special_tokens=True)


def test_time_limit_cuts_training_short_and_says_so_everywhere(tmp_path):
    """The limit is a guard: a run it stops before max_steps says where, at the end of stderr, in results.json and
    at the top of the card."""
    out = tmp_path / "out"
    proc = run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--max_steps", "100000",
                "--max_train_minutes", "0.05", "--output_dir", str(out)], tmp_path)
    results = json.loads((out / "results.json").read_text())
    step, limit = results["global_step"], results["time_limit"]
    assert 1 <= step < 100000
    message = (f"Training stopped at step {step} of 100000 by the time limit (--max_train_minutes 0.05); expect a "
               f"worse CER than the full 100000 steps give")
    assert limit == {"max_train_minutes": 0.05, "cut_short": True, "stopped_at_step": step, "max_steps": 100000,
                     "message": message}
    assert proc.stderr.strip().splitlines()[-1].startswith(f"WARNING: {message}.")  # said last
    card = (out / "README.md").read_text()
    assert f"# out\n\n> **Warning: this model's training was cut short.** {message}.\n" in card
    assert results["speed"]["steps"] == step


def test_run_reports_its_speed_and_the_wall_time_of_each_phase(tmp_path):
    """One epoch of the smoke data (24 steps: every utterance once) with periodic evaluation and a time limit it does
    not reach."""
    from hubert_gpt_training.synthetic import tone_rows

    out = tmp_path / "out"
    proc = run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--max_steps", "-1",
                "--num_train_epochs", "1", "--eval_strategy", "steps", "--eval_steps", "12", "--max_train_minutes",
                "30", "--output_dir", str(out)], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 24
    assert results["time_limit"] == {"max_train_minutes": 30.0, "cut_short": False, "stopped_at_step": None,
                                     "max_steps": 24}
    card = (out / "README.md").read_text()
    assert "cut short" not in card and "time limit" not in proc.stderr
    speed, phases = results["speed"], results["phases_s"]
    train_audio = sum(len(row["audio"]["array"]) for row in tone_rows(192, seed=42)) / 16000  # the smoke train set
    assert speed["steps"] == 24 and speed["audio_s"] == round(train_audio, 2)  # real samples, padding not counted
    assert speed["training_s"] == phases["training"] > 0
    assert speed["steps_per_s"] == pytest.approx(24 / phases["training"])
    assert speed["audio_s_per_s"] == pytest.approx(speed["audio_s"] / phases["training"])
    assert list(phases) == ["data", "model", "training", "evaluation_during_training", "test_evaluation"]
    assert all(seconds > 0 for seconds in phases.values())
    periodic = [row["eval_runtime"] for row in results["log_history"] if "eval_runtime" in row]
    assert len(periodic) == 2 and phases["evaluation_during_training"] == pytest.approx(sum(periodic), abs=0.01)
    assert sum(phases.values()) <= results["wall_s"] + 0.1  # disjoint phases within the run's wall time
    assert re.fullmatch(r"cpu, \d+ threads?", speed["device"])
    for row in (f"| Training steps per second | {speed['steps_per_s']:.3g} |",
                f"| Audio seconds trained per second | {speed['audio_s_per_s']:.4g} |",
                f"| Training (periodic evaluation excluded), wall | {phases['training']:.1f} s |",
                f"| Evaluation during training, wall | {phases['evaluation_during_training']:.1f} s |",
                f"| Whole run before the folder is written, wall | {results['wall_s']:.1f} s |"):
        assert row in card


def test_trainer_gives_every_loss_forward_the_ctc_settings(tiny_processor, tmp_path):
    """HubertGptTrainer(ctc_loss_weight=, ctc_trains_encoder=) reaches the model in training and in evaluation
    (generating or not), whose loss is the model's."""
    import datasets
    from transformers import Seq2SeqTrainingArguments

    from hubert_gpt_training.data import SpeechCollator
    from hubert_gpt_training.tiny import tiny_config
    from hubert_gpt_training.trainer import HubertGptTrainer

    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=tiny_processor.tokenizer, ctc_head_config={}))
    rows = [{"audio": make_audio(0.5 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(["今日は", "猫が水を", "hello"])]
    collator = SpeechCollator(tiny_processor)
    calls = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append({k: kwargs.get(k, "absent") for k in ("ctc_loss_weight", "ctc_trains_encoder")})
        return forward(*args, **kwargs)

    model.forward = spy
    losses = {}
    for weight in (0.0, 1.0):
        args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                                        max_steps=1, predict_with_generate=True, per_device_train_batch_size=3,
                                        per_device_eval_batch_size=3, remove_unused_columns=False, learning_rate=0.0)
        trainer = HubertGptTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                   eval_dataset=datasets.Dataset.from_list(rows), data_collator=collator,
                                   processing_class=tiny_processor,
                                   compute_metrics=lambda p: {"rows": len(p.label_ids)},
                                   ctc_loss_weight=weight, ctc_trains_encoder=False)
        calls.clear()
        trainer.train()
        assert calls == [{"ctc_loss_weight": weight, "ctc_trains_encoder": False}]
        for loss_only in (False, True):  # generating evaluation, and loss-only evaluation
            trainer.args.prediction_loss_only = loss_only
            calls.clear()
            metrics = trainer.evaluate()
            assert calls == [{"ctc_loss_weight": weight, "ctc_trains_encoder": False}]
            assert ("eval_rows" in metrics) == (not loss_only)
            with torch.no_grad():  # the mean over every label (Trainer's label count agrees with the model's)
                expected = forward(**collator(rows), ctc_loss_weight=weight).loss
            assert metrics["eval_loss"] == pytest.approx(float(expected), rel=1e-5)
            losses[weight] = metrics["eval_loss"]
    assert losses[1.0] > losses[0.0]


EQUAL_LENGTHS = ["駅", "犬", "雨", "猫"]  # two tokens each with the tiny tokenizer (then eos)
UNEQUAL_LENGTHS = ["今日は", "猫が水を飲む", "hello", "今日は晴れ"]


def one_batch_of_four(tiny_processor, tmp_path, weight, texts):
    """One step over the four utterances as one batch: the model and rows it started from, its update, and its logged
    loss, which must be a bare forward's."""
    model, rows = tiny_model_and_rows(tiny_processor, texts)
    if weight:  # the CTC loss on: transcripts equally long, so a batch's share of the tokens is its share of the rows
        assert [len(tiny_processor.tokenizer(t)["input_ids"]) for t in texts] == [2] * 4
    with torch.no_grad():
        expected = model(**SpeechCollator(tiny_processor)(rows), ctc_loss_weight=weight).loss
    update, logged = one_step(model, tiny_processor, rows, 4, 1, weight, tmp_path / "one_batch")
    assert logged["loss"] == pytest.approx(float(expected), rel=1e-6)  # every label counted once
    return model, rows, update, float(expected)


def assert_same_update(update, expected_update):
    """Equal up to float sums taken in another order: 2e-4 of each tensor's largest update (seen: up to 6e-5, on the
    attention keys' small gradients; their biases' are zero but for rounding, 1e-12)."""
    for name, expected in expected_update.items():
        tolerance = 2e-4 * float(expected.abs().max()) + 1e-8
        torch.testing.assert_close(update[name], expected, rtol=0, atol=tolerance, msg=name)


@pytest.mark.parametrize("weight, texts", [(0.0, UNEQUAL_LENGTHS), (1.0, EQUAL_LENGTHS)])
def test_accumulated_batches_update_the_weights_as_one_batch(tiny_processor, tmp_path, weight, texts):
    """Two accumulated batches of two move every weight as one batch of four does and log the same loss: the LLM
    loss is a mean over the step's tokens, and the CTC loss counts once per step, not once per accumulated batch
    (each batch's CTC mean is weighted by its share of the step's tokens: its share of the rows here, where the
    transcripts are equally long)."""
    model, rows, expected_update, expected_loss = one_batch_of_four(tiny_processor, tmp_path, weight, texts)
    update, logged = one_step(model, tiny_processor, rows, 2, 2, weight, tmp_path / "accumulated")
    assert logged["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert_same_update(update, expected_update)
    if weight:
        assert expected_update["ctc_head.out.weight"].abs().sum() > 0  # the CTC loss is in the step


def test_two_processes_update_the_weights_as_one_batch(tiny_processor, tmp_path):
    """Two processes with two utterances each (Trainer averaging the token count across them, its default) move
    every weight as one process with the four does, CTC loss included."""
    _, _, expected_update, _ = one_batch_of_four(tiny_processor, tmp_path, 1.0, EQUAL_LENGTHS)
    tiny_processor.save_pretrained(tmp_path / "processor")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(29500 + (os.getpid() + 7) % 1000))
    run([*launcher, str(ROOT / "tests" / "step_driver.py"), str(tmp_path / "processor"),
         str(tmp_path / "ranks" / "update.pt"), "2", "1", "1.0", *EQUAL_LENGTHS], tmp_path)
    update = torch.load(tmp_path / "ranks" / "update.pt")["update"]
    assert_same_update(update, expected_update)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_trains_and_saved_model_generates_the_same(tmp_path, stage):
    got = driver(tmp_path, "--deepspeed", str(ROOT / "configs" / f"{stage}.json"), "--use_cpu", "--max_steps", "4",
                 "--logging_steps", "1")
    assert got["results"]["global_step"] == 4 and len(got["losses"]) == 4
    assert got["saved"] == got["in_memory"]


def test_gradient_checkpointing_and_bf16_switches_train(tmp_path):
    got = driver(tmp_path, "--use_cpu", "--gradient_checkpointing", "--bf16", "--max_steps", "3", "--logging_steps", "1")
    assert got["results"]["global_step"] == 3 and all(loss == loss for loss in got["losses"])  # finite, not NaN
    assert got["saved"] == got["in_memory"]


def test_two_processes_train_on_sharded_data(tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(29500 + os.getpid() % 1000))
    got = driver(tmp_path, "--use_cpu", "--max_steps", "-1", "--num_train_epochs", "1", launcher=launcher)
    # 192 utterances, batch 8 per rank: 12 steps when each rank reads its half (24 if both read everything).
    assert got["world_size"] == 2 and got["results"]["global_step"] == 12
    assert got["saved"] == got["in_memory"]


def test_lora_adapter_merges_and_reproduces_outputs(smoke, tmp_path):
    from peft import PeftModel

    got = driver(tmp_path, "--model_name_or_path", str(smoke / "export"), "--lora", "--max_steps", "6",
                 "--learning_rate", "0.05")
    params = got["results"]["parameters"]
    assert 0 < params["language_model"]["trainable"] < params["language_model"]["parameters"] / 2
    assert params["audio_tower"]["trainable"] == 0 and params["bridge"]["trainable"] > 0  # adapters + bridge only
    out = tmp_path / "out"
    assert got["saved"] == got["in_memory"]
    base = HubertGptForConditionalGeneration.from_pretrained(smoke / "export")
    merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload().eval()
    saved = HubertGptForConditionalGeneration.from_pretrained(out).eval()
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], tensor, msg=name)
    before = load_file(smoke / "export" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("language_model."))


def test_new_ctc_head_on_an_existing_checkpoint_trains_as_its_own_part(smoke, tmp_path):
    """--ctc_head on a checkpoint without one: a new head, trained (alone) even with the bridge frozen and under
    LoRA, reported as its own part; LoRA on the encoder reaches the wrapped HF encoder's layers."""
    got = driver(tmp_path, "--model_name_or_path", str(smoke / "export"), "--ctc_head", "--ctc_trains_encoder",
                 "false", "--ctc_loss_weight", "0.5", "--freeze_bridge", "--lora", "--lora_encoder",
                 "--max_steps", "3", "--draft_head_fit_steps", "5")
    params = got["results"]["parameters"]
    assert params["ctc_head"]["trainable"] > 0  # PEFT's trained copy (beside the frozen original it keeps)
    assert params["bridge"]["trainable"] == 0
    assert 0 < params["audio_tower"]["trainable"] < params["audio_tower"]["parameters"] / 2  # encoder adapters
    summary = got["results"]["training_summary"]
    assert (summary["ctc_head"], summary["ctc_loss_weight"], summary["ctc_trains_encoder"]) == (True, 0.5, False)
    assert got["results"]["draft_head_fit"] is None  # the refit runs without LoRA only
    assert got["saved"] == got["in_memory"]
    before = load_file(smoke / "export" / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert {k for k in after if k not in before} == {"ctc_head.out.weight", "ctc_head.out.bias"}
    # the encoder's layers changed through their merged adapters; the frozen bridge did not
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("audio_tower.model.encoder."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("bridge."))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| CTC loss weight | 0.5 |" in card and "| CTC loss trains the encoder | False |" in card


def test_frozen_parts_stay_bit_identical(smoke, tmp_path):
    driver(tmp_path, "--model_name_or_path", str(smoke / "export"), "--freeze_encoder", "--freeze_llm",
           "--max_steps", "4")
    before = load_file(smoke / "export" / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("bridge.")), name


def test_resume_continues_from_the_checkpoint_and_ends_at_the_same_step(tmp_path):
    args = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1"]
    full = tmp_path / "full"
    full.mkdir()
    whole = driver(full, *args)
    killed = tmp_path / "killed"
    (killed / "out").mkdir(parents=True)
    shutil.copytree(full / "out" / "checkpoint-4", killed / "out" / "checkpoint-4")  # as if killed after step 4
    resumed = driver(killed, *args, "--resume_from_checkpoint", str(killed / "out" / "checkpoint-4"))
    assert resumed["results"]["global_step"] == whole["results"]["global_step"] == 8
    # Only steps 5-8 ran again: the resumed run logged 4 losses, the full run 8.
    assert len(whole["losses"]) == 8 and len(resumed["losses"]) == 4
    assert resumed["saved"] == resumed["in_memory"]


def test_push_without_network_fails_clearly_after_saving(tmp_path):
    env_endpoint = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_fake"}
    os.environ.update(env_endpoint)
    try:
        proc = run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--max_steps", "2",
                    "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/hubert-gpt-smoke"],
                   tmp_path, check=False)
    finally:
        for key in env_endpoint:
            os.environ.pop(key)
    assert proc.returncode != 0
    assert "Upload of" in proc.stderr and "Everything is saved locally" in proc.stderr
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()


def test_deepspeed_config_that_contradicts_the_flags_is_refused(tmp_path):
    config = json.loads((ROOT / "configs" / "zero2.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 3
    (tmp_path / "ds.json").write_text(json.dumps(config))
    proc = run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--use_cpu", "--deepspeed",
                str(tmp_path / "ds.json"), "--output_dir", str(tmp_path / "out")], tmp_path, check=False)
    assert proc.returncode != 0 and "train_micro_batch_size_per_gpu" in proc.stderr
    assert not (tmp_path / "out" / "config.json").exists()


def test_model_that_cannot_be_loaded_offline_is_named(tmp_path):
    proc = run([sys.executable, str(ROOT / "train_hf.py"), "--audio_model", "rinna/japanese-hubert-base",
                "--text_model", "rinna/japanese-gpt-neox-3.6b", "--preset", "smoke",
                "--output_dir", str(tmp_path / "out")], tmp_path, check=False)
    assert proc.returncode != 0 and "rinna/japanese-hubert-base" in proc.stderr
    assert not (tmp_path / "out" / "config.json").exists()
