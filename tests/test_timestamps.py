"""Timestamps from the CTC head: exact spans on constructed posteriors, batched == single, global across chunks,
clear errors for models without a CTC head."""

import sys

import numpy as np
import pytest
import torch
from helpers import make_audio
from transformers import Wav2Vec2FeatureExtractor
from test_model import padded_batch

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptASRPipeline, HubertGptForConditionalGeneration
from modeling_hubert_gpt.alignment_hubert_gpt import align_texts, char_frames
from modeling_hubert_gpt.frames_hubert_gpt import chunk_spans, pause_runs, quiet_frames, stitch_posteriors
from modeling_hubert_gpt.pipeline_hubert_gpt import join_pieces
from modeling_hubert_gpt.segments_hubert_gpt import (cut_at_pauses, edges_in_pauses, pause_segments, split_piece,
                                                      stopped_early)

VOCAB = ["あ", "い", "う", "え"]
BLANK = len(VOCAB)


def char_model(tokenizer=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    chars = VOCAB if tokenizer is None else sorted({c for t in tokenizer.get_vocab() for c in t if c not in "▁<>"})
    return HubertGptForConditionalGeneration(
        tiny_config("conv", tokenizer=tokenizer, ctc_head_config={"vocab": chars}, **kwargs)).eval()


def posteriors(frames):
    """Near one-hot log-posteriors (T, C) for the label of each frame."""
    return torch.nn.functional.one_hot(torch.tensor(frames), BLANK + 1).float().mul(20).log_softmax(-1)


def constructed():
    """あ on frames 2-3, い on 5, う on 8, え on 40-41 (a pause before it); 50 frames of 20 ms."""
    frames = [BLANK] * 50
    frames[2:4], frames[5], frames[8], frames[40:42] = [0, 0], 1, 2, [3, 3]
    return posteriors(frames)[None], torch.tensor([50])


def test_char_timestamps_of_constructed_posteriors_with_unspellable_characters_attached():
    model = char_model()
    log_probs, lengths = constructed()
    [chunks] = align_texts(model, log_probs, lengths, ["「あい、う。え!"], "char")
    assert chunks == [
        {"text": "「あ", "timestamp": (0.04, 0.08)},  # leading 「 (not in the head's vocabulary) -> the next character
        {"text": "い、", "timestamp": (0.1, 0.12)},  # 、 -> the previous one
        {"text": "う。", "timestamp": (0.16, 0.18)},
        {"text": "え!", "timestamp": (0.8, 0.84)},
    ]
    assert "".join(c["text"] for c in chunks) == "「あい、う。え!"  # nothing dropped


def test_word_and_segment_timestamps():
    model = char_model()
    log_probs, lengths = constructed()
    [words] = align_texts(model, log_probs, lengths, ["あい う え"], "word")
    assert words == [{"text": "あい", "timestamp": (0.04, 0.12)}, {"text": "う", "timestamp": (0.16, 0.18)},
                     {"text": "え", "timestamp": (0.8, 0.84)}]
    [segments] = align_texts(model, log_probs, lengths, ["あいう、え。"], True)  # 0.44 s pause before え: 2 segments
    assert segments == [{"text": "あいう、", "timestamp": (0.04, 0.18)}, {"text": "え。", "timestamp": (0.8, 0.84)}]


def test_japanese_words_come_from_sudachi_or_a_clear_error(monkeypatch):
    from sudachipy import dictionary

    text = "今日は晴れです"
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("conv", ctc_head_config={"vocab": list(text)})).eval()
    log_probs = torch.randn(1, 30, len(text) + 1).log_softmax(-1)
    [words] = align_texts(model, log_probs, torch.tensor([30]), [text], "word")
    assert [w["text"] for w in words] == [m.surface() for m in dictionary.Dictionary().tokenizer().tokenize(text)]
    assert len(words) == 4
    assert all(a["timestamp"][1] <= b["timestamp"][0] for a, b in zip(words, words[1:]))
    monkeypatch.setitem(sys.modules, "sudachipy", None)
    with pytest.raises(ImportError, match='SudachiPy.*or use return_timestamps="char"'):
        align_texts(model, log_probs, torch.tensor([30]), [text], "word")


def test_more_characters_than_frames_hold_are_attached_to_the_last_placed_one():
    model = char_model()
    frames = char_frames(model.ctc_head, posteriors([0, BLANK, 1, 2])[:4], "あいうえあ")
    assert frames == [(0, 1), (1, 2), (2, 3), (3, 4), None]  # 4 frames hold 4 labels: the 5th is not placed
    [chunks] = align_texts(model, posteriors([0, BLANK, 1, 2])[None], torch.tensor([4]), ["あいうえあ"], "char")
    assert chunks[-1] == {"text": "えあ", "timestamp": (0.06, 0.08)}


