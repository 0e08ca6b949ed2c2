"""The benchmarks run end to end on a tiny shape and report what they promise (their figures are not asserted)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script, args, tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args, "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text()), run.stdout


def test_inference_bench_checks_every_variant_against_the_baseline(tmp_path):
    result, stdout = run_bench("inference.py", ["--utterances", "4", "--seconds", "1", "2", "--width", "32",
                                                "--layers", "1", "--llm-width", "32", "--llm-layers", "1",
                                                "--vocab", "100", "--repeat", "2"], tmp_path)
    assert result["identical"] is True and result["failures"] == []
    assert result["device"].startswith("cpu") and result["utterances"] == 4 and result["repeat"] == 2
    oracle = next(r for r in result["rows"] if r["variant"] == "ctc spec b1, oracle draft")
    assert oracle["passes"] == 4  # one pass per utterance (the draft is right), counted for one run, not both
    for key in ("batched_speedup_16", "appending_cache_speedup_16", "encoder_groups_speedup_16",
                "spec_passes_per_token", "spec_speedup"):
        assert result[key] > 0
    assert result["spec_passes_per_token_oracle"] < result["spec_passes_per_token_noisy30"]  # a right draft saves passes
    assert "baseline (1 at a time)" in stdout
    switched_off = {r["variant"] for r in result["rows"] if r["identical"]}  # checked against the baseline too
    assert {"conv generate b16, DynamicCache", "conv generate b16, encoder in one call"} <= switched_off


def test_training_bench_reports_padding_with_and_without_grouping(tmp_path):
    result, stdout = run_bench("training.py", ["--section", "grouping", "--utterances", "16", "--batch", "4",
                                               "--width", "32", "--layers", "1", "--scale_utterances", "640",
                                               "--scale_batch", "8"], tmp_path)
    assert {name: r["steps"] for name, r in result["results"].items()} == {"random": 4, "grouped": 4}
    for r in result["results"].values():
        assert r["audio_s"] == result["results"]["random"]["audio_s"]  # both orders see every utterance once
    scale = result["padding_at_scale"]
    assert (scale["utterances"], scale["batch"]) == (640, 8)
    for share in ("encoder_pad_share", "llm_pad_share"):
        assert 0 <= scale["grouped"][share] < scale["random"][share]
    assert "padding for an epoch of 640 utterances at batch 8" in stdout


def test_training_bench_times_the_recipe_step_with_each_lever_on_the_same_batches(tmp_path):
    """torch.compile is left out here (minutes of C++ compilation); the quick run covers it."""
    levers = "bf16,hop320,prompt6hz,no_dropout,workers"
    result, stdout = run_bench("training.py", ["--section", "levers", "--levers", levers,
                                               "--corpus_dir", str(tmp_path / "data"), "--lever_corpus_hours", "0.02",
                                               "--lever_model_size", "tiny", "--lever_batch", "4", "--lever_rounds",
                                               "2", "--lever_steps", "3"], tmp_path)
    levers = result["levers"]
    assert list(levers["levers"]) == ["recipe", "workers", "no_dropout", "hop320", "prompt6hz", "bf16"]
    assert levers["failed"] == {}
    recipe = levers["levers"]["recipe"]
    for name, row in levers["levers"].items():
        assert row["steps"] == 6 and len(row["losses"]) == 2 + 6  # warm-up steps, then 2 turns of 3 steps
        assert row["steps_per_s"] == row["steps"] / row["timed_s"] and row["audio_s_per_s"] > 0
        assert row["vs_recipe"] == recipe["timed_s"] / row["timed_s"]
        assert row["same_losses_as_recipe"] == (row["losses"] == recipe["losses"])
    # a worker moves collation, not the math: the recipe's losses exactly; dropout off and bf16 change them
    assert levers["levers"]["workers"]["same_losses_as_recipe"] is True
    assert recipe["losses"][0] != levers["levers"]["no_dropout"]["losses"][0] != levers["levers"]["bf16"]["losses"][0]
    for name in ("hop320", "prompt6hz"):  # same weights, twice the frames / half the prompt
        assert levers["levers"][name]["losses"][0] != recipe["losses"][0]
    assert "recipe training step, levers side by side" in stdout and "\nworkers " in stdout


def test_inference_bench_rejects_a_repeat_below_one():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "inference.py"), "--repeat", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--repeat must be at least 1, got 0" in run.stderr


def test_timestamps_bench_reports_accuracy_lost_text_no_speech_and_cost(tmp_path, tiny_tokenizer,
                                                                         tiny_feature_extractor):
    import torch
    from helpers import make_audio, save_audio_split, training_sentences

    from hubert_gpt_training.tiny import tiny_config
    from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor

    torch.manual_seed(0)
    texts = training_sentences(8, 0)
    chars = sorted(set("".join(texts)))
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": chars})).eval()
    model.save_pretrained(tmp_path / "model")
    HubertGptProcessor(feature_extractor=tiny_feature_extractor, tokenizer=tiny_tokenizer).save_pretrained(
        tmp_path / "model")
    save_audio_split(tmp_path / "data", ("test", "test_noisy"), [make_audio(1.0 + 0.1 * i, seed=i) for i in range(8)],
                     texts)
    result, stdout = run_bench("timestamps.py", ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                                                 "--per_file", "2", "--long_s", "6", "--batch_size", "4",
                                                 "--rounds", "1"], tmp_path)
    assert result["utterances"] == 8 and result["joined_files"]["files"] == 4
    assert result["joined_files_split_at_pauses"]["files"] == 4
    assert 0 <= result["split_at_pauses_changed_test_transcripts"] <= 8
    assert 0 <= result["early_stop_split_changed_test_transcripts"] <= 8
    assert result["joined_files_early_stop_split_off"]["files"] == 4
    assert result["files_30s_chunk8"]["cer_one_by_one_trimmed"] >= 0 and "cer_ratio_trimmed" in result["long_file"]
    assert result["timestamps_identical_text"] is True  # aligning reads the CTC head; it changes no transcript
    assert result["no_speech_guards_on"]["clips"] == result["no_speech_guards_off"]["clips"] == 40
    noisy = result["test_noisy"]  # the noisy split (here the same audio): guards on and off, emptied utterances
    assert noisy["utterances"] == 8 and set(noisy) == {"utterances", "guards_on", "guards_off"}
    assert all(0 <= noisy[k]["emptied"] <= 8 and noisy[k]["cer"] >= 0 for k in ("guards_on", "guards_off"))
    assert "test_reverb" not in result  # splits the corpus lacks are left out
    assert result["long_file"]["seconds"] >= 6 and result["timestamp_cost_ratio_b16"] > 0
    assert '"files_30s_chunk8"' in stdout


def test_hotwords_bench_reports_recall_leakage_gate_and_cost(tmp_path, tiny_tokenizer, tiny_feature_extractor):
    import torch
    from helpers import make_audio, save_audio_split, training_sentences

    from hubert_gpt_training.tiny import tiny_config
    from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor

    torch.manual_seed(0)
    texts = training_sentences(6, 0)
    spoken, distractors = ["東京", "先生"], ["駅前", "彼女", "電車"]
    chars = sorted(set("".join(texts + spoken + distractors)))
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": chars})).eval()
    model.save_pretrained(tmp_path / "model")
    HubertGptProcessor(feature_extractor=tiny_feature_extractor, tokenizer=tiny_tokenizer).save_pretrained(
        tmp_path / "model")

    save_audio_split(tmp_path / "data", "test", [make_audio(0.8 + 0.1 * i, seed=i) for i in range(6)], texts)
    said = [[spoken[i % 2]] for i in range(4)]
    save_audio_split(tmp_path / "hotwords", None, [make_audio(0.8 + 0.1 * i, seed=10 + i) for i in range(4)],
                     [n[0] + "です" for n in said], names=said)
    (tmp_path / "hotwords" / "hotwords.json").write_text(json.dumps(
        {"spoken": spoken, "distractors": distractors, "corpus": str(tmp_path / "data")}))
    result, stdout = run_bench("hotwords.py", ["--model", str(tmp_path / "model"), "--hotword_set",
                                               str(tmp_path / "hotwords"), "--batch_size", "4", "--boost", "6"], tmp_path)
    assert result["hotword_utterances"] == 4 and result["test_utterances"] == 6 and result["distractors"] == 3
    assert set(result["hotword_set"]) == {"none", "true_gated", "true_ungated", "true_and_distractors_gated",
                                          "true_and_distractors_ungated", "distractors_gated", "distractors_ungated"}
    assert result["test_split"]["plain"]["identical_to_plain"] == 1.0
    assert 0 <= result["gate_true_names_let_through"] <= 1 and 0 <= result["gate_distractors_let_through"] <= 1
    assert result["cost_b16_20_hotwords"]["gated"] > 0 and '"recall"' in stdout


def test_confidence_bench_scores_right_and_wrong_chunks_clean_and_noisy(tmp_path, tiny_tokenizer,
                                                                        tiny_feature_extractor):
    import torch
    from helpers import make_audio, save_audio_split, training_sentences

    from hubert_gpt_training.tiny import tiny_config
    from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor

    torch.manual_seed(0)
    texts = training_sentences(6, 0)
    model = HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tiny_tokenizer, ctc_head_config={"vocab": sorted(set("".join(texts)))})).eval()
    model.save_pretrained(tmp_path / "model")
    HubertGptProcessor(feature_extractor=tiny_feature_extractor, tokenizer=tiny_tokenizer).save_pretrained(
        tmp_path / "model")
    save_audio_split(tmp_path / "data", "test", [make_audio(0.8 + 0.1 * i, seed=i) for i in range(6)], texts)
    result, stdout = run_bench("confidence.py", ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                                                  "--snr_db", "10", "--batch_size", "4"], tmp_path)
    assert result["utterances"] == 6 and set(result["conditions"]) == {"clean", "snr_10db"}
    for row in result["conditions"].values():
        assert set(row) == {"cer"} | {f"{level}_{reader}" for level in ("char", "word")
                                      for reader in ("combined", "llm", "ctc")}
        assert row["char_combined"]["chunks"] > 0 and row["char_llm"]["chunks"] == row["char_combined"]["chunks"]
        for scores in (v for k, v in row.items() if k != "cer"):
            assert 0 <= scores["wrong_share"] <= 1 and (scores["auroc"] is None or 0 <= scores["auroc"] <= 1)
    assert '"snr_10db"' in stdout


def test_confidence_bench_marks_chunks_by_their_letters_and_ranks_them():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from confidence import auroc, judged

    chunks = [{"text": "今日", "confidence": 0.9}, {"text": "は", "confidence": 0.8},
              {"text": "晴れ。", "confidence": 0.3}, {"text": "、", "confidence": 0.1}, {"text": "x", "confidence": None}]
    assert judged(chunks, "今日は雨。") == [(0.9, True), (0.8, True), (0.3, False)]  # 、 holds no letter; x no value
    assert auroc([(0.9, True), (0.8, True), (0.3, False)]) == 1.0
    assert auroc([(0.5, True), (0.5, False), (0.2, True)]) == 0.25  # (a tie: 1/2, below: 0) / 2 pairs
    assert auroc([(0.5, True)]) is None
