"""The ReazonSpeech source, offline: a mirror in the corpus server's exact layout on a local HTTP server (127.0.0.1),
a folder and file:// URLs; splits, shard splitting across ranks and workers, retries and resume, the Hub token, bad
input; and train_hf.py end to end on two ranks reading disjoint shards."""

import io
import json
import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
from reazonspeech_mirror import MirrorServer, member_name, write_mirror

from hubert_gpt_training.data import load_source, prepare
from hubert_gpt_training.reazonspeech import auth_headers, load_reazonspeech

ROOT = Path(__file__).resolve().parents[1]
FAST = {"retries": 2, "wait": 0.01}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    expected = write_mirror(root, "small", shards=12, per_shard=4)
    write_mirror(root / "tiny_only", "tiny", shards=1, per_shard=3)
    return root, expected


@pytest.fixture
def server(mirror):
    with MirrorServer(str(mirror[0])) as served:
        yield served


def decoded(row):
    return soundfile.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0]


def check_rows(rows, expected, names):
    assert [row["name"] for row in rows] == names
    for row in rows:
        text, audio = expected[row["name"]]
        assert row["transcription"] == text and row["audio"]["path"] == row["name"]
        np.testing.assert_array_equal(decoded(row), audio)


def names_of(shards, per_shard=4):
    return [member_name(s, i) for s in shards for i in range(per_shard)]


def test_streamed_rows_are_the_mirrors_members_in_shard_order(server, mirror):
    stream = load_reazonspeech("small", "train", streaming=True, base_url=server.url, **FAST)
    assert isinstance(stream, datasets.IterableDataset) and stream.n_shards == 12
    check_rows(list(stream), mirror[1], names_of(range(12)))
    assert sorted(server.paths()) == [f"/reazonspeech-v2/data/{i:03x}.tar" for i in range(12)]
    assert server.paths(".tsv") == ["/reazonspeech-v2/tsv/small.tsv"]


