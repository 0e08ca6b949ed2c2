"""Offline stand-ins for rinna/japanese-hubert-base, rinna/japanese-gpt-neox-3.6b and rinna/nue-asr: their exact
configs (FACTS.md) at tiny sizes: a group-norm HuBERT (no conv bias, no stable layer norm, HuBERT base's conv
stack) whose feature extractor returns no attention mask, a GPT-NeoX (rotary_pct 1.0, sequential residual, untied
head, 2048 positions, bos 2 / eos 3) saved in fp16 with rinna's T5Tokenizer-style sentencepiece folder ([SEP]), and a
nue-asr checkpoint of both in fp16 as pytorch_model.bin. Exercised through from_pretrained_components, train_hf.py
--audio_model/--text_model and convert_nue_asr.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from helpers import make_audio
from safetensors.torch import load_file
from test_convert_nue_asr import NueAsrReference, check_tokens, nue_state_dict, write_tokenizer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

import convert_nue_asr
from hubert_gpt_training.tokenizer import load_tokenizer
from modeling_hubert_gpt import HubertGptForConditionalGeneration, HubertGptProcessor

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
# rinna/japanese-hubert-base's config, but 32 wide and 2 layers deep (768 x 12 there)
HUBERT = dict(feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False, conv_dim=(16,) * 7,
              conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), hidden_size=32,
              num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=2, mask_time_prob=0.05)
# rinna/japanese-gpt-neox-3.6b's config, but 32 wide and 2 layers deep (2816 x 36, 22 heads there)
NEOX = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, rotary_pct=1.0,
            rotary_emb_base=10000, use_parallel_residual=False, tie_word_embeddings=False,
            max_position_embeddings=2048, bos_token_id=2, eos_token_id=3, hidden_act="gelu", layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """(hubert folder, gpt-neox folder, raw sentencepiece) as the Hub serves them."""
    root = tmp_path_factory.mktemp("rinna")
    hubert_dir, neox_dir = root / "japanese-hubert-base", root / "japanese-gpt-neox-3.6b"
    torch.manual_seed(0)
    HubertModel(HubertConfig(**HUBERT)).save_pretrained(hubert_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(hubert_dir)
    os.makedirs(neox_dir)
    sp = write_tokenizer(neox_dir)  # spiece.model + T5Tokenizer tokenizer_config.json, [SEP] among the specials
    llm = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=sp.get_piece_size(), **NEOX)).to(torch.float16)
    llm.save_pretrained(neox_dir)  # fp16, as released
    return hubert_dir, neox_dir, sp


def test_components_keep_the_standins_weights_in_fp16_and_fp32(standins):
    hubert_dir, neox_dir, sp = standins
    encoder = HubertModel.from_pretrained(hubert_dir).state_dict()
    llm = load_file(neox_dir / "model.safetensors")
    assert {t.dtype for t in llm.values()} == {torch.float16}
    for dtype in (torch.float16, torch.float32):
        model = HubertGptForConditionalGeneration.from_pretrained_components(
            str(hubert_dir), str(neox_dir), dtype=dtype, prompt_sep_token_id=sp.piece_to_id("[SEP]"))
        assert {p.dtype for p in model.parameters()} == {dtype}
        state = model.state_dict()
        for name, tensor in encoder.items():
            assert torch.equal(state[f"audio_tower.model.{name}"], tensor.to(dtype)), name
        for name, tensor in llm.items():  # transformers saves GPT-NeoX's head under its checkpoint name, embed_out
            name = name.replace("embed_out.", "lm_head.")
            assert torch.equal(state[f"language_model.{name}"], tensor.to(dtype)), name
        config = model.config
        assert (config.audio_config.feat_extract_norm, config.audio_config.conv_bias) == ("group", False)
        assert config.text_config.rope_parameters["partial_rotary_factor"] == 1.0
        assert config.text_config.use_parallel_residual is False and config.text_config.tie_word_embeddings is False
        assert config.prompt_sep_token_id == 4


def test_group_norm_standin_batches_equal_single_utterances(standins, tmp_path):
    """The processor always sends an attention mask (the stand-in's extractor says return_attention_mask=False), and
    the group-norm encoder then never sees padding: batched == one at a time."""
    hubert_dir, neox_dir, sp = standins
    torch.manual_seed(1)
    model = HubertGptForConditionalGeneration.from_pretrained_components(
        str(hubert_dir), str(neox_dir), dtype=torch.float32, prompt_sep_token_id=sp.piece_to_id("[SEP]")).eval()
    with torch.no_grad():
        model.bridge.proj.weight.mul_(30)
    processor = HubertGptProcessor(Wav2Vec2FeatureExtractor.from_pretrained(hubert_dir),
                                   load_tokenizer(str(neox_dir), str(tmp_path / "tok")))
    audios = [make_audio(s, seed=i) for i, s in enumerate([1.0, 0.45, 0.7])]
    batch = processor(audio=audios, sampling_rate=RATE, return_tensors="pt")
    assert "attention_mask" in batch
    batched = model.generate(**batch, max_new_tokens=6)
    for row, audio in zip(batched, audios):
        single = model.generate(**processor(audio=[audio], sampling_rate=RATE, return_tensors="pt"), max_new_tokens=6)
        assert row[: single.shape[1]].tolist() == single[0].tolist()


def test_rinna_tokenizer_folder_keeps_its_ids(standins, tmp_path):
    """transformers 5 rebuilds a T5Tokenizer folder with T5's unk id (2 = <s> in rinna's layout); load_tokenizer
    converts spiece.model with the folder's own special tokens instead."""
    from transformers import AutoTokenizer

    _, neox_dir, sp = standins
    text = "猫が鬱蒼と水を"  # unknown characters
    assert AutoTokenizer.from_pretrained(neox_dir)(text, add_special_tokens=False)["input_ids"] != sp.encode(text)
    tokenizer = load_tokenizer(str(neox_dir), str(tmp_path / "tok"))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert (tokenizer.sep_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.pad_token_id) == (4, 1, 2, 3, 0)


