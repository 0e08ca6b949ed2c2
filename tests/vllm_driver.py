"""Runs in the serving environment (.venv-serve/bin/python, vLLM): greedy tokens of a hubert-gpt folder through
vLLM's offline `LLM.generate`, one utterance per call and then all at once. Prints one line, RESULT + JSON (vLLM logs
to stdout too).

usage: vllm_driver.py MODEL_DIR AUDIO.npy [AUDIO.npy ...]
"""

import json
import sys

import numpy as np
from vllm import LLM

from hubert_gpt_vllm import transcription_requests


def main(folder, paths):
    audios = [np.load(path) for path in paths]
    llm = LLM(folder, trust_remote_code=True, dtype="float32", max_num_seqs=len(audios), seed=0,
              gpu_memory_utilization=0.1)  # on CPU: the share of RAM reserved (KV cache), 2.4 GB here
    prompts, params = transcription_requests(folder, audios, 16000)
    single = [llm.generate([p], [s], use_tqdm=False)[0].outputs[0] for p, s in zip(prompts, params)]
    batch = [out.outputs[0] for out in llm.generate(prompts, params, use_tqdm=False)]
    result = {"single": [list(o.token_ids) for o in single], "batch": [list(o.token_ids) for o in batch],
              "text": [o.text for o in batch]}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