def test_splits_and_the_map_style_dataset(server, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    held = load_reazonspeech("small", "train_holdout", streaming=True, base_url=server.url, **FAST)
    assert held.n_shards == 11
    check_rows(list(held), mirror[1], names_of(range(11)))
    test = load_reazonspeech("small", "test", streaming=False, base_url=server.url, **FAST)
    assert isinstance(test, datasets.Dataset)
    assert test.features["audio"] == datasets.Audio(sampling_rate=16000)
    check_rows(list(test.cast_column("audio", datasets.Audio(decode=False))), mirror[1], names_of([11]))


def test_routed_from_the_hub_name_through_prepare(server, mirror):
    """load_source("reazon-research/reazonspeech", ...) as train_hf.py calls it, then the collator's rows."""
    stream = load_source("reazon-research/reazonspeech", "small", "test", streaming=True,
                         reazonspeech_base_url=server.url)
    rows = list(prepare(stream))
    assert [row["text"] for row in rows] == [mirror[1][n][0] for n in names_of([11])]
    for row, name in zip(rows, names_of([11])):
        np.testing.assert_array_equal(np.asarray(row["audio"], dtype=np.float32), mirror[1][name][1])


@pytest.mark.parametrize("form", ["folder", "file_url"])
def test_local_copies(mirror, form):
    root = str(mirror[0] / "tiny_only")
    base = root if form == "folder" else Path(root).as_uri()
    rows = list(load_reazonspeech("tiny", "train", streaming=True, base_url=base, **FAST))
    expected = write_mirror(mirror[0] / "tiny_check", "tiny", shards=1, per_shard=3)
    check_rows(rows, expected, names_of([0], per_shard=3))


def test_shards_split_across_ranks_and_workers(server, mirror):
    stream = load_reazonspeech("small", "train", streaming=True, base_url=server.url, **FAST)
    ranks = [[row["name"] for row in stream.shard(num_shards=2, index=i)] for i in range(2)]
    assert ranks == [names_of(range(6)), names_of(range(6, 12))]  # accelerate's split: contiguous shard blocks
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    names = [row["name"] for row in loader]
    assert sorted(names) == sorted(names_of(range(12)))  # every row once, each shard read by one worker
    assert sorted(server.paths()) == sorted([f"/reazonspeech-v2/data/{i:03x}.tar" for i in range(12)] * 2)


def test_a_dropped_connection_resumes_and_a_5xx_is_retried(server, mirror):
    server.drop_after["/reazonspeech-v2/data/003.tar"] = 3000  # the connection ends after 3000 bytes
    server.fail_first["/reazonspeech-v2/data/005.tar"] = 2  # two 503s, then the file
    server.fail_first["/reazonspeech-v2/tsv/small.tsv"] = 1
    check_rows(list(load_reazonspeech("small", "train", streaming=True, base_url=server.url, **FAST)), mirror[1],
               names_of(range(12)))
    shard3 = [(path, rng) for path, rng, _ in server.requests if path.endswith("003.tar")]
    assert shard3 == [("/reazonspeech-v2/data/003.tar", None), ("/reazonspeech-v2/data/003.tar", "bytes=3000-")]
    assert server.paths().count("/reazonspeech-v2/data/005.tar") == 3


def test_retries_give_up_with_a_clear_error(server):
    server.fail_first["/reazonspeech-v2/data/000.tar"] = 5
    with pytest.raises(OSError, match=r"000\.tar: failed after 3 attempts at byte 0: HTTP Error 503"):
        list(load_reazonspeech("small", "train", streaming=True, base_url=server.url, **FAST))


def test_a_missing_shard_is_an_error_naming_it(mirror, tmp_path):
    shutil.copytree(mirror[0], tmp_path / "m", ignore=shutil.ignore_patterns("tiny_*"))
    os.remove(tmp_path / "m" / "reazonspeech-v2" / "data" / "002.tar")
    with MirrorServer(str(tmp_path / "m")) as served:
        stream = load_reazonspeech("small", "train", streaming=True, base_url=served.url, **FAST)
        with pytest.raises(FileNotFoundError, match=r"reazonspeech-v2/data/002\.tar: 404 Not Found"):
            list(stream)
        assert served.paths().count("/reazonspeech-v2/data/002.tar") == 1  # a 404 is not retried


def test_a_truncated_tar_is_an_error_naming_the_shard(mirror, tmp_path):
    shutil.copytree(mirror[0], tmp_path / "m", ignore=shutil.ignore_patterns("tiny_*"))
    path = tmp_path / "m" / "reazonspeech-v2" / "data" / "001.tar"
    path.write_bytes(path.read_bytes()[:5000])  # the server sends the short file whole: nothing to resume
    with MirrorServer(str(tmp_path / "m")) as served:
        rows = []
        with pytest.raises(ValueError, match=r"001\.tar: truncated or corrupt tar after \d member\(s\)"):
            rows.extend(load_reazonspeech("small", "train", streaming=True, base_url=served.url, **FAST))
    assert [row["name"] for row in rows][:4] == names_of([0])


def test_undecodable_members_and_rows_without_audio_are_skipped_and_counted(mirror, tmp_path, caplog):
    root = tmp_path / "m"
    expected = write_mirror(root, "tiny", shards=1, per_shard=3)
    tar_path = root / "reazonspeech-v2" / "data" / "000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for i, (member, data) in enumerate(members):
            if i == 2:
                continue  # its TSV row stays: a row without audio
            data = b"fLaC" + b"\0" * 200 if i == 1 else data  # a corrupt FLAC
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        extra = tarfile.TarInfo("000/ffffffffffff0.flac")  # a member without a TSV row: skipped, as the script did
        extra.size = len(members[0][1])
        tar.addfile(extra, io.BytesIO(members[0][1]))
    with caplog.at_level(logging.WARNING, logger="hubert_gpt_training.reazonspeech"):
        rows = list(load_reazonspeech("tiny", "train", streaming=True, base_url=str(root), **FAST))
    check_rows(rows, expected, [member_name(0, 0)])
    assert f"skipped 1 undecodable FLAC member(s): {member_name(0, 1)}" in caplog.text
    assert f"1 TSV row(s) have no audio in this shard, skipped: {member_name(0, 2)}" in caplog.text


def test_bad_arguments(mirror, server):
    with pytest.raises(ValueError, match="no config 'huge'; choose one of tiny, small, medium, large, all, small-v1"):
        load_reazonspeech("huge", base_url=server.url)
    with pytest.raises(ValueError, match="needs --dataset_config"):
        load_reazonspeech(None, base_url=server.url)
    with pytest.raises(ValueError, match="split 'validation'"):
        load_reazonspeech("small", "validation", base_url=server.url)
    with pytest.raises(ValueError, match="'tiny' has one shard"):
        load_reazonspeech("tiny", "test", base_url=str(mirror[0] / "tiny_only"))
    with pytest.raises(ValueError, match="neither an http"):
        load_reazonspeech("tiny", base_url="/no/such/folder")
    with pytest.raises(FileNotFoundError, match=r"tsv/medium\.tsv: 404"):
        load_reazonspeech("medium", base_url=server.url)


def test_the_token_goes_to_hugging_face_hosts_only(mirror, server, monkeypatch):
    root = mirror[0]
    hub_path = root / "datasets" / "me" / "mirror" / "resolve" / "main"
    if not hub_path.exists():
        hub_path.mkdir(parents=True)
        (hub_path / "reazonspeech-v2").symlink_to(root / "reazonspeech-v2")
    monkeypatch.setenv("HF_ENDPOINT", server.url.rstrip("/"))  # the mirror stands in for the Hub
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    rows = list(load_reazonspeech("small", "test", streaming=True,
                                  base_url=f"{server.url}datasets/me/mirror/resolve/main", **FAST))
    assert len(rows) == 4
    assert {auth for _, _, auth in server.requests} == {"Bearer hf_from_env"}
    server.requests.clear()
    other = server.url.replace("127.0.0.1", "localhost")  # the same files on a host that is not the Hub
    list(load_reazonspeech("small", "test", streaming=True, base_url=other, token="hf_given", **FAST))
    assert {auth for _, _, auth in server.requests} == {None}
    assert auth_headers("https://huggingface.co/datasets/x/y/resolve/main/a.tar", "hf_t") == {
        "Authorization": "Bearer hf_t"}
    assert auth_headers("https://corpus.reazon-research.org/reazonspeech-v2/tsv/all.tsv", "hf_t") == {}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_processor):
    from hubert_gpt_training.tiny import tiny_config
    from modeling_hubert_gpt import HubertGptForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    HubertGptForConditionalGeneration(tiny_config(tokenizer=tiny_processor.tokenizer)).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


