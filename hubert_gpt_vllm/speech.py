"""What vLLM must know about one utterance before the encoder runs, read from hubert-gpt's own code.

`SpeechLayout` holds the HF model's audio tower and bridge built on the meta device (no weights, no memory) and its
generation config, so the number of speech positions, nue-asr's new-token bound and the longest utterance come from
the same methods and functions as in `HubertGptForConditionalGeneration` (duration_hubert_gpt.py,
generation_hubert_gpt.py). The prompt is the HF model's: [bos] + one placeholder per bridge frame + [sep].
"""

import torch
from transformers import GenerationConfig

from modeling_hubert_gpt import HubertGptConfig
from modeling_hubert_gpt.audio_encoder_hubert_gpt import HubertGptAudioEncoder
from modeling_hubert_gpt.bridges_hubert_gpt import bridge_class
from modeling_hubert_gpt.duration_hubert_gpt import longest_input_samples
from modeling_hubert_gpt.generation_hubert_gpt import BOUND_DEFAULTS, max_new_tokens_for

SERVED_BRIDGES = ("conv",)  # bridges whose output length follows from the audio length alone


def served_config(hf_config):
    """A config read by this package's HubertGptConfig (whatever remote code the folder holds), checked for serving."""
    config = HubertGptConfig(**{k: v for k, v in hf_config.to_dict().items() if k != "model_type"})
    if config.bridge_type not in SERVED_BRIDGES:
        raise ValueError(
            f"vLLM serves hubert-gpt models with bridge_type in {SERVED_BRIDGES}, not {config.bridge_type!r}: vLLM "
            "reserves one prompt position per speech frame before the encoder runs, and the ctc bridge keeps as many "
            "frames as its CTC head hears (known only after encoding); its upper bound (every encoder frame) would "
            "change what the LLM reads"
        )
    if config.prompt_audio_token_id is None:
        raise ValueError(
            "config.prompt_audio_token_id is None (text_config.pad_token_id is unset or is the prompt's bos/sep "
            "token): set it to an in-vocabulary token id other than those, e.g. in config.json"
        )
    return config


class SpeechLayout:
    """Speech positions, new-token bound and prompt of utterances for one model (config + its folder)."""

    def __init__(self, config, generation_config=None):
        self.config = config
        self.generation_config = generation_config or GenerationConfig(**BOUND_DEFAULTS)
        with torch.device("meta"):  # lengths only: the modules' methods, none of their weights
            self.audio_tower = HubertGptAudioEncoder(config)
            self.bridge = bridge_class(config.bridge_type)(config)

    @classmethod
    def from_folder(cls, folder, hf_config):
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:  # no generation_config.json: the HF model's defaults
            generation_config = None
        return cls(served_config(hf_config), generation_config)

    def speech_positions(self, sample_lengths):
        """Bridge frames (B,) for audio of `sample_lengths` (B,) samples."""
        return self.bridge.output_lengths(self.audio_tower.output_lengths(torch.as_tensor(sample_lengths)))

    def max_new_tokens(self, sample_lengths):
        """nue-asr's new-token bound (B,) for audio of `sample_lengths` (B,) samples."""
        return max_new_tokens_for(self.generation_config, torch.as_tensor(sample_lengths), self.config.sampling_rate)

    @property
    def longest_samples(self):
        """The most samples one utterance may hold (prompt + bound within the LLM's context); None: no limit."""
        return longest_input_samples(self)

    @property
    def min_samples(self):
        """The fewest samples that give one speech position."""
        return self.audio_tower.min_samples(self.bridge.min_frames)

    def prompt_token_ids(self):
        """The token prompt before expansion: the placeholder stands for all speech positions of one utterance."""
        return [self.config.prompt_bos_token_id, self.config.prompt_audio_token_id, self.config.prompt_sep_token_id]

