"""A saved folder alone works with the Auto classes and pipeline() in a process that cannot import our package."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import make_audio, transcribe_in_fresh_process
from transformers import pipeline

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration



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
            "processing_hubert_gpt.py", "pipeline_hubert_gpt.py", "speculative_hubert_gpt.py",
            "cache_hubert_gpt.py", "hotwords_hubert_gpt.py"} <= files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == config["auto_map"]["AutoModelForSpeechSeq2Seq"]
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"] == "pipeline_hubert_gpt.HubertGptASRPipeline"


def test_fresh_process_loads_everything_and_transcribes_the_same(saved):
    model, processor, audios, folder = saved
    got = transcribe_in_fresh_process(folder, folder.parent)
    assert got["config"] == "HubertGptConfig" and got["processor"] == "HubertGptProcessor"
    assert got["model"] == got["plain"] == "HubertGptForConditionalGeneration"
    assert got["pipeline"] == "HubertGptASRPipeline" and got["remote_module"].startswith("transformers_modules")
    expected = model.generate(**processor(audio=audios, sampling_rate=16000, return_tensors="pt"))
    assert got["tokens"] == expected.tolist()
    assert got["pipeline_text"] == got["decoded"] == processor.batch_decode(expected, skip_special_tokens=True)
    assert got["pipeline_single"] == got["decoded"][0]
    # hotwords through the remote code, gated by this ctc-bridge model's token head, as in this process
    in_process = model.generate(**processor(audio=audios, sampling_rate=16000, return_tensors="pt"),
                                hotwords=["東京で", "先生は"], hotword_boost=6.0, tokenizer=processor.tokenizer)
    assert got["pipeline_hotwords"] == processor.batch_decode(in_process, skip_special_tokens=True) != got["decoded"]


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
