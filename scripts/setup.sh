#!/usr/bin/env bash
# Create .venv (if missing) and install hubert-gpt with its training and test extras, pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch and torchaudio first, as the matching pair constraints.txt pins: torchaudio's compiled extension loads only
# beside the torch it was built for. PyPI's x86_64 torch 2.11.0 is a CUDA build (its nvidia-* libraries come along);
# it runs on a CPU.
.venv/bin/pip install -c constraints.txt torch torchaudio
# deepspeed installs from its sdist: DS_BUILD_OPS=0 compiles no ops now (they are JIT-built on first use, if ever).
DS_BUILD_OPS=0 .venv/bin/pip install -c constraints.txt -e ".[train,test]"
