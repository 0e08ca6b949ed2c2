"""HubertGptProcessor and the tiny rinna-style tokenizer: ids, padding, labels, save/load, bad inputs."""

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
from helpers import make_audio
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, Wav2Vec2FeatureExtractor

from modeling_hubert_gpt.processing_hubert_gpt import HubertGptProcessor

SR = 16000
JAPANESE = [
    "今日は晴れです。",
    "猫が魚を食べました",
    "子供たちが日本語を話します。",
    "駅前で写真を撮りましたね。",  # in the corpus' alphabet, maybe not in the corpus
    "先生は水を飲みたい、東京で音楽を聞いています",
    "龘は知らない字です",  # characters never seen in training -> <unk>
    "今日は  雨 ",  # spaces
]


# ---- tokenizer ----


def test_tokenizer_ids_match_raw_sentencepiece(tiny_tokenizer, tiny_tokenizer_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "spiece.model"))
    for text in JAPANESE + ["hello world 123", "GPT model!"]:
        assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text


def test_tokenizer_special_ids_follow_rinna_layout(tiny_tokenizer, tiny_tokenizer_dir):
    tok = tiny_tokenizer
    ids = (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id,
           tok.sep_token_id, tok.cls_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4, 5, 6)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "spiece.model"))
    assert len(tok) == sp.get_piece_size()  # no T5 sentinel tokens (<extra_id_N>) appended
    assert not any("extra_id" in t for t in tok.get_vocab())


def test_unknown_character_is_unk_not_bos(tiny_tokenizer):
    # transformers 5's T5Tokenizer hard-codes unk_id=2, which is <s> in rinna's layout.
    ids = tiny_tokenizer("龘", add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.unk_token_id in ids and tiny_tokenizer.bos_token_id not in ids


def test_decode_round_trip(tiny_tokenizer, tiny_processor):
    known = [t for t in JAPANESE if "龘" not in t and "  " not in t]
    for text in known:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
        assert tiny_processor.decode(ids + [tiny_tokenizer.eos_token_id], skip_special_tokens=True) == text
    labels = tiny_processor(text=known)["labels"]
    ids = labels.masked_fill(labels == -100, tiny_tokenizer.pad_token_id)
    assert tiny_processor.batch_decode(ids, skip_special_tokens=True) == known


def test_tokenizer_folder_reloads_identically(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in JAPANESE:
        assert again(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert again.all_special_ids == tiny_tokenizer.all_special_ids


# ---- audio ----


def test_audio_batch_is_right_padded_with_exact_mask(tiny_processor):
    a, b, c = make_audio(0.5, 0), make_audio(0.77, 1), make_audio(0.1, 2)
    out = tiny_processor(audio=[a, b, c], sampling_rate=SR)
    assert set(out) == {"input_values", "attention_mask"}  # exactly what generate(**inputs) takes
    values, mask = out["input_values"], out["attention_mask"]
    assert values.dtype == torch.float32 and mask.dtype == torch.long
    assert values.shape == mask.shape == (3, len(b))
    for row, wave in enumerate([a, b, c]):
        n = len(wave)
        assert torch.equal(values[row, :n], torch.from_numpy(wave))  # no normalisation: samples pass unchanged
        assert torch.all(values[row, n:] == 0)
        assert torch.all(mask[row, :n] == 1) and torch.all(mask[row, n:] == 0)


def test_single_array_list_of_floats_and_tensor_are_one_utterance(tiny_processor):
    wave = make_audio(0.2, 3)
    expected = tiny_processor(audio=[wave], sampling_rate=SR)["input_values"]
    for audio in (wave, torch.from_numpy(wave), wave.tolist(), [torch.from_numpy(wave)]):
        out = tiny_processor(audio=audio, sampling_rate=SR)
        assert out["input_values"].shape == (1, len(wave))
        assert torch.allclose(out["input_values"], expected)  # .tolist() goes through float64
        assert out["attention_mask"].sum() == len(wave)


def test_normalisation_is_per_utterance_over_real_samples(tiny_tokenizer):
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    processor = HubertGptProcessor(fe, tiny_tokenizer)
    short, long = make_audio(0.3, 4) * 0.1 + 0.05, make_audio(1.0, 5)
    batch = processor(audio=[short, long], sampling_rate=SR)["input_values"]
    alone = processor(audio=short, sampling_rate=SR)["input_values"][0]
    n = len(short)
    assert torch.allclose(batch[0, :n], alone, atol=1e-6)  # padding did not leak into the statistics
    assert torch.all(batch[0, n:] == 0)
    assert abs(float(batch[0, :n].mean())) < 1e-4 and abs(float(batch[0, :n].std()) - 1) < 1e-3


def test_int_pcm_is_scaled_to_float(tiny_processor):
    pcm16 = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = tiny_processor(audio=pcm16, sampling_rate=SR)["input_values"][0]
    assert torch.allclose(out, torch.tensor([0.0, 0.5, -1.0, 32767 / 32768]))
    pcm32 = np.array([0, 2**30, -(2**31)], dtype=np.int32)
    out = tiny_processor(audio=pcm32, sampling_rate=SR)["input_values"][0]
    assert torch.allclose(out, torch.tensor([0.0, 0.5, -1.0]))
    pcm8 = np.array([128, 192, 0], dtype=np.uint8)
    out = tiny_processor(audio=pcm8, sampling_rate=SR)["input_values"][0]
    assert torch.allclose(out, torch.tensor([0.0, 0.5, -1.0]))


def test_stereo_is_downmixed_in_either_layout(tiny_processor):
    left, right = make_audio(0.25, 6), make_audio(0.25, 7)
    mono = (left + right) / 2
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1), torch.from_numpy(np.stack([left, right]))):
        out = tiny_processor(audio=stereo, sampling_rate=SR)["input_values"]
        assert out.shape == (1, len(left))
        assert torch.allclose(out[0], torch.from_numpy(mono), atol=1e-7)


# ---- labels ----


def test_labels_are_ids_plus_eos_padded_with_minus_100(tiny_processor, tiny_tokenizer):
    texts = ["今日は晴れです。", "猫が魚を食べました、子供たちが日本語を話します。", ""]
    waves = [make_audio(0.2, i) for i in range(3)]
    out = tiny_processor(audio=waves, text=texts, sampling_rate=SR)
    labels = out["labels"]
    assert labels.dtype == torch.long
    rows = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id] for t in texts]
    assert labels.shape == (3, max(map(len, rows)))
    for row, expected in zip(labels.tolist(), rows):
        assert row[: len(expected)] == expected
        assert row[len(expected) :] == [-100] * (labels.shape[1] - len(expected))
    assert rows[2] == [tiny_tokenizer.eos_token_id]  # empty transcript: just eos