def test_train_hf_on_two_ranks_reads_disjoint_shards(server, tiny_model_dir, tmp_path):
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
               HF_DATASETS_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(29700 + os.getpid() % 200), str(ROOT / "tests" / "train_driver.py"),
               "--model_name_or_path", str(tiny_model_dir), "--dataset_name", "reazon-research/reazonspeech",
               "--dataset_config", "small", "--reazonspeech_base_url", server.url, "--streaming",
               "--train_split", "train_holdout", "--eval_split", "test", "--max_steps", "3",
               "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--use_cpu",
               "--logging_steps", "1", "--report_to", "none", "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert got["world_size"] == 2 and got["results"]["global_step"] == 3 and len(got["losses"]) == 3
    assert got["results"]["num_utterances"] == 4  # the held-out shard 00b
    assert got["saved"] == got["in_memory"]
    train_shards = [p for p in server.paths() if not p.endswith("00b.tar")]
    # each rank streams its own block of shards (000-005 and 006-00a): no shard read twice, both blocks read
    assert len(train_shards) == len(set(train_shards))
    first_half = {f"/reazonspeech-v2/data/{i:03x}.tar" for i in range(6)}
    assert any(p in first_half for p in train_shards) and any(p not in first_half for p in train_shards)
    assert server.paths().count("/reazonspeech-v2/data/00b.tar") == 1  # the test split, read once (then cached)
