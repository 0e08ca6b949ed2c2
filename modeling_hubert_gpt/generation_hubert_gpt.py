"""Decoding bounds of hubert-gpt, in one place for plain `generate` and CTC-draft speculative decoding.

Unless a call gives `max_new_tokens` / `max_length` (or the generation config sets `max_new_tokens`), each utterance
of s seconds may generate at most `int(max_new_tokens_per_second * s + max_new_tokens_base + 0.5)` tokens: nue-asr's
bound (4.0 and 20 by default; both are attributes of `model.generation_config`, saved in generation_config.json), so
a looping LLM cannot run away, and an utterance decoded in a batch stops where it stops alone.

Remote code: imports torch and the public transformers API only.
"""

import copy
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria

BOUND_DEFAULTS = {"max_new_tokens_per_second": 4.0, "max_new_tokens_base": 20}


def max_new_tokens_for(generation_config, sample_lengths, sampling_rate):
    """nue-asr's bound per utterance (B,) long: int(per_second * seconds + base + 0.5)."""
    per_second = getattr(generation_config, "max_new_tokens_per_second", BOUND_DEFAULTS["max_new_tokens_per_second"])
    base = getattr(generation_config, "max_new_tokens_base", BOUND_DEFAULTS["max_new_tokens_base"])
    seconds = sample_lengths.double() / sampling_rate
    return (per_second * seconds + base + 0.5).floor().long()


@dataclass
class Bounds:
    """Where each row of a batch stops: at eos, at `max_new[row]` new tokens; eos is barred before `min_new`."""

    max_new: list  # B ints
    per_utterance: bool  # max_new came from each utterance's length (not from the call or the config)
    min_new: int
    eos_ids: list  # [] when the config has no eos
    pad_id: int


def resolve_generation(model, generation_config, kwargs, sample_lengths, prompt_length):
    """This call's GenerationConfig (generate() keywords moved into it from `kwargs`) and its `Bounds`.

    A config's max_length alone is not a bound here: it counts the speech prompt, and Seq2SeqTrainer writes the legacy
    default (20) into the model's config; it counts only when given to the call.
    """
    config = copy.deepcopy(generation_config or model.generation_config)
    asked = any(kwargs.get(k) is not None for k in ("max_new_tokens", "max_length"))
    config.update(**{k: kwargs.pop(k) for k in list(kwargs) if hasattr(config, k)})
    defaults = with_llm_defaults(model, config)
    batch = len(sample_lengths)
    per_utterance = not asked and config.max_new_tokens is None
    if per_utterance:
        config.max_length = None
        max_new = max_new_tokens_for(config, sample_lengths, model.config.sampling_rate).tolist()
    elif config.max_new_tokens is not None:
        max_new = [config.max_new_tokens] * batch
    else:
        max_new = [max(config.max_length - prompt_length, 0)] * batch
    if defaults.min_new_tokens is not None:
        min_new = defaults.min_new_tokens
    else:
        min_new = max((defaults.min_length or 0) - prompt_length, 0)
    eos = defaults.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = defaults.pad_token_id
    pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
    return config, Bounds(max_new, per_utterance, min_new, eos_ids, pad)


def with_llm_defaults(model, config):
    """A copy of `config` whose unset values come from the LLM's own generation config, as
    language_model.generate() takes them."""
    config = copy.deepcopy(config)
    lm_config = getattr(model.language_model, "generation_config", None)
    if lm_config is not None:
        config.update(**lm_config.to_dict(), defaults_only=True)
    return config


def llm_generation_config(config):
    """`config` without hubert-gpt's own attributes, for the LLM's generate()."""
    config = copy.deepcopy(config)
    for name in (*BOUND_DEFAULTS, "no_speech_threshold", "loop_guard"):  # the guards' settings: guards_hubert_gpt.py
        if hasattr(config, name):
            delattr(config, name)
    return config


class PerUtteranceLimit(StoppingCriteria):
    """Stops each row at its own new-token bound, so batched decoding equals one-at-a-time."""

    def __init__(self, max_new):
        self.limits = torch.tensor(max_new)  # (B,); generate() from inputs_embeds counts only the new tokens

    def __call__(self, input_ids, scores, **kwargs):
        limits = self.limits.to(input_ids.device).repeat_interleave(input_ids.shape[0] // self.limits.shape[0])
        return input_ids.shape[1] >= limits
