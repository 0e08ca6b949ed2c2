"""hubert-gpt served by vLLM: an out-of-tree model plugin (entry point `vllm.general_plugins`, see pyproject.toml).

Installed with this package, vLLM finds it in every process it starts: `vllm serve MODEL_DIR --trust-remote-code`
(or `python -m vllm.entrypoints.openai.api_server --model MODEL_DIR --trust-remote-code` where the `vllm` command
does not run) and `vllm.LLM(MODEL_DIR, trust_remote_code=True)`. `transcription_requests` builds offline prompts.
Nothing here is imported by modeling_hubert_gpt/ (the remote code stays torch + transformers only).
"""

ARCHITECTURE = "HubertGptForConditionalGeneration"


def register():
    """vLLM's plugin hook: register the model lazily (imported only when a hubert-gpt folder is served)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "hubert_gpt_vllm.model:HubertGptForConditionalGeneration")


def transcription_requests(folder, audios, sampling_rate):
    """Offline `LLM.generate` inputs for `audios` (1-D float arrays at the model's rate): (prompts, sampling params).

    Greedy, each utterance bounded by nue-asr's new-token bound as in the HF model's `generate`:
    `llm.generate(*transcription_requests(folder, audios, 16000))`."""
    from transformers import AutoConfig
    from vllm import SamplingParams

    from .speech import SpeechLayout

    layout = SpeechLayout.from_folder(folder, AutoConfig.from_pretrained(folder, trust_remote_code=True))
    if sampling_rate != layout.config.sampling_rate:
        raise ValueError(f"audio at {sampling_rate} Hz; this model takes {layout.config.sampling_rate} Hz: resample "
                         "first (the bound counts the model's samples)")
    prompts = [{"prompt_token_ids": layout.prompt_token_ids(), "multi_modal_data": {"audio": (audio, sampling_rate)}}
               for audio in audios]
    bounds = layout.max_new_tokens([len(audio) for audio in audios]).tolist()
    return prompts, [SamplingParams(temperature=0.0, max_tokens=bound) for bound in bounds]
