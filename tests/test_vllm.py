"""hubert-gpt served by vLLM (hubert_gpt_vllm/) gives the HF model's greedy tokens: offline `LLM.generate` one
utterance at a time and for a batch of mixed lengths, and the OpenAI `/v1/audio/transcriptions` endpoint over HTTP.

vLLM runs in the serving environment `.venv-serve` (`bash scripts/setup.sh --serve`: vLLM pins its own torch and
transformers), in subprocesses; the HF side runs here. fp32 on CPU. Each test starts one vLLM engine (about a minute).
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile
import torch
from helpers import make_audio
from transformers import Wav2Vec2FeatureExtractor

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration
from modeling_hubert_gpt.processing_hubert_gpt import HubertGptProcessor

ROOT = Path(__file__).resolve().parent.parent
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
SECONDS = [1.3, 0.6, 2.2]  # a batch of mixed lengths
ENGINE_START_S = 900  # an engine start takes ~1 minute on an idle 2-core machine, several under load


def serve_python():
    if not SERVE_PYTHON.exists():
        pytest.fail(f"{SERVE_PYTHON} is missing: the vLLM tests need the serving environment, "
                    "`bash scripts/setup.sh --serve`")
    return str(SERVE_PYTHON)


def finished(row, eos_id, bound):
    """A generated row up to its first eos (included) or its bound (HF pads a batch's finished rows after them)."""
    row = row[:bound]
    return row[: row.index(eos_id) + 1] if eos_id in row else row


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_tokenizer):
    """A tiny saved model (LLM head size 32: vLLM's CPU attention has no kernel for 16) whose random LLM weights are
    large enough that its greedy transcripts differ per utterance; the audio; HF generate's tokens."""
    folder = tmp_path_factory.mktemp("vllm_model")
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=tiny_tokenizer, text_width=64)).eval()
    with torch.no_grad():
        for parameter in model.language_model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(std=0.3)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    processor = HubertGptProcessor(feature_extractor=extractor, tokenizer=tiny_tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    audios = [make_audio(seconds, seed=i) for i, seconds in enumerate(SECONDS)]
    paths = []
    for i, audio in enumerate(audios):
        paths.append(str(folder / f"audio{i}.npy"))
        np.save(paths[-1], audio)
    eos = model.generation_config.eos_token_id
    bounds = model.max_new_tokens_for(torch.tensor([len(audio) for audio in audios])).tolist()
    single = [model.generate(**processor(audio=[audio], sampling_rate=16000))[0].tolist() for audio in audios]
    batch = model.generate(**processor(audio=audios, sampling_rate=16000)).tolist()
    batch = [finished(row, eos, bound) for row, bound in zip(batch, bounds)]
    return {"folder": folder, "audios": audios, "paths": paths, "single": single, "batch": batch, "bounds": bounds,
            "text": processor.batch_decode(single, skip_special_tokens=True)}


def test_vllm_offline_greedy_tokens_equal_hf_generate(served):
    run = subprocess.run([serve_python(), str(ROOT / "tests" / "vllm_driver.py"), str(served["folder"]),
                          *served["paths"]], capture_output=True, text=True, timeout=ENGINE_START_S, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert served["single"] == served["batch"]  # HF: batched == one at a time
    assert len({tuple(row) for row in served["single"]}) == len(SECONDS)  # the audio decides the transcript
    assert out["single"] == served["single"]  # vLLM one request at a time == HF generate
    assert out["batch"] == served["single"]  # vLLM all requests at once (mixed lengths) == HF generate
    # this random LLM never says eos: every row stops at nue-asr's per-utterance bound, in vLLM too
    assert [len(row) for row in out["batch"]] == served["bounds"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_transcription_endpoint_equals_hf_generate(served, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [serve_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(served["folder"]),
         "--trust-remote-code", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
         "--gpu-memory-utilization", "0.1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + ENGINE_START_S
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the vLLM server did not start in time"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        wav = tmp_path / "speech.wav"
        soundfile.write(wav, served["audios"][0], 16000, subtype="FLOAT")  # float samples: exactly HF's input
        with open(wav, "rb") as f:
            # the endpoint bounds new tokens by the LLM context: the client asks for nue-asr's bound
            response = requests.post(
                f"http://127.0.0.1:{port}/v1/audio/transcriptions", files={"file": ("speech.wav", f, "audio/wav")},
                data={"model": str(served["folder"]), "temperature": "0",
                      "max_completion_tokens": str(served["bounds"][0])}, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == served["text"][0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
        log.close()
