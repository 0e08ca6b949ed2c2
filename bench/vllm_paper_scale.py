#!/usr/bin/env python
"""The paper's shape through vLLM on CPU: HuBERT base + GPT-NeoX 36 x 2816 (vocabulary 32000), random N(0, 0.02)
weights in bf16, written as a hubert-gpt folder, then served by vLLM's offline engine: decode ms/token at batch 1 and
8 (10 s utterances; (wall of 33 forced tokens - wall of 1) / 32, as bench/paper_scale.py measured the HF model
when the README's comparison was made).

    .venv/bin/python bench/vllm_paper_scale.py --json vllm_paper.json          # full size: ~7.4 GB of weights
    .venv/bin/python bench/vllm_paper_scale.py --llm_layers 4 --llm_hidden 1024 --encoder_layers 4   # reduced

Phases: `build` (here, .venv: one safetensors shard in memory at a time) and `decode` (.venv-serve's python, vLLM).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE_PYTHON = os.path.join(ROOT, ".venv-serve", "bin", "python")
SHARD_BYTES = 2 * 1024**3


def build(args, folder):
    """A hubert-gpt folder of the requested size with random bf16 weights, built on the meta device first."""
    import torch
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, HubertConfig, Wav2Vec2FeatureExtractor

    sys.path.insert(0, ROOT)
    from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration
    from modeling_hubert_gpt.processing_hubert_gpt import HubertGptProcessor
    from tests.helpers import build_tiny_tokenizer

    audio = HubertConfig(hidden_size=args.encoder_hidden, num_hidden_layers=args.encoder_layers,
                         num_attention_heads=args.encoder_hidden // 64, intermediate_size=4 * args.encoder_hidden,
                         feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False)
    text = GPTNeoXConfig(vocab_size=32000, hidden_size=args.llm_hidden, num_hidden_layers=args.llm_layers,
                         num_attention_heads=args.llm_hidden // 128, intermediate_size=4 * args.llm_hidden,
                         use_parallel_residual=False, tie_word_embeddings=False, max_position_embeddings=2048,
                         bos_token_id=2, eos_token_id=3, pad_token_id=3)
    config = HubertGptConfig(audio_config=audio, text_config=text, prompt_sep_token_id=4, dtype="bfloat16")
    with torch.device("meta"):
        model = HubertGptForConditionalGeneration(config)
    shard, size, index = {}, 0, 0
    generator = torch.Generator().manual_seed(0)
    for name, tensor in model.state_dict().items():  # random N(0, 0.02), shard by shard
        shard[name] = (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size >= SHARD_BYTES:
            save_file(shard, os.path.join(folder, f"model-{index:05d}.safetensors"), metadata={"format": "pt"})
            shard, size, index = {}, 0, index + 1
    if shard:
        save_file(shard, os.path.join(folder, f"model-{index:05d}.safetensors"), metadata={"format": "pt"})
    config.architectures = [type(model).__name__]
    config.auto_map = {"AutoConfig": "configuration_hubert_gpt.HubertGptConfig",
                       "AutoModel": "modeling_hubert_gpt.HubertGptForConditionalGeneration"}
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    for name in os.listdir(os.path.join(ROOT, "modeling_hubert_gpt")):
        if name.endswith("_hubert_gpt.py"):
            shutil.copy(os.path.join(ROOT, "modeling_hubert_gpt", name), folder)
    # the tokenizer only gives vLLM its special ids: decoding runs on token ids (detokenize=False)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                         return_attention_mask=True)
    HubertGptProcessor(extractor, build_tiny_tokenizer(os.path.join(folder, "tokenizer_src"))).save_pretrained(folder)
    return sum(t.numel() for t in model.state_dict().values())


DECODE = r"""
import json, sys, time
import numpy as np
from vllm import LLM, SamplingParams
from hubert_gpt_vllm import transcription_requests

def main(folder):
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(160000)).astype(np.float32) for _ in range(8)]  # 10 s each
    start = time.perf_counter()
    llm = LLM(folder, trust_remote_code=True, dtype="bfloat16", seed=0, max_model_len=2048, gpu_memory_utilization=0.1)
    out = {"engine_start_s": time.perf_counter() - start}
    prompts, _ = transcription_requests(folder, audios, 16000)

    def wall(batch, tokens):
        params = SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True,
                                detokenize=False)
        start = time.perf_counter()
        llm.generate(prompts[:batch], params, use_tqdm=False)
        return time.perf_counter() - start

    for batch in (1, 8):
        out[f"transcribe_b{batch}_s"] = wall(batch, 1)  # warm-up, and prefill alone
        out[f"decode_ms_per_token_b{batch}"] = 1000 * (wall(batch, 33) - wall(batch, 1)) / 32
    print("RESULT " + json.dumps(out), flush=True)

if __name__ == "__main__":
    main(sys.argv[1])
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm_layers", type=int, default=36)
    parser.add_argument("--llm_hidden", type=int, default=2816)
    parser.add_argument("--encoder_layers", type=int, default=12)
    parser.add_argument("--encoder_hidden", type=int, default=768)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # the script lies outside the model folder: the folder's modeling_hubert_gpt.py would shadow the package
        folder = os.path.join(tmp, "model")
        os.mkdir(folder)
        start = time.perf_counter()
        parameters = build(args, folder)
        result = {"parameters": parameters, "build_s": time.perf_counter() - start}
        script = os.path.join(tmp, "decode.py")
        with open(script, "w") as f:
            f.write(DECODE)
        run = subprocess.run([SERVE_PYTHON, script, folder], capture_output=True, text=True, cwd=tmp)
        if run.returncode != 0:
            sys.exit(f"vLLM failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
        result.update(json.loads(line[len("RESULT "):]))
    for key, value in result.items():
        print(f"{key:28} {value:.2f}" if isinstance(value, float) else f"{key:28} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