def test_text_only_returns_just_labels(tiny_processor, tiny_tokenizer):
    out = tiny_processor(text="今日は晴れです。")
    assert set(out) == {"labels"}
    expected = tiny_tokenizer("今日は晴れです。", add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert out["labels"].tolist() == [expected]


def test_numpy_output(tiny_processor):
    out = tiny_processor(audio=[make_audio(0.1, 0)], text=["猫"], sampling_rate=SR, return_tensors="np")
    assert out["input_values"].dtype == np.float32 and out["attention_mask"].dtype == np.int64
    assert out["labels"].dtype == np.int64


# ---- save / load as remote code ----


def test_save_and_autoprocessor_round_trip(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "processing_hubert_gpt.py")  # the remote code travels with the folder
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_hubert_gpt.HubertGptProcessor"

    again = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(again).__name__ == "HubertGptProcessor"
    assert again.feature_extractor.to_dict() == tiny_processor.feature_extractor.to_dict()

    waves = [make_audio(0.3, 8), make_audio(0.45, 9)]
    texts = ["今日は晴れです。", "子供たちが日本語を話します。"]
    expected = tiny_processor(audio=waves, text=texts, sampling_rate=SR)
    got = again(audio=waves, text=texts, sampling_rate=SR)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert again.batch_decode(got["labels"].clamp(min=0), skip_special_tokens=True) == texts
    # The stock ASR pipeline loads the parts on their own: they must load from the same folder.
    assert AutoFeatureExtractor.from_pretrained(tmp_path).to_dict() == tiny_processor.feature_extractor.to_dict()
    assert AutoTokenizer.from_pretrained(tmp_path)(texts)["input_ids"] == tiny_processor.tokenizer(texts)["input_ids"]


# ---- bad inputs ----


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "got neither"),
        ({"audio": np.zeros(0, np.float32)}, ValueError, r"audio\[0\] is empty"),
        ({"audio": [np.ones(10, np.float32), np.zeros(0, np.float32)]}, ValueError, r"audio\[1\] is empty"),
        ({"audio": []}, ValueError, "empty list"),
        ({"audio": [np.ones(10, np.float32), np.array([0.1, np.nan], np.float32)]}, ValueError, r"audio\[1\] contains 1 NaN or Inf"),
        ({"audio": np.array([0.1, np.inf, -np.inf], np.float32)}, ValueError, r"audio\[0\] contains 2 NaN or Inf"),
        ({"audio": np.ones(10, np.float32), "sampling_rate": None}, ValueError, "`sampling_rate` is required"),
        ({"audio": np.ones(10, np.float32), "sampling_rate": 44100}, ValueError, "44100 Hz.*expects 16000 Hz.*[Rr]esample"),
        ({"audio": np.ones((16, 1000), np.float32)}, ValueError, "pass a list of 1-D arrays"),
        ({"audio": np.ones((2, 2, 100), np.float32)}, ValueError, r"shape \(2, 2, 100\)"),
        ({"audio": np.ones(10, np.int64)}, TypeError, "dtype int64.*int16"),
        ({"audio": "speech.wav"}, TypeError, "`audio` must be"),
        ({"text": 5}, TypeError, "`text` must be a str"),
        ({"text": ["ok", 5]}, TypeError, r"text\[1\] is a int"),
        ({"text": [b"bytes"]}, TypeError, r"text\[0\] is a bytes"),
        ({"text": []}, ValueError, "empty list"),
        ({"audio": [np.ones(10, np.float32)] * 2, "text": "one transcript"}, ValueError, "2 audio utterances but 1 transcripts"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_processor, kwargs, error, message):
    kwargs = {"sampling_rate": SR, **kwargs} if "audio" in kwargs else kwargs
    with pytest.raises(error, match=message):
        tiny_processor(**kwargs)


# ---- straight into the model ----


def test_processor_output_goes_straight_into_the_model(tiny_processor, tiny_tokenizer):
    from hubert_gpt_training.tiny import tiny_audio_config, tiny_text_config

    from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration

    tok = tiny_tokenizer
    config = HubertGptConfig(
        audio_config=tiny_audio_config(),
        text_config=tiny_text_config(vocab_size=len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id),
        prompt_sep_token_id=tok.sep_token_id,
    )
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(config).eval()
    waves = [make_audio(0.4, 10), make_audio(0.7, 11)]
    batch = tiny_processor(audio=waves, text=["今日は晴れです。", "猫が魚を食べました"], sampling_rate=SR)
    assert torch.isfinite(model(**batch).loss)

    inputs = tiny_processor(audio=waves, sampling_rate=SR)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=5)
    assert ids.shape[0] == 2
    assert all(isinstance(t, str) for t in tiny_processor.batch_decode(ids, skip_special_tokens=True))
