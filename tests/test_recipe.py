"""The embedded default: a shortened recipe end to end (its corpus: tests/test_corpus.py), the transcribe CLI."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import soundfile
import torch

from hubert_gpt_training import corpus
from modeling_hubert_gpt import HubertGptForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
HOURS = 0.02  # about 30 utterances


def test_shortened_recipe_learns_and_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_hf.py"), "--output_dir", str(out), "--corpus_hours", str(HOURS),
         "--corpus_dir", str(tmp_path / "data"), "--model_size", "tiny", "--max_steps", "40",
         "--per_device_train_batch_size", "8", "--warmup_steps", "5", "--logging_steps", "5", "--eval_steps", "20",
         "--draft_head_fit_steps", "50"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    rows = [row for row in results["log_history"] if "loss" in row]
    assert len(rows) == 8
    # The recognizer's loss falls, and its CTC draft head's (a Linear on the encoder output, gradient stopped:
    # slower to start) too.
    assert rows[-1]["llm_loss"] < 0.8 * rows[0]["llm_loss"] and rows[-1]["ctc_loss"] < 0.9 * rows[0]["ctc_loss"]
    fit = results["draft_head_fit"]  # the draft head refitted on the trained encoder
    assert fit["steps"] == 50 and fit["ctc_loss_last"] < fit["ctc_loss_first"]
    summary = results["training_summary"]  # training settings: recorded with the run, not in the model's config
    assert (summary["ctc_head"], summary["ctc_loss_weight"], summary["ctc_trains_encoder"]) == (True, 0.01, False)
    weight = summary["ctc_loss_weight"]
    assert "ctc_loss_weight" not in json.loads((out / "config.json").read_text())
    for row in rows:  # the logged parts are the parts of the loss (means over the same steps)
        assert row["loss"] == pytest.approx(row["llm_loss"] + weight * row["ctc_loss"], rel=1e-3)
    assert results["dataset_name"] == "ja-synth" and results["split"] == "test" and results["bridge_type"] == "conv"
    # each further test split of the corpus is measured, and shown in the card and its model-index
    assert list(results["conditions"]) == ["test_noisy", "test_reverb", "test_phone", "test_katakana"]
    card = (out / "README.md").read_text()
    for name, row in results["conditions"].items():
        assert row["num_utterances"] >= 1 and row["cer"] >= 0 and 0 <= row["num_emptied"] <= row["num_utterances"]
        assert f"| ja-synth | {name} | {row['num_utterances']} | {100 * row['cer']:.2f} |" in card
    assert [row["step"] for row in results["log_history"] if "eval_cer" in row] == [20, 40]
    assert (out / "training_curves.png").stat().st_size > 10_000
    model = HubertGptForConditionalGeneration.from_pretrained(out)
    assert model.config.bridge_type == "conv" and model.config.audio_config.hidden_size == 64  # --model_size tiny
    # the draft head spells the training text's characters
    train_text = "".join(datasets.load_from_disk(next((tmp_path / "data").iterdir()))["train"]["transcription"])
    assert model.ctc_head.vocab == model.config.ctc_head_config["vocab"] == sorted(set(train_text))
    assert model.config.ctc_head_config["kernel_size"] == 5 and not model.bridge.uses_ctc_head


def test_transcribe_cli_reports_bad_files_and_goes_on(tmp_path):
    torch.manual_seed(0)
    from helpers import build_tiny_tokenizer, make_audio
    from transformers import Wav2Vec2FeatureExtractor

    from hubert_gpt_training.tiny import tiny_config
    from modeling_hubert_gpt import HubertGptProcessor

    tokenizer = build_tiny_tokenizer(tmp_path / "tok")
    processor = HubertGptProcessor(Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=False), tokenizer)
    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=tokenizer)).eval()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    good = [tmp_path / "a.wav", tmp_path / "b.flac"]
    soundfile.write(good[0], make_audio(1.0, seed=0), 16000)
    soundfile.write(good[1], make_audio(0.7, seed=1), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    files = [str(good[0]), str(tmp_path / "bad.wav"), str(good[1])]
    proc = subprocess.run([sys.executable, "-m", "hubert_gpt_training.transcribe", str(tmp_path / "model"), *files,
                           "--json", "--batch_size", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [files[1], files[0], files[2]]  # the error first, within its batch
    assert "Could not decode" in lines[0]["error"] and "bad.wav" in proc.stderr
    from modeling_hubert_gpt import load_audio

    audios = [load_audio(str(p), 16000) for p in good]
    expected = processor.batch_decode(model.generate(**processor(audio=audios, sampling_rate=16000)),
                                      skip_special_tokens=True)
    assert [lines[1]["text"], lines[2]["text"]] == expected


def test_recipe_defaults_follow_the_bridge_and_flags_win():
    import train_hf

    def model_args(*argv):
        return train_hf.parse(["--output_dir", "out", *argv])[0]

    conv = model_args()  # no data, no model: the recipe, conv bridge with a CTC draft head trained alone
    assert (conv.bridge, conv.ctc_head, conv.ctc_trains_encoder, conv.ctc_loss_weight) == ("conv", True, False, 0.01)
    for argv in (["--bridge", "ctc"], ["--bridge=ctc"]):
        ctc = model_args(*argv)
        assert (ctc.bridge, ctc.ctc_head, ctc.ctc_loss_weight) == ("ctc", False, 1.0)
    mine = model_args("--ctc_loss_weight", "0.5", "--ctc_trains_encoder", "true")
    assert (mine.ctc_head, mine.ctc_trains_encoder, mine.ctc_loss_weight) == (True, True, 0.5)


def test_bf16_on_a_machine_without_an_accelerator_trains_on_the_cpu_with_autocast():
    import torch

    import train_hf

    targs = train_hf.parse(["--output_dir", "out", "--bf16"])[3]
    assert targs.bf16 and targs.use_cpu == (not torch.accelerator.is_available())
    assert not train_hf.parse(["--output_dir", "out"])[3].use_cpu  # without bf16 nothing is added


EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "model name\t: Intel Xeon\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.mark.parametrize("cpuinfo, warned", [(EPYC, True), (SAPPHIRE, False), ("processor\t: 0\n", False)])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(tmp_path, monkeypatch, capsys, cpuinfo, warned):
    """bf16 autocast on a CPU without AVX512-BF16 / AMX is emulated (19 vs 47 GFLOPS in fp32 on the EPYC measured):
    --bf16 there warns, naming the CPU; with native bf16, or flags unknown (another architecture), it does not."""
    import train_hf
    from hubert_gpt_training import cpu

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(train_hf, "cpu_info", lambda: cpu.cpu_info(str(tmp_path / "cpuinfo")))
    train_hf.parse(["--output_dir", "out", "--bf16", "--use_cpu"])
    err = capsys.readouterr().err
    assert ("WARNING: --bf16 on this CPU (AMD EPYC: no AVX512-BF16 or AMX)" in err) == warned
    train_hf.parse(["--output_dir", "out", "--use_cpu"])
    assert "--bf16" not in capsys.readouterr().err  # no bf16, no warning
    assert cpu.cpu_info(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize("frontend", ["log_mel", "conv"])
def test_encoder_flags_reach_the_new_model(tmp_path, frontend):
    """--encoder_hop, --encoder_dropout, --frontend_width, --log_mel_stack and --bridge_strides shape a random-init
    model (either front end); the recipe's own values when none is given."""
    import itertools

    import train_hf
    from modeling_hubert_gpt.frames_hubert_gpt import samples_per_frame

    texts = list(itertools.islice(corpus.all_sentences(), 2000))
    mine = ["--encoder_hop", "320", "--encoder_dropout", "0", "--frontend_width", "48", "--log_mel_stack", "1",
            "--bridge_strides", "2,2"]
    for argv, hop, dropout, width, stack, strides in (([], 640, 0.05, 192, 4, [2, 1]), (mine, 320, 0.0, 48, 1, [2, 2])):
        margs = train_hf.parse(["--output_dir", "out", "--audio_frontend", frontend, *argv])[0]
        model, _ = train_hf.build_model(margs, texts, str(tmp_path / f"work{hop}"))
        audio = model.config.audio_config
        assert samples_per_frame(model) == hop == int(torch.tensor(audio.conv_stride).prod())
        assert int(model.encoder_output_lengths(torch.tensor([32000]))[0]) == {320: 99, 640: 49}[hop]  # 2 s
        assert audio.hidden_dropout == audio.attention_dropout == audio.activation_dropout == dropout
        assert audio.conv_dim == (width,) * len(audio.conv_stride)
        assert model.config.bridge_config == {"kernel_sizes": [4, 4], "strides": strides}
        if frontend == "log_mel":
            assert model.audio_tower.model.feature_extractor.proj.in_channels == 80 * stack
    with pytest.raises(ValueError, match=r"--bridge_strides takes comma-separated whole numbers \(e.g. 2,1\); got '2;1'"):
        train_hf.build_model(train_hf.parse(["--output_dir", "out", "--bridge_strides", "2;1"])[0], texts,
                             str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="--bridge_strides sets the conv bridge's layers; the 'ctc' bridge has none"):
        train_hf.build_model(train_hf.parse(["--output_dir", "out", "--bridge", "ctc", "--bridge_strides", "2"])[0],
                             texts, str(tmp_path / "ctc"))
