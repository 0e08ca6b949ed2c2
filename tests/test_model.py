"""The model: batched == single, cached == uncached, bridges, losses, gradients, bad input."""

import pytest
import torch
from helpers import CollectStreamer
from transformers import GPTNeoXConfig, HubertModel, T5Config

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration
from modeling_hubert_gpt.audio_encoder_hubert_gpt import length_groups

LENGTHS = [16000, 9000, 5000]


def build(seed=0, max_padding=0.1, **kwargs):
    torch.manual_seed(seed)
    model = HubertGptForConditionalGeneration(tiny_config(**kwargs)).eval()
    model.audio_tower.max_padding = max_padding
    return model


def padded_batch(lengths=LENGTHS, seed=0):
    """Noise bursts of the given lengths, right-padded with zeros: input_values (B, S), attention_mask (B, S)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        values[i, :n] = 0.1 * torch.randn(n, generator=generator)
        mask[i, :n] = 1
    return values, mask


def strip(row, pad_id):
    row = row.tolist()
    while row and row[-1] == pad_id:
        row.pop()
    return row


VARIANTS = [
    dict(bridge_type="conv", feat_extract_norm="layer"),
    dict(bridge_type="conv", feat_extract_norm="group"),
    dict(bridge_type="ctc", feat_extract_norm="layer"),
    dict(bridge_type="ctc", feat_extract_norm="group"),
    dict(bridge_type="conv", feat_extract_norm="group", audio_model_type="wavlm", text_model_type="llama"),
    dict(bridge_type="ctc", feat_extract_norm="layer", audio_model_type="wavlm", text_model_type="llama"),
    dict(bridge_type="conv", feat_extract_norm="group", audio_frontend="log_mel"),
    dict(bridge_type="ctc", feat_extract_norm="layer", audio_frontend="log_mel"),
    dict(bridge_type="conv", feat_extract_norm="layer", audio_frontend="log_mel", hop=640),
    dict(bridge_type="ctc", feat_extract_norm="group", hop=640),
]


@pytest.mark.parametrize("max_padding", [None, 0.1], ids=["one-encoder-call", "length-groups"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_batched_generate_equals_single(variant, max_padding):
    # None: the whole padded batch through the encoder at once (masks, group norm); 0.1: the CPU default, where
    # these lengths are encoded one group each and only the bridge and the LLM see a padded batch.
    model = build(max_padding=max_padding, **variant)
    lengths = [max(n, model.min_input_samples) for n in LENGTHS]  # 25 Hz + conv bridge: 5000 samples are too few
    values, mask = padded_batch(lengths)
    batched = model.generate(values, mask)
    pad = model.generation_config.pad_token_id
    for i, n in enumerate(lengths):
        single = model.generate(values[i : i + 1, :n])
        assert strip(batched[i], pad) == strip(single[0], pad)
        # The speech prompt itself is the same, not just the argmax.
        speech_b = model.encode_speech(values, mask)
        speech_s = model.encode_speech(values[i : i + 1, :n])
        assert speech_b.lengths[i] == speech_s.lengths[0]
        torch.testing.assert_close(
            speech_b.embeds[i, : speech_b.lengths[i]], speech_s.embeds[0, : speech_s.lengths[0]], atol=1e-5, rtol=1e-4
        )


def test_log_mel_front_end_replaces_the_conv_stack_and_counts_frames_as_it(tmp_path):
    model = build(audio_frontend="log_mel")
    conv_model = build()
    names = {name for name, _ in model.audio_tower.model.named_parameters()}
    assert not any(name.startswith("feature_extractor.conv_layers") for name in names)
    assert {"feature_extractor.proj.weight", "feature_extractor.norm.weight"} <= names
    for n in (400, 719, 720, 16000, 16321):  # around the frame boundaries (400-sample window, 320-sample hop)
        values = 0.1 * torch.randn(1, n)
        expected = int(model.encoder_output_lengths(torch.tensor([n]))[0])
        with torch.no_grad():
            assert model.audio_tower.model(values).last_hidden_state.shape[1] == expected
            assert conv_model.audio_tower.model(values).last_hidden_state.shape[1] == expected
    model.save_pretrained(tmp_path)
    loaded = HubertGptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.audio_frontend == "log_mel"
    values, mask = padded_batch()
    torch.testing.assert_close(loaded.generate(values, mask), model.generate(values, mask), rtol=0, atol=0)


@pytest.mark.parametrize("frontend", ["conv", "log_mel"])
def test_hop_640_halves_the_frame_rate(frontend):
    """hop=640: one more stride-2 layer (kernel 2) before the transformer: 25 Hz frames, each one the two 50 Hz
    frames it covers would have been."""
    fast, slow = build(audio_frontend=frontend), build(audio_frontend=frontend, hop=640)
    assert slow.config.audio_config.num_feat_extract_layers == 8
    for n in (720, 1039, 1040, 16000, 32000):  # 720-sample window, 640-sample hop
        values = 0.1 * torch.randn(1, n)
        expected = (n - 720) // 640 + 1
        assert int(slow.encoder_output_lengths(torch.tensor([n]))[0]) == expected
        assert int(fast.encoder_output_lengths(torch.tensor([n]))[0]) // 2 == expected
        with torch.no_grad():
            assert slow.audio_tower.model(values).last_hidden_state.shape[1] == expected
    with pytest.raises(ValueError, match="hop must be 320 .* or 640"):
        tiny_config(hop=480)


@pytest.mark.parametrize("hop", [320, 640])
def test_log_mel_stack_keeps_frames_and_padding_and_loads(tmp_path, hop):
    """log_mel_stack=4: four 25 ms windows per encoder frame, stacked; frames counted as the conv stack counts
    them, a padded utterance gets exactly its features alone, and the setting survives save / load."""
    model = build(audio_frontend="log_mel", log_mel_stack=4, hop=hop)
    front = model.audio_tower.model.feature_extractor
    assert (front.window, front.sub_hop, front.proj.in_channels) == (400, hop // 4, 4 * model.config.log_mel_bins)
    for n in (720, 1039, 1040, 16000, 16321):
        values = 0.1 * torch.randn(1, n)
        with torch.no_grad():
            assert model.audio_tower.model(values).last_hidden_state.shape[1] == int(
                model.encoder_output_lengths(torch.tensor([n]))[0])
    lengths = [n * hop // 320 for n in LENGTHS]  # long enough for a whole speech prompt at either rate
    values, mask = padded_batch(lengths)
    with torch.no_grad():
        batched = front(values)
        for i, n in enumerate(lengths):
            alone = front(values[i : i + 1, :n])
            torch.testing.assert_close(batched[i : i + 1, :, : alone.shape[-1]], alone, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = HubertGptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.log_mel_stack == 4
    torch.testing.assert_close(loaded.generate(values, mask), model.generate(values, mask), rtol=0, atol=0)


def test_log_mel_stack_sees_time_inside_a_frame():
    """One window per frame cannot tell a click early in the frame from one late in it; four stacked windows can."""
    features = {}
    for stack in (1, 4):
        front = build(audio_frontend="log_mel", log_mel_stack=stack).audio_tower.model.feature_extractor
        features[stack] = []
        for offset in (1116, 1276):  # mirror images inside frame 3's window (its 400 samples sit at 1016-1416 of
            # the 512-sample STFT frame from 960), outside frames 2 and 4
            values = torch.zeros(1, 3200)
            values[0, offset : offset + 40] = 1.0
            with torch.no_grad():
                features[stack].append(front(values)[0, :, 3])
    assert (features[1][0] - features[1][1]).abs().max() < 0.01  # a Hann window is (all but) symmetric
    assert (features[4][0] - features[4][1]).abs().max() > 0.5


def test_log_mel_front_end_errors():
    with pytest.raises(ValueError, match="audio_frontend must be one of"):
        tiny_config(audio_frontend="mfcc")
    with pytest.raises(ValueError, match=r"log_mel_stack must be a whole divisor of the encoder's hop \(320 samples\), got 3"):
        HubertGptForConditionalGeneration(tiny_config(audio_frontend="log_mel", log_mel_stack=3))
    encoder = HubertModel(tiny_config().audio_config)
    with pytest.raises(ValueError, match="replaces the encoder's conv stack"):
        HubertGptForConditionalGeneration(tiny_config(audio_frontend="log_mel"), audio_tower=encoder)


def test_group_norm_padding_is_handled_and_would_matter():
    """A 'group' encoder run naively on a padded batch changes the short utterance; ours does not."""
    model = build(feat_extract_norm="group", max_padding=None)  # as on an accelerator: no CPU length groups
    values, mask = padded_batch()
    naive = HubertModel(model.config.audio_config).eval()
    naive.load_state_dict(model.audio_tower.model.state_dict())
    n = LENGTHS[2]
    frames = int(model.encoder_output_lengths(torch.tensor([n]))[0])
    with torch.no_grad():
        alone = naive(values[2:3, :n]).last_hidden_state[0, :frames]
        in_batch = naive(values, attention_mask=mask).last_hidden_state[2, :frames]
        speech_b = model.encode_speech(values, mask)
        speech_s = model.encode_speech(values[2:3, :n])
    assert (alone - in_batch).abs().max() > 1e-2  # the naive batch is measurably wrong
    torch.testing.assert_close(speech_b.embeds[2, : speech_b.lengths[2]], speech_s.embeds[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("feat_extract_norm", ["layer", "group"])
def test_cpu_batch_is_encoded_in_length_groups(feat_extract_norm):
    """audio_tower.max_padding: the encoder sees length-sorted groups with little padding; the speech prompts,
    the transcripts and the gradients are those of the whole padded batch encoded at once. A group-norm encoder
    never sees padding: its groups hold equal lengths only, with or without max_padding."""
    lengths = [9000, 16000, 5000, 15500, 8800]
    grouped = build(feat_extract_norm=feat_extract_norm)
    whole = build(feat_extract_norm=feat_extract_norm, max_padding=None)
    torch.manual_seed(0)
    assert HubertGptForConditionalGeneration(tiny_config()).audio_tower.max_padding == 0.1  # the default
    values, mask = padded_batch(lengths)
    seen = {}
    for name, model in (("grouped", grouped), ("whole", whole)):
        calls = seen.setdefault(name, [])
        hook = model.audio_tower.model.register_forward_pre_hook(lambda module, args, calls=calls: calls.append(tuple(args[0].shape)))
        speech = model.encode_speech(values, mask)
        hook.remove()
        speech_g, speech_w = (speech, None) if name == "grouped" else (speech_g, speech)
    if feat_extract_norm == "layer":
        assert seen["grouped"] == [(2, 16000), (2, 9000), (1, 5000)]  # longest first: [16000, 15500], [9000, 8800], [5000]
        assert seen["whole"] == [(5, 16000)]
    else:
        assert seen["grouped"] == seen["whole"] == [(1, n) for n in sorted(lengths, reverse=True)]
    torch.testing.assert_close(speech_g.lengths, speech_w.lengths, rtol=0, atol=0)
    for i in range(len(lengths)):
        n = speech_g.lengths[i]
        torch.testing.assert_close(speech_g.embeds[i, :n], speech_w.embeds[i, :n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grouped.generate(values, mask), whole.generate(values, mask), rtol=0, atol=0)
    labels = torch.tensor([[5, 6, 2], [7, 2, -100], [8, 9, 2], [5, 2, -100], [6, 6, 2]])
    for model in (grouped, whole):  # eval mode: no dropout or SpecAugment draws to differ
        model(values, mask, labels=labels).loss.backward()
    for (name, g), w in zip(grouped.named_parameters(), whole.parameters()):
        if g.grad is not None or w.grad is not None:
            torch.testing.assert_close(g.grad, w.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_length_groups():
    assert length_groups([10, 9, 1, 5, 5, 10, 4], 0.1) == [[0, 5, 1], [3, 4, 6], [2]]
    assert length_groups([3, 3, 3], 0.0) == [[0, 1, 2]]
    assert length_groups([5, 1], 0.3) == [[0], [1]]  # 5 + 1 = 6 real of 10 padded: 40% padding
    assert length_groups([5, 1], 0.4) == [[0, 1]]
    assert length_groups([5, 4], 0.2) == [[0, 1]]
    with pytest.raises(ValueError, match="max_padding must be None or a share"):
        build().audio_tower.max_padding = 1.5


@pytest.mark.parametrize("bridge_type", ["conv", "ctc"])
def test_cached_equals_uncached(bridge_type):
    model = build(bridge_type=bridge_type)
    values, mask = padded_batch()
    torch.testing.assert_close(model.generate(values, mask), model.generate(values, mask, use_cache=False), rtol=0, atol=0)


def test_beam_search_batched_equals_single_and_sampling_is_seeded():
    model = build()
    values, mask = padded_batch()
    pad = model.generation_config.pad_token_id
    beams = model.generate(values, mask, num_beams=3, max_new_tokens=6)
    for i, n in enumerate(LENGTHS):
        single = model.generate(values[i : i + 1, :n], num_beams=3, max_new_tokens=6)
        assert strip(beams[i], pad) == strip(single[0], pad)
    torch.manual_seed(1)
    first = model.generate(values, mask, do_sample=True, top_k=5, max_new_tokens=6)
    torch.manual_seed(1)
    second = model.generate(values, mask, do_sample=True, top_k=5, max_new_tokens=6)
    assert first.shape == (3, 6) and torch.equal(first, second)


def test_beam_search_keeps_per_utterance_bounds_batched_equals_single():
    """Without max_new_tokens each utterance has its own bound, for beams too: rows that share a bound are decoded
    together with exactly that bound, so the batch gives each utterance its single-run tokens."""
    model = build()
    model.generation_config.eos_token_id = None  # every row runs to its bound
    values, mask = padded_batch()
    bounds = model.max_new_tokens_for(torch.tensor(LENGTHS)).tolist()
    assert bounds == [24, 22, 21]
    beams = model.generate(values, mask, num_beams=2)
    pad = model.generation_config.pad_token_id
    assert beams.shape == (3, 24)
    for i, n in enumerate(LENGTHS):
        single = model.generate(values[i : i + 1, :n], num_beams=2)
        assert single.shape[1] == bounds[i]
        assert beams[i, : bounds[i]].tolist() == single[0].tolist() and (beams[i, bounds[i] :] == pad).all()
    with pytest.raises(ValueError, match="pass max_new_tokens"):
        model.generate(values, mask, num_beams=2, return_dict_in_generate=True)


def test_streamer_sees_exactly_the_generated_tokens():
    model = build()
    values, _ = padded_batch([16000])
    streamer = CollectStreamer()
    out = model.generate(values, streamer=streamer)
    assert streamer.ended and streamer.tokens == out[0].tolist()


def test_new_token_bound_grows_with_audio():
    model = build()
    # Forbid eos so every utterance runs to its bound: int(4 * seconds + 20 + 0.5).
    model.generation_config.eos_token_id = None
    values, mask = padded_batch([32000, 16000, 4000])
    out = model.generate(values, mask)
    pad = model.generation_config.pad_token_id
    lengths = [len(strip(row, pad)) for row in out]
    assert out.shape[1] == 28
    assert model.max_new_tokens_for(torch.tensor([32000, 16000, 4000])).tolist() == [28, 24, 21]
    # A row may end on a pad-id token by chance, so compare upper bounds and the longest exactly.
    assert lengths[0] <= 28 and lengths[1] <= 24 and lengths[2] <= 21
    assert (out[1, 24:] == pad).all() and (out[2, 21:] == pad).all()
    assert model.generate(values, mask, max_new_tokens=5).shape[1] == 5


def test_ctc_bridge_drops_blanks_and_merges_repeats():
    config = tiny_config(bridge_type="ctc", vocab_size=31)  # 32 CTC labels == encoder width: an identity head
    model = HubertGptForConditionalGeneration(config).eval()
    bridge, head = model.bridge, model.ctc_head
    with torch.no_grad():
        head.out.weight.copy_(torch.eye(32))
        head.out.bias.zero_()
        bridge.proj.weight.copy_(torch.eye(32))
        bridge.proj.bias.zero_()
    blank = head.blank_id
    assert blank == 31 == config.ctc_head_config["blank_id"] and bridge.merge_repeats
    frame_labels = [blank, 5, 5, blank, 5, 7, 7, 7, blank]
    hidden = torch.nn.functional.one_hot(torch.tensor(frame_labels), 32).float()[None] * torch.arange(1, 10.0)[None, :, None]
    frames = torch.tensor([9])
    logits = head(hidden, frames)
    out, lengths = bridge(hidden, frames, ctc_logits=logits)
    assert lengths.tolist() == [3] and logits.shape == (1, 9, 32)
    expected = torch.stack([hidden[0, 1:3].mean(0), hidden[0, 4], hidden[0, 5:8].mean(0)])
    torch.testing.assert_close(out[0], expected)
    with pytest.raises(ValueError, match="picks frames with the CTC head's logits"):
        bridge(hidden, frames)
    bridge.merge_repeats = False
    out, lengths = bridge(hidden, frames, ctc_logits=logits)
    assert lengths.tolist() == [6]
    torch.testing.assert_close(out[0], hidden[0, [1, 2, 4, 5, 6, 7]])


def test_ctc_bridge_all_blank_keeps_one_frame(caplog):
    model = build(bridge_type="ctc")
    with torch.no_grad():
        model.ctc_head.out.bias[model.ctc_head.blank_id] = 1e4
    values, mask = padded_batch()
    speech = model.encode_speech(values, mask)
    assert speech.lengths.tolist() == [1, 1, 1]
    assert model.generate(values, mask).shape[0] == 3
    assert "predicted blank" in caplog.text


@pytest.mark.parametrize("bridge_type", ["conv", "ctc"])
def test_loss_covers_transcript_tokens_only(bridge_type):
    model = build(bridge_type=bridge_type)
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])
    out = model(values, mask, labels=labels, ctc_loss_weight=0.5)
    speech = model.encode_speech(values, mask)
    # Recompute the LLM loss by hand from the logits: positions right before each transcript token.
    losses = []
    for i in range(3):
        start = 1 + int(speech.lengths[i])  # the [sep] position predicts the first transcript token
        text = labels[i][labels[i] != -100]
        logits = out.logits[i, start : start + len(text)]
        losses.append(torch.nn.functional.cross_entropy(logits, text, reduction="sum"))
    manual = torch.stack(losses).sum() / (labels != -100).sum()
    torch.testing.assert_close(out.llm_loss, manual)
    if bridge_type == "ctc":
        torch.testing.assert_close(out.loss, out.llm_loss + 0.5 * out.ctc_loss)
        default = model(values, mask, labels=labels)  # the CTC loss weight without a training setting: 0.3
        torch.testing.assert_close(default.loss, default.llm_loss + 0.3 * default.ctc_loss)
    else:
        assert out.ctc_loss is None and out.loss is out.llm_loss


def test_conv_bridge_ctc_head_adds_its_loss_and_leaves_the_prompt_alone():
    plain = build(bridge_type="conv")
    headed = build(bridge_type="conv", ctc_head_config={})
    assert plain.ctc_head is None
    result = headed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["ctc_head.out.bias", "ctc_head.out.weight"]
    assert not result.unexpected_keys
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])
    out, reference = headed(values, mask, labels=labels, ctc_loss_weight=0.5), plain(values, mask, labels=labels, ctc_loss_weight=0.5)
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.llm_loss, reference.llm_loss, rtol=0, atol=0)
    assert out.ctc_loss > 0
    torch.testing.assert_close(out.loss, out.llm_loss + 0.5 * out.ctc_loss)
    assert headed.encode_speech(values, mask, ctc_head=True).ctc_logits.shape == (3, 49, headed.ctc_head.num_labels)
    unguarded = headed.generate(values, mask, no_speech_threshold=None, loop_guard=False)  # guards: test_guards.py
    torch.testing.assert_close(unguarded, plain.generate(values, mask), rtol=0, atol=0)
    # the ctc bridge picks frames with the head: it always has one
    assert tiny_config("ctc").ctc_head_config == {"vocab": None, "kernel_size": 1, "blank_id": 100}


def test_character_ctc_head_trains_on_ctc_targets():
    chars = list("abcdefg")
    model = build(bridge_type="conv", ctc_head_config={"vocab": chars})
    assert model.ctc_head.num_labels == 8 and model.ctc_head.blank_id == 7
    assert model.ctc_head.char_ids("gab?a") == [6, 0, 1, 0]
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])
    targets = torch.tensor([[0, 1, 1, 2], [3, 4, -100, -100], [6, -100, -100, -100]])
    out = model(values, mask, labels=labels, ctc_targets=targets, ctc_loss_weight=0.5)
    speech = model.encode_speech(values, mask, ctc_head=True)
    assert speech.ctc_logits.shape == (3, 49, 8)
    torch.testing.assert_close(out.ctc_loss, model.ctc_head.loss(speech.ctc_logits, speech.frame_lengths, targets))
    posteriors = model.ctc_posteriors(values, mask)
    torch.testing.assert_close(posteriors.log_probs, speech.ctc_logits.log_softmax(-1))
    assert posteriors.frame_lengths.tolist() == speech.frame_lengths.tolist()
    torch.testing.assert_close(out.loss, out.llm_loss + 0.5 * out.ctc_loss)
    with pytest.raises(ValueError, match="spells characters.*ctc_targets"):
        model(values, mask, labels=labels)
    assert model(values, mask).loss is None  # no labels, no losses: inference forward needs no targets
    with pytest.raises(ValueError, match="picks frames by LLM-token CTC labels"):
        tiny_config("ctc", ctc_head_config={"vocab": chars})
    with pytest.raises(ValueError, match="distinct"):
        tiny_config("conv", ctc_head_config={"vocab": ["a", "a"]})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['chars'\]"):
        tiny_config("conv", ctc_head_config={"chars": chars})
    with pytest.raises(ValueError, match="no CTC head"):
        build().ctc_posteriors(values, mask)


def test_draft_head_runs_only_when_something_needs_its_logits():
    model = build(bridge_type="conv", ctc_head_config={"kernel_size": 3})
    calls = []
    model.ctc_head.register_forward_hook(lambda module, args, out: calls.append(1))
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 2], [8, 2, -100], [10, 2, -100]])

    def count(fn):
        calls.clear()
        fn()
        return len(calls)

    guards_off = {"no_speech_threshold": None, "loop_guard": False}
    assert count(lambda: model.generate(values, mask, max_new_tokens=3, **guards_off)) == 0  # plain decoding: nothing
    assert count(lambda: model.generate(values, mask, max_new_tokens=3)) == 1  # the guards read it (on by default)
    assert count(lambda: model.generate(values, mask, max_new_tokens=3, ctc_draft=True)) == 1  # it drafts
    assert count(lambda: model(values, mask)) == 0  # no labels, no loss
    assert count(lambda: model(values, mask, labels=labels, ctc_loss_weight=0.01)) == 1  # the aux CTC loss
    assert model(values, mask, labels=labels).ctc_loss > 0
    assert count(lambda: model(values, mask, labels=labels, ctc_loss_weight=0.0)) == 0
    assert count(lambda: model.encode_speech(values, mask)) == 0  # the prompt does not need it
    assert count(lambda: model.encode_speech(values, mask, ctc_head=True)) == 1
    assert count(lambda: model.ctc_posteriors(values, mask)) == 1  # what drafts, timestamps and guards read
    ctc = build(bridge_type="ctc")
    assert ctc.encode_speech(values, mask, ctc_head=False).ctc_logits is not None  # they pick the ctc bridge's frames


def test_ctc_trains_encoder_false_stops_the_head_loss_at_the_encoder():
    """A draft head trained alone: the encoder's gradient is exactly the LLM loss's; the head still learns."""
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 2], [8, 2, -100], [10, 2, -100]])
    grads = {}
    for name, kwargs in (("alone", dict(ctc_loss_weight=0.5, ctc_trains_encoder=False)),
                         ("joint", dict(ctc_loss_weight=0.5)), ("none", dict(ctc_loss_weight=0.0))):
        model = build(bridge_type="conv", ctc_head_config={"kernel_size": 3})
        model(values, mask, labels=labels, **kwargs).loss.backward()
        grads[name] = ({n: p.grad.clone() for n, p in model.audio_tower.named_parameters() if p.grad is not None},
                       model.ctc_head.out.weight.grad)
    assert grads["alone"][0].keys() == grads["none"][0].keys()
    for n, g in grads["alone"][0].items():
        torch.testing.assert_close(g, grads["none"][0][n], rtol=0, atol=0, msg=n)
    assert any(not torch.allclose(g, grads["joint"][0][n]) for n, g in grads["alone"][0].items())
    assert grads["none"][1] is None and grads["alone"][1].abs().sum() > 0


def test_conv_draft_head_sees_neighbouring_frames_and_ignores_padding(tmp_path):
    model = build(bridge_type="conv", ctc_head_config={"kernel_size": 5},
                  max_padding=None)  # one padded encoder call: frames past the end are not zeros
    values, mask = padded_batch()
    speech = model.encode_speech(values, mask, ctc_head=True)
    assert speech.ctc_logits.shape == (3, 49, model.ctc_head.num_labels)
    for i, n in enumerate(LENGTHS):
        alone = model.encode_speech(values[i : i + 1, :n], ctc_head=True)
        frames = int(alone.frame_lengths[0])
        torch.testing.assert_close(speech.ctc_logits[i, :frames], alone.ctc_logits[0], atol=1e-5, rtol=1e-4)
    # frame t's logits change when frame t + 2 changes (kernel 5), not when frame t + 3 does
    hidden = torch.randn(1, 20, model.config.audio_config.hidden_size)
    nudged = hidden.clone()
    nudged[0, 12] += 1.0
    head, frames = model.ctc_head, torch.tensor([20])
    changed = (head(nudged, frames) - head(hidden, frames)).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13, 14]
    model.save_pretrained(tmp_path)
    loaded = HubertGptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.ctc_head_config["kernel_size"] == 5
    loaded.audio_tower.max_padding = None
    torch.testing.assert_close(loaded.encode_speech(values, mask, ctc_head=True).ctc_logits, speech.ctc_logits,
                               rtol=0, atol=0)
    for bad, match in ((4, "odd int"), (0, "odd int")):
        with pytest.raises(ValueError, match=match):
            tiny_config("conv", ctc_head_config={"kernel_size": bad})


@pytest.mark.parametrize("bridge_type", ["conv", "ctc"])
def test_gradients_reach_exactly_the_trainable_parameters(bridge_type):
    model = build(bridge_type=bridge_type).train()
    for p in model.audio_tower.parameters():
        p.requires_grad_(False)
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 2], [8, 2, -100], [10, 2, -100]])
    model(values, mask, labels=labels).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == expected
    assert not any(n.startswith("audio_tower.") for n in got)


@pytest.mark.parametrize("bridge_type", ["conv", "ctc"])
def test_tiny_model_overfits_exact_transcripts(bridge_type):
    """Four utterances, four transcripts: only a correct prompt layout and loss mask can learn them all."""
    model = build(seed=0, bridge_type=bridge_type).train()
    values, mask = padded_batch([8000, 7000, 6000, 9000], seed=3)
    transcripts = [[11, 12, 13], [14, 15], [13, 12, 11, 16], [17, 11]]
    eos = model.generation_config.eos_token_id
    labels = torch.full((4, 5), -100)
    for i, t in enumerate(transcripts):
        labels[i, : len(t) + 1] = torch.tensor(t + [eos])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        model(values, mask, labels=labels, ctc_loss_weight=0.0).loss.backward()
        optimizer.step()
    model.eval()
    out = model.generate(values, mask)
    pad = model.generation_config.pad_token_id
    assert [strip(row, pad) for row in out] == [t + [eos] for t in transcripts]


def test_from_pretrained_components_keeps_weights(tmp_path):
    donor = build()
    donor.audio_tower.model.save_pretrained(tmp_path / "audio")
    donor.language_model.save_pretrained(tmp_path / "text")
    model = HubertGptForConditionalGeneration.from_pretrained_components(
        str(tmp_path / "audio"), str(tmp_path / "text"), bridge_type="ctc", prompt_sep_token_id=3
    )
    for name, tensor in donor.state_dict().items():
        if not name.startswith(("bridge.", "ctc_head.")):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.config.bridge_type == "ctc" and model.config.prompt_sep_token_id == 3


def test_bfloat16_and_sdpa(tmp_path):
    build().save_pretrained(tmp_path)
    model = HubertGptForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert model.language_model.dtype == torch.bfloat16 and model.audio_tower.dtype == torch.bfloat16
    assert model.language_model.config._attn_implementation == "sdpa"
    values, mask = padded_batch()
    out = model.generate(values, mask)  # float32 audio into a bfloat16 model
    assert out.shape[0] == 3


def test_device_map_auto_and_no_split_modules(tmp_path):
    build().save_pretrained(tmp_path)
    model = HubertGptForConditionalGeneration.from_pretrained(tmp_path, device_map="auto")
    # the encoder is one unit (HuBERT's own list omits its stable-layer-norm layer); the class list is not mutated
    assert {"GPTNeoXLayer", "HubertGptAudioEncoder"} <= set(model._no_split_modules)
    assert HubertGptForConditionalGeneration._no_split_modules == ["HubertGptAudioEncoder"]
    values, mask = padded_batch()
    assert model.generate(values, mask).shape[0] == 3


def test_bad_input_errors():
    model = build()
    with pytest.raises(ValueError, match="needs at least 3280"):
        model.generate(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="needs at least 3280"):
        model.generate(torch.zeros(1, 3000))
    values, mask = padded_batch()
    values[1, 10] = float("nan")
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] contain NaN or Inf"):
        model.generate(values, mask)
    with pytest.raises(ValueError, match="must be float audio"):
        model.generate(torch.zeros(1, 16000, dtype=torch.int16))
    values, mask = padded_batch()
    with pytest.raises(ValueError, match="more than the LLM's context of 512"):
        model(values, mask, labels=torch.ones(3, 600, dtype=torch.long))
    with pytest.raises(ValueError, match="bridge_type 'linear' is not registered"):
        tiny_config(bridge_type="linear")
    with pytest.raises(ValueError, match="is an encoder-decoder"):
        HubertGptConfig(text_config=T5Config(d_model=8, num_layers=1, vocab_size=10, bos_token_id=0))
    with pytest.raises(ValueError, match="not a causal language model"):
        HubertGptForConditionalGeneration(
            HubertGptConfig(text_config={"model_type": "hubert", "bos_token_id": 1}, audio_config=model.config.audio_config)
        )
    with pytest.raises(ValueError, match=r"moved: ctc_loss_weight -> a training setting.*encoder_max_padding -> model.audio_tower.max_padding"):
        tiny_config(ctc_loss_weight=0.5, encoder_max_padding=0.2)
    with pytest.raises(TypeError, match="text_config must be"):
        HubertGptConfig(text_config="gpt_neox")
    assert isinstance(HubertGptConfig(text_config=GPTNeoXConfig(bos_token_id=0)).text_config, GPTNeoXConfig)


@pytest.mark.parametrize("ctc_draft", [False, True])
def test_max_length_left_in_the_config_is_not_a_bound(ctc_draft):
    """Seq2SeqTrainer writes max_length=20 into model.generation_config; it must not cut (or break) decoding."""
    model = build(bridge_type="ctc" if ctc_draft else "conv")
    model.generation_config.eos_token_id = None  # every utterance runs to its own bound
    model.generation_config.max_length = 20  # shorter than the speech prompt of a 1 s utterance
    values, mask = padded_batch()
    out = model.generate(values, mask, ctc_draft=ctc_draft)
    assert out.shape[1] == 24  # int(4 * 1.0 + 20 + 0.5) for the longest utterance
    assert model.generate(values, mask, max_new_tokens=5).shape[1] == 5
