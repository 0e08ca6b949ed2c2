"""Hotword biasing gated by the CTC head: batched == single with per-row words, words the head cannot hear are never
boosted, no words is plain decoding, ctc_draft=True equals biased greedy, beams, the guards and the pipeline."""

import pytest
import torch
from helpers import make_audio
from test_model import padded_batch, strip

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptASRPipeline, HubertGptForConditionalGeneration
from modeling_hubert_gpt.hotwords_hubert_gpt import DEFAULT_THRESHOLD, HotwordTrie, keyword_scores, token_texts

CHARS = sorted(set("今日は明日私猫が犬東京で駅前先生彼女子供たち本水魚音楽を読みます晴れです"))
WORDS = ["東京で", "先生は", "駅前で"]
BOOST = 6.0  # strong enough to change what the random tiny LLM writes


def build(tokenizer, head=True, seed=0):
    torch.manual_seed(seed)
    extra = {"ctc_head_config": {"vocab": CHARS}} if head else {}
    return HubertGptForConditionalGeneration(tiny_config("conv", tokenizer=tokenizer, **extra)).eval()


def hear_only(model, chars):
    """Make the CTC head hear `chars` in every frame (its weights zeroed, those labels' biases high): the
    posteriors of an utterance holding nothing else."""
    with torch.no_grad():
        model.ctc_head.out.weight.zero_()
        model.ctc_head.out.bias.zero_()
        for c in chars:
            model.ctc_head.out.bias[CHARS.index(c)] = 12.0
    return model


def rows(tokens, pad):
    return [strip(row, pad) for row in tokens]


# --- the pieces ------------------------------------------------------------------------------------------------------
def test_trie_holds_every_tokenization_with_shares(tiny_tokenizer):
    vocabulary = token_texts(tiny_tokenizer)
    whole, first = (vocabulary.texts.index(text) for text in ("東京で", "東"))  # both are tokens of this vocabulary
    trie = HotwordTrie(["東京で"], vocabulary)
    assert trie.starts["東京で"][whole] == ("東京で", 1.0)  # the word as one token: the whole boost
    assert trie.starts["東京で"][first] == ("東", 1 / 3)  # or begun with one character: its share
    continuing = {vocabulary.texts[t]: node for t, (node, _) in trie.edges["東"].items()}
    assert continuing["京"] == "東京"
    assert all(vocabulary.texts[t].strip() and "\ufffd" not in vocabulary.texts[t] for t in trie.starts["東京で"])


def test_keyword_scores_on_constructed_posteriors():
    blank, a, b, c = 3, 0, 1, 2
    labels = [blank, blank, a, a, blank, b, blank, blank, blank, blank]  # "a b" spoken at frames 2-5
    log_probs = torch.full((2, 10, 4), -20.0)
    for t, label in enumerate(labels):
        log_probs[:, t, label] = 0.0
    log_probs[:, 8, blank], log_probs[:, 8, c] = -20.0, 0.0  # "c" at frame 8: said in row 0; row 1 has only 6
    # real frames, so for row 1 it lies in the padding, which must not count
    scores, first = keyword_scores(log_probs.log_softmax(-1), torch.tensor([10, 6]), [[a, b], [c], [b, a]], blank)
    assert scores[:, 0].tolist() == [0.0, 0.0] and first[:, 0].tolist() == [2, 2]  # heard exactly, from frame 2
    assert scores[0, 1] == 0.0 and scores[1, 1] < -19 and first[0, 1] == 8
    assert scores[0, 2] < -9  # "b a": the order matters (one label forced where another is heard: -20 / 2)
    alone = keyword_scores(log_probs.log_softmax(-1), torch.tensor([10, 6]), [[c], [a]], blank)  # one label each
    assert torch.equal(alone[0][:, 0], scores[:, 1]) and torch.equal(alone[1][:, 0], first[:, 1])
    assert alone[0][:, 1].tolist() == [0.0, 0.0] and alone[1][:, 1].tolist() == [2, 2]