def test_model_align_batched_equals_single():
    model = char_model()
    values, mask = padded_batch()
    texts = ["あいう", "えあ、い", "う"]
    batched = model.align(values, mask, texts)
    for b, text in enumerate(texts):
        n = int(mask[b].sum())
        assert model.align(values[b : b + 1, :n], None, [text]) == [batched[b]]
    assert ["".join(c["text"] for c in chunks) for chunks in batched] == texts
    starts = [c["timestamp"][0] for c in batched[0]]
    assert starts == sorted(starts) and batched[0][-1]["timestamp"][1] <= mask[0].sum() / 16000


def test_pipeline_timestamps_batched_equals_single_and_spell_the_text(tiny_tokenizer, tiny_feature_extractor):
    model = char_model(tiny_tokenizer)
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.5, 0.7])]
    for level in ("char", "word", True):
        batched = asr(audios, batch_size=3, return_timestamps=level)
        assert batched == [asr(a, return_timestamps=level) for a in audios]
        assert [o["text"] for o in batched] == [o["text"] for o in asr(audios, batch_size=3)]
    chars = asr(audios, batch_size=3, return_timestamps="char")
    assert all("".join(c["text"] for c in o["chunks"]) == o["text"] for o in chars)
    assert any(o["chunks"] for o in chars)  # the random LLM writes something to align
    draft = asr(audios, batch_size=3, return_timestamps="char", generate_kwargs={"ctc_draft": True})
    assert draft == chars  # speculative decoding: the same text, so the same timestamps


def local_model(tokenizer):
    """A char-head model whose encoder has no attention (out projections zeroed): each frame's posteriors depend on
    nearby audio only, so chunks away from their edges see what the whole audio sees."""
    model = char_model(tokenizer)
    with torch.no_grad():
        for layer in model.audio_tower.model.encoder.layers:
            layer.attention.out_proj.weight.zero_()
            layer.attention.out_proj.bias.zero_()
    return model


def test_stitched_chunk_posteriors_equal_the_whole_audio_away_from_chunk_edges(tiny_tokenizer):
    model = local_model(tiny_tokenizer)
    audio = torch.from_numpy(make_audio(6.0, seed=3))
    whole = model.ctc_posteriors(audio[None]).log_probs[0]  # (T, C)
    spans = chunk_spans(len(audio), 32000, 16000, multiple=320)
    parts = [(start, len(audio), model.ctc_posteriors(audio[None, start:end]).log_probs[0]) for start, end in spans]
    stitched = stitch_posteriors(parts, 320)
    assert stitched.shape == whole.shape
    torch.testing.assert_close(stitched, whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("do_normalize", [False, True])  # True: the embedded default's extractor
def test_chunked_pipeline_timestamps_are_global_monotonic_and_match_the_unchunked_run(tiny_tokenizer, do_normalize):
    model = local_model(tiny_tokenizer)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=do_normalize, return_attention_mask=True)
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=extractor)
    audio = make_audio(6.0, seed=3) * 0.05  # a quiet recording: normalising changes what the head hears
    chunked = asr(audio, chunk_length_s=2.0, stride_length_s=0.5, return_timestamps="char")
    starts = [c["timestamp"][0] for c in chunked["chunks"] if c["timestamp"][0] is not None]
    ends = [c["timestamp"][1] for c in chunked["chunks"] if c["timestamp"][1] is not None]
    assert starts == sorted(starts) and ends == sorted(ends) and ends[-1] <= 6.0
    assert starts[-1] > 2.0  # times of later chunks carry their offset
    values = extractor(audio, sampling_rate=16000, return_tensors="pt")["input_values"]  # (1, S)
    [unchunked] = model.align(values, transcripts=[chunked["text"]], tokenizer=tiny_tokenizer)
    assert [c["text"] for c in unchunked] == [c["text"] for c in chunked["chunks"]]
    for a, b in zip(unchunked, chunked["chunks"]):  # within one encoder frame (20 ms)
        assert abs(a["timestamp"][0] - b["timestamp"][0]) < 0.021 and abs(a["timestamp"][1] - b["timestamp"][1]) < 0.021


