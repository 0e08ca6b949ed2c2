"""hubert-gpt as a vLLM model: the HF audio tower and bridge in front of vLLM's own language model.

- `embed_multimodal`: audio -> HubertGptAudioEncoder -> bridge, the very modules of modeling_hubert_gpt/ (so every
  utterance of a batch is encoded as it is alone, as in the HF model), one (T'_i, Dt) tensor per utterance.
- The LLM: `init_vllm_registered_model` on `text_config` (vLLM's implementation: paged attention, continuous
  batching, tensor / pipeline parallel). GPT-NeoX runs through vLLM's Transformers backend.
- Weights: the HF folder's safetensors as they are (`audio_tower.*`, `bridge.*`, `language_model.*`); a CTC head
  (`ctc_head.*`: drafts, timestamps, guards of the HF model) is not served and its weights are skipped.
- `SupportsTranscription`: the OpenAI `/v1/audio/transcriptions` endpoint; vLLM cuts audio longer than the model
  takes (the LLM context must hold prompt + nue-asr's bound: duration_hubert_gpt.py) into chunks.
"""

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING
from vllm.config import SpeechToTextConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP, SupportsTranscription
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from modeling_hubert_gpt.audio_encoder_hubert_gpt import HubertGptAudioEncoder
from modeling_hubert_gpt.bridges_hubert_gpt import bridge_class

from .processing import HubertGptDummyInputsBuilder, HubertGptMultiModalProcessor, HubertGptProcessingInfo
from .speech import SpeechLayout, served_config

_LAYOUTS = {}  # model folder -> SpeechLayout, for the transcription endpoint's class methods


def layout_of(model_config):
    if model_config.model not in _LAYOUTS:
        _LAYOUTS[model_config.model] = SpeechLayout.from_folder(model_config.model, model_config.hf_config)
    return _LAYOUTS[model_config.model]


def causal_lm_architecture(text_config):
    """vLLM's architecture name for the LLM: the config's own, else transformers' causal-LM class for its type."""
    if getattr(text_config, "architectures", None):
        return list(text_config.architectures)
    if type(text_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"text_config.model_type {text_config.model_type!r} has no causal-LM class in transformers")
    return [MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)].__name__]


@MULTIMODAL_REGISTRY.register_processor(HubertGptMultiModalProcessor, info=HubertGptProcessingInfo,
                                        dummy_inputs=HubertGptDummyInputsBuilder)
class HubertGptForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsTranscription):
    supported_languages = {"ja": "Japanese"}  # the paper's and the embedded default's language

    @classmethod
    def get_placeholder_str(cls, modality, i):
        if modality == "audio":
            return None  # prompts are token ids (HubertGptMultiModalProcessor): no text placeholder
        raise ValueError(f"hubert-gpt takes audio, not {modality!r}")

    def __init__(self, *, vllm_config, prefix=""):
        super().__init__()
        hf_config = vllm_config.model_config.hf_config
        self.config = served_config(hf_config)
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_tower = HubertGptAudioEncoder(self.config)
            self.bridge = bridge_class(self.config.bridge_type)(self.config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=hf_config.text_config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=causal_lm_architecture(hf_config.text_config))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs):
        """input_values: (B, S) or a list of B (S_i,) float tensors -> B speech prompts (T'_i, Dt)."""
        values = kwargs.get("input_values")
        if values is None:
            return []
        rows = list(values)  # B tensors (S_i,)
        lengths = torch.tensor([len(row) for row in rows], device=rows[0].device)
        batch = pad_sequence(rows, batch_first=True).to(self.audio_tower.dtype)  # (B, S) zeros after each row's end
        mask = (torch.arange(batch.shape[1], device=batch.device) < lengths[:, None]).long()  # (B, S)
        hidden = self.audio_tower(batch, lengths, mask)  # (B, T, Da)
        speech = self.bridge(hidden, self.audio_tower.output_lengths(lengths))
        return [embeds[:n] for embeds, n in zip(speech.embeds, speech.lengths.tolist())]  # B x (T'_i, Dt)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights):
        return AutoWeightsLoader(self, ignore_unexpected_prefixes=["ctc_head."]).load_weights(weights)

    # --- the OpenAI transcription endpoint ----------------------------------------------------------
    @classmethod
    def get_speech_to_text_config(cls, model_config, task_type):
        layout = layout_of(model_config)
        longest = layout.longest_samples
        return SpeechToTextConfig(
            sample_rate=layout.config.sampling_rate,
            max_audio_clip_s=None if longest is None else math.floor(longest / layout.config.sampling_rate))

    @classmethod
    def get_generation_prompt(cls, stt_params):
        """nue-asr's prompt for one chunk: [bos] + its speech + [sep] (the transcript follows)."""
        layout = layout_of(stt_params.model_config)
        return {"prompt_token_ids": layout.prompt_token_ids(),
                "multi_modal_data": {"audio": (stt_params.audio, layout.config.sampling_rate)}}

    @classmethod
    def get_num_audio_tokens(cls, audio_duration_s, stt_config, model_config):
        layout = layout_of(model_config)
        return int(layout.speech_positions([round(audio_duration_s * layout.config.sampling_rate)])[0])
