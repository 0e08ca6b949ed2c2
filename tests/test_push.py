"""train_hf.push(): the upload of a finished run's folder, against a fake Hub at the HTTP boundary.

A local http.server answers the Hub API calls huggingface_hub makes for create_repo + upload_folder (create the repo,
preupload: every file "regular", i.e. sent inline base64 in the commit, so no LFS/Xet storage is needed, validate-yaml,
commit) and records them. push() runs in a subprocess with HF_ENDPOINT pointing at it (huggingface_hub reads its
endpoint at import time), on the folder of a real 1-step smoke run that also holds checkpoint-1/, work/ and runs/.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO = "me/hubert-gpt-smoke"
TOKEN = "hf_fake_token"
COMMIT_OID = "a" * 40

PUSH = r"""
import json, sys
import train_hf
try:
    train_hf.push(sys.argv[1], sys.argv[2], sys.argv[3])
except SystemExit as exit:
    print(json.dumps({"system_exit": exit.code}))
else:
    print(json.dumps({"pushed": True}))
"""


class FakeHub(BaseHTTPRequestHandler):
    """Answers create_repo, preupload, validate-yaml and commit; anything else is a 404 (and recorded)."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body})
        base = f"/api/models/{REPO}"
        if self.path == "/api/repos/create":
            self.reply(200, {"url": f"{self.server.endpoint}/{REPO}", "name": REPO})
        elif self.path == f"{base}/preupload/main":
            files = json.loads(body)["files"]
            self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                       for f in files]})
        elif self.path == "/api/validate-yaml":
            self.reply(200, {"errors": [], "warnings": []})
        elif self.path == f"{base}/commit/main":
            self.reply(200, {"commitUrl": f"{self.server.endpoint}/{REPO}/commit/{COMMIT_OID}", "commitOid": COMMIT_OID,
                             "pullRequestUrl": None, "success": True})
        elif self.path.startswith("/api/models/"):  # another repo: what the Hub says for one that does not exist
            self.reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        else:
            self.reply(404, {"error": f"fake hub: no route for POST {self.path}"})

    def do_GET(self):
        self.server.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers), "body": b""})
        self.reply(404, {"error": f"fake hub: no route for GET {self.path}"})

    def reply(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.requests = []
    server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished smoke run's output folder, with a checkpoint, the work/ tokenizer and a runs/ log in it."""
    tmp = tmp_path_factory.mktemp("push_run")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "train_hf.py"), "--preset", "smoke", "--max_steps", "1",
                           "--max_eval_samples", "4", "--save_strategy", "steps", "--save_steps", "1",
                           "--output_dir", str(tmp / "out")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp / "out"
    (out / "runs" / "Nov25_smoke").mkdir(parents=True)
    (out / "runs" / "Nov25_smoke" / "events.out.tfevents.1").write_bytes(b"\x00tensorboard")
    assert (out / "checkpoint-1" / "optimizer.pt").exists() and (out / "work" / "tokenizer" / "spiece.model").exists()
    return out


def push_in_subprocess(folder, endpoint, tmp_path, repo=REPO, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no offline mode, no stored token
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", **extra_env)
    proc = subprocess.run([sys.executable, "-c", PUSH, str(folder), repo, TOKEN], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def local_files(folder):
    """Every file the Hub should get: the folder less checkpoint-*/, work/ and runs/ (posix paths -> bytes)."""
    skip = ("checkpoint-", "work/", "runs/")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.relative_to(folder).as_posix().startswith(skip)}


# With hf_xet installed (the default) upload_folder goes through the streamed pipeline; without it (or with
# HF_HUB_DISABLE_XET) through create_commit, which also validates the card's YAML.
@pytest.mark.parametrize("xet", ["pipeline", "disabled"])
def test_push_commits_exactly_the_hub_folder(run_folder, fake_hub, tmp_path, xet):
    extra = {"HF_HUB_DISABLE_XET": "1"} if xet == "disabled" else {}
    assert push_in_subprocess(run_folder, fake_hub.endpoint, tmp_path, **extra) == {"pushed": True}

    # The card's YAML is checked before hashing (and once more by create_commit on the legacy path).
    validations = 2 if xet == "disabled" else 1
    base = f"/api/models/{REPO}"
    assert [r["path"] for r in fake_hub.requests] == (["/api/repos/create"] + ["/api/validate-yaml"] * validations
                                                     + [f"{base}/preupload/main", f"{base}/commit/main"])
    assert {r["method"] for r in fake_hub.requests} == {"POST"}
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in fake_hub.requests)
    create, *validate, preupload, commit = fake_hub.requests
    assert json.loads(create["body"]) == {"name": "hubert-gpt-smoke", "organization": "me"}

    expected = local_files(run_folder)
    assert {"model.safetensors", "config.json", "generation_config.json", "configuration_hubert_gpt.py",
            "modeling_hubert_gpt.py", "processing_hubert_gpt.py", "pipeline_hubert_gpt.py", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json", "README.md", "results.json"} <= set(expected)
    assert sorted(f["path"] for f in json.loads(preupload["body"])["files"]) == sorted(expected)

    assert commit["headers"]["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in commit["body"].decode().splitlines()]
    assert lines[0] == {"key": "header", "value": {"summary": "Upload folder using huggingface_hub", "description": ""}}
    assert all(line["key"] == "file" and line["value"]["encoding"] == "base64" for line in lines[1:])
    sent = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines[1:]}
    assert len(sent) == len(lines) - 1
    assert sent == expected  # every file, byte for byte, and nothing from checkpoint-1/, work/ or runs/
    for request in validate:
        assert json.loads(request["body"]) == {"content": expected["README.md"].decode(), "repoType": "model"}


def test_push_without_network_exits_naming_the_folder(run_folder, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = push_in_subprocess(run_folder, f"http://127.0.0.1:{port}", tmp_path)
    message = got["system_exit"]
    assert message.startswith(f"Upload of {run_folder} to {REPO} failed (")
    assert message.endswith(f"Everything is saved locally in {run_folder}; push it later with "
                            f'`hf upload {REPO} {run_folder} . --exclude "checkpoint-*/**" --exclude "runs/**" '
                            f'--exclude "work/**"`.')


def test_push_refused_by_the_hub_exits_the_same_way(run_folder, fake_hub, tmp_path):
    """A Hub error (here: preupload into a repo the fake Hub does not know, a 404) is reported like a network one."""
    message = push_in_subprocess(run_folder, fake_hub.endpoint, tmp_path, repo="someone/else")["system_exit"]
    assert message.startswith(f"Upload of {run_folder} to someone/else failed (RepositoryNotFoundError: ")
    assert message.endswith(f"Everything is saved locally in {run_folder}; push it later with "
                            f'`hf upload someone/else {run_folder} . --exclude "checkpoint-*/**" --exclude "runs/**" '
                            f'--exclude "work/**"`.')
    assert [r["path"] for r in fake_hub.requests] == ["/api/repos/create", "/api/validate-yaml",
                                                     "/api/models/someone/else/preupload/main"]