def test_models_without_a_ctc_head_get_clear_errors(tiny_tokenizer, tiny_feature_extractor):
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config("conv", tokenizer=tiny_tokenizer)).eval()
    values, mask = padded_batch()
    with pytest.raises(ValueError, match="come from the CTC head, and this model has none.*bridge_type='ctc'"):
        model.align(values, mask, ["a", "b", "c"])
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    with pytest.raises(ValueError, match="come from the CTC head, and this model has none"):
        asr(make_audio(1.0, seed=0), return_timestamps="char")
    with pytest.raises(ValueError, match="split_at_pauses reads pauses from the CTC head, and this model has none"):
        asr(make_audio(1.0, seed=0), split_at_pauses=True)
    with pytest.raises(ValueError, match="read the CTC head, and this model has none"):
        model.generate(values, mask, no_speech_threshold=1.0)
    with pytest.raises(ValueError, match="read the CTC head"):
        model.generate(values, mask, loop_guard=True)
    assert model.generate(values, mask, no_speech_threshold=None, loop_guard=False).shape[0] == 3  # "off" is fine
    with pytest.raises(ValueError, match='"char", "word" or True'):
        char_model(tiny_tokenizer).align(values, mask, ["a", "b", "c"], level="segment")


def test_pauses_are_cut_only_where_the_head_says_blank_and_the_audio_is_quiet():
    """A peaky head says blank for 0.4 s inside loud speech (frames 10-30) and in a silent gap (frames 50-70): only the
    gap is a pause. Frames of 20 ms (320 samples)."""
    frames = [BLANK] * 100
    frames[5], frames[31], frames[45], frames[75], frames[95] = 0, 1, 2, 3, 0
    log_probs = posteriors(frames)  # (100, 5)
    loud = torch.from_numpy(make_audio(2.0, seed=1))  # 100 frames of sound
    audio = loud.clone()
    audio[50 * 320 : 70 * 320] = 1e-4 * torch.randn(20 * 320, generator=torch.Generator().manual_seed(0))
    quiet = quiet_frames(audio, 320, 100)
    assert quiet[50:70].all() and quiet[:50].float().mean() < 0.3 and quiet[70:].float().mean() < 0.3
    assert pause_segments(log_probs, BLANK, 100, 0.02, quiet) == [(0, 60), (60, 100)]
    assert pause_segments(log_probs, BLANK, 100, 0.02) == [(0, 18), (18, 60), (60, 85), (85, 100)]  # blank alone: mid-word
    assert quiet_frames(audio * 1000, 320, 100).tolist() == quiet.tolist()  # any recording level
    short = quiet_frames(audio[:1000], 320, 5)  # 3 whole frames of 320 samples; frames past the samples: quiet
    assert short.shape == (5,) and short[3:].tolist() == [True, True]
    assert not quiet_frames(audio[:100], 320, 2).any()  # no whole frame: nothing to call quiet or loud


def test_labels_are_widened_over_their_sound_up_to_their_neighbours_and_the_pauses():
    model = char_model()
    log_probs, lengths = constructed()  # spikes: あ 2-3, い 5, う 8, え 40-41
    quiet = torch.zeros(1, 50, dtype=torch.bool)
    quiet[0, :2] = quiet[0, 10:38] = quiet[0, 43:] = True  # sound on frames 2-9 and 38-42
    [chunks] = align_texts(model, log_probs, lengths, ["あいうえ"], "char", quiet=quiet)
    assert [c["timestamp"] for c in chunks] == [(0.04, 0.1), (0.1, 0.16), (0.16, 0.2), (0.76, 0.86)]
    [plain] = align_texts(model, log_probs, lengths, ["あいうえ"], "char")
    assert [c["timestamp"] for c in plain] == [(0.04, 0.08), (0.1, 0.12), (0.16, 0.18), (0.8, 0.84)]  # spikes only
    quiet[0, 7:10] = True  # う's spike (8) in a pause: moved onto the last sound after い's spike (frame 6)
    quiet[0, 38:41] = True  # え's spike (40-41) half in a pause: kept (a spike that touches sound is on its sound)
    [chunks] = align_texts(model, log_probs, lengths, ["あいうえ"], "char", quiet=quiet)
    assert [c["timestamp"] for c in chunks] == [(0.04, 0.1), (0.1, 0.12), (0.12, 0.14), (0.8, 0.86)]


def test_no_cut_leaves_a_piece_without_speech():
    """Pauses before the first label and after the last one are not cut, even where the head fires a label in the
    silence at the input's end (frame 99, quiet)."""
    frames = [BLANK] * 100
    frames[30], frames[60], frames[99] = 0, 1, 2
    quiet = torch.ones(100, dtype=torch.bool)
    quiet[25:35] = quiet[55:65] = False
    assert pause_segments(posteriors(frames), BLANK, 100, 0.02, quiet) == [(0, 45), (45, 100)]
    assert pause_segments(posteriors([BLANK] * 100), BLANK, 100, 0.02, quiet) == [(0, 100)]  # no speech: no cut


