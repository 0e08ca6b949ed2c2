"""vLLM's multimodal processing for hubert-gpt: audio -> `input_values` and the expanded prompt.

Each audio item goes through the model folder's own HF processor (HubertGptProcessor: mono float, its feature
extractor's normalisation), so vLLM's encoder input is exactly what `processor(audio=...)` gives the HF model. The
prompt [bos] + placeholder + [sep] gets one placeholder per bridge frame, counted from the audio length before the
encoder runs (SpeechLayout, the HF model's own length methods).
"""

from functools import cached_property

import numpy as np
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
)
from vllm.multimodal.processing.processor import ProcessorInputs

from .speech import SpeechLayout

# vLLM resamples audio items to the model's rate; scipy: the serving set-up has no torchaudio (see scripts/setup.sh)
RESAMPLE_METHOD = "scipy"


class HubertGptProcessingInfo(BaseProcessingInfo):
    @cached_property
    def layout(self):
        return SpeechLayout.from_folder(self.ctx.model_config.model, self.get_hf_config())

    def get_data_parser(self):
        return MultiModalDataParser(target_sr=self.layout.config.sampling_rate, target_channels=1,
                                    audio_resample_method=RESAMPLE_METHOD,
                                    expected_hidden_size=self._get_expected_hidden_size())

    def get_supported_mm_limits(self):
        return {"audio": 1}  # one utterance per prompt, as the HF model's prompt has it

    def longest_dummy_samples(self, seq_len):
        """The longest audio vLLM profiles with: the longest utterance the LLM context takes (or seq_len frames)."""
        longest = self.layout.longest_samples
        return longest if longest is not None else self.layout.audio_tower.min_samples(seq_len)

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"audio": int(self.layout.speech_positions([self.longest_dummy_samples(seq_len)])[0])}


class HubertGptDummyInputsBuilder(BaseDummyInputsBuilder[HubertGptProcessingInfo]):
    def get_dummy_text(self, mm_counts):
        return ""  # the dummy prompt is built from token ids (HubertGptMultiModalProcessor.get_dummy_inputs)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        length = self.info.longest_dummy_samples(seq_len)
        return {"audio": self._get_dummy_audios(length=length, num_audios=mm_counts.get("audio", 0),
                                                overrides=mm_options.get("audio"))}


class HubertGptMultiModalProcessor(BaseMultiModalProcessor[HubertGptProcessingInfo]):
    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        mm_data = self.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, mm_options)
        prompt = self.info.layout.prompt_token_ids() * mm_counts.get("audio", 0)
        return ProcessorInputs(prompt=prompt, mm_data_items=self.info.parse_mm_data(mm_data, validate=False))

    def _call_hf_processor(self, hf_data, hf_kwargs):
        """The folder's HF processor, one utterance at a time: input_values is a list of (S_i,) float tensors."""
        processor = self.info.get_hf_processor()
        rate = self.info.layout.config.sampling_rate
        values = []
        for audio in hf_data["audio"]:
            features = processor(audio=np.asarray(audio, dtype=np.float32), sampling_rate=rate, return_tensors="pt")
            values.append(features["input_values"][0])  # (S,) one utterance: no padding
        return BatchFeature({"input_values": values})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        return {"input_values": MultiModalFieldConfig.batched("audio")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        layout = self.info.layout

        def speech_positions(item_idx):
            samples = mm_items.get_items("audio", AudioProcessorItems).get_audio_length(item_idx)
            if samples < layout.min_samples:
                raise ValueError(f"audio {item_idx} has {samples} samples; this model needs at least "
                                 f"{layout.min_samples} ({layout.min_samples / layout.config.sampling_rate:.3f} s)")
            return [layout.config.prompt_audio_token_id] * int(layout.speech_positions([samples])[0])

        return [PromptReplacement(modality="audio", target=[layout.config.prompt_audio_token_id],
                                  replacement=speech_positions)]
