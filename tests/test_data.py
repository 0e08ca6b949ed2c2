"""hubert_gpt_training.data: every data source through load_source + prepare, its errors, and SpeechCollator."""

import json
import logging
import os

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from hubert_gpt_training.data import SpeechCollator, load_source, prepare

RATE = 16000


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """load_dataset / map caches go to the test's own folder, not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def tone(n, seed, rate=RATE):
    """n float32 samples of a little noise-free tone, reproducible; exact in a FLOAT wav."""
    t = np.arange(n) / rate
    return (0.25 * np.sin(2 * np.pi * (200 + 50 * seed) * t)).astype(np.float32)


def write_wav(path, n, seed, rate=RATE):
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = tone(n, seed, rate)
    sf.write(path, audio, rate, subtype="FLOAT")
    return audio


# Four utterances: the third is over max_seconds (1.0 s), the fourth has an empty transcript.
LENGTHS = [1600, 8000, 17600, 4000]
TEXTS = ["one", "two three", "too long", ""]
KEPT = [(0, "one", 1600), (1, "two three", 8000)]


@pytest.fixture
def wav_dir(tmp_path):
    audios = [write_wav(tmp_path / "wavs" / f"u{i}.wav", n, seed=i) for i, n in enumerate(LENGTHS)]
    return tmp_path / "wavs", audios


def check_kept(out, audios, caplog=None, dropped=2, total=4):
    assert out.column_names == ["audio", "text", "input_length"]
    assert out["text"] == [text for _, text, _ in KEPT]
    assert out["input_length"] == [n for _, _, n in KEPT]
    for row, (i, _, n) in zip(out, KEPT):
        assert len(row["audio"]) == n
        np.testing.assert_array_equal(np.asarray(row["audio"], dtype=np.float32), audios[i])
    if caplog is not None:
        assert f"dropped {dropped} of {total} utterances (empty transcript or over 1.0 s)" in caplog.text


# ---- sources --------------------------------------------------------------------------------------------------------
def test_save_to_disk_dataset(wav_dir, tmp_path, caplog):
    folder, audios = wav_dir
    ds = datasets.Dataset.from_dict({"audio": [str(folder / f"u{i}.wav") for i in range(4)], "transcription": TEXTS,
                                     "speaker": ["a", "b", "c", "d"]}).cast_column("audio", datasets.Audio())
    ds.save_to_disk(tmp_path / "disk")
    loaded = load_source(disk_path=str(tmp_path / "disk"))
    assert isinstance(loaded, datasets.Dataset) and isinstance(loaded.features["audio"], datasets.Audio)
    with caplog.at_level(logging.INFO, logger="hubert_gpt_training.data"):
        out = prepare(loaded, max_seconds=1.0)
    check_kept(out, audios, caplog)


def test_save_to_disk_dataset_dict_picks_the_split(wav_dir, tmp_path):
    folder, audios = wav_dir
    rows = {"path": [str(folder / f"u{i}.wav") for i in range(4)], "sentence": TEXTS}
    test_rows = {"path": [str(folder / "u1.wav")], "sentence": ["held out"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict(test_rows)}).save_to_disk(tmp_path / "disk")
    train = prepare(load_source(disk_path=str(tmp_path / "disk"), split="train"), audio_column="path",
                    text_column="sentence", max_seconds=1.0)
    check_kept(train, audios)
    test = prepare(load_source(disk_path=str(tmp_path / "disk"), split="test"), audio_column="path",
                   text_column="sentence")
    assert test["text"] == ["held out"] and test["input_length"] == [8000]
    with pytest.raises(ValueError) as err:
        load_source(disk_path=str(tmp_path / "disk"), split="validation")
    assert str(err.value) == f"{tmp_path / 'disk'} has splits ['train', 'test']; no split 'validation'"


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_with_relative_and_absolute_paths(wav_dir, tmp_path, kind, caplog):
    folder, audios = wav_dir
    # Relative paths are relative to the manifest's folder, not the working directory.
    paths = ["wavs/u0.wav", str(folder / "u1.wav"), "wavs/u2.wav", str(folder / "u3.wav")]
    manifest = tmp_path / f"train.{kind}"
    if kind == "jsonl":
        manifest.write_text("".join(json.dumps({"audio": p, "transcription": t}, ensure_ascii=False) + "\n"
                                    for p, t in zip(paths, TEXTS)))
    else:
        manifest.write_text("audio,transcription,speaker\n" + "".join(f"{p},{t},s{i}\n"
                                                                     for i, (p, t) in enumerate(zip(paths, TEXTS))))
    with caplog.at_level(logging.INFO, logger="hubert_gpt_training.data"):
        out = prepare(load_source(manifest=str(manifest)), max_seconds=1.0)
    check_kept(out, audios, caplog)


def test_manifest_with_another_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"manifest '.*train\.txt' must be \.jsonl/\.json or \.csv"):
        load_source(manifest=str(tmp_path / "train.txt"))


def test_audiofolder_decodes_with_soundfile_without_torchcodec(wav_dir, caplog):
    folder, audios = wav_dir
    (folder / "metadata.csv").write_text("file_name,transcription\n" +
                                         "".join(f"u{i}.wav,{t}\n" for i, t in enumerate(TEXTS)))
    loaded = load_source("audiofolder", data_dir=str(folder))
    assert loaded.column_names == ["audio", "transcription"]
    with caplog.at_level(logging.INFO, logger="hubert_gpt_training.data"):
        out = prepare(loaded, max_seconds=1.0)
    check_kept(out, audios, caplog)


def test_audiofolder_gives_paths_cached_on_disk_and_follows_the_files(wav_dir):
    folder, _ = wav_dir
    encode_example = datasets.Audio.encode_example
    metadata = folder / "metadata.csv"
    metadata.write_text("file_name,transcription\n" + "".join(f"u{i}.wav,first {i}\n" for i in range(3)))
    loaded = load_source("audiofolder", data_dir=str(folder))
    assert loaded["audio"] == [str(folder / f"u{i}.wav") for i in range(3)]
    assert loaded["transcription"] == ["first 0", "first 1", "first 2"]
    assert loaded.cache_files  # on disk, so prepare()'s decoded audio is cached on disk too, not held in memory
    assert datasets.Audio.encode_example is encode_example  # nothing in datasets patched
    metadata.write_text("file_name,transcription\n" + "".join(f"u{i}.wav,second {i}\n" for i in range(2)))
    os.utime(metadata, (1e9, 1e9))  # a different mtime even on a coarse-grained file system
    assert load_source("audiofolder", data_dir=str(folder))["transcription"] == ["second 0", "second 1"]


def test_rows_holding_arrays_are_resampled_to_16k(caplog):
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (800, 4000, 8800)]
    ds = datasets.Dataset.from_list([{"audio": {"array": a, "sampling_rate": 8000}, "transcription": t}
                                     for a, t in zip(arrays, ["a", "b", "c"])])
    with caplog.at_level(logging.INFO, logger="hubert_gpt_training.data"):
        out = prepare(ds, max_seconds=1.0)  # 8800 samples at 8 kHz -> 17600 at 16 kHz: over 1 s
    assert out["text"] == ["a", "b"] and out["input_length"] == [1600, 8000]
    for row, a in zip(out, arrays):
        np.testing.assert_allclose(row["audio"], resample_poly(a, 2, 1), atol=1e-6)
    assert "dropped 1 of 3 utterances" in caplog.text


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_streaming_manifest(wav_dir, tmp_path, kind):
    folder, audios = wav_dir
    manifest = tmp_path / f"train.{kind}"
    if kind == "jsonl":
        manifest.write_text("".join(json.dumps({"wav": f"wavs/u{i}.wav", "text": t, "extra": i}) + "\n"
                                    for i, t in enumerate(TEXTS)))
    else:
        manifest.write_text("wav,text,extra\n" + "".join(f"wavs/u{i}.wav,{t},{i}\n" for i, t in enumerate(TEXTS)))
    loaded = load_source(manifest=str(manifest), streaming=True)
    assert isinstance(loaded, datasets.IterableDataset)
    out = prepare(loaded, audio_column="wav", text_column="text", max_seconds=1.0)
    assert isinstance(out, datasets.IterableDataset)
    rows = list(out)
    assert [sorted(r) for r in rows] == [["audio", "input_length", "text"]] * 2  # no __root__ / extra columns
    assert [(r["text"], r["input_length"], len(r["audio"])) for r in rows] == [(t, n, n) for _, t, n in KEPT]
    np.testing.assert_array_equal(np.asarray(rows[1]["audio"], dtype=np.float32), audios[1])
    # train_hf.py's streaming split: eval = take(n), train = skip(n).
    assert [r["text"] for r in prepare(loaded.skip(1), audio_column="wav", text_column="text")] == ["two three",
                                                                                                     "too long"]


def test_streaming_audiofolder_and_disk(wav_dir, tmp_path):
    folder, audios = wav_dir
    (folder / "metadata.csv").write_text("file_name,transcription\n" +
                                         "".join(f"u{i}.wav,{t}\n" for i, t in enumerate(TEXTS)))
    out = list(prepare(load_source("audiofolder", data_dir=str(folder), streaming=True), max_seconds=1.0))
    assert [(r["text"], r["input_length"]) for r in out] == [(t, n) for _, t, n in KEPT]
    datasets.Dataset.from_dict({"audio": [str(folder / "u0.wav")], "transcription": ["x"]}).save_to_disk(tmp_path / "d")
    out = list(prepare(load_source(disk_path=str(tmp_path / "d"), streaming=True)))
    assert [(r["text"], r["input_length"]) for r in out] == [("x", 1600)]


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_exactly_one_source():
    with pytest.raises(ValueError) as err:
        load_source(name="audiofolder", manifest="train.jsonl")
    assert str(err.value) == ("give exactly one data source: --dataset_name, --dataset_dir or --manifest "
                              "(got ['audiofolder', 'train.jsonl'])")
    with pytest.raises(ValueError, match="give exactly one data source"):
        load_source()


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_columns_name_the_columns_and_options(wav_dir, tmp_path, streaming):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"path": "wavs/u0.wav", "sentence": "one"}) + "\n")
    loaded = load_source(manifest=str(manifest), streaming=streaming)
    with pytest.raises(ValueError) as err:
        prepare(loaded)
    assert str(err.value) == ("dataset has no column(s) ['audio', 'transcription']; its columns are "
                              "['path', 'sentence'] (see --audio_column/--text_column)")
    with pytest.raises(ValueError, match=r"no column\(s\) \['transcription'\]"):
        prepare(loaded, audio_column="path")


def test_missing_columns_of_a_streaming_csv_show_at_the_first_row(wav_dir, tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,sentence\nwavs/u0.wav,one\n")
    out = prepare(load_source(manifest=str(manifest), streaming=True))  # CSV columns are unknown until read
    with pytest.raises(ValueError) as err:
        list(out)
    assert str(err.value) == ("dataset has no column(s) ['audio', 'transcription']; its columns are "
                              "['path', 'sentence'] (see --audio_column/--text_column)")


def test_text_column_holding_non_strings_names_the_row(wav_dir):
    folder, _ = wav_dir
    ds = datasets.Dataset.from_dict({"audio": [str(folder / "u0.wav"), str(folder / "u1.wav")],
                                     "transcription": [1, 2]})
    with pytest.raises(ValueError) as err:
        prepare(ds)
    assert str(err.value) == "row 0: column 'transcription' must hold a string transcript, got int"


def test_file_that_is_not_audio_names_the_row_and_file(wav_dir, tmp_path):
    (tmp_path / "wavs" / "x.wav").write_bytes(b"this is not a wav file at all" * 10)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"audio": p, "transcription": "t"}) + "\n"
                                for p in ("wavs/u0.wav", "wavs/x.wav")))
    with pytest.raises(ValueError) as err:
        prepare(load_source(manifest=str(manifest)))
    message = str(err.value)
    bad = tmp_path / "wavs" / "x.wav"
    assert message.startswith(f"row 1: unreadable audio: Could not decode file '{bad}' as audio")
    assert "Accepted formats: wav, flac" in message


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_file_names_the_row_and_path(wav_dir, tmp_path, streaming):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"audio": p, "transcription": "t"}) + "\n"
                                for p in ("wavs/u0.wav", "wavs/u1.wav", "wavs/gone.wav")))
    with pytest.raises(ValueError) as err:
        out = prepare(load_source(manifest=str(manifest), streaming=streaming))
        list(out)  # a streaming dataset reads when iterated
    assert str(err.value) == f"row 2: unreadable audio: No audio file at '{tmp_path / 'wavs' / 'gone.wav'}'"


# ---- collator -------------------------------------------------------------------------------------------------------
def test_speech_collator_pads_audio_and_labels(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    rows = [{"audio": np.full(5, 0.1, dtype=np.float32), "text": "今日は晴れです"},
            {"audio": np.full(9, -0.2, dtype=np.float32), "text": "hello"},
            {"audio": np.full(3, 0.3, dtype=np.float32), "text": "猫が水を飲みたい"}]
    batch = SpeechCollator(tiny_processor)(rows)
    assert sorted(batch) == ["attention_mask", "input_values", "labels"]
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1] * 5 + [0] * 4, [1] * 9, [1] * 3 + [0] * 6]))
    expected_audio = torch.tensor([[0.1] * 5 + [0.0] * 4, [-0.2] * 9, [0.3] * 3 + [0.0] * 6])
    torch.testing.assert_close(batch["input_values"], expected_audio)
    ids = [tokenizer(r["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in rows]
    width = max(map(len, ids))
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [row + [-100] * (width - len(row)) for row in ids]
    assert all(len(row) > 1 for row in ids) and len({len(row) for row in ids}) > 1  # the padding is exercised


def test_speech_collator_builds_character_targets(tiny_processor):
    vocab = ["が", "水", "猫", "は", "日", "今", "を"]
    rows = [{"audio": np.zeros(4, dtype=np.float32), "text": "今日は晴れです"},
            {"audio": np.zeros(4, dtype=np.float32), "text": "猫が水を飲みたい"},
            {"audio": np.zeros(4, dtype=np.float32), "text": "hello"}]
    batch = SpeechCollator(tiny_processor, ctc_vocab=vocab)(rows)
    assert sorted(batch) == ["attention_mask", "ctc_targets", "input_values", "labels"]
    assert batch["labels"].tolist() == SpeechCollator(tiny_processor)(rows)["labels"].tolist()
    # characters outside the vocabulary are left out (晴れです, 飲みたい, hello)
    assert batch["ctc_targets"].tolist() == [[5, 4, 3, -100], [2, 0, 1, 6], [-100] * 4]