def hearing_sound(model, labels=(0,)):
    """`model` with a CTC head made to hear a label on every sounding frame and blank on every quiet one (its logits
    replaced, in `ctc_posteriors` and `encode_speech` alike). Labels cycle through `labels`: with two or more, every
    sounding frame is a label of its own in the greedy hypothesis (20 ms frames: 50 labels a second)."""
    real_posteriors, real_encode = model.ctc_posteriors, model.encode_speech

    def logits(values, attention_mask, frames):  # (B, S) -> (B, T, C) one-hot logits over each row's own samples
        lengths = [values.shape[1]] * len(values) if attention_mask is None else attention_mask.sum(-1).tolist()
        rows = []
        for row, n in zip(values, lengths):
            still = quiet_frames(row[: int(n)], 320, frames)
            cycle = torch.tensor(labels)[torch.arange(frames) % len(labels)]
            rows.append(torch.where(still, torch.tensor(model.ctc_head.blank_id), cycle))
        return torch.nn.functional.one_hot(torch.stack(rows), model.ctc_head.num_labels).float().mul(20)

    def posteriors(values, attention_mask=None):
        out = real_posteriors(values, attention_mask)
        return out._replace(log_probs=logits(values, attention_mask, out.log_probs.shape[1]).log_softmax(-1))

    def encode_speech(values, attention_mask=None, **kwargs):
        out = real_encode(values, attention_mask, **kwargs)
        if out.ctc_logits is None:
            return out
        return out._replace(ctc_logits=logits(values, attention_mask, out.ctc_logits.shape[1]))

    model.ctc_posteriors, model.encode_speech = posteriors, encode_speech
    return model


def test_split_at_pauses_transcribes_the_speech_between_pauses_piece_by_piece(tiny_tokenizer, tiny_feature_extractor):
    """Two stretches of sound 0.8 s apart; a head made to hear a label on every sounding frame (its posteriors
    replaced: blank where the audio is quiet). split_at_pauses=True cuts in the silence and transcribes each piece on
    its own; without it the input is one piece. Batched == single either way."""
    model = hearing_sound(char_model(tiny_tokenizer))
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    unguarded = dict(no_speech_threshold=None, loop_guard=False)
    sound = [make_audio(1.5, seed=5), make_audio(1.2, seed=6)]
    audio = np.concatenate([sound[0], np.zeros(12800, np.float32), sound[1]])  # the gap: samples 24000-36800
    spans, _, _ = cut_at_pauses(model, tiny_feature_extractor, audio, len(audio) + 320, 320)
    [(start, end), (next_start, next_end)] = spans  # each keeps 0.3 s (15 frames) of the 0.8 s pause
    assert start == 0 and next_end == len(audio) and 24000 <= end <= 24000 + 16 * 320
    assert 36800 - 16 * 320 <= next_start <= 36800
    pieces = [audio[start:end], audio[next_start:next_end]]
    features = tiny_feature_extractor(pieces, sampling_rate=16000, padding="longest", return_tensors="pt")
    ids = model.generate(features["input_values"], features["attention_mask"], **unguarded)
    ends = (model.generation_config.eos_token_id, model.generation_config.pad_token_id)
    expected = join_pieces(tiny_tokenizer.decode([t for t in row if t not in ends], skip_special_tokens=True)
                           for row in ids.tolist())
    split = asr(audio, split_at_pauses=True, **unguarded)
    assert split["text"] == expected
    assert asr(audio, **unguarded)["text"] == asr(audio, split_at_pauses=False, **unguarded)["text"]
    other = make_audio(2.0, seed=7)
    assert asr([audio, other], batch_size=2, split_at_pauses=True, **unguarded) == [
        split, asr(other, split_at_pauses=True, **unguarded)]


def test_pieces_join_with_a_space_except_between_scripts_written_without_one():
    assert join_pieces(["今日は晴れ", " 明日は雨", "", "OK.", "Then we go", "東京へ"]) == "今日は晴れ明日は雨 OK. Then we go 東京へ"
    assert join_pieces(["", " "]) == ""


def test_pieces_keep_a_margin_of_the_pauses_at_their_cuts_within_the_longest_piece():
    runs = pause_runs([False] * 10 + [True] * 10 + [False] * 10)  # frames of 100 samples; a pause on frames 10-19
    assert edges_in_pauses(0, 1500, runs, 100, 3000, 3000, 3) == (0, 1300)  # 3 frames of pause kept
    assert edges_in_pauses(1500, 3000, runs, 100, 3000, 3000, 3) == (1700, 3000)
    assert edges_in_pauses(1500, 3000, runs, 100, 3000, 3000, 8) == (1200, 3000)  # a short pause: shared
    assert edges_in_pauses(1500, 3000, runs, 100, 1700, 3000, 8) == (1500, 3000)  # longer than 1700: kept
    assert edges_in_pauses(0, 3000, runs, 100, 3000, 3000, 3) == (0, 3000)  # the input's ends stay


