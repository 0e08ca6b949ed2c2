"""Per-chunk confidence: the LLM's token probabilities (teacher forced, equal to what greedy decoding saw) and the CTC
head's posteriors over each character's aligned frames, combined as documented; only the pipeline's char and word
chunks carry it."""

import pytest
import torch
from helpers import make_audio
from test_timestamps import BLANK, char_model

from modeling_hubert_gpt import HubertGptASRPipeline
from modeling_hubert_gpt.alignment_hubert_gpt import align_texts
from modeling_hubert_gpt.confidence_hubert_gpt import char_confidence, char_probabilities, transcript_probabilities
from modeling_hubert_gpt.pipeline_hubert_gpt import join_pieces, join_with_values


def posteriors_with(frames, label_probability=0.64, blank_probability=0.96):
    """Log-posteriors (1, T, C): each frame's label (BLANK included) at the given probability, the rest shared."""
    rows = []
    for label in frames:
        p = blank_probability if label == BLANK else label_probability
        row = torch.full((BLANK + 1,), (1 - p) / BLANK)
        row[label] = p
        rows.append(row)
    return torch.stack(rows).log()[None]


def test_chunk_confidence_is_the_mean_of_its_characters_geometric_means():
    model = char_model()
    frames = [BLANK] * 50
    frames[2:4], frames[5], frames[8], frames[40:42] = [0, 0], 1, 2, [3, 3]  # あ い う え (test_timestamps' layout)
    log_probs, lengths = posteriors_with(frames), torch.tensor([50])
    text = "「あい、う。え!"
    llm = [0.5, 0.25, 0.25, 0.5, 0.25, 0.5, 0.25, None]  # each character's token probability (! none)
    [chunks] = align_texts(model, log_probs, lengths, [text], "char", llm_probabilities=[llm])
    # あいうえ: sqrt(0.25 * 0.64) = 0.4; 「、。: the LLM's 0.5 alone (the head does not spell them); !: nothing
    assert [(c["text"], c["confidence"]) for c in chunks] == [("「あ", 0.45), ("い、", 0.45), ("う。", 0.45), ("え!", 0.4)]
    assert [c["timestamp"] for c in chunks] == [c["timestamp"] for c in align_texts(model, log_probs, lengths, [text])[0]]
    [words] = align_texts(model, log_probs, lengths, ["あい う え"], "word", llm_probabilities=[[0.25, 0.01, None,
                                                                                                   0.25, None, 0.25]])
    assert [(w["text"], w["confidence"]) for w in words] == [("あい", 0.24), ("う", 0.4), ("え", 0.4)]  # (0.4 + 0.08) / 2
    assert all("confidence" not in c for c in align_texts(model, log_probs, lengths, [text], "char")[0])


def test_character_confidence_takes_what_each_reader_has():
    assert char_confidence(0.25, 0.64) == pytest.approx(0.4, abs=1e-15)
    assert (char_confidence(0.3, None), char_confidence(None, 0.7), char_confidence(None, None)) == (0.3, 0.7, None)


def test_token_probabilities_reach_each_character_of_the_decoded_text():
    pieces = {1: "ab", 2: " c", 3: "d"}

    def decode(ids):
        return "".join(pieces[i] for i in ids).strip()

    assert char_probabilities(decode, [1, 2, 3], [0.5, 0.25, 1.0]) == [0.5, 0.5, 0.25, 0.25, 1.0]  # "ab cd"
    assert char_probabilities(decode, [2, 3], [0.5, 0.75]) == [0.5, 0.75]  # "cd": the stripped space takes nothing
    assert char_probabilities(decode, [], []) == []


def test_joined_pieces_carry_their_characters_values():
    texts, values = [" あい", "う ", "", "cat"], [[1, 2, 3], [4, 5], [], [6, 7, 8]]
    assert join_with_values(texts, values) == ("あいう cat", [2, 3, 4, None, 6, 7, 8])
    assert join_with_values(texts, None) == (join_pieces(texts), None) == ("あいう cat", None)


def test_teacher_forced_probabilities_are_what_greedy_decoding_saw(tiny_tokenizer, tiny_feature_extractor):
    model = char_model(tiny_tokenizer)
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.6])]
    features = tiny_feature_extractor(audios, sampling_rate=16000, padding="longest", return_attention_mask=True,
                                      return_tensors="pt")
    out = model.generate(features["input_values"], features["attention_mask"], no_speech_threshold=None,
                         loop_guard=False, max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True,
                         output_logits=True)
    seen = torch.stack(out.logits, 1).float().softmax(-1).gather(-1, out.sequences[..., None])[..., 0]  # (B, 6)
    speech = model.encode_speech(features["input_values"], features["attention_mask"])
    for takes_logits_to_keep in (False, True):
        found = transcript_probabilities(model, speech, [out.sequences[0].tolist(), out.sequences[1, :4].tolist()],
                                         takes_logits_to_keep)
        torch.testing.assert_close(torch.tensor(found[0]), seen[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.tensor(found[1]), seen[1, :4], rtol=1e-5, atol=1e-7)
    assert transcript_probabilities(model, speech, [[], []]) == [[], []]


def test_pipeline_char_and_word_chunks_carry_confidence(tiny_tokenizer, tiny_feature_extractor):
    model = char_model(tiny_tokenizer)
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audio = make_audio(1.0, seed=0)
    for level in ("char", "word"):
        chunks = asr(audio, return_timestamps=level)["chunks"]
        assert chunks and all(0 < c["confidence"] <= 1 for c in chunks)
    assert all(set(c) == {"text", "timestamp"} for c in asr(audio, return_timestamps=True)["chunks"])
    split = asr(audio, return_timestamps="char", split_at_pauses=True)  # pieces joined: values follow the join
    assert all(c["confidence"] is None or 0 < c["confidence"] <= 1 for c in split["chunks"])
