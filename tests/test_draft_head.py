"""hubert_gpt_training.draft_head: refitting a conv model's CTC draft head touches nothing else."""

import pytest
import torch
from helpers import make_audio

from hubert_gpt_training.data import SpeechCollator
from hubert_gpt_training.draft_head import fit_draft_head
from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration

TEXTS = ["今日は雨", "明日は晴れ", "猫が水を飲む", "本を読む"]


@pytest.mark.parametrize("characters,kernel", [(True, 1), (False, 1), (True, 3)],
                         ids=["character-head", "token-head", "character-conv-head"])
def test_refit_lowers_the_ctc_loss_and_changes_only_the_head(tiny_processor, characters, kernel):
    torch.manual_seed(0)
    vocab = sorted(set("".join(TEXTS))) if characters else None
    config = tiny_config("conv", tokenizer=tiny_processor.tokenizer, ctc_head=True, ctc_head_trains_encoder=False,
                         ctc_head_vocab=vocab, ctc_head_kernel_size=kernel)
    model = HubertGptForConditionalGeneration(config).train()
    rows = [{"audio": make_audio(0.6 + 0.1 * i, seed=i), "text": t} for i, t in enumerate(TEXTS)]
    collator = SpeechCollator(tiny_processor, ctc_vocab=vocab)
    batch = collator(rows)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = model.eval().generate(batch["input_values"], batch["attention_mask"])
    model.train()

    report = fit_draft_head(model, rows, collator, steps=100, batch_size=2)

    assert model.training  # left as it was
    assert report["utterances"] == 4 and report["steps"] == 100
    assert report["ctc_loss_last"] < 0.5 * report["ctc_loss_first"]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    head = ["weight", "bias"] if kernel == 1 else ["conv.weight", "conv.bias", "out.weight", "out.bias"]
    assert changed == {f"bridge.ctc_head.{name}" for name in head}
    torch.testing.assert_close(model.eval().generate(batch["input_values"], batch["attention_mask"]), tokens,
                               rtol=0, atol=0)


def test_refit_needs_a_draft_head_trained_alone(tiny_processor):
    model = HubertGptForConditionalGeneration(tiny_config("conv", ctc_head=True))  # its loss trains the encoder
    rows = [{"audio": make_audio(0.5, seed=0), "text": "本"}]
    with pytest.raises(ValueError, match="draft head trained alone"):
        fit_draft_head(model, rows, SpeechCollator(tiny_processor), steps=1)
