"""ReazonSpeech without its loading script: the config's TSV and tar shards read as the script read them.

`load_dataset("reazon-research/reazonspeech", ...)` fails on datasets >= 4 (the Hub repo is a loading script). This
module does what that script did, from the same files: `{base}/reazonspeech-v2/tsv/{size}.tsv` (no header,
`filename<TAB>transcription`, filenames like `000/0123456abcdef.flac`) and the audio shards
`{base}/reazonspeech-v2/data/{i:03x}.tar` for i in 0 .. nfiles-1 (`reazonspeech-v1/...` for the v1 configs), whose
FLAC members are matched to TSV rows by name (a leading "./" stripped); members without a row are skipped, as the
script skipped them. Rows: `name`, `audio` and `transcription`.

Splits: `train` (every shard, the script's only split), and for a held-out test set (kotoba-whisper holds out the
last shard, `fff` of `all`) `test` (the last shard) and `train_holdout` (every shard but the last).

Streaming gives a `datasets.IterableDataset` with one data source per shard: `IterableDataset.shard` / accelerate
split the shards across ranks and a DataLoader's workers split a rank's shards (train_hf.py reads disjoint shards on
each rank). Its `audio` holds the FLAC bytes as `{"bytes", "path"}` (the form `Audio(decode=False)` gives: datasets
would encode an `Audio` column with torchcodec, which a CPU install lacks); `hubert_gpt_training.data.prepare`
decodes them with soundfile. Not streaming, the shards are read once into a `datasets.Dataset` with an `Audio(16 kHz)`
column.

Robustness: a connection that drops is reopened at the byte it stopped at (an HTTP Range request) up to `retries`
times with growing waits, a server error (5xx) or timeout is retried the same way, a 404 is an error naming the URL,
a truncated or corrupt tar is an error naming the shard and the members read. A member that soundfile cannot decode
and a TSV row whose audio is missing from its shard are skipped, counted and logged per shard.

Sources (`base_url`): the corpus server (default), any mirror URL in the same layout, a local folder or a `file://`
URL. A Hugging Face token (`token`, default: the one huggingface_hub has configured) is sent only to Hugging Face
hosts (a mirror on the Hub: `https://huggingface.co/datasets/<you>/<mirror>/resolve/main/`), never to other servers.
"""

import http.client
import io
import logging
import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

import datasets

logger = logging.getLogger(__name__)

HUB_IDS = ("reazon-research/reazonspeech", "reazonspeech")
DEFAULT_BASE_URL = "https://corpus.reazon-research.org/"
# config -> (corpus folder, TSV name, number of shards)
CONFIGS = {
    "tiny": ("reazonspeech-v2", "tiny", 1),
    "small": ("reazonspeech-v2", "small", 12),
    "medium": ("reazonspeech-v2", "medium", 116),
    "large": ("reazonspeech-v2", "large", 579),
    "all": ("reazonspeech-v2", "all", 4096),
    "small-v1": ("reazonspeech-v1", "small", 1),
    "medium-v1": ("reazonspeech-v1", "medium", 64),
    "all-v1": ("reazonspeech-v1", "all", 4096),
}
SPLITS = ("train", "train_holdout", "test")
SAMPLING_RATE = 16000
TIMEOUT_S = 60  # a stalled connection raises after this long (then it is retried), never hangs
HF_HOSTS = ("huggingface.co", "hf.co")
RAW_FEATURES = datasets.Features({
    "name": datasets.Value("string"),
    "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
    "transcription": datasets.Value("string"),
})


def is_reazonspeech(name):
    return name in HUB_IDS


# --- where the files are ---------------------------------------------------------------------------------------------
def normalise_base_url(base_url):
    """A URL ending in "/" (http, https or file); a local folder becomes a file:// URL."""
    base_url = base_url or os.environ.get("REAZONSPEECH_BASE_URL") or DEFAULT_BASE_URL
    scheme = urllib.parse.urlparse(base_url).scheme
    if scheme not in ("http", "https", "file"):
        if not os.path.isdir(base_url):
            raise ValueError(f"--reazonspeech_base_url {base_url!r} is neither an http(s):// or file:// URL nor a "
                             "folder")
        base_url = "file://" + urllib.request.pathname2url(os.path.abspath(base_url))
    return base_url if base_url.endswith("/") else base_url + "/"


