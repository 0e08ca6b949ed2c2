"""A saved folder alone works with the Auto classes and pipeline() in a process that cannot import our package."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_audio
from transformers import pipeline

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration

FRESH_PROCESS = r"""
import json, sys
import numpy as np, torch
sys.modules["modeling_hubert_gpt"] = None  # the package must not be importable: only the folder's remote code
sys.modules["hubert_gpt_training"] = None
from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
folder = sys.argv[1]
audios = [np.load(f"{folder}/../audio{i}.npy") for i in range(3)]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
plain = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(audio=audios, sampling_rate=16000, return_tensors="pt")
tokens = model.generate(**inputs)
asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
print(json.dumps({
    "config": type(config).__name__, "model": type(model).__name__, "plain": type(plain).__name__,
    "processor": type(processor).__name__, "pipeline": type(asr).__name__,
    "remote_module": type(model).__module__,
    "tokens": tokens.tolist(),
    "decoded": processor.batch_decode(tokens, skip_special_tokens=True),
    "pipeline_text": [out["text"] for out in asr(audios, batch_size=2)],
    "pipeline_single": asr(audios[0])["text"],
}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_processor):
    root = tmp_path_factory.mktemp("remote")
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("ctc", tokenizer=tiny_processor.tokenizer)).eval()
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.6, 0.8])]
    for i, audio in enumerate(audios):
        np.save(root / f"audio{i}.npy", audio)
    folder = root / "model"
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return model, tiny_processor, audios, folder


def test_folder_holds_safetensors_and_remote_code(saved):
    _, _, _, folder = saved
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_hubert_gpt.py", "modeling_hubert_gpt.py",
            "processing_hubert_gpt.py", "pipeline_hubert_gpt.py"} <= files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == config["auto_map"]["AutoModelForSpeechSeq2Seq"]
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_hubert_gpt.HubertGptASRPipeline"


def test_fresh_process_loads_everything_and_transcribes_the_same(saved):
    model, processor, audios, folder = saved
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(folder.parent / "modules"))
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder)], cwd=folder.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["config"] == "HubertGptConfig" and got["processor"] == "HubertGptProcessor"
    assert got["model"] == got["plain"] == "HubertGptForConditionalGeneration"
    assert got["pipeline"] == "HubertGptASRPipeline" and got["remote_module"].startswith("transformers_modules")
    expected = model.generate(**processor(audio=audios, sampling_rate=16000, return_tensors="pt"))
    assert got["tokens"] == expected.tolist()
    assert got["pipeline_text"] == got["decoded"] == processor.batch_decode(expected, skip_special_tokens=True)
    assert got["pipeline_single"] == got["decoded"][0]


def test_pipeline_in_process_equals_generate_and_resamples(saved):
    model, processor, audios, folder = saved
    asr = pipeline("automatic-speech-recognition", model=str(folder), trust_remote_code=True)
    expected = processor.batch_decode(
        model.generate(**processor(audio=audios, sampling_rate=16000, return_tensors="pt")), skip_special_tokens=True
    )
    assert [out["text"] for out in asr(audios, batch_size=3)] == expected
    stereo = np.stack([audios[0], audios[0]])  # (channels, samples): the downmix is the same signal
    assert asr(stereo)["text"] == expected[0]
    from scipy.signal import resample_poly

    at_8k = resample_poly(audios[1], 1, 2).astype(np.float32)
    resampled = resample_poly(at_8k, 2, 1).astype(np.float32)
    alone = processor.batch_decode(model.generate(**processor(audio=[resampled], sampling_rate=16000)),
                                   skip_special_tokens=True)[0]
    assert asr({"raw": at_8k, "sampling_rate": 8000})["text"] == alone
