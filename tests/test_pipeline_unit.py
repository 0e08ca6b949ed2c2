"""HubertGptASRPipeline without the real model: token merging, audio loading, and chunked / batched transcription
with a fake model whose transcript is a known function of the audio."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSpeechSeq2Seq,
    AutomaticSpeechRecognitionPipeline,
    GenerationConfig,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Wav2Vec2FeatureExtractor,
    pipeline,
)
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.pipelines import PIPELINE_REGISTRY

import modeling_hubert_gpt.pipeline_hubert_gpt as pipeline_module
from modeling_hubert_gpt.frames_hubert_gpt import chunk_spans
from modeling_hubert_gpt.pipeline_hubert_gpt import (
    HubertGptASRPipeline,
    load_audio,
    merge_chunk_tokens,
    merge_overlapping_tokens,
    register_pipeline_in_config,
)

RATE = 16000


# --- merging ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlap", [1, 2, 3, 5])
def test_merge_exact_overlaps_of_several_sizes(overlap):
    full = list(range(10, 30))
    left, right = full[: 12], full[12 - overlap :]
    assert merge_overlapping_tokens(left, right) == full


def test_merge_without_overlap_concatenates():
    assert merge_overlapping_tokens([1, 2, 3], [4, 5, 6]) == [1, 2, 3, 4, 5, 6]
    assert merge_overlapping_tokens([], [4, 5]) == [4, 5]
    assert merge_overlapping_tokens([1, 2], []) == [1, 2]


def test_merge_full_overlap():
    assert merge_overlapping_tokens([1, 2, 3], [1, 2, 3]) == [1, 2, 3]
    assert merge_overlapping_tokens([1, 2, 3, 4], [3, 4]) == [1, 2, 3, 4]  # right lies inside left's tail
    assert merge_overlapping_tokens([1, 2], [1, 2, 3, 4]) == [1, 2, 3, 4]  # left lies inside right's head


def test_merge_with_a_token_repeated_inside_the_overlap():
    assert merge_overlapping_tokens([1, 2, 5, 5, 5], [5, 5, 5, 6, 7]) == [1, 2, 5, 5, 5, 6, 7]
    assert merge_overlapping_tokens([1, 2, 3, 2, 3], [2, 3, 4]) == [1, 2, 3, 2, 3, 4]
    assert merge_overlapping_tokens([7, 8, 8, 8], [8, 8, 9]) == [7, 8, 8, 8, 9]  # smallest best overlap wins


def test_merge_tolerates_a_wrong_word_at_each_cut_edge():
    # left's last word and right's first word were cut by the chunk edges and misrecognised (90, 91)
    assert merge_overlapping_tokens([1, 2, 3, 4, 90], [91, 3, 4, 5, 6]) == [1, 2, 3, 4, 5, 6]


def test_merge_does_not_drop_tokens_on_a_lone_coincidence():
    # 2 is shared but at a position where only 1 of 4 aligned tokens agrees: concatenate rather than cut
    assert merge_overlapping_tokens([1, 2, 3, 4], [9, 2, 7, 8]) == [1, 2, 3, 4, 9, 2, 7, 8]


def test_merge_chunk_tokens_folds_left_to_right():
    assert merge_chunk_tokens([]) == []
    assert merge_chunk_tokens([[1, 2, 3]]) == [1, 2, 3]
    assert merge_chunk_tokens([[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7], [7, 8]]) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_chunk_spans():
    assert chunk_spans(100, 40, 10) == [(0, 40), (30, 70), (60, 100)]
    assert chunk_spans(95, 40, 10) == [(0, 40), (30, 70), (55, 95)]  # last chunk moved back to full length
    assert chunk_spans(40, 40, 10) == [(0, 40)]
    assert chunk_spans(7, 40, 10) == [(0, 7)]
    with pytest.raises(ValueError, match="must exceed the overlap"):
        chunk_spans(100, 10, 10)


# --- audio loading ------------------------------------------------------------------------------------------------
def pcm16_exact_audio(n=RATE):
    """Float samples that 16-bit PCM stores exactly, so a wav/flac round trip is lossless."""
    return (np.round(np.sin(np.arange(n) / 7.0) * 12000) / 32768).astype(np.float32)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_load_lossless_files_and_bytes(tmp_path, fmt):
    audio = pcm16_exact_audio()
    path = tmp_path / f"a.{fmt.lower()}"
    soundfile.write(path, audio, RATE, format=fmt, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(str(path), RATE), audio)
    np.testing.assert_array_equal(load_audio(path, RATE), audio)  # pathlib.Path
    np.testing.assert_array_equal(load_audio(path.read_bytes(), RATE), audio)


@pytest.mark.parametrize("fmt, subtype", [("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")])
def test_load_lossy_files_as_soundfile_decodes_them(tmp_path, fmt, subtype):
    path = tmp_path / f"a.{fmt.lower()}"
    soundfile.write(path, pcm16_exact_audio(), RATE, format=fmt, subtype=subtype)
    decoded, rate = soundfile.read(path, dtype="float32")
    assert rate == RATE
    loaded = load_audio(str(path), RATE)
    assert loaded.dtype == np.float32 and loaded.shape == (RATE,)
    np.testing.assert_array_equal(loaded, decoded)


def test_stereo_file_and_arrays_are_downmixed_by_the_mean(tmp_path):
    left = pcm16_exact_audio(1000)
    right = np.zeros(1000, np.float32)
    expected = (left + right) / 2
    np.testing.assert_array_equal(load_audio(np.stack([left, right]), RATE), expected)  # (channels, samples)
    np.testing.assert_array_equal(load_audio(np.stack([left, right], axis=1), RATE), expected)  # (samples, channels)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), RATE, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(str(path), RATE), expected)


def test_int_pcm_is_scaled():
    pcm = np.array([0, 16384, -32768, 32767], np.int16)
    np.testing.assert_array_equal(load_audio(pcm, RATE), np.array([0, 0.5, -1, 32767 / 32768], np.float32))
    np.testing.assert_array_equal(load_audio(np.array([2**30], np.int32), RATE), np.array([0.5], np.float32))
    np.testing.assert_array_equal(load_audio(torch.tensor([0.25, -0.5], dtype=torch.float64), RATE), [0.25, -0.5])


def test_dict_inputs_are_resampled():
    assert load_audio({"raw": np.zeros(8000, np.float32), "sampling_rate": 8000}, RATE).shape == (16000,)
    assert load_audio({"array": np.zeros(44100, np.float32), "sampling_rate": 44100}, RATE).shape == (16000,)
    assert load_audio({"array": np.zeros(16000, np.float32), "sampling_rate": 16000.0, "path": "x"}, RATE).shape == (
        16000,
    )
    sine = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)  # 440 Hz at 8 kHz
    up = load_audio({"raw": sine, "sampling_rate": 8000}, RATE)
    assert up.dtype == np.float32
    assert int(np.argmax(np.abs(np.fft.rfft(up)))) == 440  # 1 s of audio: bin index == Hz


def test_bad_inputs_give_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(ValueError, match=re.escape(f"Could not decode file {str(corrupt)!r} as audio")) as err:
        load_audio(str(corrupt), RATE)
    assert "Accepted formats: wav, flac, ogg" in str(err.value)
    with pytest.raises(ValueError, match=r"Could not decode bytes input \(5 bytes\)"):
        load_audio(b"hello", RATE)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(str(tmp_path / "missing.wav"), RATE)
    with pytest.raises(ValueError, match="URLs are not fetched"):
        load_audio("https://example.com/a.wav", RATE)
    with pytest.raises(ValueError, match='"raw"'):
        load_audio({"audio": np.zeros(10), "sampling_rate": 16000}, RATE)
    with pytest.raises(TypeError, match="Cannot transcribe a float"):
        load_audio(0.5, RATE)
    with pytest.raises(TypeError, match="dtype uint16"):
        load_audio(np.zeros(10, np.uint16), RATE)
    with pytest.raises(ValueError, match="at most 8 channels"):
        load_audio(np.zeros((10, 20), np.float32), RATE)
    with pytest.raises(ValueError, match="empty"):
        load_audio(np.zeros(0, np.float32), RATE)
    with pytest.raises(ValueError, match="positive whole number"):
        load_audio({"raw": np.zeros(10, np.float32), "sampling_rate": 0}, RATE)


# --- a fake model: audio of 0.5 s constant segments, level = word id / 100 ----------------------------------------
SEGMENT = RATE // 2
PAD, EOS, ZERO = 0, 1, 2  # ZERO: a full segment of exact zeros, i.e. padding that the model was shown as audio


class FakeAsrConfig(PretrainedConfig):
    model_type = "fake_pipeline_asr"


class FakeAsrModel(PreTrainedModel, GenerationMixin):
    """Emits the word id of every 0.5 s segment it sees in full; records each generate call."""

    config_class = FakeAsrConfig
    main_input_name = "input_values"
    min_input_samples = 400

    def __init__(self, config):
        super().__init__(config)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(pad_token_id=PAD, eos_token_id=EOS)
        self.calls = []
        self.post_init()

    def generate(self, input_values=None, attention_mask=None, **kwargs):
        lengths = attention_mask.sum(-1).tolist()
        self.calls.append({"batch": input_values.shape[0], "lengths": lengths, "kwargs": kwargs})
        rows = []
        for audio, length in zip(input_values.numpy(), lengths):
            audio = audio[:length]
            ids = []
            for run in np.split(audio, np.flatnonzero(np.diff(audio)) + 1):  # runs of one level
                ids += [round(float(run[0]) * 100) or ZERO] * (len(run) // SEGMENT)
            rows.append(ids + [EOS])
        width = max(map(len, rows))
        return torch.tensor([row + [PAD] * (width - len(row)) for row in rows])  # (B, N) right-padded after eos


def speech(words):
    return np.repeat(np.asarray(words, np.float32) / 100, SEGMENT)


def text(words):
    return " ".join(f"w{w}" for w in words)


# 40 distinct words over 20 s, then a few repeats (7 7 is one 1 s run, decoded as two words)
WORDS = [3 + (7 * i) % 40 for i in range(40)] + [7, 7, 20, 9, 20]


@pytest.fixture
def tokenizer():
    vocab = {"<pad>": PAD, "</s>": EOS, "<zero>": ZERO, **{f"w{i}": i for i in range(3, 50)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = WhitespaceSplit()
    # padding_side="left" as LLM tokenizers often have: batching must still pad the audio on the right
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", padding_side="left")


@pytest.fixture
def feature_extractor():
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )


@pytest.fixture
def model():
    return FakeAsrModel(FakeAsrConfig())


@pytest.fixture
def pipe(model, tokenizer, feature_extractor):
    return HubertGptASRPipeline(model=model, tokenizer=tokenizer, feature_extractor=feature_extractor, device="cpu")


def test_unchunked_transcription(pipe, model):
    assert pipe(speech(WORDS)) == {"text": text(WORDS)}
    assert model.calls == [{"batch": 1, "lengths": [len(WORDS) * SEGMENT], "kwargs": {}}]


@pytest.mark.parametrize(
    "chunk_length_s, stride_length_s, num_chunks",
    [(3.0, None, 11), (2.0, 0.5, 22), (4.0, (1.0, 0.25), 8), (1.6, 0.3, 22), (5.0, None, 7), (30.0, None, 1)],
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_chunked_transcription_equals_unchunked(pipe, model, chunk_length_s, stride_length_s, num_chunks, batch_size):
    audio = speech(WORDS)  # 22.5 s
    whole = pipe(audio)
    chunked = pipe(audio, chunk_length_s=chunk_length_s, stride_length_s=stride_length_s, batch_size=batch_size)
    assert chunked == whole == {"text": text(WORDS)}
    chunk_calls = model.calls[1:]
    assert sum(call["batch"] for call in chunk_calls) == num_chunks
    lengths = {length for call in chunk_calls for length in call["lengths"]}
    assert lengths == {min(int(chunk_length_s * RATE), len(audio))}  # every chunk full length, the last one included


def test_batched_inputs_are_padded_with_an_attention_mask(pipe, model):
    word_lists = [WORDS[:6], WORDS[10:12], WORDS[20:29]]
    audios = [speech(words) for words in word_lists]
    one_by_one = pipe(audios)
    batched = pipe(audios, batch_size=3)
    assert batched == one_by_one == [{"text": text(words)} for words in word_lists]
    assert model.calls[-1]["batch"] == 3
    assert model.calls[-1]["lengths"] == [6 * SEGMENT, 2 * SEGMENT, 9 * SEGMENT]  # one batch: nothing to sort


@pytest.mark.parametrize("as_files", [False, True])
def test_batches_hold_similar_lengths_and_outputs_keep_the_input_order(pipe, model, tmp_path, as_files):
    word_counts = [2, 9, 4, 8, 1, 7, 3]
    word_lists = [WORDS[i : i + n] for i, n in enumerate(word_counts)]
    inputs = [speech(words) for words in word_lists]
    if as_files:
        for i, audio in enumerate(inputs):
            soundfile.write(tmp_path / f"{i}.wav", audio, RATE, subtype="FLOAT")
        inputs = [str(tmp_path / f"{i}.wav") for i in range(len(inputs))]
    one_by_one = [pipe(x) for x in inputs]
    del model.calls[:]
    assert pipe(inputs, batch_size=2) == one_by_one == [{"text": text(words)} for words in word_lists]
    assert [call["lengths"] for call in model.calls] == [[9 * SEGMENT, 8 * SEGMENT], [7 * SEGMENT, 4 * SEGMENT],
                                                         [3 * SEGMENT, 2 * SEGMENT], [1 * SEGMENT]]
    pipe_with_default = HubertGptASRPipeline(model=model, tokenizer=pipe.tokenizer,
                                             feature_extractor=pipe.feature_extractor, batch_size=2)
    del model.calls[:]
    assert pipe_with_default(inputs) == one_by_one
    assert [call["lengths"][0] for call in model.calls] == [9 * SEGMENT, 7 * SEGMENT, 3 * SEGMENT, 1 * SEGMENT]


def test_unreadable_input_in_a_sorted_batch_still_names_itself(pipe, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(ValueError, match="bad.wav"):
        pipe([speech(WORDS[:3]), str(bad), speech(WORDS[:5])], batch_size=2)


def test_batched_chunks_of_several_inputs(pipe):
    word_lists = [WORDS, WORDS[5:9], WORDS[3:30]]
    audios = [speech(words) for words in word_lists]
    expected = [{"text": text(words)} for words in word_lists]
    assert pipe(audios, chunk_length_s=3.0, batch_size=4) == expected
    assert pipe(audios, chunk_length_s=3.0, batch_size=1) == expected


def test_other_input_forms(pipe, tmp_path):
    audio = speech(WORDS[:8])
    path = tmp_path / "a.wav"
    soundfile.write(path, audio, RATE, subtype="FLOAT")
    expected = {"text": text(WORDS[:8])}
    assert pipe(str(path)) == expected
    assert pipe(path.read_bytes()) == expected
    assert pipe({"raw": audio, "sampling_rate": RATE}) == expected
    assert pipe(torch.from_numpy(audio)) == expected
    assert pipe(np.stack([audio, audio])) == expected  # stereo
    assert pipe([str(path), audio]) == [expected, expected]


def test_generate_kwargs_pass_through_and_no_stock_defaults(model, tokenizer, feature_extractor):
    pipe = HubertGptASRPipeline(
        model=model, tokenizer=tokenizer, feature_extractor=feature_extractor, device="cpu", max_new_tokens=9
    )
    audio = speech(WORDS[:4])
    pipe(audio)
    assert model.calls[-1]["kwargs"] == {"max_new_tokens": 9}
    pipe(audio, generate_kwargs={"num_beams": 3})
    assert model.calls[-1]["kwargs"] == {"max_new_tokens": 9, "num_beams": 3}
    pipe(audio, num_beams=2, max_new_tokens=4)
    assert model.calls[-1]["kwargs"] == {"max_new_tokens": 4, "num_beams": 2}


def test_ctc_draft_always_gets_the_pipeline_tokenizer(pipe, model, tokenizer):
    # Whether the draft needs it (a character CTC head) is the model's business: the fake model has no CTC config.
    pipe(speech(WORDS[:4]), ctc_draft=True)
    assert model.calls[-1]["kwargs"] == {"ctc_draft": True, "tokenizer": tokenizer}
    own = object()
    pipe(speech(WORDS[:4]), generate_kwargs={"ctc_draft": True, "tokenizer": own})
    assert model.calls[-1]["kwargs"]["tokenizer"] is own


@pytest.mark.parametrize("batch_size", [1, 2])
def test_generators_and_datasets_stream(pipe, model, batch_size):
    word_lists = [WORDS[:3], WORDS[5:9], WORDS[10:12]]
    expected = [{"text": text(words)} for words in word_lists]
    streamed = pipe((speech(words) for words in word_lists), batch_size=batch_size)
    assert not isinstance(streamed, list)
    assert next(streamed) == expected[0]  # lazily: the first batch only so far
    assert sum(call["batch"] for call in model.calls) == batch_size
    assert [expected[0], *streamed] == expected

    class Audios(torch.utils.data.Dataset):
        def __len__(self):
            return len(word_lists)

        def __getitem__(self, i):
            return speech(word_lists[i])

    assert list(pipe(Audios(), batch_size=batch_size)) == expected


def test_pipeline_errors(pipe, tmp_path):
    too_short = "the audio has 100 samples at 16000 Hz; the model needs at least 400 (0.025 s)"
    with pytest.raises(ValueError, match=re.escape(too_short)):
        pipe(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match=re.escape("chunk_length_s (1.0) must exceed the two strides together")):
        pipe(speech(WORDS), chunk_length_s=1.0, stride_length_s=0.5)
    with pytest.raises(ValueError, match="Timestamps come from the CTC head, and this model has none"):
        pipe(speech(WORDS), return_timestamps=True)
    corrupt = tmp_path / "notes.txt"
    corrupt.write_text("not audio")
    with pytest.raises(ValueError, match=re.escape(f"Could not decode file {str(corrupt)!r}")):
        pipe(str(corrupt))


# --- discovery by pipeline() from a saved folder ------------------------------------------------------------------
EXPECTED_CUSTOM_PIPELINES = {
    "automatic-speech-recognition": {
        "impl": "pipeline_hubert_gpt.HubertGptASRPipeline",
        "pt": ["AutoModelForSpeechSeq2Seq"],
    }
}


def registered_asr_pipeline():
    """The process-wide "automatic-speech-recognition" pipeline, as a dotted name (transformers 5 stores a string)."""
    impl = PIPELINE_REGISTRY.supported_tasks["automatic-speech-recognition"]["impl"]
    return impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}"


STOCK_ASR_PIPELINE = f"{AutomaticSpeechRecognitionPipeline.__module__}.AutomaticSpeechRecognitionPipeline"


def test_importing_the_module_registers_nothing_globally():
    assert registered_asr_pipeline() == STOCK_ASR_PIPELINE


@pytest.mark.parametrize("save_with", ["register_pipeline_in_config", "pipe.save_pretrained"])
def test_pipeline_factory_picks_our_class_from_a_saved_folder(tmp_path, model, tokenizer, feature_extractor, save_with):
    AutoConfig.register(FakeAsrConfig.model_type, FakeAsrConfig, exist_ok=True)
    AutoModelForSpeechSeq2Seq.register(FakeAsrConfig, FakeAsrModel, exist_ok=True)
    if save_with == "register_pipeline_in_config":
        # The real model's save_pretrained does this; its relative import of pipeline_hubert_gpt makes
        # custom_object_save copy the file (and what it imports), which the fake model has to do by hand.
        register_pipeline_in_config(model.config)
        model.save_pretrained(tmp_path)
        for path in [pipeline_module.__file__, *get_relative_import_files(pipeline_module.__file__)]:
            shutil.copy(path, tmp_path)
        tokenizer.save_pretrained(tmp_path)
        feature_extractor.save_pretrained(tmp_path)
    else:
        HubertGptASRPipeline(
            model=model, tokenizer=tokenizer, feature_extractor=feature_extractor, device="cpu"
        ).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"] == EXPECTED_CUSTOM_PIPELINES
    assert (tmp_path / "pipeline_hubert_gpt.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("automatic-speech-recognition", model=str(tmp_path), device="cpu")
    loaded = pipeline("automatic-speech-recognition", model=str(tmp_path), trust_remote_code=True, device="cpu")
    assert type(loaded).__name__ == "HubertGptASRPipeline"
    assert type(loaded).__module__.startswith("transformers_modules.")  # loaded from the folder, not this checkout
    assert isinstance(loaded.model, FakeAsrModel)
    assert loaded(speech(WORDS), chunk_length_s=3.0) == {"text": text(WORDS)}
    assert registered_asr_pipeline() == STOCK_ASR_PIPELINE  # loading our class from the folder changed nothing
