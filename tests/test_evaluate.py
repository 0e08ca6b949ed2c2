"""hubert-gpt-evaluate: test sets as local parquet folders in the Hub test sets' schema (audio + transcription,
split "test", data/test-0000i-of-0000n.parquet), a tiny model saved as a folder, CER per published normaliser,
per-utterance JSONL, results JSON and the card's model-index."""

import io
import json
import os

import datasets
import jiwer
import numpy as np
import pytest
import soundfile
import torch
from helpers import make_audio
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hubert_gpt_training import evaluation
from hubert_gpt_training.normalizers import NORMALIZERS, kotoba_whisper, raw, reazonspeech
from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration

RATE = 16000
JSUT = ["水をマレーシアから買わなくてはならないのです。", "木曜日、停戦会談は、何の進展もないまま終了しました。",
        "上院議員は私がデータをゆがめたと告発した。", "１月２３日、ＡＢＣ放送は「明日は晴れ」と伝えた！"]
COMMON_VOICE = ["今日は晴れです。.", "猫が水を飲みたい。.", "彼女は3.5キロ歩いた。."]  # CV8 references end in "。."


def test_normalisers_as_published():
    text = "「今日は」、ＡＢＣ放送で１２３円！ (笑) [noise] <unk> Hello,World 3.5。."
    assert raw(text) == text
    # Whisper's BasicTextNormalizer: lowercase, bracketed spans dropped, NFKC, marks/symbols/punctuation -> space;
    # then spaces removed
    assert kotoba_whisper(text) == "今日はabc放送で123円helloworld35"
    # ReazonSpeech: 、。「」『』，,？！!? deleted, full-width letters/digits half-width, numbers read out in Japanese
    assert reazonspeech(text) == "今日はABC放送で百二十三円 (笑) [noise] <unk> HelloWorld 三点五."
    assert NORMALIZERS["hubert_gpt"](text) == "今日はabc放送で123円 笑 noise unk helloworld 35"


def flac_bytes(audio):
    buf = io.BytesIO()
    soundfile.write(buf, audio, RATE, format="FLAC")
    return buf.getvalue()


def write_test_set(folder, texts, seed, shards=2):
    """A folder as `hf download japanese-asr/ja_asr.*` gives: data/test-0000i-of-0000n.parquet, columns audio
    (Audio(16 kHz): bytes + path) and transcription. Returns the audio arrays."""
    audios = [make_audio(0.4 + 0.15 * i, seed=seed + i) for i in range(len(texts))]
    plain = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                               "transcription": datasets.Value("string")})
    rows = {"audio": [{"bytes": flac_bytes(a), "path": f"{seed}_{i}.flac"} for i, a in enumerate(audios)],
            "transcription": texts}
    table = datasets.Dataset.from_dict(rows, features=plain).cast(
        datasets.Features({"audio": datasets.Audio(sampling_rate=RATE), "transcription": datasets.Value("string")}))
    os.makedirs(folder / "data")
    for i in range(shards):
        table.shard(shards, i, contiguous=True).to_parquet(folder / "data" / f"test-{i:05d}-of-{shards:05d}.parquet")
    return [soundfile.read(io.BytesIO(flac_bytes(a)), dtype="float32")[0] for a in audios]  # as stored (FLAC)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_processor):
    folder = tmp_path_factory.mktemp("model") / "tiny-asr"
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config(tokenizer=tiny_processor.tokenizer)).eval()
    model.generation_config.max_new_tokens_base = 6  # short random transcripts keep the test quick
    with torch.no_grad():
        model.bridge.proj.weight.mul_(30)  # a louder speech prompt: transcripts that differ between utterances
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def test_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return {"jsut": (root / "ja_asr.jsut_basic5000", write_test_set(root / "ja_asr.jsut_basic5000", JSUT, 0)),
            "cv": (root / "ja_asr.common_voice_8_0", write_test_set(root / "ja_asr.common_voice_8_0", COMMON_VOICE, 10))}


