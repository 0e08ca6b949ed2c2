"""A ReazonSpeech mirror for offline tests: files in the corpus server's exact layout, served over HTTP on 127.0.0.1.

Layout (as https://corpus.reazon-research.org/ serves it): reazonspeech-v2/tsv/{config}.tsv (no header,
`000/<hex>.flac<TAB>transcription`) and reazonspeech-v2/data/{i:03x}.tar with members `000/<hex>.flac` (16 kHz FLAC).
The server answers Range requests (206) like the real one, logs every request, and can be told to misbehave.
"""

import hashlib
import http.server
import io
import os
import tarfile
import threading

import soundfile
from helpers import make_audio

RATE = 16000
TEXTS = ["今日は晴れです", "猫が水を飲みたい", "東京で電車が遅れています", "先生は本を読みます", "子供たちが音楽を聞いています",
         "彼女は写真を撮りました"]


def flac_bytes(audio):
    buf = io.BytesIO()
    soundfile.write(buf, audio, RATE, format="FLAC")
    return buf.getvalue()


def member_name(shard, i):
    return f"{shard:03x}/{hashlib.sha1(f'{shard}-{i}'.encode()).hexdigest()[:13]}.flac"


def write_mirror(root, config="small", shards=12, per_shard=4, version="reazonspeech-v2"):
    """Write the files; returns {member name: (transcription, audio float32 as decoded from the FLAC)}."""
    os.makedirs(os.path.join(root, version, "tsv"), exist_ok=True)
    os.makedirs(os.path.join(root, version, "data"), exist_ok=True)
    expected, lines = {}, []
    for shard in range(shards):
        with tarfile.open(os.path.join(root, version, "data", f"{shard:03x}.tar"), "w") as tar:
            for i in range(per_shard):
                name = member_name(shard, i)
                data = flac_bytes(make_audio(0.5 + 0.1 * i, seed=100 * shard + i))
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                text = TEXTS[(shard + i) % len(TEXTS)]
                lines.append(f"{name}\t{text}")
                expected[name] = (text, soundfile.read(io.BytesIO(data), dtype="float32")[0])
    with open(os.path.join(root, version, "tsv", f"{config}.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return expected


class MirrorServer:
    """Serves `root` on 127.0.0.1 (a free port) in a thread. `requests` logs (path, Range header, Authorization).

    Faults, keyed by URL path: `drop_after[path] = n` ends the first response after n bytes (Content-Length still
    announcing the whole file); `fail_first[path] = k` answers 503 to the first k requests.
    """

    def __init__(self, root):
        self.root, self.requests, self.drop_after, self.fail_first = root, [], {}, {}
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                    failures = server.fail_first.get(self.path, 0)
                    if failures:
                        server.fail_first[self.path] = failures - 1
                    drop = server.drop_after.pop(self.path, None)
                if failures:
                    self.send_error(503)
                    return
                path = os.path.join(server.root, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                with open(path, "rb") as f:
                    data = f.read()
                start, status = 0, 200
                if self.headers.get("Range"):
                    start, status = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")), 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:] if drop is None else data[start : start + drop]
                self.wfile.write(body)
                if drop is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, suffix=".tar"):
        return [path for path, _, _ in self.requests if path.endswith(suffix)]
