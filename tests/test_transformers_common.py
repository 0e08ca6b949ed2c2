"""transformers' common model and configuration tests (tests/transformers_suite.py fetches them), for each bridge
and encoder norm style. Tests that do not apply to a speech-to-text model are listed in NOT_APPLICABLE with why."""

import unittest
from pathlib import Path

import torch

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptConfig, HubertGptForConditionalGeneration
import transformers_suite

ModelTesterMixin, ConfigTester, _ = transformers_suite.load(Path(__file__).parent.parent / ".pytest_cache" / "suite")

# test -> why it does not apply (both classes)
NOT_APPLICABLE = {
    "test_resize_tokens_embeddings": "runs the resized model on input_ids prompts; resizing with a CTC head is "
                                     "tested in tests/test_model_outputs.py",
    "test_resize_embeddings_untied": "after shrinking the vocabulary it clamps input_ids, which this model does not "
                                     "take; shrinking and growing with a CTC head are tested in tests/test_model_outputs.py",
    "test_correct_missing_keys": "reloads model.base_model (the LLM, with its own config class) as hubert-gpt: it "
                                 "assumes base and head models share one config, which a pairing of two pretrained "
                                 "models does not",
}
# test -> why it does not apply to the ctc bridge
NOT_APPLICABLE_CTC = {
    "test_attention_outputs": "checks shapes against a fixed prompt length; the ctc bridge's length depends on the "
                              "CTC head's predictions (the conv-bridge class checks the same outputs)",
    "test_hidden_states_output": "same reason as test_attention_outputs",
}


def not_applicable(reasons):
    """Class decorator: replace each listed test by a skip carrying its reason."""
    def decorate(cls):
        for name, reason in reasons.items():
            setattr(cls, name, unittest.skip(f"not applicable: {reason}")(lambda self: None))
        return cls
    return decorate


class _Tester:
    """Tiny configs and a batch of audio of two lengths for the common tests."""

    batch_size = 2
    seq_length = 8000  # samples: 24 encoder frames (the shorter utterance: 3/4 of it)
    is_training = True
    num_hidden_layers = num_attention_heads = 2  # the LLM's, whose hidden states and attentions forward returns
    hidden_size = 32
    encoder_seq_length = 6  # LLM positions of the conv bridge's prompt: bos + 4 bridge frames (8000 samples) + sep

    def __init__(self, parent, bridge_type, feat_extract_norm, **config_kwargs):
        self.parent = parent
        self.bridge_type, self.feat_extract_norm, self.config_kwargs = bridge_type, feat_extract_norm, config_kwargs

    def get_config(self):
        return tiny_config(self.bridge_type, self.feat_extract_norm, width=32, layers=2, **self.config_kwargs)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        generator = torch.Generator().manual_seed(0)
        input_values = torch.randn(self.batch_size, self.seq_length, generator=generator) * 0.1
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long)
        attention_mask[-1, 3 * self.seq_length // 4 :] = 0  # the last utterance is shorter
        return config, {"input_values": input_values, "attention_mask": attention_mask}


class _CommonTests(ModelTesterMixin):
    all_model_classes = (HubertGptForConditionalGeneration,)
    _is_composite = True  # audio_config + text_config
    test_can_init_all_missing_weights_before_2023 = True  # our _init_weights covers every weight: check it
    # transformers' generation tests (not in the sdist) prompt with input_ids; generate here takes audio. What they
    # check is covered by tests/test_generation_common.py.
    all_generative_model_classes = ()
    bridge_type = feat_extract_norm = None
    config_kwargs = {}

    def setUp(self):
        self.model_tester = _Tester(self, self.bridge_type, self.feat_extract_norm, **self.config_kwargs)
        self.config_tester = ConfigTester(self, config_class=HubertGptConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:  # a transcript per utterance, -100 padded, ending with eos
            config = self.model_tester.get_config()
            eos = config.text_config.eos_token_id
            inputs_dict["labels"] = torch.tensor([[5, 6, 7, eos], [8, 9, eos, -100]])
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()


@not_applicable(NOT_APPLICABLE)
class ConvBridgeLayerNormTest(_CommonTests, unittest.TestCase):
    bridge_type, feat_extract_norm = "conv", "layer"


@not_applicable({**NOT_APPLICABLE, **NOT_APPLICABLE_CTC})
class CtcBridgeGroupNormTest(_CommonTests, unittest.TestCase):
    bridge_type, feat_extract_norm = "ctc", "group"
