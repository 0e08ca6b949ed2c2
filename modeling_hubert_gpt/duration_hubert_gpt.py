"""How much audio one utterance may hold: the LLM's context must fit the speech prompt and the transcript.

At generation an utterance of s seconds takes 1 + (its bridge frames) + 1 prompt positions and may add up to
`max_new_tokens_for(s)` tokens (nue-asr's bound, generation_hubert_gpt.py). `longest_input_samples` is the longest
audio for which that sum stays within `text_config.max_position_embeddings`; `model.generate` refuses longer audio
with an error that names it, and the pipeline cuts longer audio into chunks of at most that length itself.

Remote code: imports torch only.
"""

import torch

from .generation_hubert_gpt import max_new_tokens_for


def llm_context(model):
    return getattr(model.config.text_config, "max_position_embeddings", None)


def positions_needed(model, sample_lengths):
    """LLM positions (B,) that decoding utterances of `sample_lengths` (B,) samples may take: prompt + bound."""
    frames = model.bridge.output_lengths(model.audio_tower.output_lengths(sample_lengths))
    bound = max_new_tokens_for(model.generation_config, sample_lengths, model.config.sampling_rate)
    return frames + 2 + bound.to(frames.device)


def fits(model, num_samples):
    """Whether an utterance of `num_samples` samples fits the LLM's context (one look; `longest_input_samples`
    searches for the limit, ~25 looks)."""
    context = llm_context(model)
    return context is None or int(positions_needed(model, torch.tensor([num_samples]))) <= context


def longest_input_samples(model):
    """The most audio samples one utterance may have (None: the LLM states no context length)."""
    if llm_context(model) is None:
        return None
    low, high = 0, model.config.sampling_rate
    while fits(model, high):  # grow until it does not fit
        low, high = high, 2 * high
    while high - low > 1:  # the last length that fits lies in [low, high)
        middle = (low + high) // 2
        if fits(model, middle):
            low = middle
        else:
            high = middle
    return low


def check_duration(model, sample_lengths):
    """A clear error when an utterance is longer than the model takes."""
    context = llm_context(model)
    if context is None:
        return
    needed = positions_needed(model, sample_lengths)
    if (needed > context).any():
        index = int(needed.argmax())
        rate = model.config.sampling_rate
        longest = longest_input_samples(model) / rate
        raise ValueError(
            f"utterance {index} is {int(sample_lengths[index]) / rate:.1f} s; this model takes at most {longest:.1f} s "
            f"per utterance (speech prompt + transcript bound {int(needed[index])} positions > the LLM's context of "
            f"{context}). Transcribe longer audio with the pipeline, which cuts it into chunks itself "
            "(pipeline(..., chunk_length_s=...) sets their length), or cut it yourself."
        )
