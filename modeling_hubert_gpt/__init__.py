"""hubert-gpt: speech encoder + bridge + causal LLM for speech recognition, as a Hugging Face model package."""

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

from .configuration_hubert_gpt import HubertGptConfig
from .modeling_hubert_gpt import HubertGptForConditionalGeneration, conv_output_lengths

AutoConfig.register(HubertGptConfig.model_type, HubertGptConfig, exist_ok=True)
AutoModel.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)

__all__ = ["HubertGptConfig", "HubertGptForConditionalGeneration", "conv_output_lengths"]
