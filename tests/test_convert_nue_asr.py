"""convert_nue_asr.py: a checkpoint in rinna/nue-asr's format -> a hubert-gpt folder that transcribes the same.

The source checkpoint is built here in nue-asr's exact format (config.json, weight names as transformers 4.35 saved
them, spiece.model + a T5Tokenizer-style tokenizer_config.json) from `NueAsrReference`, a small re-implementation of
nue-asr's model and decoding written from its description (FACTS.md), not from rinna's code.
"""

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_audio, training_sentences, transcribe_in_fresh_process
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    HubertConfig,
    HubertModel,
    pipeline,
)

import convert_nue_asr
from hubert_gpt_training.tokenizer import train_sentencepiece

SECONDS = [1.0, 0.5625, 0.3125]  # 16000, 9000, 5000 samples
SR = 16000


class NueAsrReference(nn.Module):
    """nue-asr's model: HuBERT -> (Conv1d, GELU) x 2 channels-first -> Linear -> GPT-NeoX; batch size 1 only."""

    def __init__(self, audio_config, llm_config, kernels, strides):
        super().__init__()
        self.audio_encoder = HubertModel(audio_config)
        self.llm = GPTNeoXForCausalLM(llm_config)
        width = audio_config.hidden_size
        self.bridge_convs = nn.ModuleList(nn.Conv1d(width, width, k, stride=s) for k, s in zip(kernels, strides))
        self.bridge_proj = nn.Linear(width, llm_config.hidden_size)

    def bridge(self, audio):
        """audio (1, S) raw 16 kHz, no attention mask -> (1, T', Dt)."""
        h = self.audio_encoder(audio).last_hidden_state.transpose(1, 2)  # (1, Da, T)
        for conv in self.bridge_convs:
            h = F.gelu(conv(h))
        return self.bridge_proj(h.transpose(1, 2))

    def embed(self, ids):
        return self.llm.get_input_embeddings()(torch.tensor([ids]))

    def prompt(self, audio, bos, sep):
        """embed(<s>) + speech + embed([SEP]): (1, T' + 2, Dt)."""
        return torch.cat([self.embed([bos]), self.bridge(audio), self.embed([sep])], dim=1)

    @torch.no_grad()
    def transcribe(self, audio, bos, sep, eos, min_new_tokens=2):
        """Greedy, no attention mask, no cache; eos barred for the first min_new_tokens; int(4 s + 20 + 0.5) at most."""
        max_new_tokens = int(4 * audio.shape[-1] / SR + 20 + 0.5)
        embeds = self.prompt(audio, bos, sep)
        tokens = []
        while len(tokens) < max_new_tokens:
            logits = self.llm(inputs_embeds=embeds).logits[0, -1]
            if len(tokens) < min_new_tokens:
                logits[eos] = float("-inf")
            tokens.append(int(logits.argmax()))
            if tokens[-1] == eos:
                break
            embeds = torch.cat([embeds, self.embed(tokens[-1:])], dim=1)
        return tokens


def nue_configs(feat_extract_norm, vocab_size):
    """config.json's audio_encoder_config and llm_config, as transformers 4.35 wrote them (tiny shapes)."""
    audio = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        feat_extract_norm=feat_extract_norm, do_stable_layer_norm=feat_extract_norm == "layer",
        conv_bias=feat_extract_norm == "layer", num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        mask_time_prob=0.05,  # as japanese-hubert-base: the checkpoint then carries masked_spec_embed
    ).to_dict()
    audio.update(transformers_version="4.35.2", torch_dtype="float32")
    llm = {  # GPTNeoXConfig.to_dict() of transformers 4.35: rotary_pct / rotary_emb_base, not rope_parameters
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": vocab_size,
        "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96,
        "hidden_act": "gelu", "rotary_pct": 0.5, "rotary_emb_base": 10000, "max_position_embeddings": 512,
        "initializer_range": 0.02, "layer_norm_eps": 1e-5, "use_cache": True, "bos_token_id": 2, "eos_token_id": 3,
        "tie_word_embeddings": False, "use_parallel_residual": False, "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "rope_scaling": None, "attention_bias": True, "torch_dtype": "float32", "transformers_version": "4.35.2",
    }
    return audio, llm


