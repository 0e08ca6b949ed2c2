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
    result, stdout = run_bench("training.py", ["--utterances", "16", "--batch", "4", "--width", "32", "--layers", "1",
                                               "--scale_utterances", "640", "--scale_batch", "8"], tmp_path)
    assert {name: r["steps"] for name, r in result["results"].items()} == {"random": 4, "grouped": 4}
    for r in result["results"].values():
        assert r["audio_s"] == result["results"]["random"]["audio_s"]  # both orders see every utterance once
    scale = result["padding_at_scale"]
    assert (scale["utterances"], scale["batch"]) == (640, 8)
    for share in ("encoder_pad_share", "llm_pad_share"):
        assert 0 <= scale["grouped"][share] < scale["random"][share]
    assert "padding for an epoch of 640 utterances at batch 8" in stdout


def test_inference_bench_rejects_a_repeat_below_one():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "inference.py"), "--repeat", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--repeat must be at least 1, got 0" in run.stderr