def config_files(config, base_url=None):
    """(TSV URL, [shard URLs]) of one config."""
    if config not in CONFIGS:
        raise ValueError(f"ReazonSpeech has no config {config!r}; choose one of {', '.join(CONFIGS)}")
    folder, size, shards = CONFIGS[config]
    base = normalise_base_url(base_url)
    return f"{base}{folder}/tsv/{size}.tsv", [f"{base}{folder}/data/{i:03x}.tar" for i in range(shards)]


def auth_headers(url, token=None):
    """Authorization for Hugging Face hosts only (the Hub, or HF_ENDPOINT's host); nothing for any other server."""
    host = urllib.parse.urlparse(url).hostname or ""
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if not (host == endpoint or host in HF_HOSTS or host.endswith(tuple("." + h for h in HF_HOSTS))):
        return {}
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- reading with retries and resume ---------------------------------------------------------------------------------
class ResumingReader(io.RawIOBase):
    """A URL read front to back; a dropped connection, timeout or 5xx is reopened at the byte it stopped at.

    `retries` reopenings per failure, waiting `wait`, 2 * `wait`, ... seconds. A 404 (or a missing file) raises
    FileNotFoundError at once; a server that ignores Range requests cannot be resumed (OSError).
    """

    def __init__(self, url, headers=None, retries=5, wait=2.0):
        self.url, self.headers, self.retries, self.wait = url, dict(headers or {}), retries, wait
        self.position, self.total, self.response = 0, None, None
        self._retrying(self._open)

    def readable(self):
        return True

    def _open(self):
        headers = dict(self.headers, **({"Range": f"bytes={self.position}-"} if self.position else {}))
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise FileNotFoundError(f"{self.url}: 404 Not Found") from err
            if err.code in (401, 403):
                raise PermissionError(f"{self.url}: {err.code} {err.reason} (a token for a gated mirror? "
                                      "`hf auth login` or HF_TOKEN)") from err
            raise
        except urllib.error.URLError as err:
            if isinstance(err.reason, FileNotFoundError) or self.url.startswith("file:"):
                raise FileNotFoundError(f"{self.url}: {err.reason}") from err
            raise
        status = getattr(response, "status", None)
        if self.position and status != 206:
            response.close()
            raise OSError(f"{self.url}: the server ignored a Range request (status {status}); cannot resume at byte "
                          f"{self.position}")
        length = response.headers.get("Content-Length")
        if self.total is None and length is not None:
            self.total = int(length)
        self.response = response

    def _retrying(self, action):
        reopen = False
        for attempt in range(self.retries + 1):
            try:
                if reopen:
                    self._open()
                return action()
            except (FileNotFoundError, PermissionError):
                raise
            except (OSError, http.client.HTTPException) as err:
                if attempt == self.retries:
                    raise OSError(f"{self.url}: failed after {self.retries + 1} attempts at byte {self.position}: "
                                  f"{err}") from err
                logger.warning(f"{self.url}: {err}; retrying at byte {self.position} in "
                               f"{self.wait * 2 ** attempt:g} s [{attempt + 1}/{self.retries}]")
                time.sleep(self.wait * 2**attempt)
                if self.response is not None:
                    self.response.close()
                    self.response = None
                reopen = action != self._open  # a failed first open is simply tried again

    def readinto(self, buffer):
        def read():
            n = self.response.readinto(buffer)
            if n == 0 and len(buffer) and self.total is not None and self.position < self.total:
                raise http.client.IncompleteRead(b"", self.total - self.position)  # the connection ended early
            return n

        n = self._retrying(read)
        self.position += n
        return n

    def close(self):
        if self.response is not None:
            self.response.close()
        super().close()


