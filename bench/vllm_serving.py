#!/usr/bin/env python
"""A trained hubert-gpt folder on its test split: the HF ASR pipeline at batch 16 vs vLLM's offline `LLM.generate`
with all requests at once, side by side in one run; audio seconds per wall second (the fastest of --repeat runs each:
wall times on a shared machine move a lot); every transcript checked equal, vLLM's both all at once and one request at
a time (a difference exits 1).

    .venv/bin/python bench/vllm_serving.py --model runs/default --dataset data/ja-synth-2h-seed42-* --json v.json

The HF side runs here (.venv); vLLM runs in the serving environment (`bash scripts/setup.sh --serve`, .venv-serve)
in a subprocess (bench/vllm_offline.py), fp32 on CPU, each side warmed up by one utterance first; vLLM's engine
start (profiling, KV cache allocation) is reported apart, not in its wall time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import pipeline

from inference import RATE, dataset_audios  # bench/inference.py: the training loader's decoding and resampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE_PYTHON = os.path.join(ROOT, ".venv-serve", "bin", "python")


def run_vllm(model, audios, repeat):
    if not os.path.exists(SERVE_PYTHON):
        sys.exit(f"{SERVE_PYTHON} is missing: build the serving environment with `bash scripts/setup.sh --serve`")
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "audio.npz")
        np.savez(npz, **{f"audio{i}": audio for i, audio in enumerate(audios)})
        run = subprocess.run([SERVE_PYTHON, os.path.join(ROOT, "bench", "vllm_offline.py"), model, npz,
                              str(repeat)],
                             capture_output=True, text=True, cwd=tmp)
    if run.returncode != 0:
        sys.exit(f"vLLM failed:\n{run.stderr[-4000:]}")
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained hubert-gpt folder (conv bridge)")
    parser.add_argument("--dataset", required=True, help="a corpus folder (datasets.save_to_disk) with a test split")
    parser.add_argument("--utterances", type=int, help="the first N test utterances (default: all)")
    parser.add_argument("--batch", type=int, default=16, help="the HF pipeline's batch_size")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (the fastest is kept)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    from hubert_gpt_training.data import load_source

    count = args.utterances or len(load_source(disk_path=args.dataset, split="test"))
    audios = dataset_audios(args.dataset, "test", count)
    seconds = sum(len(audio) for audio in audios) / RATE

    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True, dtype=torch.float32)
    asr(audios[:1], batch_size=1)  # warm-up
    hf_walls = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        hf_text = [out["text"] for out in asr(audios, batch_size=args.batch)]
        hf_walls.append(time.perf_counter() - start)
    hf_wall = min(hf_walls)

    served = run_vllm(args.model, audios, args.repeat)
    differ = [i for i, (a, b, c) in enumerate(zip(hf_text, served["text"], served["single_text"])) if not a == b == c]
    rows = [(f"HF pipeline, batch {args.batch}", hf_wall), ("vLLM LLM.generate, all at once", served["wall_s"])]
    print(f"{count} test utterances, {seconds:.1f} s of audio; vLLM engine start {served['engine_start_s']:.1f} s "
          "(not timed below)")
    print(f"{'variant':34} {'wall s':>8} {'audio s/s':>10} {'vs HF':>7}")
    for name, wall in rows:
        print(f"{name:34} {wall:8.2f} {seconds / wall:10.1f} {hf_wall / wall:6.2f}x")
    print(f"wall s of each run: HF {[round(w, 2) for w in hf_walls]}, vLLM {[round(w, 2) for w in served['walls_s']]}")
    print("transcripts identical (vLLM all at once and one at a time)" if not differ
          else f"transcripts DIFFER at utterances {differ[:10]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"utterances": count, "audio_s": seconds, "hf_wall_s": hf_wall, "vllm_wall_s": served["wall_s"],
                       "hf_walls_s": hf_walls, "vllm_walls_s": served["walls_s"],
                       "vllm_engine_start_s": served["engine_start_s"], "vllm_speedup": hf_wall / served["wall_s"],
                       "identical": not differ, "differ": differ}, f, indent=1)
    if differ:
        for i in differ[:5]:
            print(f"  {i}: HF {hf_text[i]!r}\n  {i}: vLLM {served['text'][i]!r} / alone {served['single_text'][i]!r}")
        sys.exit(1)


if __name__ == "__main__":
    main()