# --- generate ----------------------------------------------------------------------------------------------------------
def test_batched_equals_single_with_per_row_hotwords(tiny_tokenizer):
    model = build(tiny_tokenizer)
    values, mask = padded_batch()
    per_row = [WORDS, ["先生は"], WORDS[::-1]]
    pad = model.generation_config.pad_token_id
    plain = rows(model.generate(values, mask), pad)
    out = model.generate(values, mask, hotwords=per_row, hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                         return_dict_in_generate=True)
    batched = rows(out.sequences, pad)
    assert all(out.hotwords_active)  # the random head's flat posteriors support every word
    assert [sorted(active) for active in out.hotwords_active] == [sorted(words) for words in per_row]
    assert all(low <= high for active in out.hotwords_active for low, high in active.values())  # where each may start
    assert batched != plain  # the boost changed transcripts
    for b in range(3):
        n = int(mask[b].sum())
        single = model.generate(values[b : b + 1, :n], hotwords=per_row[b], hotword_boost=BOOST, tokenizer=tiny_tokenizer)
        assert rows(single, pad)[0] == batched[b]
    beams = model.generate(values, mask, hotwords=per_row, hotword_boost=BOOST, tokenizer=tiny_tokenizer, num_beams=2)
    for b in range(3):  # beams: per-utterance bounds decode in groups, each with its rows' words
        n = int(mask[b].sum())
        single = model.generate(values[b : b + 1, :n], hotwords=per_row[b], hotword_boost=BOOST,
                                tokenizer=tiny_tokenizer, num_beams=2)
        assert rows(single, pad)[0] == rows(beams, pad)[b]


def test_a_word_the_head_cannot_hear_is_never_boosted(tiny_tokenizer):
    model = hear_only(build(tiny_tokenizer), "猫が")  # every frame: 猫 or が
    values, mask = padded_batch()
    pad = model.generation_config.pad_token_id
    plain = model.generate(values, mask)
    unheard = ["東京で", "先生は", "駅前で", "ソニー"]  # spellable but absent; ソニー has characters it cannot spell
    gated = model.generate(values, mask, hotwords=unheard, hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                           return_dict_in_generate=True)
    assert gated.sequences.tolist() == plain.tolist()
    assert gated.hotwords_active == [{}, {}, {}]  # the gate says inactive on every row
    for scores in gated.hotword_scores:
        assert all(scores[w] < DEFAULT_THRESHOLD for w in unheard) and scores["ソニー"] == float("-inf")
    ungated = model.generate(values, mask, hotwords=unheard, hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                             hotword_threshold=None)
    assert rows(ungated, pad) != rows(plain, pad)  # the same words without the gate leak in
    heard = model.generate(values, mask, hotwords=["猫が", "東京で"], hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                           return_dict_in_generate=True)
    assert [list(active) for active in heard.hotwords_active] == [["猫が"]] * 3  # only the heard word is active
    assert rows(heard.sequences, pad) != rows(plain, pad)
    single = model.generate(values, mask, hotwords=["猫", "東"], hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                            return_dict_in_generate=True)  # one character each
    assert [list(active) for active in single.hotwords_active] == [["猫"]] * 3


def test_no_hotwords_is_exactly_plain_decoding(tiny_tokenizer):
    model = build(tiny_tokenizer)
    values, mask = padded_batch()
    plain = model.generate(values, mask)
    for empty in ([], [[], [], []], None):
        out = model.generate(values, mask, hotwords=empty, tokenizer=tiny_tokenizer, return_dict_in_generate=True)
        assert out.sequences.tolist() == plain.tolist()
        assert out.hotwords_active is None and out.hotword_scores is None
    some = model.generate(values, mask, hotwords=[[], WORDS, []], hotword_boost=BOOST, tokenizer=tiny_tokenizer)
    assert some[0].tolist()[: plain.shape[1]] == plain[0].tolist() and some[2].tolist()[: plain.shape[1]] == plain[2].tolist()
    zero = model.generate(values, mask, hotwords=WORDS, hotword_boost=0.0, tokenizer=tiny_tokenizer)
    assert zero.tolist() == plain.tolist()


def test_ctc_draft_with_hotwords_equals_biased_greedy(tiny_tokenizer):
    model = build(tiny_tokenizer)
    values, mask = padded_batch()
    options = dict(hotwords=[WORDS, ["先生は"], WORDS], hotword_boost=BOOST, tokenizer=tiny_tokenizer)
    biased = model.generate(values, mask, **options)
    assert biased.tolist() != model.generate(values, mask).tolist()
    assert model.generate(values, mask, ctc_draft=True, **options).tolist() == biased.tolist()
    perfect = [strip(row, model.generation_config.pad_token_id)[:-1] for row in biased]  # drafts of the answer itself
    assert model.generate(values, mask, ctc_draft=True, draft_override=perfect, **options).tolist() == biased.tolist()
    ungated = dict(options, hotword_threshold=None)
    assert model.generate(values, mask, ctc_draft=True, **ungated).tolist() == model.generate(values, mask, **ungated).tolist()