def read_tsv(url, headers=None, retries=5, wait=2.0):
    """The config's TSV -> {shard prefix ("000"): {member name: transcription}}."""
    with ResumingReader(url, headers, retries, wait) as reader:
        text = reader.read().decode("utf-8")
    by_shard = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, tab, transcription = line.partition("\t")
        if not tab:
            raise ValueError(f"{url} line {number}: expected `filename<TAB>transcription`, got {line[:80]!r}")
        name = name.removeprefix("./")
        by_shard.setdefault(name.split("/", 1)[0], {})[name] = transcription
    return by_shard


# --- rows --------------------------------------------------------------------------------------------------------------
def shard_rows(url, rows, headers=None, retries=5, wait=2.0):
    """The FLAC members of one tar shard that have a TSV row: {"name", "audio": {"bytes", "path"}, "transcription"}."""
    import soundfile

    seen, corrupt, members = set(), [], 0
    with ResumingReader(url, headers, retries, wait) as reader:
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    members += 1
                    name = member.name.removeprefix("./")
                    if name not in rows:
                        continue  # no TSV row: skipped, as the loading script did
                    data = archive.extractfile(member).read()
                    try:
                        soundfile.read(io.BytesIO(data))
                    except (soundfile.LibsndfileError, RuntimeError, ValueError) as err:
                        corrupt.append(f"{name} ({err})")
                        continue
                    seen.add(name)
                    yield {"name": name, "audio": {"bytes": data, "path": name}, "transcription": rows[name]}
        except tarfile.TarError as err:
            raise ValueError(f"{url}: truncated or corrupt tar after {members} member(s): {err}") from err
    missing = sorted(set(rows) - seen - {c.split(" ", 1)[0] for c in corrupt})
    if corrupt:
        logger.warning(f"{url}: skipped {len(corrupt)} undecodable FLAC member(s): {', '.join(corrupt[:5])}")
    if missing:
        logger.warning(f"{url}: {len(missing)} TSV row(s) have no audio in this shard, skipped: "
                       f"{', '.join(missing[:5])}")


def _rows_of_shards(shards, rows, token=None, retries=5, wait=2.0):
    """Generator for datasets: `shards` and `rows` are aligned lists, split across ranks and workers by datasets."""
    for url, shard_table in zip(shards, rows):
        yield from shard_rows(url, shard_table, auth_headers(url, token), retries, wait)


def load_reazonspeech(config="all", split="train", streaming=False, base_url=None, token=None, retries=5, wait=2.0):
    """One split of one ReazonSpeech config, read from the corpus files (see the module docstring)."""
    if config is None:
        raise ValueError(f"ReazonSpeech needs --dataset_config: one of {', '.join(CONFIGS)}")
    if split not in SPLITS:
        raise ValueError(f"ReazonSpeech split {split!r}: use train (every shard), train_holdout (every shard but the "
                         "last) or test (the last shard, held out)")
    tsv_url, shard_urls = config_files(config, base_url)
    if split != "train" and len(shard_urls) < 2:
        raise ValueError(f"ReazonSpeech {config!r} has one shard: it cannot be split into train_holdout and test")
    shard_urls = {"train": shard_urls, "train_holdout": shard_urls[:-1], "test": shard_urls[-1:]}[split]
    by_shard = read_tsv(tsv_url, auth_headers(tsv_url, token), retries, wait)
    tables = [by_shard.get(url.rsplit("/", 1)[1].removesuffix(".tar"), {}) for url in shard_urls]
    kwargs = {"shards": shard_urls, "rows": tables, "token": token, "retries": retries, "wait": wait}
    if streaming:
        return datasets.IterableDataset.from_generator(_rows_of_shards, features=RAW_FEATURES, gen_kwargs=kwargs)
    loaded = datasets.Dataset.from_generator(_rows_of_shards, features=RAW_FEATURES, gen_kwargs=kwargs,
                                             split=datasets.NamedSplit(split))
    return loaded.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE))