def expected_hypotheses(model_dir, audios):
    """Each utterance alone through model.generate: what the batched pipeline must give."""
    from transformers import AutoProcessor

    model = HubertGptForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return [processor.batch_decode(model.generate(**processor(audio=[a], sampling_rate=RATE)),
                                   skip_special_tokens=True)[0] for a in audios]


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_scores_each_test_set_and_updates_the_card(model_dir, test_sets, tmp_path, capsys):
    out = tmp_path / "eval"
    jsut, cv = test_sets["jsut"][0], test_sets["cv"][0]
    assert evaluation.main([str(model_dir), "--dataset", str(jsut), str(cv), "--batch_size", "3",
                            "--output_dir", str(out), "--update_card"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["datasets"]) == [str(jsut), str(cv)] and summary["model"] == str(model_dir)
    for key, texts in (("jsut", JSUT), ("cv", COMMON_VOICE)):
        folder, audios = test_sets[key]
        lines = read_lines(out / f"{folder.name}.jsonl")
        hypotheses = expected_hypotheses(model_dir, audios)
        assert [line["index"] for line in lines] == list(range(len(texts)))
        assert [line["reference"] for line in lines] == texts
        assert [line["hypothesis"] for line in lines] == hypotheses  # batched pipeline == one at a time
        assert [line["seconds"] for line in lines] == [round(len(a) / RATE, 3) for a in audios]
        result = json.loads((out / f"{folder.name}.json").read_text())
        assert result == summary["datasets"][str(folder)]
        assert (result["num_utterances"], result["split"]) == (len(texts), "test")
        for name, normalize in NORMALIZERS.items():
            refs, hyps = [normalize(t) for t in texts], [normalize(h) for h in hypotheses]
            assert all(refs)
            for line, ref, hyp in zip(lines, refs, hyps):
                assert line["cer"][name] == pytest.approx(jiwer.cer(ref, hyp))
            assert result["cer"][name] == pytest.approx(jiwer.cer(refs, hyps))  # corpus: sum edits / sum chars
            assert result["reference_characters"][name] == sum(len(r) for r in refs)
    printed = capsys.readouterr().out
    assert "| ja_asr.jsut_basic5000 | 4 |" in printed and "| ja_asr.common_voice_8_0 | 3 |" in printed

    # the card: made (none existed), one model-index entry per dataset, a CER per normaliser in each
    card = ModelCard.load(model_dir / "README.md")
    index = card.data.to_dict()["model-index"][0]["results"]
    assert [entry["dataset"]["type"] for entry in index] == [str(jsut), str(cv)]
    for entry in index:
        result = summary["datasets"][entry["dataset"]["type"]]
        assert {m["config"]: m["value"] for m in entry["metrics"]} == result["cer"]
        assert {m["type"] for m in entry["metrics"]} == {"cer"} and entry["dataset"]["split"] == "test"


def test_card_update_keeps_other_entries_and_replaces_a_datasets_figures(model_dir, test_sets, tmp_path):
    folder = tmp_path / "model"
    os.makedirs(folder)
    for name in os.listdir(model_dir):
        if name != "README.md":
            os.link(model_dir / name, folder / name)
    training = EvalResult(task_type="automatic-speech-recognition", dataset_type="ja-synth", dataset_name="ja-synth",
                          dataset_split="test", metric_type="cer", metric_value=0.025)
    ModelCard(f"---\n{ModelCardData(model_name='mine', eval_results=[training]).to_yaml()}\n---\n\n# mine\n\nBody.\n"
              ).save(folder / "README.md")
    jsut = str(test_sets["jsut"][0])
    for max_samples in ("2", "4"):  # evaluated twice: the second run's figures replace the first's
        evaluation.main([str(folder), "--dataset", jsut, "--max_samples", max_samples, "--output_dir",
                         str(tmp_path / f"eval{max_samples}"), "--update_card"])
    card = ModelCard.load(folder / "README.md")
    assert card.text.strip() == "# mine\n\nBody."
    index = card.data.to_dict()["model-index"][0]
    assert index["name"] == "mine"
    assert [entry["dataset"]["type"] for entry in index["results"]] == ["ja-synth", jsut]
    latest = json.loads((tmp_path / "eval4" / "results.json").read_text())["datasets"][jsut]
    assert latest["num_utterances"] == 4
    assert {m["config"]: m["value"] for m in index["results"][1]["metrics"]} == latest["cer"]


def test_manifest_with_relative_paths(model_dir, tmp_path):
    audios = [make_audio(0.5, seed=30), make_audio(0.7, seed=31)]
    for i, audio in enumerate(audios):
        soundfile.write(tmp_path / f"u{i}.wav", audio, RATE, subtype="FLOAT")
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"u{i}.wav", "text": t}, ensure_ascii=False) + "\n"
                                for i, t in enumerate(["今日は", "猫が"])), encoding="utf-8")
    out = tmp_path / "eval"
    evaluation.main([str(model_dir), "--dataset", str(manifest), "--audio_column", "path", "--text_column", "text",
                     "--output_dir", str(out)])
    lines = read_lines(out / "test.jsonl.jsonl")
    assert [line["hypothesis"] for line in lines] == expected_hypotheses(model_dir, audios)
    assert [line["reference"] for line in lines] == ["今日は", "猫が"]


def test_bad_input_is_named(model_dir, test_sets, tmp_path, capsys):
    jsut = str(test_sets["jsut"][0])
    with pytest.raises(ValueError, match=r"has no column\(s\) \['text'\]; its columns are \['audio', 'transcription'\]"):
        evaluation.main([str(model_dir), "--dataset", jsut, "--text_column", "text", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        evaluation.main(["someone/model", "--dataset", jsut, "--update_card"])
    assert "--update_card writes MODEL/README.md: 'someone/model' is not a local folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown split"):
        evaluation.main([str(model_dir), "--dataset", jsut, "--split", "validation", "--output_dir", str(tmp_path)])
    broken = tmp_path / "broken.jsonl"
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    broken.write_text(json.dumps({"audio": "bad.wav", "transcription": "x"}) + "\n")
    with pytest.raises(ValueError, match="row 0: unreadable audio"):
        evaluation.main([str(model_dir), "--dataset", str(broken), "--output_dir", str(tmp_path / "e")])
