"""Run train_hf.run(argv) in this process, then transcribe a few eval utterances with the in-memory model and
with the folder it saved; print one JSON line (used by tests/test_train.py in a subprocess)."""

import contextlib
import json
import os
import sys

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

import train_hf
from hubert_gpt_training.data import SpeechCollator
from modeling_hubert_gpt import HubertGptForConditionalGeneration

results, trainer = train_hf.run(sys.argv[1:])
if trainer.args.should_save:
    batch = SpeechCollator(trainer.processing_class)([trainer.eval_dataset[i] for i in range(4)])
    inputs = {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}
    gathered = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(trainer.model.parameters()))  # ZeRO-3 partitions
    with gathered:
        in_memory = trainer.model.eval().generate(**inputs, max_new_tokens=8)
    unset_hf_deepspeed_config()  # load the folder as a user would: one whole model, no zero.Init
    saved = HubertGptForConditionalGeneration.from_pretrained(trainer.args.output_dir).eval()
    print(json.dumps({
        "results": {k: v for k, v in results.items() if k != "log_history"},
        "losses": [row["loss"] for row in results["log_history"] if "loss" in row],
        "in_memory": in_memory.tolist(),
        "saved": saved.generate(**inputs, max_new_tokens=8).tolist(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }))
sys.stdout.flush()
if torch.distributed.is_initialized():
    os._exit(0)