def test_hotwords_compose_with_the_no_speech_guard(tiny_tokenizer):
    model = build(tiny_tokenizer)
    values, mask = padded_batch()
    with torch.no_grad():
        speech = model.encode_speech(values, mask, ctc_head=True)
        blank = speech.ctc_logits.softmax(-1)[..., model.ctc_head.blank_id]
    real = torch.arange(blank.shape[1]) < speech.frame_lengths[:, None]
    mass = ((1 - blank) * real).sum(-1)
    quiet = int(mass.argmin())
    threshold = float((mass.sort().values[0] + mass.sort().values[1]) / 2)  # only the quietest row is below it
    per_row = [WORDS, ["先生は"], ["駅前で"]]
    out = model.generate(values, mask, hotwords=per_row, hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                         no_speech_threshold=threshold)
    pad, eos = model.generation_config.pad_token_id, model.generation_config.eos_token_id
    assert strip(out[quiet], pad) == [eos]
    boosted = []
    for b in set(range(3)) - {quiet}:
        n = int(mask[b].sum())
        single = model.generate(values[b : b + 1, :n], hotwords=per_row[b], hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                                no_speech_threshold=threshold)
        assert strip(single[0], pad) == strip(out[b], pad)
        boosted.append(strip(single[0], pad) != strip(model.generate(values[b : b + 1, :n])[0], pad))
    assert any(boosted)  # the speaking rows' words are at work


def test_a_model_without_a_ctc_head_warns_and_boosts_everywhere(tiny_tokenizer):
    model = build(tiny_tokenizer, head=False)
    values, mask = padded_batch()
    plain = model.generate(values, mask)
    with pytest.warns(UserWarning, match="no CTC head.*may appear in transcripts where they were not said"):
        out = model.generate(values, mask, hotwords=WORDS, hotword_boost=BOOST, tokenizer=tiny_tokenizer,
                             return_dict_in_generate=True)
    assert out.sequences.tolist() != plain.tolist() and out.hotword_scores is None
    assert out.hotwords_active == [dict.fromkeys(WORDS)] * 3  # every word, anywhere
    with pytest.raises(ValueError, match="hotword_threshold gates hotwords with the CTC head"):
        model.generate(values, mask, hotwords=WORDS, tokenizer=tiny_tokenizer, hotword_threshold=-1.0)


def test_hotword_errors(tiny_tokenizer):
    model = build(tiny_tokenizer)
    values, mask = padded_batch()
    with pytest.raises(ValueError, match="need the LLM's tokenizer"):
        model.generate(values, mask, hotwords=WORDS)
    with pytest.raises(ValueError, match="2 lists for 3 utterances"):
        model.generate(values, mask, hotwords=[WORDS, WORDS], tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="non-empty strings"):
        model.generate(values, mask, hotwords=["東京", ""], tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="a list of words or one list"):
        model.generate(values, mask, hotwords="東京", tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="hotword_boost must be a number >= 0"):
        model.generate(values, mask, hotwords=WORDS, tokenizer=tiny_tokenizer, hotword_boost=-1)
    with pytest.raises(ValueError, match="hotword_threshold must be None"):
        model.generate(values, mask, hotwords=WORDS, tokenizer=tiny_tokenizer, hotword_threshold=0.5)
    with pytest.raises(TypeError, match="tokenizer is an option of ctc_draft=True and of hotwords"):
        model.generate(values, mask, tokenizer=tiny_tokenizer)


# --- the pipeline ------------------------------------------------------------------------------------------------------
def test_pipeline_per_input_hotwords_equal_one_at_a_time(tiny_tokenizer, tiny_feature_extractor):
    model = build(tiny_tokenizer)
    asr = HubertGptASRPipeline(model=model, tokenizer=tiny_tokenizer, feature_extractor=tiny_feature_extractor)
    audios = [make_audio(s, seed=i) for i, s in enumerate([0.6, 1.2, 0.9])]
    per_input = [WORDS, ["先生は"], []]
    batched = asr(audios, batch_size=3, hotwords=per_input, hotword_boost=BOOST)
    alone = [asr(a, hotwords=w, hotword_boost=BOOST) for a, w in zip(audios, per_input)]
    assert batched == alone
    assert batched != asr(audios, batch_size=3)  # the words changed something
    assert batched[2] == asr(audios[2])  # no words: plain
    stamped = asr(audios, batch_size=3, hotwords=per_input, hotword_boost=BOOST, return_timestamps="char")
    assert [s["text"] for s in stamped] == [b["text"] for b in batched]
    assert all("".join(c["text"] for c in s["chunks"]) == s["text"] for s in stamped)
    with pytest.raises(ValueError, match="2 lists for 3 inputs"):
        asr(audios, hotwords=[WORDS, WORDS])
