#!/usr/bin/env bash
# Create .venv (if missing) and install hubert-gpt with its training and test extras, pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch first and on its own: on a CPU machine the CPU wheel lies on local disk (pip's find-links); letting a
# dependency resolve it instead can pull a multi-GB CUDA build.
.venv/bin/pip install -c constraints.txt torch==2.13.0
# deepspeed installs from its sdist: DS_BUILD_OPS=0 compiles no ops now (they are JIT-built on first use, if ever).
DS_BUILD_OPS=0 .venv/bin/pip install -c constraints.txt -e ".[train,test]"
