"""hubert-gpt's decoding options and bounds, in one place for plain, beam and CTC-draft speculative decoding.

Options (`OPTIONS`): hubert-gpt's own generate() options that a generation config may carry. Their defaults are
attributes of `model.generation_config` (saved in generation_config.json, so a folder can ship e.g. its own
`no_speech_threshold`); a call's value wins over the config's, the config's over `OPTIONS`. `resolve_generation`
merges them with transformers' own options onto one copied GenerationConfig and checks each value and combination.

Bounds: unless a call gives `max_new_tokens` / `max_length` (or the generation config sets `max_new_tokens`), each
utterance of s seconds may generate at most `int(max_new_tokens_per_second * s + max_new_tokens_base + 0.5)` tokens:
nue-asr's bound (4.0 and 20 by default), so a looping LLM cannot run away, and an utterance decoded in a batch stops
where it stops alone.

Remote code: imports torch and the public transformers API only.
"""

import copy
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria
from transformers.utils import ModelOutput

from .ctc_head_hubert_gpt import require_ctc_head


class _FromConfig:
    def __repr__(self):
        return "<from generation_config>"


FROM_CONFIG = _FromConfig()  # generate()'s default for an option that model.generation_config may carry

BOUND_DEFAULTS = {"max_new_tokens_per_second": 4.0, "max_new_tokens_base": 20}
# name: (default, check, what a valid value is). Documented in HubertGptForConditionalGeneration.generate.
OPTIONS = {
    **{name: (value, lambda v: _number(v) and v >= 0, "a number >= 0") for name, value in BOUND_DEFAULTS.items()},
    "no_speech_threshold": (1.0, lambda v: v is None or (_number(v) and v >= 0), "None (off) or a number >= 0"),
    "loop_guard": (True, lambda v: isinstance(v, bool), "True or False"),
    "hotword_boost": (3.0, lambda v: _number(v) and v >= 0, "a number >= 0"),
    "hotword_threshold": (-1.0, lambda v: v is None or (_number(v) and v <= 0),
                          "None (no gate) or a number <= 0 (a mean log-ratio per label)"),
    "ctc_draft": (False, lambda v: isinstance(v, bool), "True or False"),
    "ctc_draft_window": (32, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
    "ctc_draft_ngram": (True, lambda v: isinstance(v, bool), "True or False"),
}
DRAFT_OPTIONS = ("ctc_draft_window", "ctc_draft_ngram")

# Generation settings that change greedy's choice of token (logits processors, other decoding modes, outputs the
# speculative decoder does not build): ctc_draft=True takes only these values.
GREEDY_ONLY = {
    "do_sample": (None, False),
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "remove_invalid_values": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def max_new_tokens_for(generation_config, sample_lengths, sampling_rate):
    """nue-asr's bound per utterance (B,) long: int(per_second * seconds + base + 0.5)."""
    per_second = getattr(generation_config, "max_new_tokens_per_second", BOUND_DEFAULTS["max_new_tokens_per_second"])
    base = getattr(generation_config, "max_new_tokens_base", BOUND_DEFAULTS["max_new_tokens_base"])
    seconds = sample_lengths.double() / sampling_rate
    return (per_second * seconds + base + 0.5).floor().long()


def resolve_generation(model, generation_config, options, kwargs):
    """One call's settings, merged and checked in one place: (config, llm_kwargs, fixed).

    config: a copy of `generation_config` (or the model's) with transformers' options from `kwargs` written onto it
    and every hubert-gpt option of `OPTIONS` resolved on it (the call's value from `options`, else the config's, else
    the default); llm_kwargs: the keywords left for the LLM's generate() (streamer, logits_processor, ...); fixed:
    whether the call or the config fixes the new-token count (max_new_tokens / max_length), i.e. no per-utterance
    bound. `options`: hubert-gpt's keywords as the call gave them (FROM_CONFIG or absent: not given). Neither
    argument is changed. A config's max_length alone is not a bound here: it counts the speech prompt, and
    Seq2SeqTrainer writes the legacy default (20) into the model's config; it counts only when given to the call.
    """
    config = copy.deepcopy(generation_config or model.generation_config)
    fixed = any(kwargs.get(k) is not None for k in ("max_new_tokens", "max_length"))
    llm_kwargs = {k: v for k, v in kwargs.items() if not hasattr(config, k)}
    config.update(**{k: v for k, v in kwargs.items() if hasattr(config, k)})
    fixed = fixed or config.max_new_tokens is not None
    given = {k: v for k, v in options.items() if v is not FROM_CONFIG}
    for name, (default, check, valid) in OPTIONS.items():
        value = given.get(name, getattr(config, name, default))
        if not check(value):
            raise ValueError(f"{name} must be {valid}, got {value!r}")
        setattr(config, name, value)
    hotwords = given.get("hotwords", getattr(config, "hotwords", None))
    if hotwords is not None and not isinstance(hotwords, (list, tuple)):
        raise ValueError(f"hotwords must be a list of words or one list of words per utterance, got "
                         f"{type(hotwords).__name__}")
    config.hotwords = hotwords
    if model.ctc_head is None:  # the head's features are off; asking for one is an error
        asked = [n for n in ("no_speech_threshold", "loop_guard", "hotword_threshold") if given.get(n) not in (None, False)]
        if asked == ["hotword_threshold"]:
            require_ctc_head(model, "hotword_threshold gates hotwords with")
        if asked:
            require_ctc_head(model, f"{asked} read")
        config.no_speech_threshold, config.loop_guard, config.hotword_threshold = None, False, None
    drafting = sorted(n for n in (*DRAFT_OPTIONS, "draft_override") if given.get(n) is not None)
    if drafting and not config.ctc_draft:
        raise TypeError(f"{drafting} are options of ctc_draft=True")
    if given.get("tokenizer") is not None and not (config.ctc_draft or "hotwords" in given or config.hotwords):
        raise TypeError("tokenizer is an option of ctc_draft=True and of hotwords")
    if (config.num_beams or 1) > 1 and config.return_dict_in_generate and (not fixed or config.loop_guard):
        raise ValueError("beam search with per-utterance bounds (no max_new_tokens, or the loop guard's caps) decodes "
                         "rows in groups and returns tokens only; pass max_new_tokens (and loop_guard=False on a model "
                         "with a CTC head) to get return_dict_in_generate's outputs")
    if config.ctc_draft:
        _check_ctc_draft(model, config, llm_kwargs)
    return config, llm_kwargs, fixed


def _check_ctc_draft(model, config, llm_kwargs):
    settings = with_llm_defaults(model, config)
    bad = {k: getattr(settings, k, None) for k, ok in GREEDY_ONLY.items() if getattr(settings, k, None) not in ok}
    if bad:
        raise ValueError(
            f"ctc_draft=True is lossless speculative GREEDY decoding; these settings are not supported with it: {bad}. "
            "Drop ctc_draft for beam search, sampling, logits processors or extra outputs."
        )
    for name in ("logits_processor", "stopping_criteria"):
        if llm_kwargs.get(name):
            raise ValueError(f"ctc_draft=True does not take a custom {name}; drop ctc_draft to use one")
    unexpected = sorted(set(llm_kwargs) - {"streamer", "use_cache", "logits_processor", "stopping_criteria"})
    if unexpected:
        raise TypeError(f"generate(ctc_draft=True) got unexpected keyword arguments {unexpected}")


@dataclass
class Bounds:
    """Where each row of a batch stops: at eos, at `max_new[row]` new tokens; eos is barred before `min_new`."""

    max_new: list  # B ints
    per_utterance: bool  # max_new came from each utterance's length (not from the call or the config)
    min_new: int
    eos_ids: list  # [] when the config has no eos
    pad_id: int


def resolve_bounds(model, config, fixed, sample_lengths, prompt_length):
    """The `Bounds` of a batch of `sample_lengths` (B,) after a packed prompt of `prompt_length` positions (config,
    fixed: from `resolve_generation`)."""
    defaults = with_llm_defaults(model, config)
    batch = len(sample_lengths)
    if not fixed:
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
    return Bounds(max_new, not fixed, min_new, eos_ids, pad)


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
    for name in (*OPTIONS, "hotwords"):
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


@dataclass
class HubertGptGenerateOutput(ModelOutput):
    """`generate(..., return_dict_in_generate=True)`: transformers' fields, filled as its GenerateDecoderOnlyOutput /
    GenerateBeamDecoderOnlyOutput fill them (sequences (B, N) are the new tokens only), and per row of the batch what
    hubert-gpt's features decided; a feature that did not run leaves its fields None.

    speech_mass: B floats, the CTC head's non-blank mass (sum over frames of 1 - P(blank)); no_speech: B bools, the
    no-speech guard took the row for silence (its sequence is eos, the LLM wrote nothing for it);
    no_speech_doubted: B bools, the head heard nothing but the waveform rises like speech, so the LLM ran
    (guards_hubert_gpt.DOUBT_SHARE); ctc_lengths: B ints, the CTC head's greedy hypothesis length (the loop guard's
    yardstick); loop_cuts: B ints or None, the index of the eos the loop guard wrote where it cut a repetition; hotword_scores: B dicts {word: keyword score} (the gate's
    evidence); hotwords_active: B dicts {word: (lowest, highest)}, the active words and how many characters may come
    before each (None: anywhere, without the gate); draft_stats: ctc_draft=True's counts (speculative_hubert_gpt.py).
    """

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None
    scores: tuple | None = None
    logits: tuple | None = None
    beam_indices: torch.LongTensor | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: object | None = None  # the KV cache (transformers 5 calls it cache; past_key_values is its old name)
    speech_mass: list | None = None
    no_speech: list | None = None
    no_speech_doubted: list | None = None
    ctc_lengths: list | None = None
    loop_cuts: list | None = None
    hotword_scores: list | None = None
    hotwords_active: list | None = None
    draft_stats: dict | None = None
