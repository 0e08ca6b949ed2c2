"""The bridge interface: a user's own bridge is one class plus one register_bridge call (docs/own_bridge.md's snippet, verbatim)."""

import pytest
import torch
from test_model import LENGTHS, padded_batch, strip

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration
from modeling_hubert_gpt.bridges_hubert_gpt import HubertGptConvBridge, HubertGptCtcBridge, bridge_class

# --- docs/own_bridge.md (keep identical) ---
from torch import nn  # noqa: E402

from modeling_hubert_gpt import BridgeOutput, HubertGptBridge, register_bridge  # noqa: E402


class MeanPoolBridge(HubertGptBridge):
    """Each 4 encoder frames averaged into one (50 Hz -> 12.5 Hz), then a Linear to the LLM width."""

    default_options = {"factor": 4}

    def __init__(self, config):
        super().__init__()
        self.factor = self.check_options(config.bridge_config)["factor"]
        self.proj = nn.Linear(config.audio_config.hidden_size, config.text_config.hidden_size)

    @property
    def min_frames(self):
        return self.factor

    def output_lengths(self, frame_lengths):
        return torch.div(frame_lengths, self.factor, rounding_mode="floor")

    def forward(self, hidden, frame_lengths, ctc_logits=None):
        usable = hidden.shape[1] // self.factor * self.factor
        pooled = hidden[:, :usable].unflatten(1, (-1, self.factor)).mean(2)  # (B, T // factor, Da)
        return BridgeOutput(self.proj(pooled), self.output_lengths(frame_lengths))


register_bridge("meanpool", MeanPoolBridge)
# --- end of the docs/own_bridge.md snippet ---


def meanpool_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return HubertGptForConditionalGeneration(tiny_config("meanpool", **kwargs)).eval()


def test_registry_builds_the_registered_class_and_refuses_unknown_names():
    assert bridge_class("conv") is HubertGptConvBridge and bridge_class("ctc") is HubertGptCtcBridge
    assert bridge_class("meanpool") is MeanPoolBridge
    with pytest.raises(ValueError, match="'nope' is not registered.*'conv'.*'ctc'.*'meanpool'"):
        HubertGptConfig(bridge_type="nope")
    with pytest.raises(TypeError, match="HubertGptBridge subclass"):
        register_bridge("bad", nn.Linear)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['size'\].*\['factor'\]"):
        tiny_config("meanpool", bridge_config={"size": 2})
    with pytest.raises(ValueError, match="kernel_sizes .* and strides"):
        tiny_config("conv", bridge_config={"kernel_sizes": [4], "strides": [2, 2]})


def test_own_bridge_batched_equals_single_and_sets_the_shortest_input():
    model = meanpool_model(bridge_config={"factor": 2})
    assert model.bridge.factor == 2 and model.config.bridge_config == {"factor": 2}
    assert model.min_input_samples == model.audio_tower.min_samples(2)
    with pytest.raises(ValueError, match=f"needs at least {model.min_input_samples}"):
        model.generate(torch.zeros(1, model.min_input_samples - 1))
    values, mask = padded_batch()
    batched = model.generate(values, mask)
    speech = model.encode_speech(values, mask)
    pad = model.generation_config.pad_token_id
    for i, n in enumerate(LENGTHS):
        single = model.generate(values[i : i + 1, :n])
        assert strip(batched[i], pad) == strip(single[0], pad)
        alone = model.encode_speech(values[i : i + 1, :n])
        assert int(speech.lengths[i]) == int(alone.lengths[0]) == int(model.encoder_output_lengths(torch.tensor([n]))[0]) // 2
        torch.testing.assert_close(speech.embeds[i, : speech.lengths[i]], alone.embeds[0], atol=1e-5, rtol=1e-4)


def test_own_bridge_trains_and_saves_and_loads(tmp_path):
    model = meanpool_model().train()
    values, mask = padded_batch()
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100], [10, 2, -100, -100]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = model.bridge.proj.weight.detach().clone()
    losses = []
    for _ in range(30):
        loss = model(values, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(before, model.bridge.proj.weight)
    model.eval().save_pretrained(tmp_path)
    loaded = HubertGptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(loaded.bridge) is MeanPoolBridge and loaded.config.bridge_type == "meanpool"
    assert torch.equal(model.generate(values, mask), loaded.generate(values, mask))


def test_the_docs_snippet_is_the_code_tested_here():
    from pathlib import Path

    here = Path(__file__).read_text(encoding="utf-8")
    tested = here.split("# --- docs/own_bridge.md (keep identical) ---\n")[1].split("\n# --- end of the")[0]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "own_bridge.md").read_text(encoding="utf-8")
    shown = docs.split("```python\n")[1].split("```")[0]
    # the same code lines, but for the test module's lint marks and its `import torch` (made at its top)
    assert [line for line in shown.splitlines() if line.strip() and line != "import torch"] == \
        [line for line in tested.replace("  # noqa: E402", "").splitlines() if line.strip()]
