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


@pytest.mark.parametrize("streaming", [False, True])
def test_flag_crops_training_rows_and_leaves_the_evaluation_split(tmp_path, streaming):
    rows = {"audio": [], "transcription": []}
    for i in range(4):
        audio, _, _ = utterance(seed=i)
        sf.write(tmp_path / f"{i}.wav", audio, RATE)
        rows["audio"].append(str(tmp_path / f"{i}.wav"))
        rows["transcription"].append(f"文{i}")
    folder = str(tmp_path / "ds")
    data = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict(train=data, test=data).save_to_disk(folder)
    dargs = types.SimpleNamespace(
        dataset_name=None, dataset_config=None, train_split="train", eval_split="test", data_dir=None,
        dataset_dir=folder, manifest=None, streaming=streaming, reazonspeech_base_url=None, audio_column="audio",
        text_column="transcription", max_seconds=16.0, max_eval_samples=None, eval_size=2, edge_silence_crop=1.0)
    rargs = types.SimpleNamespace(preset=None)
    train, evaluation = train_hf.load_data(dargs, rargs, RATE, seed=0)
    full = len(utterance()[0])
    assert [len(row["audio"]) for row in evaluation] == [full] * 4
    first, again = [len(row["audio"]) for row in train], [len(row["audio"]) for row in train]
    assert all(n < full for n in first) and first != again  # cropped, afresh each time a row is read
    assert [row["text"] for row in train] == [f"文{i}" for i in range(4)]