def nue_state_dict(reference):
    """The reference's weights under the names nue-asr's checkpoint uses (GPT-NeoX's head was `embed_out` then)."""
    state = {}
    for key, tensor in reference.state_dict().items():
        key = key.replace("llm.lm_head.", "llm.embed_out.")
        state[key] = tensor.detach().clone().contiguous()
    return state


def write_weights(folder, state, fmt="safetensors"):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    if fmt == "safetensors":
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))


def write_tokenizer(folder):
    """rinna's tokenizer files: spiece.model and a T5Tokenizer-style tokenizer_config.json / special_tokens_map.json."""
    import sentencepiece as spm

    train_sentencepiece(training_sentences(), os.path.join(folder, "spiece.model"), vocab_size=160)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "[SEP]",
               "cls_token": "[CLS]", "pad_token": "[PAD]", "mask_token": "[MASK]"}
    config = {"tokenizer_class": "T5Tokenizer", "do_lower_case": False, "extra_ids": 0, "additional_special_tokens": [],
              "sp_model_kwargs": {}, "model_max_length": 1000000000000000019884624838656, **special}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    return spm.SentencePieceProcessor(model_file=os.path.join(folder, "spiece.model"))


def build_nue_checkpoint(folder, feat_extract_norm, fmt="safetensors", seed=0):
    """Write a tiny nue-asr checkpoint folder; returns (reference model in eval mode, raw sentencepiece processor)."""
    os.makedirs(folder, exist_ok=True)
    sp = write_tokenizer(folder)
    audio, llm = nue_configs(feat_extract_norm, sp.get_piece_size())
    config = {"architectures": ["NueASRModel"], "model_type": "nue_asr", "audio_encoder_config": audio,
              "llm_config": llm, "bridge_conv_kernel_size": [4, 4], "bridge_conv_stride": [2, 2],
              "torch_dtype": "float32", "transformers_version": "4.35.2"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.manual_seed(seed)
    reference = NueAsrReference(HubertConfig(**audio), GPTNeoXConfig(**llm), [4, 4], [2, 2]).eval()
    write_weights(folder, nue_state_dict(reference), fmt)
    return reference, sp


def ids(sp):
    return dict(bos=sp.piece_to_id("<s>"), sep=sp.piece_to_id("[SEP]"), eos=sp.piece_to_id("</s>"))


@pytest.fixture(scope="module")
def audios():
    return [make_audio(s, seed=i) for i, s in enumerate(SECONDS)]


@pytest.fixture(scope="module", params=["group", "layer"])
def case(request, tmp_path_factory):
    """(reference, sentencepiece, converted model, processor, src folder); 'layer' is stored as pytorch_model.bin."""
    norm = request.param
    src = tmp_path_factory.mktemp(f"nue_{norm}")
    reference, sp = build_nue_checkpoint(src, norm, fmt="safetensors" if norm == "group" else "bin")
    model, processor = convert_nue_asr.load_nue_asr(str(src))
    return reference, sp, model, processor, src


def check_tokens(row, expected, pad):
    """A generated row equals `expected`, followed by padding only."""
    row = row.tolist()
    assert row[: len(expected)] == expected
    assert all(t == pad for t in row[len(expected) :])


# --- numbers -------------------------------------------------------------------------------------------------------
def test_config_and_processor_follow_nue_asr(case):
    _, sp, model, processor, _ = case
    special = ids(sp)
    assert (model.config.prompt_bos_token_id, model.config.prompt_sep_token_id) == (special["bos"], special["sep"])
    assert model.config.bridge_type == "conv"
    assert model.config.bridge_config == {"kernel_sizes": [4, 4], "strides": [2, 2]}
    assert model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.5  # from the legacy rotary_pct
    gen = model.generation_config
    assert (gen.max_new_tokens_per_second, gen.max_new_tokens_base) == (4.0, 20)
    assert (gen.do_sample, gen.num_beams, gen.min_new_tokens) == (False, 1, 2)
    assert (gen.eos_token_id, gen.pad_token_id) == (special["eos"], sp.pad_id())
    fe = processor.feature_extractor
    assert (fe.sampling_rate, fe.do_normalize, fe.return_attention_mask, fe.padding_value) == (SR, False, True, 0.0)
    # nue-asr's bound int(4 * seconds + 20 + 0.5) for each test length
    lengths = torch.tensor([int(round(s * SR)) for s in SECONDS])
    assert model.max_new_tokens_for(lengths).tolist() == [int(4 * s + 20 + 0.5) for s in SECONDS]


def test_tokenizer_matches_sentencepiece(case):
    _, sp, _, processor, _ = case
    tokenizer = processor.tokenizer
    for text in training_sentences(5, 3, seed=1) + ["未知の文字", "hello  world "]:
        pieces = sp.encode(text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == pieces
        known = [t for t in pieces if t != sp.unk_id()]  # skip_special_tokens drops <unk>, as nue-asr's tokenizer does
        assert tokenizer.decode(pieces, skip_special_tokens=True) == sp.decode(known)


def test_bridge_and_logits_equal_the_reference(case, audios):
    reference, sp, model, processor, _ = case
    special = ids(sp)
    batch = processor(audio=audios, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        batched_logits = model(**batch).logits  # right-padded prompts
        for i, audio in enumerate(audios):
            wave = torch.from_numpy(audio)[None]
            expected_speech = reference.bridge(wave)[0]
            prompt = reference.prompt(wave, special["bos"], special["sep"])
            expected_logits = reference.llm(inputs_embeds=prompt).logits[0]
            single = processor(audio=[audio], sampling_rate=SR, return_tensors="pt")
            speech = model.encode_speech(**single)
            torch.testing.assert_close(speech.embeds[0], expected_speech, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(model(**single).logits[0], expected_logits, atol=1e-5, rtol=1e-4)
            n = expected_logits.shape[0]
            torch.testing.assert_close(batched_logits[i, :n], expected_logits, atol=1e-5, rtol=1e-4)


def test_greedy_tokens_equal_the_reference_single_and_batched(case, audios):
    reference, sp, model, processor, _ = case
    expected = [reference.transcribe(torch.from_numpy(a)[None], **ids(sp)) for a in audios]
    pad = model.generation_config.pad_token_id
    batched = model.generate(**processor(audio=audios, sampling_rate=SR, return_tensors="pt"))
    for i, audio in enumerate(audios):
        single = model.generate(**processor(audio=[audio], sampling_rate=SR, return_tensors="pt"))
        check_tokens(single[0], expected[i], pad)
        check_tokens(batched[i], expected[i], pad)


def test_min_new_tokens_two_as_nue_asr(case, audios):
    """An LLM rigged to prefer eos everywhere: nue-asr emits 2 tokens before eos; so does the converted model."""
    reference, sp, model, processor, _ = case
    reference, model = copy.deepcopy(reference), copy.deepcopy(model)
    eos = ids(sp)["eos"]
    with torch.no_grad():
        for llm in (reference.llm, model.language_model):
            head = llm.get_output_embeddings().weight
            head[eos] *= 3
            llm.gpt_neox.final_layer_norm.weight.zero_()
            llm.gpt_neox.final_layer_norm.bias.copy_(head[eos])  # every position's hidden state points at eos
    expected = [reference.transcribe(torch.from_numpy(a)[None], **ids(sp)) for a in audios]
    assert all(len(e) == 3 and e[-1] == eos for e in expected)
    inputs = processor(audio=audios, sampling_rate=SR, return_tensors="pt")
    pad = model.generation_config.pad_token_id
    for row, e in zip(model.generate(**inputs), expected):
        check_tokens(row, e, pad)
    assert model.generate(**inputs, min_new_tokens=0)[:, 0].tolist() == [eos] * len(audios)


# --- checkpoint errors and legacy names --------------------------------------------------------------------------
def edited_copy(src, dst, edit):
    """A copy of the nue-asr folder `src` whose safetensors weights went through `edit(state)`."""
    shutil.copytree(src, dst)
    state = load_file(os.path.join(dst, "model.safetensors"))
    edit(state)
    write_weights(dst, state)
    return str(dst)


@pytest.fixture(scope="module")
def group_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("nue_src") / "nue"
    reference, sp = build_nue_checkpoint(src, "group")
    return reference, sp, src


def test_missing_key_is_an_error_naming_it(group_src, tmp_path):
    _, _, src = group_src
    folder = edited_copy(src, tmp_path / "m", lambda s: s.pop("bridge_convs.1.bias"))
    with pytest.raises(ValueError, match=r"missing key.*bridge_convs\.1\.bias"):
        convert_nue_asr.load_nue_asr(folder)
    folder = edited_copy(src, tmp_path / "h", lambda s: s.pop("llm.embed_out.weight"))
    with pytest.raises(ValueError, match=r"missing key.*llm\.embed_out\.weight"):
        convert_nue_asr.load_nue_asr(folder)


def test_unexpected_key_is_an_error_naming_it(group_src, tmp_path):
    _, _, src = group_src
    folder = edited_copy(src, tmp_path / "u", lambda s: s.update({"bridge_convs.2.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected key.*bridge_convs\.2\.weight"):
        convert_nue_asr.load_nue_asr(folder)
    folder = edited_copy(src, tmp_path / "s", lambda s: s.update({"bridge_proj.bias": torch.zeros(7)}))
    with pytest.raises(ValueError, match=r"bridge_proj\.bias.*shape"):
        convert_nue_asr.load_nue_asr(folder)


def test_older_transformers_names_are_accepted(group_src, tmp_path, audios):
    """weight_g/weight_v, per-layer attention.bias/masked_bias and rotary inv_freq, as transformers < 4.31 saved."""
    reference, sp, src = group_src
    layers = reference.llm.config.num_hidden_layers
    inv_freq = dict(reference.llm.named_buffers())["gpt_neox.rotary_emb.inv_freq"]

    def legacy(state, freq):
        for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
            state[f"audio_encoder.encoder.pos_conv_embed.conv.{old}"] = state.pop(
                f"audio_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.{new}")
        for i in range(layers):
            state[f"llm.gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
            state[f"llm.gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
            state[f"llm.gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = freq.clone()

    model, _ = convert_nue_asr.load_nue_asr(edited_copy(src, tmp_path / "ok", lambda s: legacy(s, inv_freq)))
    wave = torch.from_numpy(audios[1])[None]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_speech(wave).embeds[0], reference.bridge(wave)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"llm\.gpt_neox\.layers\.0\.attention\.rotary_emb\.inv_freq"):
        convert_nue_asr.load_nue_asr(edited_copy(src, tmp_path / "bad", lambda s: legacy(s, inv_freq * 2)))


def test_dtype_auto_keeps_the_checkpoints(group_src, tmp_path):
    reference, _, src = group_src
    half = edited_copy(src, tmp_path / "half", lambda s: s.update({k: v.half() for k, v in s.items()}))
    model, _ = convert_nue_asr.load_nue_asr(half)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert torch.equal(model.bridge.proj.weight, reference.bridge_proj.weight.half())
    model, _ = convert_nue_asr.load_nue_asr(half, dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.bridge.proj.weight, reference.bridge_proj.weight.half().float())


def mapped_files():
    """Paths of the files memory-mapped into this process now (Linux: /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        fields = (line.split(maxsplit=5) for line in f)
        return {parts[5].strip() for parts in fields if len(parts) == 6}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_checkpoint_is_closed_while_copying_and_weights_stay_exact(group_src, tmp_path, monkeypatch, fmt):
    """Conversion closes the checkpoint's mapped files every RELEASE_EVERY_BYTES copied (so a 7 GB checkpoint's pages
    do not pile up beside the model): closing after every tensor gives the same weights, and no mapping is left."""
    reference, _, src = group_src
    folder = tmp_path / fmt
    shutil.copytree(src, folder)
    write_weights(folder, nue_state_dict(reference), fmt)
    weights = str(folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"))
    expected, _ = convert_nue_asr.load_nue_asr(str(folder))
    assert weights not in mapped_files()
    monkeypatch.setattr(convert_nue_asr, "RELEASE_EVERY_BYTES", 1)
    mapped_during_copy, release = [], convert_nue_asr._Checkpoint.release

    def counting_release(self):
        release(self)
        mapped_during_copy.append(weights in mapped_files())

    monkeypatch.setattr(convert_nue_asr._Checkpoint, "release", counting_release)
    model, _ = convert_nue_asr.load_nue_asr(str(folder))
    tensors = len(nue_state_dict(reference))
    assert len(mapped_during_copy) == tensors + 1  # after every tensor, and once at the end
    assert not any(mapped_during_copy)
    for (name, got), (_, want) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(got, want), name


def test_not_a_nue_asr_folder(tmp_path, group_src):
    _, _, src = group_src
    shutil.copytree(src, tmp_path / "x")
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    (tmp_path / "x" / "config.json").write_text(json.dumps({**config, "model_type": "hubert_gpt"}))
    with pytest.raises(ValueError, match="nue_asr"):
        convert_nue_asr.load_nue_asr(str(tmp_path / "x"))


# --- the checkpoint's own tokenizer spelling ----------------------------------------------------------------------
def respell_unk(model_file, spelling):
    """Rename spiece.model's unknown piece (id 1) to `spelling`, as a tokenizer trained with unk_piece=spelling has."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    proto.pieces[1].piece = spelling
    proto.trainer_spec.unk_piece = spelling
    with open(model_file, "wb") as f:
        f.write(proto.SerializeToString())


def with_special_tokens(src, dst, spm_unk, **named):
    """A copy of `src` whose spiece.model spells its unknown piece `spm_unk` and whose tokenizer files name `named`."""
    shutil.copytree(src, dst)
    respell_unk(dst / "spiece.model", spm_unk)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((dst / name).read_text())
        (dst / name).write_text(json.dumps({**config, **named}))
    return str(dst)


@pytest.mark.parametrize("spelling", ["<unk>", "[UNK]"])
def test_the_checkpoints_unk_spelling_is_taken_as_it_is(group_src, tmp_path, spelling, audios):
    import sentencepiece as spm

    reference, _, src = group_src
    folder = with_special_tokens(src, tmp_path / "nue", spelling, unk_token=spelling)
    raw = spm.SentencePieceProcessor(model_file=os.path.join(folder, "spiece.model"))
    assert raw.id_to_piece(raw.unk_id()) == spelling
    model, processor = convert_nue_asr.load_nue_asr(folder)
    tokenizer = processor.tokenizer
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == (spelling, raw.unk_id())
    text = "猫が鬱蒼と水を"  # 鬱 and 蒼 were never in the training text: unknown pieces
    assert raw.unk_id() in raw.encode(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == raw.encode(text)
    assert tokenizer.convert_tokens_to_ids(spelling) == raw.unk_id()
    expected = reference.transcribe(torch.from_numpy(audios[0])[None], **ids(raw))
    check_tokens(model.generate(**processor(audio=[audios[0]], sampling_rate=SR))[0], expected,
                 model.generation_config.pad_token_id)
    # the written folder keeps the spelling
    convert_nue_asr.convert(folder, tmp_path / "out")
    assert AutoProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True).tokenizer.unk_token == spelling


def test_a_folder_without_tokenizer_files_takes_spiece_models_own_pieces(group_src, tmp_path):
    import sentencepiece as spm

    _, _, src = group_src
    shutil.copytree(src, tmp_path / "bare")
    respell_unk(tmp_path / "bare" / "spiece.model", "[UNK]")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        os.remove(tmp_path / "bare" / name)
    raw = spm.SentencePieceProcessor(model_file=str(tmp_path / "bare" / "spiece.model"))
    model, processor = convert_nue_asr.load_nue_asr(str(tmp_path / "bare"))
    tokenizer = processor.tokenizer
    got = {k: getattr(tokenizer, k) for k in ("pad_token", "unk_token", "bos_token", "eos_token", "sep_token")}
    assert got == {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "<s>", "eos_token": "</s>",
                   "sep_token": "[SEP]"}
    assert (model.config.prompt_bos_token_id, model.config.prompt_sep_token_id) == (ids(raw)["bos"], ids(raw)["sep"])


def test_a_real_contradiction_is_refused_naming_it(group_src, tmp_path):
    _, _, src = group_src
    # the files name [UNK], but spiece.model's unknown piece is <unk> and it has no [UNK]
    folder = with_special_tokens(src, tmp_path / "a", "<unk>", unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"special_tokens_map\.json sets unk_token = '\[UNK\]', but spiece\.model has "
                                         r"no piece '\[UNK\]' \(its unk_token is '<unk>', id 1\)"):
        convert_nue_asr.load_nue_asr(folder)
    # a piece that exists, but not in the role spiece.model gives it
    folder = with_special_tokens(src, tmp_path / "b", "<unk>", eos_token="<s>")
    with pytest.raises(ValueError, match=r"sets eos_token = '<s>', id 2 in spiece\.model, but spiece\.model's "
                                         r"eos_token is id 3 \('</s>'\)"):
        convert_nue_asr.load_nue_asr(folder)
    # a sep token the model lacks (nue-asr's prompt needs it)
    folder = with_special_tokens(src, tmp_path / "c", "<unk>", sep_token="<sep>")
    with pytest.raises(ValueError, match=r"sets sep_token = '<sep>', but spiece\.model has no piece '<sep>'$"):
        convert_nue_asr.load_nue_asr(folder)


# --- the written folder with the stock entry points ----------------------------------------------------------------
def test_cli_folder_works_with_auto_classes_and_pipeline(group_src, tmp_path, audios):
    reference, sp, src = group_src
    dst = tmp_path / "converted"
    assert convert_nue_asr.main(["--src", str(src), "--dst", str(dst)]) == 0
    with pytest.raises(FileExistsError):
        convert_nue_asr.main(["--src", str(src), "--dst", str(dst)])
    files = set(os.listdir(dst))
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_hubert_gpt.py",
            "pipeline_hubert_gpt.py", "processing_hubert_gpt.py", "spiece.model"} <= files

    model = AutoModelForSpeechSeq2Seq.from_pretrained(dst, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(dst, trust_remote_code=True)
    assert model.generation_config.min_new_tokens == 2 and processor.feature_extractor.do_normalize is False
    gen = model.generation_config  # nue-asr's bound travels in generation_config.json
    assert (gen.max_new_tokens_per_second, gen.max_new_tokens_base) == (4.0, 20)
    inputs = processor(audio=audios, sampling_rate=SR, return_tensors="pt")
    tokens = model.generate(**inputs)
    for row, audio in zip(tokens, audios):
        nue_tokens = reference.transcribe(torch.from_numpy(audio)[None], **ids(sp))
        check_tokens(row, nue_tokens, model.generation_config.pad_token_id)
    expected = processor.batch_decode(tokens, skip_special_tokens=True)
    asr = pipeline("automatic-speech-recognition", model=str(dst), trust_remote_code=True)
    assert [out["text"] for out in asr(audios, batch_size=3)] == expected
    assert asr(audios[0])["text"] == expected[0]

    # A process that cannot import our packages: every Auto class and pipeline() from the folder alone.
    for i, audio in enumerate(audios):
        np.save(tmp_path / f"audio{i}.npy", audio)
    got = transcribe_in_fresh_process(dst, tmp_path)
    assert got["model"] == got["plain"] == "HubertGptForConditionalGeneration"
    assert got["pipeline"] == "HubertGptASRPipeline"
    assert got["tokens"] == tokens.tolist()
    assert got["pipeline_text"] == got["decoded"] == expected
