"""hubert-gpt: speech encoder + bridge + causal LLM for speech recognition, as a Hugging Face model package."""

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor

from .audio_encoder_hubert_gpt import HubertGptAudioEncoder
from .bridges_hubert_gpt import BridgeOutput, HubertGptBridge, conv_output_lengths, register_bridge
from .configuration_hubert_gpt import HubertGptConfig
from .ctc_head_hubert_gpt import HubertGptCtcHead
from .generation_hubert_gpt import HubertGptGenerateOutput
from .modeling_hubert_gpt import HubertGptForConditionalGeneration
from .pipeline_hubert_gpt import HubertGptASRPipeline, load_audio
from .processing_hubert_gpt import HubertGptProcessor

# Local use without trust_remote_code: the Auto classes know the model type once this package is imported.
AutoConfig.register(HubertGptConfig.model_type, HubertGptConfig, exist_ok=True)
AutoModel.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(HubertGptConfig, HubertGptForConditionalGeneration, exist_ok=True)
AutoProcessor.register(HubertGptConfig, HubertGptProcessor, exist_ok=True)

__all__ = [
    "BridgeOutput",
    "HubertGptASRPipeline",
    "HubertGptAudioEncoder",
    "HubertGptBridge",
    "HubertGptConfig",
    "HubertGptCtcHead",
    "HubertGptForConditionalGeneration",
    "HubertGptGenerateOutput",
    "HubertGptProcessor",
    "conv_output_lengths",
    "load_audio",
    "register_bridge",
]
