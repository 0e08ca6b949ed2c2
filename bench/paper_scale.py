#!/usr/bin/env python
"""The paper's size on one CPU machine: a random-weight checkpoint in rinna/nue-asr's exact format, converted,
loaded, transcribing, and one LoRA training step, each phase in its own process with its peak RSS.

    python bench/paper_scale.py --json paper.json                                 # full size: HuBERT base + 36 x 2816
    python bench/paper_scale.py --dtype float32 --json paper.json                 # a CPU without native bf16
    python bench/paper_scale.py --llm_layers 4 --llm_hidden 1024 --encoder_layers 4 --json small.json   # reduced
    python bench/paper_scale.py --work_dir w --phases baseline,infer,lora --dtype float32   # again, on w's files

Phases (a fresh process each; peak RSS = the process's ru_maxrss, `rss_over_baseline` subtracts a process that only
imports torch + transformers + our code):
  build      nue-asr's files: config.json (model_type nue_asr, rinna's sub-configs), pytorch_model.bin in fp16 (random
             N(0, 0.02) tensors, written as released), spiece.model + T5Tokenizer tokenizer_config.json
  convert    convert_nue_asr.py --dtype auto (goal: peak RSS <= 1.3 x the checkpoint's bytes)
  infer      the CPU's bf16 flags and a bf16 / fp32 matmul's GFLOPS; AutoModelForSpeechSeq2Seq.from_pretrained(...,
             dtype=--dtype): load time; a 10 s utterance and a batch of 8 transcribed, one generate each with 33
             forced tokens, timed step by step (a logits processor notes each step's time): prefill seconds and the
             median decode ms/token at batch 1 and 8; and the memory-read bound measured in the same process: LLM
             weight bytes / read bandwidth (a 256 MiB fp32 tensor summed, best of 5). Goal: batch-1 decode within
             1.5 x that bound.
  lora       train_hf.py's code path (build_model from the folder, choose_trainable --lora, SpeechCollator,
             HubertGptTrainer) for one optimizer step: gradient checkpointing, batch 1 of 10 s; the model is cast to
             --dtype after build_model (which keeps the converted fp16, refused by CPU bf16 autocast), with bf16
             autocast when --dtype is bfloat16
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GiB = 1024**3


# --- phases, each run as `python bench/paper_scale.py --phase NAME ...` ------------------------------------------------
def phase_baseline(args):
    import torch  # noqa: F401  the imports every phase pays for
    import transformers  # noqa: F401

    import convert_nue_asr  # noqa: F401
    import train_hf  # noqa: F401
    return {}


def nue_config(args, vocab_size):
    """config.json of nue-asr with rinna's sub-configs (FACTS.md), at the requested size."""
    from transformers import GPTNeoXConfig, HubertConfig

    audio = HubertConfig(hidden_size=args.encoder_hidden, num_hidden_layers=args.encoder_layers,
                         num_attention_heads=args.encoder_hidden // 64, intermediate_size=4 * args.encoder_hidden,
                         feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False).to_dict()
    llm = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=args.llm_hidden, num_hidden_layers=args.llm_layers,
                        num_attention_heads=args.llm_hidden // 128, intermediate_size=4 * args.llm_hidden,
                        rotary_pct=1.0, use_parallel_residual=False, tie_word_embeddings=False,
                        max_position_embeddings=2048, bos_token_id=2, eos_token_id=3).to_dict()
    llm["rotary_pct"] = 1.0
    return {"architectures": ["NueASRModel"], "model_type": "nue_asr", "audio_encoder_config": audio,
            "llm_config": llm, "bridge_conv_kernel_size": [4, 4], "bridge_conv_stride": [2, 2],
            "torch_dtype": "float16"}


