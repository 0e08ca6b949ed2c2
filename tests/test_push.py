"""train_hf.push(): the upload of a finished run's folder, against a fake Hub at the HTTP boundary.

A local http.server answers the Hub API calls huggingface_hub makes for create_repo + upload_folder (create the repo,
validate-yaml, preupload: every file "regular", i.e. sent inline base64 in the commit, so no LFS/Xet storage is
needed, commit) and records them. push() runs on the folder of a real 1-step smoke run that also holds checkpoint-1/,
work/ and runs/: once in a subprocess with HF_ENDPOINT pointing at the fake Hub (huggingface_hub reads its endpoint
at import time), as a user runs it; the other cases in this process with huggingface_hub's constants patched.
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

    def record(self, body=b""):
        self.server.requests.append({"method": self.command, "path": self.path, "body": body,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.record(body)
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
        if self.path == "/api/agent-harnesses":  # huggingface_hub's best-effort agent detection, environment-dependent
            return self.reply(404, {"error": "fake hub: no agent registry"})
        self.record()
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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
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


def push_in_subprocess(folder, endpoint, tmp_path, repo=REPO):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no offline mode, no stored token
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", PUSH, str(folder), repo, TOKEN], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def local_files(folder):
    """Every file the Hub should get: the folder less checkpoint-*/, work/ and runs/ (posix paths -> bytes)."""
    def skipped(relative):
        return len(relative.parts) > 1 and (relative.parts[0].startswith("checkpoint-") or relative.parts[0] in
                                            ("work", "runs"))

    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not skipped(p.relative_to(folder))}


@pytest.fixture
def in_process(monkeypatch):
    """push() in this process, with huggingface_hub's import-time settings patched: no Xet (hf_xet's absence, the
    legacy create_commit path), no offline mode. Returns a function that sets the endpoint."""
    import train_hf  # noqa: F401  (imported once: torch + transformers)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda url: monkeypatch.setattr(constants, "ENDPOINT", url)


def check_commit(requests, folder, validations):
    """The calls of one successful push: create repo, validate the card (1 or 2 times), preupload, commit."""
    base = f"/api/models/{REPO}"
    assert [r["path"] for r in requests] == (["/api/repos/create"] + ["/api/validate-yaml"] * validations
                                             + [f"{base}/preupload/main", f"{base}/commit/main"])
    assert {r["method"] for r in requests} == {"POST"}
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in requests)
    create, *validate, preupload, commit = requests
    assert json.loads(create["body"]) == {"name": "hubert-gpt-smoke", "organization": "me"}

    expected = local_files(folder)
    assert {"model.safetensors", "config.json", "generation_config.json", "configuration_hubert_gpt.py",
            "modeling_hubert_gpt.py", "processing_hubert_gpt.py", "pipeline_hubert_gpt.py", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json", "README.md", "results.json"} <= set(expected)
    for request in validate:
        assert json.loads(request["body"]) == {"content": expected["README.md"].decode(), "repoType": "model"}
    assert sorted(f["path"] for f in json.loads(preupload["body"])["files"]) == sorted(expected)

    assert commit["headers"]["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in commit["body"].decode().splitlines()]
    assert lines[0] == {"key": "header", "value": {"summary": "Upload folder using huggingface_hub", "description": ""}}
    assert all(line["key"] == "file" and line["value"]["encoding"] == "base64" for line in lines[1:])
    sent = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines[1:]}
    assert len(sent) == len(lines) - 1
    assert sent == expected  # every file, byte for byte, and nothing from checkpoint-1/, work/ or runs/


def later_hint(repo, folder):
    return (f"Everything is saved locally in {folder}; push it later with `hf upload {repo} {folder} . "
            f'--exclude "checkpoint-*/**" --exclude "runs/**" --exclude "work/**"`.')


def test_push_commits_exactly_the_hub_folder(run_folder, fake_hub, tmp_path):
    """As a user runs it: HF_ENDPOINT in the environment, hf_xet installed (the streamed upload pipeline)."""
    assert push_in_subprocess(run_folder, fake_hub.endpoint, tmp_path) == {"pushed": True}
    check_commit(fake_hub.requests, run_folder, validations=1)


def test_push_without_xet_commits_the_same_files(run_folder, fake_hub, in_process):
    """Without hf_xet (or with HF_HUB_DISABLE_XET) upload_folder makes one create_commit, which checks the card
    again."""
    import train_hf

    in_process(fake_hub.endpoint)
    train_hf.push(str(run_folder), REPO, TOKEN)
    check_commit(fake_hub.requests, run_folder, validations=2)


def test_push_without_network_exits_naming_the_folder(run_folder, in_process):
    import train_hf

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    in_process(f"http://127.0.0.1:{port}")
    with pytest.raises(SystemExit) as exit:
        train_hf.push(str(run_folder), REPO, TOKEN)
    message = exit.value.code
    assert message.startswith(f"Upload of {run_folder} to {REPO} failed (ConnectError: ")
    assert message.endswith(later_hint(REPO, run_folder))


def test_push_refused_by_the_hub_exits_the_same_way(run_folder, fake_hub, in_process):
    """A Hub error (a 404 RepoNotFound on preupload) is reported like a network one; nothing is committed."""
    import train_hf

    in_process(fake_hub.endpoint)
    with pytest.raises(SystemExit) as exit:
        train_hf.push(str(run_folder), "someone/else", TOKEN)
    message = exit.value.code
    assert message.startswith(f"Upload of {run_folder} to someone/else failed (RepositoryNotFoundError: ")
    assert message.endswith(later_hint("someone/else", run_folder))
    assert [r["path"] for r in fake_hub.requests] == ["/api/repos/create", "/api/validate-yaml", "/api/validate-yaml",
                                                     "/api/models/someone/else/preupload/main"]
