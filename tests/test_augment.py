"""Edge-silence crop: finds the sound exactly, never cuts into it, and reaches training rows only."""

import types

import datasets
import numpy as np
import pytest
import soundfile as sf

import train_hf
from hubert_gpt_training.augment import EdgeSilenceCrop, sound_bounds

RATE = 16000


def utterance(lead=4800, sound=8000, trail=5440, seed=0):
    """Low noise floor (like the synthetic corpus's silence) around a loud tone: (audio, sound start, sound end)."""
    rng = np.random.default_rng(seed)
    audio = (3e-4 * rng.standard_normal(lead + sound + trail)).astype(np.float32)
    t = np.arange(sound) / RATE
    audio[lead: lead + sound] += (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return audio, lead, lead + sound


def test_sound_bounds_are_the_sound_to_the_frame():
    audio, start, end = utterance()
    assert sound_bounds(audio) == (start, end)
    assert sound_bounds(np.zeros(8000, np.float32)) == (0, 0)
    assert sound_bounds(np.zeros(100, np.float32)) == (0, 0)


def test_crop_keeps_the_whole_sound_and_cuts_only_silence():
    audio, start, end = utterance()
    crop = EdgeSilenceCrop(1.0, seed=0)
    leads, trails = [], []
    for _ in range(200):
        out = crop.crop(audio)
        cut = next(i for i in range(start + 1) if np.array_equal(out[: len(out)], audio[i: i + len(out)]))
        assert cut <= start and cut + len(out) >= end  # a slice of the original holding the whole sound
        leads.append(cut)
        trails.append(len(audio) - cut - len(out))
    assert 0 < min(leads) and max(leads) < start and 0 < min(trails) and max(trails) < len(audio) - end
    assert np.mean(leads) == pytest.approx(start / 2, rel=0.15)  # uniform share of the silence


def test_crop_probability_zero_is_the_identity_and_half_crops_about_half():
    audio, _, _ = utterance()
    assert all(np.array_equal(EdgeSilenceCrop(0.0).crop(audio), audio) for _ in range(20))
    half = EdgeSilenceCrop(0.5, seed=1)
    shortened = [len(half.crop(audio)) < len(audio) for _ in range(400)]
    assert 0.65 < np.mean(shortened) < 0.85  # 1 - 0.5 * 0.5 of the rows lose silence at one end or both


def test_dataloader_workers_crop_afresh_per_worker_and_per_epoch():
    """Eight copies of one utterance read by two workers (rows 0, 2, ... and 1, 3, ...): forked copies of one generator
    would crop the k-th row of each worker alike, and again each epoch."""
    import torch

    audio, _, _ = utterance()
    rows = datasets.Dataset.from_dict({"audio": [audio] * 8}).with_transform(EdgeSilenceCrop(1.0, seed=0))
    loader = torch.utils.data.DataLoader(rows, batch_size=1, num_workers=2, collate_fn=lambda b: len(b[0]["audio"]))
    first, second = list(loader), list(loader)
    assert all(n < len(audio) for n in first + second)
    assert first[0::2] != first[1::2] and first != second


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_crop_refuses_a_probability_outside_zero_one(prob):
    with pytest.raises(ValueError, match=r"edge_silence_crop must be a probability in \[0, 1\]"):
        EdgeSilenceCrop(prob)


def corpus_folder(tmp_path, *others):
    """A save_to_disk folder of four utterance files: a train split and the `others`, all the same rows."""
    rows = {"audio": [], "transcription": []}
    for i in range(4):
        audio, _, _ = utterance(seed=i)
        sf.write(tmp_path / f"{i}.wav", audio, RATE)
        rows["audio"].append(str(tmp_path / f"{i}.wav"))
        rows["transcription"].append(f"文{i}")
    folder = str(tmp_path / "ds")
    data = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({name: data for name in ("train", *others)}).save_to_disk(folder)
    return folder, rows


@pytest.mark.parametrize("streaming", [False, True])
def test_flag_crops_training_rows_and_leaves_the_evaluation_split(tmp_path, streaming):
    folder, rows = corpus_folder(tmp_path, "test")
    dargs = train_hf.DataArguments(dataset_dir=folder, eval_split="test", streaming=streaming, edge_silence_crop=1.0)
    rargs = types.SimpleNamespace(preset=None)
    train, evaluation, _ = train_hf.load_data(dargs, rargs, RATE, seed=0)
    full = len(utterance()[0])
    assert [len(row["audio"]) for row in evaluation] == [full] * 4
    first, again = [len(row["audio"]) for row in train], [len(row["audio"]) for row in train]
    assert all(n < full for n in first) and first != again  # cropped, afresh each time a row is read
    assert [row["text"] for row in train] == [f"文{i}" for i in range(4)]


# --- rooms, noise and telephone lines ----------------------------------------------------------------------------------
from hubert_gpt_training.augment import (NOISE_KINDS, RoomAugment, mix_at_snr, noise_of, reverberate,  # noqa: E402
                                         room_impulse_responses, telephone)


def band_power(audio, low, high):
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    return spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum()


def test_noise_kinds_are_unit_level_seeded_and_babble_is_made_of_the_other_utterances():
    others = [utterance(seed=i)[0] for i in range(4)]
    for kind in NOISE_KINDS:
        noise = noise_of(kind, 16000, np.random.default_rng(0), others)
        assert noise.shape == (16000,) and np.std(noise) == pytest.approx(1.0, rel=1e-3)
        np.testing.assert_array_equal(noise, noise_of(kind, 16000, np.random.default_rng(0), others))
    assert band_power(noise_of("pink", 16000, np.random.default_rng(0)), 0, 1000) > 0.5  # 1/f: low frequencies
    assert band_power(noise_of("hum", 16000, np.random.default_rng(0)), 0, 400) > 0.99
    assert band_power(noise_of("babble", 16000, np.random.default_rng(0), others), 430, 450) > 0.5  # the tones' 440 Hz
    with pytest.raises(ValueError, match="unknown noise kind 'rain'"):
        noise_of("rain", 100, np.random.default_rng(0))


def test_mix_at_snr_reaches_the_snr_and_reverb_and_telephone_keep_length():
    speech, _, _ = utterance()
    noise = noise_of("white", len(speech), np.random.default_rng(0))
    mixed = mix_at_snr(speech, noise, 10.0)
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean((mixed - speech).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)
    rooms = room_impulse_responses(3, seed=0)
    assert [len(r) for r in rooms] == [len(r) for r in room_impulse_responses(3, seed=0)]
    wet = reverberate(speech, rooms[0])
    assert len(wet) == len(speech) and np.std(wet) == pytest.approx(np.std(speech), rel=1e-3)
    white = noise_of("white", 16000, np.random.default_rng(1))
    line = telephone(white)
    assert len(line) == len(white) and band_power(white, 4000, 8000) > 0.4 and band_power(line, 4000, 8000) < 0.01
    assert band_power(line, 0, 200) < 0.01  # the line's high-pass


def test_room_augment_is_seeded_and_reaches_every_effect():
    rows = {"audio": [utterance(seed=i)[0] for i in range(6)]}
    first = RoomAugment(1.0, seed=3, rooms=4)(rows)["audio"]
    again = RoomAugment(1.0, seed=3, rooms=4)(rows)["audio"]
    other = RoomAugment(1.0, seed=4, rooms=4)(rows)["audio"]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # same seed, same audio
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(len(a) == len(r) and not np.array_equal(a, r) for a, r in zip(first, rows["audio"]))
    off = RoomAugment(0.0, seed=3)(rows)["audio"]
    assert all(np.array_equal(a, r) for a, r in zip(off, rows["audio"]))
    with pytest.raises(ValueError, match=r"room_augment must be a probability in \[0, 1\], got 2"):
        RoomAugment(2)


def test_dataloader_workers_draw_their_own_rooms_and_noise():
    import torch

    audio, _, _ = utterance()
    rows = datasets.Dataset.from_dict({"audio": [audio] * 8}).with_transform(RoomAugment(1.0, seed=0, rooms=4))
    loader = torch.utils.data.DataLoader(rows, batch_size=1, num_workers=2,
                                         collate_fn=lambda b: float(np.sum(np.abs(b[0]["audio"]))))
    first, second = list(loader), list(loader)
    assert first[0::2] != first[1::2] and first != second


def test_flags_chain_the_crop_and_the_rooms_on_training_rows_only(tmp_path):
    folder, rows = corpus_folder(tmp_path, "test", "test_noisy")
    dargs = train_hf.DataArguments(dataset_dir=folder, eval_split="test", edge_silence_crop=1.0, room_augment=1.0,
                                   test_splits="test,test_noisy")
    train, evaluation, tests = train_hf.load_data(dargs, types.SimpleNamespace(preset=None), RATE, seed=0)
    full = len(utterance()[0])
    assert list(tests) == ["test", "test_noisy"] and tests["test"] is evaluation
    for split in (evaluation, tests["test_noisy"]):
        assert [np.asarray(r["audio"]).tolist() for r in split] == [sf.read(p, dtype="float32")[0].tolist()
                                                                    for p in rows["audio"]]
    cropped = [np.asarray(r["audio"]) for r in train]
    assert all(len(a) < full for a in cropped)  # the crop ran, then the room (same length as its input)


def test_non_speech_rows_get_sound_without_speech_of_their_length_and_an_empty_transcript():
    rows = {"audio": [utterance(seed=i)[0] for i in range(40)], "text": [f"文{i}" for i in range(40)]}
    out = RoomAugment(0.0, seed=0, non_speech=0.25)(rows)
    again = RoomAugment(0.0, seed=0, non_speech=0.25)(rows)
    emptied = [i for i, t in enumerate(out["text"]) if t == ""]
    assert 3 <= len(emptied) <= 20 and out["text"] == again["text"]
    for i in range(40):
        audio = np.asarray(out["audio"][i])
        assert len(audio) == len(rows["audio"][i]) and np.array_equal(audio, again["audio"][i])
        if i in emptied:  # no trace of the utterance's tone left
            assert band_power(audio, 430, 450) < 0.5 and np.std(audio) <= 10 ** (-10 / 20) * 1.01  # <= -10 dBFS
        else:
            assert out["text"][i] == f"文{i}" and np.array_equal(audio, rows["audio"][i])
    with pytest.raises(ValueError, match=r"non_speech must be a probability in \[0, 1\], got -1"):
        RoomAugment(0.5, non_speech=-1)


def test_the_ramp_grows_both_probabilities_from_zero_over_the_rows_read():
    rows = {"audio": [utterance(seed=i)[0] for i in range(10)], "text": [f"文{i}" for i in range(10)]}
    augment = RoomAugment(1.0, seed=0, rooms=2, non_speech=0.5, ramp_rows=30)
    first = augment(rows)  # rows 0-9 read with the ramp at 0: untouched
    assert first["text"] == rows["text"] and all(np.array_equal(a, b) for a, b in zip(first["audio"], rows["audio"]))
    assert augment.ramp() == pytest.approx(10 / 30)
    augment(rows), augment(rows)
    assert augment.ramp() == 1.0
    last = augment(rows)  # the full probabilities: every row degraded, about half emptied
    assert all(not np.array_equal(a, b) for a, b in zip(last["audio"], rows["audio"])) and "" in last["text"]
    late = RoomAugment(1.0, seed=0, rooms=2, ramp_start=20, ramp_rows=40)
    late(rows), late(rows)
    assert late.ramp() == 0.0 and (late(rows), late.ramp())[1] == 0.5
    with pytest.raises(ValueError, match="the ramp must start before it ends: start 30, end 20"):
        RoomAugment(0.5, ramp_start=30, ramp_rows=20)
    with pytest.raises(ValueError, match=r"--augment_ramp_steps takes END or START,END \(whole steps\), got '1;2'"):
        train_hf.ramp_steps("1;2")
    assert train_hf.ramp_steps("800") == (0, 800) and train_hf.ramp_steps("1500,2500") == (1500, 2500)