def test_a_transcript_that_stops_early_is_split_at_its_longest_inner_pause():
    """frames of 20 ms; labels on 5-19, 30-44 and 52-79: inner pauses 20-29 (0.2 s) and 45-51 (0.14 s)."""
    frames = [BLANK] * 90
    for a, b in ((5, 20), (30, 45), (52, 80)):
        frames[a:b] = [k % 2 for k in range(a, b)]
    log_probs, quiet = posteriors(frames), torch.tensor([f == BLANK for f in frames])
    # cut at frame 25; a pause shorter than two 0.3 s margins is shared by both parts
    assert split_piece(log_probs, BLANK, quiet, 320, 0.02, 90 * 320, 1600) == [(0, 30 * 320), (20 * 320, 90 * 320)]
    assert split_piece(log_probs, BLANK, quiet, 320, 0.02, 90 * 320, 26 * 320) is None  # a part would be too short
    frames[20:30] = [0] * 10  # one stretch 5-44 now: the 0.14 s pause is the one left
    log_probs = posteriors(frames)
    quiet[20:30] = False
    assert split_piece(log_probs, BLANK, quiet, 320, 0.02, 90 * 320, 1600) == [(0, 52 * 320), (45 * 320, 90 * 320)]
    frames[45:52] = [0] * 4 + [BLANK] * 3  # 0.06 s: shorter than INNER_PAUSE_SECONDS
    quiet[45:49] = False
    assert split_piece(posteriors(frames), BLANK, quiet, 320, 0.02, 90 * 320, 1600) is None
    assert [stopped_early(w, 10) for w in (5, 6)] == [True, False]  # 0.8 n - 2 = 6
    assert not stopped_early(0, 2)  # a word or two heard: never split


def test_early_stop_split_transcribes_the_parts_of_an_input_the_llm_stopped_early_on(tiny_tokenizer,
                                                                                     tiny_feature_extractor):
    """Two stretches of sound 0.8 s apart that the head hears as ~135 labels, and an LLM allowed 4 tokens: it stops
    early, so the input is cut in its pause, as split_at_pauses cuts it, and each part transcribed; off, one piece.
    Batched == single; timestamps cover the joined text."""
    model = hearing_sound(char_model(tiny_tokenizer), labels=(0, 1))
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    options = dict(no_speech_threshold=None, loop_guard=False, max_new_tokens=4)
    audio = np.concatenate([make_audio(1.5, seed=5), np.zeros(12800, np.float32), make_audio(1.2, seed=6)])
    values = tiny_feature_extractor(audio, sampling_rate=16000, return_tensors="pt")["input_values"]
    whole = model.ctc_posteriors(values).log_probs[0]
    quiet = quiet_frames(values[0], 320, len(whole))
    parts = split_piece(whole, model.ctc_head.blank_id, quiet, 320, 0.02, len(audio), model.min_input_samples)
    assert parts == cut_at_pauses(model, tiny_feature_extractor, audio, len(audio) + 320, 320)[0]
    split = asr(audio, split_at_pauses=True, early_stop_split=False, **options)
    assert asr(audio, **options) == split  # on by default with a CTC head
    one_piece = asr(audio, early_stop_split=False, **options)
    assert one_piece["text"] != split["text"]  # two parts of up to 4 tokens each, not one of 4
    features = tiny_feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    ids = model.generate(features["input_values"], **options)[0].tolist()
    assert one_piece["text"] == tiny_tokenizer.decode([t for t in ids if t != model.generation_config.pad_token_id],
                                                      skip_special_tokens=True)
    other = make_audio(2.0, seed=7)
    assert asr([other, audio], batch_size=2, **options) == [asr(other, **options), split]
    stamped = asr(audio, return_timestamps="char", **options)
    assert stamped["text"] == split["text"] and "".join(c["text"] for c in stamped["chunks"]) == split["text"]
    starts = [c["timestamp"][0] for c in stamped["chunks"]]
    assert starts == sorted(starts)
    asks = {"early_stop_split": True}
    plain = HubertGptASRPipeline(model=HubertGptForConditionalGeneration(tiny_config("conv")).eval(),
                                 tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    with pytest.raises(ValueError, match="early_stop_split compares the transcript with the CTC head, and this model has none"):
        plain(audio, **asks)