def phase_build(args):
    import torch
    from transformers import GPTNeoXConfig, HubertConfig

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_convert_nue_asr import NueAsrReference, write_tokenizer

    os.makedirs(args.src, exist_ok=True)
    write_tokenizer(args.src)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.src, "spiece.model"))
    config = nue_config(args, 32000)  # rinna's vocabulary size; ids past the small tokenizer are never produced
    with open(os.path.join(args.src, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with torch.device("meta"):  # shapes only: the tensors are made one by one below
        shapes = NueAsrReference(HubertConfig(**config["audio_encoder_config"]),
                                 GPTNeoXConfig(**config["llm_config"]), [4, 4], [2, 2])
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in shapes.state_dict().items():
        name = name.replace("llm.lm_head.", "llm.embed_out.")
        state[name] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.float16)
    torch.save(state, os.path.join(args.src, "pytorch_model.bin"))
    size = os.path.getsize(os.path.join(args.src, "pytorch_model.bin"))
    return {"checkpoint_bytes": size, "tokenizer_pieces": sp.get_piece_size(),
            "parameters": sum(t.numel() for t in state.values())}


def phase_convert(args):
    import convert_nue_asr

    started = time.time()
    convert_nue_asr.main(["--src", args.src, "--dst", args.dst, "--overwrite"])
    return {"convert_s": round(time.time() - started, 1)}


def read_bandwidth():
    """Bytes per second summing a 256 MiB fp32 tensor (far beyond the caches; best of 5; fp32, which every CPU adds
    natively): the rate at which weights stream from memory. Measured before the model is loaded, so it adds nothing
    to the phase's peak RSS."""
    import torch

    data = torch.ones(GiB // 16, dtype=torch.float32)
    data.sum()
    best = min(_timed(data.sum) for _ in range(5))
    return data.numel() * data.element_size() / best


def matmul_gflops(dtype, tokens=64, width=2816):
    """GFLOPS of one (tokens x width) @ (width x 4*width) product in `dtype`, the shape of the LLM's MLP (best of 3):
    a CPU without native bf16 (no AVX512-BF16 / AMX) computes bf16 many times slower than fp32."""
    import torch

    x, w = torch.randn(tokens, width, dtype=dtype), torch.randn(4 * width, width, dtype=dtype)
    best = min(_timed(lambda: torch.nn.functional.linear(x, w)) for _ in range(3))
    return 2 * tokens * width * 4 * width / best / 1e9


def _timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class StepClock:
    """A logits processor that only notes the time of each decoding step (generate calls it once per new token, after
    the forward pass): the first note ends the prefill, the gaps between notes are the per-token decode times."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def phase_infer(args):
    import numpy as np
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, LogitsProcessorList

    from hubert_gpt_training.cpu import cpu_info

    bandwidth = read_bandwidth()
    dtype = getattr(torch, args.dtype)
    out = {"dtype": args.dtype, **cpu_info(), "matmul_gflops_bf16": round(matmul_gflops(torch.bfloat16), 1),
           "matmul_gflops_fp32": round(matmul_gflops(torch.float32), 1)}
    started = time.time()
    model = AutoModelForSpeechSeq2Seq.from_pretrained(args.dst, trust_remote_code=True, dtype=dtype).eval()
    out["load_s"] = round(time.time() - started, 1)
    processor = AutoProcessor.from_pretrained(args.dst, trust_remote_code=True)
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(160000)).astype(np.float32) for _ in range(8)]  # 10 s each
    tokens = 33
    for batch in (1, 8):  # one generate each: the prefill once, then `tokens` forced decoding steps
        inputs = processor(audio=audio[:batch], sampling_rate=16000, return_tensors="pt")
        clock = StepClock()
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens,
                           logits_processor=LogitsProcessorList([clock]))
        steps = np.diff(clock.times)  # (tokens - 1,) seconds per decoding step
        out[f"prefill_b{batch}_s"] = round(clock.times[0] - started, 2)  # encoder + bridge + LLM over the prompt
        out[f"decode_ms_per_token_b{batch}"] = round(1000 * float(np.median(steps)), 1)
    llm_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    out.update(llm_weight_bytes=llm_bytes, read_bandwidth_gb_s=round(bandwidth / 1e9, 2),
               bound_ms_per_token=round(1000 * llm_bytes / bandwidth, 1))
    out["b1_over_bound"] = round(out["decode_ms_per_token_b1"] / out["bound_ms_per_token"], 2)
    return out


def phase_lora(args):
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import Seq2SeqTrainingArguments

    import train_hf
    from hubert_gpt_training.data import SpeechCollator
    from hubert_gpt_training.trainer import HubertGptTrainer

    with tempfile.TemporaryDirectory() as work:
        margs = train_hf.ModelArguments(model_name_or_path=args.dst, lora=True)
        model, processor = train_hf.build_model(margs, [], work)
        # build_model keeps the checkpoint's fp16, which CPU bf16 autocast refuses (GroupNorm: "mixed dtype");
        # the frozen base in --dtype (bf16: as LoRA on one machine is run where the CPU computes bf16 natively)
        model = model.to(getattr(torch, args.dtype))
        model = train_hf.choose_trainable(model, margs)
        rng = np.random.default_rng(0)
        rows = [{"audio": (0.1 * rng.standard_normal(160000)).astype(np.float32), "text": "今日は晴れです"}]
        targs = Seq2SeqTrainingArguments(output_dir=work, use_cpu=True, bf16=args.dtype == "bfloat16",
                                         gradient_checkpointing=True,
                                         gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=1,
                                         per_device_train_batch_size=1, report_to="none", save_strategy="no",
                                         remove_unused_columns=False, learning_rate=1e-4)
        trainer = HubertGptTrainer(model=model, args=targs, train_dataset=Dataset.from_list(rows),
                                   data_collator=SpeechCollator(processor), processing_class=processor)
        started = time.time()
        result = trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"lora_step_s": round(time.time() - started, 1), "lora_loss": round(result.training_loss, 3),
            "lora_trainable_parameters": trainable, "lora_loss_finite": bool(torch.isfinite(
                torch.tensor(result.training_loss)))}


PHASES = {"baseline": phase_baseline, "build": phase_build, "convert": phase_convert, "infer": phase_infer,
          "lora": phase_lora}


def run_phase(name, argv):
    """Run one phase in a fresh process; its result with its peak RSS (bytes)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--phase", name, *argv], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm_layers", type=int, default=36)
    parser.add_argument("--llm_hidden", type=int, default=2816, help="a multiple of 128 (the head size)")
    parser.add_argument("--encoder_layers", type=int, default=12)
    parser.add_argument("--encoder_hidden", type=int, default=768, help="a multiple of 64 (the head size)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="of the loaded model (infer) and the frozen base (lora); float32 where the CPU lacks "
                             "native bf16 (the infer phase reports the CPU's flags and both dtypes' matmul GFLOPS)")
    parser.add_argument("--work_dir", help="where the checkpoints go (default: a temporary folder, removed); a given "
                                           "folder is kept, so that --phases can rerun later phases on its files")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated phases to run, in order (default all: {','.join(PHASES)})")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llm_hidden % 128 or args.encoder_hidden % 64:
        parser.error("--llm_hidden must be a multiple of 128 and --encoder_hidden of 64 (the models' head sizes)")
    if args.phase:
        out = PHASES[args.phase](args)
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(out))
        return
    phases = args.phases.split(",")
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    size = ["--llm_layers", str(args.llm_layers), "--llm_hidden", str(args.llm_hidden), "--encoder_layers",
            str(args.encoder_layers), "--encoder_hidden", str(args.encoder_hidden), "--dtype", args.dtype]
    results = {"size": dict(llm_layers=args.llm_layers, llm_hidden=args.llm_hidden,
                            encoder_layers=args.encoder_layers, encoder_hidden=args.encoder_hidden)}
    with contextlib.ExitStack() as stack:
        work = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(work, exist_ok=True)
        paths = ["--src", os.path.join(work, "nue-asr"), "--dst", os.path.join(work, "converted")]
        for name in phases:
            results[name] = run_phase(name, size + paths)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        checkpoint = os.path.join(work, "nue-asr", "pytorch_model.bin")
        ckpt = os.path.getsize(checkpoint) if os.path.exists(checkpoint) else None
    summary = {name: {"peak_rss_gib": round(results[name]["peak_rss_bytes"] / GiB, 2)}
               for name in ("convert", "infer", "lora") if name in results}
    if "baseline" in results:
        base = results["baseline"]["peak_rss_bytes"]
        for name in summary:
            summary[name]["rss_over_baseline_gib"] = round((results[name]["peak_rss_bytes"] - base) / GiB, 2)
    if ckpt:
        summary["checkpoint_gib"] = round(ckpt / GiB, 3)
    if ckpt and "convert" in results:
        summary["convert_rss_over_checkpoint"] = round(results["convert"]["peak_rss_bytes"] / ckpt, 2)
        if "baseline" in results:
            summary["convert_rss_over_baseline_over_checkpoint"] = round(
                (results["convert"]["peak_rss_bytes"] - base) / ckpt, 2)
    results["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
