"""hubert_gpt_training.draft_head: refitting a conv model's CTC draft head (model.ctc_head) touches nothing else."""

import numpy as np
import pytest
import torch
from helpers import make_audio, save_audio_split

from hubert_gpt_training.data import SpeechCollator
from hubert_gpt_training.draft_head import fit_draft_head, joined_rows, non_speech_rows
from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration

TEXTS = ["今日は雨", "明日は晴れ", "猫が水を飲む", "本を読む"]


@pytest.mark.parametrize("characters,kernel", [(True, 1), (False, 1), (True, 3)],
                         ids=["character-head", "token-head", "character-conv-head"])
def test_refit_lowers_the_ctc_loss_and_changes_only_the_head(tiny_processor, characters, kernel):
    torch.manual_seed(0)
    vocab = sorted(set("".join(TEXTS))) if characters else None
    config = tiny_config("conv", tokenizer=tiny_processor.tokenizer,
                         ctc_head_config={"vocab": vocab, "kernel_size": kernel})
    model = HubertGptForConditionalGeneration(config).train()
    rows = [{"audio": make_audio(0.6 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(TEXTS)]
    collator = SpeechCollator(tiny_processor, ctc_vocab=vocab)
    batch = collator(rows)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unguarded = dict(no_speech_threshold=None, loop_guard=False)  # the guards read the head the refit changes
    tokens = model.eval().generate(batch["input_values"], batch["attention_mask"], **unguarded)
    model.train()

    report = fit_draft_head(model, rows, collator, steps=100, batch_size=2)

    assert model.training  # left as it was
    assert report["utterances"] == 4 and report["steps"] == 100
    assert report["ctc_loss_last"] < 0.5 * report["ctc_loss_first"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    head = ["out.weight", "out.bias"] + (["conv.weight", "conv.bias"] if kernel > 1 else [])
    assert changed == {f"ctc_head.{name}" for name in head}
    torch.testing.assert_close(model.eval().generate(batch["input_values"], batch["attention_mask"], **unguarded), tokens,
                               rtol=0, atol=0)


def test_refit_needs_a_draft_head_the_bridge_does_not_use(tiny_processor):
    rows = [{"audio": make_audio(0.5, seed=0), "text": "本"}]
    headless = HubertGptForConditionalGeneration(tiny_config("conv"))
    with pytest.raises(ValueError, match="draft head the bridge does not use.*no CTC head"):
        fit_draft_head(headless, rows, SpeechCollator(tiny_processor), steps=1)
    ctc = HubertGptForConditionalGeneration(tiny_config("ctc"))  # its head picks the prompt's frames
    before = {name: p.detach().clone() for name, p in ctc.named_parameters()}
    with pytest.raises(ValueError, match="draft head the bridge does not use.*'ctc' bridge picks frames"):
        fit_draft_head(ctc, rows, SpeechCollator(tiny_processor), steps=1)
    assert all(torch.equal(p, before[name]) for name, p in ctc.named_parameters())


def test_train_hf_refits_only_a_head_trained_alone_that_the_bridge_does_not_use(tiny_processor):
    """train_hf.refit_draft_head: the caller knows how the head trained (--ctc_trains_encoder false)."""
    from types import SimpleNamespace

    import train_hf

    torch.manual_seed(0)
    rows = [{"audio": make_audio(0.6 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(TEXTS)]
    collator = SpeechCollator(tiny_processor)
    rargs = SimpleNamespace(draft_head_fit_steps=3, draft_head_fit_utterances=4, draft_head_fit_joined=2,
                            draft_head_fit_non_speech=1)
    targs = SimpleNamespace(deepspeed=None, world_size=1, seed=0)

    def refit(model, trains_encoder):
        margs = SimpleNamespace(ctc_trains_encoder=trains_encoder, lora=False)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        report = train_hf.refit_draft_head(model, rows, collator, rargs, margs, targs)
        changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        return report, changed

    tokenizer = tiny_processor.tokenizer
    draft = HubertGptForConditionalGeneration(tiny_config("conv", tokenizer=tokenizer, ctc_head_config={}))
    assert refit(draft, trains_encoder=True) == (None, set())  # its loss trained the encoder: joint CTC, kept
    report, changed = refit(draft, trains_encoder=False)
    assert report["steps"] == 3 and report["utterances"] == 4 + 2 + 1
    assert changed == {"ctc_head.out.weight", "ctc_head.out.bias"}
    for config in (tiny_config("conv", tokenizer=tokenizer), tiny_config("ctc", tokenizer=tokenizer)):
        assert refit(HubertGptForConditionalGeneration(config), trains_encoder=False) == (None, set())


def test_joined_rows_speak_utterances_in_a_row_deterministically():
    rows = [{"audio": make_audio(0.5 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(TEXTS)]
    joined = joined_rows(rows, 5, seed=3)
    again = joined_rows(rows, 5, seed=3)
    assert [r["text"] for r in joined] == [r["text"] for r in again]
    assert all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(joined, again))
    for row in joined:
        parts = [r for r in rows if r["text"] in row["text"]]
        assert 2 <= len(parts) <= 3 and len(row["text"]) == sum(len(r["text"]) for r in parts)
        gap = len(row["audio"]) - sum(len(r["audio"]) for r in parts)  # the silence between them
        assert 0 <= gap <= 0.6 * 16000 * (len(parts) - 1)
        first = next(r for r in parts if row["text"].startswith(r["text"]))
        np.testing.assert_array_equal(row["audio"][: len(first["audio"])], first["audio"])


def test_refit_with_joined_rows_reads_them_too(tiny_processor):
    torch.manual_seed(0)
    vocab = sorted(set("".join(TEXTS)))
    model = HubertGptForConditionalGeneration(tiny_config(
        "conv", tokenizer=tiny_processor.tokenizer, ctc_head_config={"vocab": vocab})).train()
    rows = [{"audio": make_audio(0.6 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(TEXTS)]
    report = fit_draft_head(model, rows, SpeechCollator(tiny_processor, ctc_vocab=vocab), steps=20, batch_size=2,
                            joined=3, non_speech=4)
    assert report["utterances"] == 4 + 3 + 4 and np.isfinite(report["ctc_loss_last"])


def test_non_speech_rows_are_silence_noise_and_tones_with_nothing_to_write():
    rows = non_speech_rows(8, seed=2)
    assert [r["text"] for r in rows] == [""] * 8
    assert all(r["audio"].dtype == np.float32 and 0.5 * 16000 <= len(r["audio"]) <= 6 * 16000 for r in rows)
    assert not rows[0]["audio"].any() and not rows[4]["audio"].any()  # every 4th: digital silence
    assert all(0 < np.abs(r["audio"]).max() < 1 for k, r in enumerate(rows) if k % 4)
    assert all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(rows, non_speech_rows(8, seed=2)))


def test_refit_command_rewrites_only_the_head_of_a_saved_folder(tmp_path, tiny_processor):
    from transformers import AutoModel

    from hubert_gpt_training.draft_head import main

    torch.manual_seed(0)
    vocab = sorted(set("".join(TEXTS)))
    model = HubertGptForConditionalGeneration(tiny_config(
        "conv", tokenizer=tiny_processor.tokenizer, ctc_head_config={"vocab": vocab})).eval()
    model.save_pretrained(tmp_path / "model")
    tiny_processor.save_pretrained(tmp_path / "model")
    save_audio_split(tmp_path / "data", "train", [make_audio(0.6 + 0.1 * i, seed=i) for i in range(len(TEXTS))], TEXTS)

    main([str(tmp_path / "model"), "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
          "--steps", "5", "--joined", "2", "--non_speech", "2"])

    before = dict(model.named_parameters())
    after = dict(AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True).named_parameters())
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name].detach(), after[name].detach())}
    assert changed == {"ctc_head.out.weight", "ctc_head.out.bias"}
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
