#!/usr/bin/env python
"""The vLLM side of bench/vllm_serving.py, run by the serving environment's python (.venv-serve): a hubert-gpt
folder through vLLM's offline `LLM.generate`, all requests at once (vLLM schedules them: continuous batching).

usage: vllm_offline.py MODEL_DIR AUDIO.npz REPEAT   (arrays audio0, audio1, ... at 16 kHz) -> one line RESULT + JSON:
the transcripts, the engine start, the fastest of REPEAT timed generate calls (wall seconds, warm-up excluded), and the
transcripts of one request per generate call (untimed).
"""

import json
import sys
import time

import numpy as np
from vllm import LLM

from hubert_gpt_vllm import transcription_requests


def main(folder, npz, repeat):
    with np.load(npz) as data:
        audios = [data[f"audio{i}"] for i in range(len(data.files))]
    start = time.perf_counter()
    llm = LLM(folder, trust_remote_code=True, dtype="float32", seed=0,
              gpu_memory_utilization=0.1)  # on CPU: the share of RAM reserved for the KV cache
    engine_s = time.perf_counter() - start
    prompts, params = transcription_requests(folder, audios, 16000)
    llm.generate(prompts[:1], params[:1], use_tqdm=False)  # warm-up, as the HF side has
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        walls.append(time.perf_counter() - start)
    single = [llm.generate([p], [s], use_tqdm=False)[0].outputs[0].text for p, s in zip(prompts, params)]
    result = {"engine_start_s": engine_s, "wall_s": min(walls), "walls_s": walls,
              "text": [out.outputs[0].text for out in outputs], "single_text": single}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