def test_train_hf_from_the_standins(standins, tmp_path):
    hubert_dir, neox_dir, sp = standins
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "train_driver.py"), "--preset", "smoke",
                           "--audio_model", str(hubert_dir), "--text_model", str(neox_dir), "--max_steps", "2",
                           "--use_cpu", "--output_dir", str(tmp_path / "out")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert got["results"]["global_step"] == 2 and got["saved"] == got["in_memory"]
    saved = HubertGptProcessor.from_pretrained(tmp_path / "out")
    assert saved.tokenizer("猫が鬱蒼と", add_special_tokens=False)["input_ids"] == sp.encode("猫が鬱蒼と")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["prompt_sep_token_id"] == sp.piece_to_id("[SEP]")
    assert config["audio_config"]["feat_extract_norm"] == "group"


def test_converter_on_a_fp16_nue_asr_standin(standins, tmp_path):
    """nue-asr as released: config.json torch_dtype float16, pytorch_model.bin in fp16, rinna's exact sub-configs."""
    _, _, sp = standins
    src = tmp_path / "nue-asr"
    os.makedirs(src)
    write_tokenizer(src)
    audio = {**HubertConfig(**HUBERT).to_dict(), "torch_dtype": "float32"}
    llm = {**GPTNeoXConfig(vocab_size=sp.get_piece_size(), **NEOX).to_dict(), "rotary_pct": 1.0}
    config = {"architectures": ["NueASRModel"], "model_type": "nue_asr", "audio_encoder_config": audio,
              "llm_config": llm, "bridge_conv_kernel_size": [4, 4], "bridge_conv_stride": [2, 2],
              "torch_dtype": "float16", "transformers_version": "4.35.2"}
    (src / "config.json").write_text(json.dumps(config))
    torch.manual_seed(2)
    reference = NueAsrReference(HubertConfig(**HUBERT), GPTNeoXConfig(vocab_size=sp.get_piece_size(), **NEOX),
                                [4, 4], [2, 2]).eval()
    with torch.no_grad():
        reference.bridge_proj.weight.mul_(30)
        for p in reference.parameters():
            p.copy_(p.half().float())  # the reference computes with exactly the fp16 weights, in fp32
    state = {k: v.half() if v.is_floating_point() else v for k, v in nue_state_dict(reference).items()}
    torch.save(state, src / "pytorch_model.bin")
    model, processor = convert_nue_asr.load_nue_asr(str(src))  # dtype auto: the checkpoint's fp16
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    model, processor = convert_nue_asr.load_nue_asr(str(src), dtype="bfloat16")
    assert torch.equal(model.bridge.proj.weight, state["bridge_proj.weight"].to(torch.bfloat16))
    model, processor = convert_nue_asr.load_nue_asr(str(src), dtype="float32")
    ids = dict(bos=sp.piece_to_id("<s>"), sep=sp.piece_to_id("[SEP]"), eos=sp.piece_to_id("</s>"))
    audios = [make_audio(s, seed=10 + i) for i, s in enumerate([0.9, 0.5])]
    batched = model.generate(**processor(audio=audios, sampling_rate=RATE, return_tensors="pt"))
    for row, audio in zip(batched, audios):
        expected = reference.transcribe(torch.from_numpy(audio)[None], **ids)
        check_tokens(row, expected, model.generation_config.pad_token_id)
