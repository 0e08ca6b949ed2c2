"""hubert-gpt: speech encoder + bridge + causal LLM for speech recognition, as a Hugging Face model package."""

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor

from .configuration_hubert_gpt import HubertGptConfig
from .modeling_hubert_gpt import HubertGptForConditionalGeneration, conv_output_lengths
from .pipeline_hubert_gpt import HubertGptASRPipeline, load_audio
from .processing_hubert_gpt import HubertGptProcessor

# Local use without trust_remote_code: the Auto classes know the model type once this package is imported.
AutoConfig.register(HubertGptConfig.model_type, HubertGptConfig, exist_ok=True)
AutoModel.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)
AutoProcessor.register(HubertGptConfig, HubertGptProcessor, exist_ok=True)

__all__ = [
    "HubertGptASRPipeline",
    "HubertGptConfig",
    "HubertGptForConditionalGeneration",
    "HubertGptProcessor",
    "conv_output_lengths",
    "load_audio",
]
