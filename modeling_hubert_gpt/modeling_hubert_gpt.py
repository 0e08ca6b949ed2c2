"""hubert-gpt: waveform -> speech encoder -> bridge -> causal LLM that writes the transcript.

Shapes: B utterances, S samples, T encoder frames, T' bridge frames, L prompt positions, Da encoder width,
Dt LLM width, V LLM vocabulary, C CTC head outputs (its labels and blank).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    Cache,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
)
from transformers.utils import ModelOutput, can_return_tuple

from .alignment_hubert_gpt import align
from .audio_encoder_hubert_gpt import HubertGptAudioEncoder
from .bridges_hubert_gpt import bridge_class
from .cache_hubert_gpt import cache_keyword, new_cache
from .configuration_hubert_gpt import HubertGptConfig, attn_implementations
from .ctc_head_hubert_gpt import HubertGptCtcHead
from .duration_hubert_gpt import check_duration
from .generation_hubert_gpt import (
    FROM_CONFIG,
    OPTIONS,
    HubertGptGenerateOutput,
    PerUtteranceLimit,
    llm_generation_config,
    max_new_tokens_for,
    resolve_bounds,
    resolve_generation,
)
from .guards_hubert_gpt import Guards, NoSpeechLogitsProcessor, fill_silent_rows
from .hotwords_hubert_gpt import build_hotwords, resolve_hotwords
from .pipeline_hubert_gpt import register_pipeline_in_config
from .sound_hubert_gpt import rising_share
from .speculative_hubert_gpt import ctc_draft_generate

DEFAULT_CTC_LOSS_WEIGHT = 0.3


class SpeechPrompt(NamedTuple):
    embeds: torch.Tensor  # (B, T', Dt) bridge output, padded
    lengths: torch.LongTensor  # (B,) real bridge frames
    ctc_logits: torch.Tensor | None  # (B, T, C) when the CTC head ran, else None
    frame_lengths: torch.LongTensor  # (B,) real encoder frames
    sample_lengths: torch.LongTensor  # (B,) real audio samples


class CtcPosteriors(NamedTuple):
    log_probs: torch.Tensor  # (B, T, C) float32 log-posteriors of the CTC head over its labels and blank
    frame_lengths: torch.LongTensor  # (B,) real encoder frames
    sample_lengths: torch.LongTensor  # (B,) real audio samples


@dataclass
class HubertGptOutput(ModelOutput):
    """loss = llm_loss + ctc_loss_weight * ctc_loss (times this batch's share of the step's labels where forward got
    Trainer's num_items_in_batch); logits (B, L, V) over the packed prompt; cache (the KV cache),
    hidden_states and attentions are the LLM's over that prompt (with use_cache / output_hidden_states /
    output_attentions)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    llm_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    speech_lengths: torch.LongTensor | None = None


def _in_places(values, rows, batch, fill):
    """Values of the batch rows `rows` -> a list over the whole batch, `fill` for the other rows."""
    place = {row: k for k, row in enumerate(rows)}
    return [values[place[b]] if b in place else fill for b in range(batch)]


class HubertGptForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = HubertGptConfig
    base_model_prefix = "language_model"  # the body the speech prompt runs through (`model.base_model`)
    main_input_name = "input_values"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HubertGptAudioEncoder"]  # the encoder stays on one device (some omit a layer class)
    _supports_sdpa = True
    _supports_flash_attn = True  # the encoder's and the LLM's own kernels; untested here (no GPU lent)
    _supports_flex_attn = False  # flex attention does not run on CPU (compile error, torch 2.13): untested
    _supports_attention_backend = True

    def __init__(self, config: HubertGptConfig, audio_tower=None, language_model=None):
        super().__init__(config)
        # Trainer counts the labels a step's loss is over (num_items_in_batch) and, for a loss type mapped to the
        # causal-LM loss (as "ForConditionalGeneration" is), leaves out each row's first label as one no position
        # predicts. Here `labels` are the transcript alone, after the speech prompt: every one is predicted.
        self.loss_type = None
        self.audio_tower = HubertGptAudioEncoder(config, audio_tower)
        if language_model is None:
            try:
                language_model = AutoModelForCausalLM.from_config(config.text_config)
            except ValueError as err:
                raise ValueError(
                    f"text_config (model_type {config.text_config.model_type!r}) is not a causal language model "
                    "that AutoModelForCausalLM knows; use a decoder-only LM config such as gpt_neox or llama"
                ) from err
        self.language_model = language_model
        self.bridge = bridge_class(config.bridge_type)(config)
        self.ctc_head = HubertGptCtcHead(config) if config.ctc_head_config is not None else None
        self.post_init()
        eos_id = getattr(config.text_config, "eos_token_id", None)
        pad_id = getattr(config.text_config, "pad_token_id", None)
        self.generation_config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            bos_token_id=config.prompt_bos_token_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id if pad_id is None else pad_id,
            **{name: default for name, (default, _, _) in OPTIONS.items()},  # hubert-gpt's decoding defaults
        )

    @classmethod
    def from_pretrained_components(cls, audio_model, text_model, bridge_type="conv", dtype=None, **config_kwargs):
        """Build a model from a pretrained encoder and a pretrained causal LM (hub ids, folders or models).

        The bridge (and a CTC head) are initialised at random; the encoder and LLM keep their pretrained weights.
        e.g. `from_pretrained_components("rinna/japanese-hubert-base", "rinna/japanese-gpt-neox-3.6b")`.
        """
        if isinstance(audio_model, str):
            audio_model = AutoModel.from_pretrained(audio_model, dtype=dtype)
        if isinstance(text_model, str):
            text_model = AutoModelForCausalLM.from_pretrained(text_model, dtype=dtype)
        # The parts' attention implementations (sdpa, ...): composing their configs resets them to None, and a
        # GPT-NeoX without one ignores the attention mask of left-padded batches (tests/test_rinna_standins.py).
        implementations = attn_implementations(audio_model.config, text_model.config)
        config = HubertGptConfig(
            audio_config=audio_model.config, text_config=text_model.config, bridge_type=bridge_type, **config_kwargs
        )
        model = cls(config, audio_tower=audio_model, language_model=text_model)
        model.set_attn_implementation(implementations)
        return model.to(text_model.dtype)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also records the ASR pipeline in config.json, so the folder works with `pipeline(..., trust_remote_code=True)`."""
        register_pipeline_in_config(self.config)
        # custom_object_save adds the AutoModelForSpeechSeq2Seq entry; plain AutoModel opens the same class.
        name = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": name}
        return super().save_pretrained(save_directory, *args, **kwargs)

    # --- embeddings, delegated to the LLM ---------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """The LLM's embeddings and LM head, and a token CTC head with them (its blank stays apart from the new
        tokens; config.ctc_head_config follows, so the resized model saves and loads)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.ctc_head is not None and self.ctc_head.vocab is None:
            blank_id = self.ctc_head.resize_labels(self.config.text_config.vocab_size)
            self.config.ctc_head_config = {**self.config.ctc_head_config, "blank_id": blank_id}
        return embeddings

    # --- lengths -----------------------------------------------------------------------------------
    def encoder_output_lengths(self, sample_lengths):
        return self.audio_tower.output_lengths(sample_lengths)

    def max_new_tokens_for(self, sample_lengths):
        """nue-asr's new-token bound per utterance (B,) for audio of `sample_lengths` (B,) samples."""
        return max_new_tokens_for(self.generation_config, sample_lengths, self.config.sampling_rate)

    @property
    def min_input_samples(self):
        """The fewest audio samples that give at least one bridge frame."""
        return self.audio_tower.min_samples(self.bridge.min_frames)

    def _sample_lengths(self, input_values, attention_mask):
        """Checked audio (B, S) and its real lengths (B,)."""
        if input_values is None:
            raise ValueError("input_values (B, S) float audio is required")
        if input_values.dim() == 1:
            input_values = input_values[None]
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples) mono audio, got shape {tuple(input_values.shape)}")
        if not input_values.is_floating_point():
            raise ValueError(
                f"input_values must be float audio in [-1, 1], got dtype {input_values.dtype}; "
                "the processor converts int16/int32 PCM"
            )
        if attention_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[1], device=input_values.device)
        else:
            lengths = attention_mask.long().sum(-1)
        real = torch.arange(input_values.shape[1], device=input_values.device) < lengths[:, None]
        bad = ~torch.isfinite(input_values).logical_or(~real).all(-1)
        if bad.any():
            raise ValueError(f"input_values of utterance(s) {bad.nonzero().flatten().tolist()} contain NaN or Inf samples")
        short = lengths < self.min_input_samples
        if short.any():
            index = int(short.nonzero()[0])
            raise ValueError(
                f"utterance {index} has {int(lengths[index])} samples; this model needs at least "
                f"{self.min_input_samples} ({self.min_input_samples / self.config.sampling_rate:.3f} s at "
                f"{self.config.sampling_rate} Hz)"
            )
        return input_values, lengths

    # --- speech -> speech prompt ---------------------------------------------------------------------
    def encode_audio(self, input_values, attention_mask=None):
        """Audio (B, S) -> the encoder's output (B, T, Da), its frame lengths (B,) and the sample lengths (B,)."""
        input_values, sample_lengths = self._sample_lengths(input_values, attention_mask)
        if attention_mask is not None:
            # Padded samples are zeros, as they are for a single utterance run without padding.
            attention_mask = attention_mask.to(input_values.device).long()
            input_values = input_values * attention_mask
        hidden = self.audio_tower(input_values, sample_lengths, attention_mask)
        return hidden, self.encoder_output_lengths(sample_lengths), sample_lengths

    def encode_speech(self, input_values, attention_mask=None, ctc_head=None, ctc_trains_encoder=True):
        """Audio (B, S) -> SpeechPrompt: speech (B, T', Dt) and lengths, CTC logits, encoder and sample lengths.

        ctc_head: whether to run the CTC head (None: only when the bridge needs it); ctc_trains_encoder=False: the
        head sees the encoder output with its gradient stopped (its loss trains the head alone)."""
        hidden, frame_lengths, sample_lengths = self.encode_audio(input_values, attention_mask)
        run_head = self.bridge.uses_ctc_head or (bool(ctc_head) and self.ctc_head is not None)
        ctc_logits = None
        if run_head:
            ctc_logits = self.ctc_head(hidden if ctc_trains_encoder or self.bridge.uses_ctc_head else hidden.detach(),
                                       frame_lengths)
        out = self.bridge(hidden, frame_lengths, ctc_logits=ctc_logits if self.bridge.uses_ctc_head else None)
        return SpeechPrompt(out.embeds, out.lengths, ctc_logits, frame_lengths, sample_lengths)

    def ctc_posteriors(self, input_values, attention_mask=None):
        """The CTC head's log-posteriors for audio (B, S): CtcPosteriors(log_probs (B, T, C), frame_lengths, sample
        lengths). What drafts, timestamps and guards read."""
        if self.ctc_head is None:
            raise ValueError("this model has no CTC head (config.ctc_head_config is None)")
        hidden, frame_lengths, sample_lengths = self.encode_audio(input_values, attention_mask)
        log_probs = self.ctc_head(hidden, frame_lengths).float().log_softmax(-1)
        return CtcPosteriors(log_probs, frame_lengths, sample_lengths)

    def align(self, input_values, attention_mask=None, transcripts=None, tokenizer=None, level="char"):
        """Timestamps of `transcripts` (B strings, or token ids with `tokenizer`) in audio (B, S), read from the CTC
        head: per utterance a list of {"text", "timestamp": (start_s, end_s)} per character, word (level="word") or
        segment (level=True). See alignment_hubert_gpt.py (needs torchaudio)."""
        return align(self, input_values, attention_mask, transcripts, tokenizer, level)

    def pack_prompt(self, speech, speech_lengths, text_ids=None, left_pad=False):
        """Lay out [bos] + speech + [sep] (+ transcript) per utterance.

        speech (B, T', Dt), speech_lengths (B,), text_ids (B, N) with -100 padding or None.
        Returns inputs_embeds (B, L, Dt), attention_mask (B, L), position_ids (B, L), labels (B, L) or None
        (labels are -100 everywhere but on the transcript tokens).

        The speech enters with `masked_scatter` at placeholder positions, as Voxtral and Granite place audio at their
        audio tokens (and vLLM does). The placeholder is pad_token_id, not an audio token of its own: nue-asr's
        vocabulary has none, adding one would change the released checkpoint's embeddings, and the LLM is given these
        embeddings, never the placeholder ids.
        """
        batch = speech.shape[0]
        device = speech.device
        text_lengths = (text_ids != -100).sum(-1) if text_ids is not None else torch.zeros_like(speech_lengths)
        lengths = speech_lengths + 2 + text_lengths  # (B,)
        total = int(lengths.max())
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and total > context:
            index = int(lengths.argmax())
            raise ValueError(
                f"utterance {index}: speech prompt {int(speech_lengths[index]) + 2} + transcript "
                f"{int(text_lengths[index])} tokens = {total} positions, more than the LLM's context of {context}; "
                "drop or shorten such utterances"
            )
        start = (total - lengths) if left_pad else torch.zeros_like(lengths)  # (B,) first real position
        pad_id = self.generation_config.pad_token_id
        token_ids = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        is_speech = torch.zeros((batch, total), dtype=torch.bool, device=device)
        labels = torch.full((batch, total), -100, dtype=torch.long, device=device) if text_ids is not None else None
        for i in range(batch):
            s, n = int(start[i]), int(speech_lengths[i])
            token_ids[i, s] = self.config.prompt_bos_token_id
            is_speech[i, s + 1 : s + 1 + n] = True
            token_ids[i, s + 1 + n] = self.config.prompt_sep_token_id
            if text_ids is not None:
                text = text_ids[i][text_ids[i] != -100]
                token_ids[i, s + 2 + n : s + 2 + n + len(text)] = text
                labels[i, s + 2 + n : s + 2 + n + len(text)] = text
        embeds = self.get_input_embeddings()(token_ids)  # (B, L, Dt)
        speech_valid = torch.arange(speech.shape[1], device=device) < speech_lengths[:, None]
        embeds = embeds.masked_scatter(is_speech[..., None], speech[speech_valid].to(embeds.dtype))
        positions = torch.arange(total, device=device)[None] - start[:, None]
        attention_mask = (positions >= 0) & (positions < lengths[:, None])
        position_ids = positions.clamp(min=0).masked_fill(~attention_mask, 0)
        return embeds, attention_mask.long(), position_ids, labels

    # --- training -----------------------------------------------------------------------------------
    @can_return_tuple
    def forward(self, input_values=None, attention_mask=None, labels=None, ctc_targets=None, ctc_loss_weight=None,
                ctc_trains_encoder=True, **kwargs):
        """LLM loss on the transcript tokens (labels (B, N), -100 padded, ending with eos) + auxiliary CTC loss.

        ctc_targets (B, C), -100 padded: the transcript's character ids for a character CTC head (a token head
        takes its targets from `labels`). ctc_loss_weight: the CTC loss's weight (None: 0.3; 0: no CTC loss, and a
        head the bridge does not need is not run). ctc_trains_encoder=False: that loss trains the head alone (the
        encoder's gradient stopped), for a draft head next to a bridge that does not use it. Other keywords
        (use_cache, output_hidden_states, output_attentions, ...) go to the LLM; return_dict=False (or
        config.return_dict=False) returns the output's non-None fields as a tuple.

        num_items_in_batch (Trainer passes it: the label count of the whole optimizer step, over its accumulated
        batches and, by default, all processes): `loss` is then this batch's share of the step's loss, scaled by its
        label count / num_items_in_batch, so that the step's summed losses are its mean over tokens, whatever the
        gradient accumulation and number of processes (the CTC loss weighted by the same share). `llm_loss` and
        `ctc_loss` stay this batch's means.
        """
        num_items = kwargs.pop("num_items_in_batch", None)
        weight = DEFAULT_CTC_LOSS_WEIGHT if ctc_loss_weight is None else ctc_loss_weight
        needs_ctc = labels is not None and weight > 0 and self.ctc_head is not None
        speech = self.encode_speech(input_values, attention_mask, ctc_head=needs_ctc, ctc_trains_encoder=ctc_trains_encoder)
        embeds, prompt_mask, position_ids, llm_labels = self.pack_prompt(speech.embeds, speech.lengths, labels)
        outputs = self.language_model(
            inputs_embeds=embeds, attention_mask=prompt_mask, position_ids=position_ids, labels=llm_labels,
            return_dict=True, **kwargs
        )
        llm_loss, ctc_loss, loss = outputs.loss, None, outputs.loss
        if needs_ctc:
            eos = self.generation_config.eos_token_id
            targets = self.ctc_head.targets_from(labels, ctc_targets, eos).to(speech.ctc_logits.device)
            ctc_loss = self.ctc_head.loss(speech.ctc_logits, speech.frame_lengths, targets)
            loss = llm_loss + weight * ctc_loss
        if loss is not None and num_items is not None:
            loss = loss * (labels != -100).sum().to(loss.device) / torch.as_tensor(num_items, device=loss.device)
        return HubertGptOutput(
            loss=loss, logits=outputs.logits, cache=outputs.get("cache"),
            hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions"), llm_loss=llm_loss,
            ctc_loss=ctc_loss, speech_lengths=speech.lengths,
        )

    # --- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_values=None,
        attention_mask=None,
        generation_config=None,
        *,
        max_new_tokens_per_second=FROM_CONFIG,
        max_new_tokens_base=FROM_CONFIG,
        no_speech_threshold=FROM_CONFIG,
        loop_guard=FROM_CONFIG,
        hotwords=FROM_CONFIG,
        hotword_boost=FROM_CONFIG,
        hotword_threshold=FROM_CONFIG,
        ctc_draft=FROM_CONFIG,
        ctc_draft_window=FROM_CONFIG,
        ctc_draft_ngram=FROM_CONFIG,
        draft_override=None,
        tokenizer=None,
        speech_prompt=None,
        logits_processor=None,
        stopping_criteria=None,
        labels=None,
        ctc_targets=None,
        **kwargs,
    ):
        """Transcribe a batch: the new tokens (B, N), padded with pad_token_id after eos; with
        `return_dict_in_generate=True` a `HubertGptGenerateOutput` (generation_hubert_gpt.py): transformers' fields and,
        per row, what the features below decided.

        One path: encode -> pack the prompt (left-padded) -> `language_model.generate` (or the CTC-draft verifier).
        `**kwargs`: transformers' options (GenerationConfig attributes such as num_beams, do_sample, max_new_tokens,
        return_dict_in_generate, cache_implementation="static"; generate() keywords such as streamer); not
        `assistant_model` nor `prompt_lookup_num_tokens` (an assistant would need the audio; prompt lookup needs a
        text prompt): `ctc_draft=True` is the speculative path. `logits_processor` / `stopping_criteria`: yours, in one
        list in front of hubert-gpt's own (hotwords, the no-speech guard, the per-utterance bound).

        hubert-gpt's options. Those shown `<from generation_config>` take the value of `generation_config` (default:
        `model.generation_config`, saved with the model), else the default in brackets (generation_hubert_gpt.OPTIONS):
            max_new_tokens_per_second (4.0), max_new_tokens_base (20): without max_new_tokens / max_length each
                utterance of s seconds stops after int(per_second * s + base + 0.5) new tokens, beams too.
            no_speech_threshold (1.0; None: off): models with a CTC head; an utterance whose CTC non-blank mass is
                below it gets eos alone, without an LLM pass when only tokens are returned (guards_hubert_gpt.py).
            loop_guard (True): models with a CTC head; caps each row's new tokens by the CTC hypothesis' length and
                cuts an unsupported repetition after its first copy (guards_hubert_gpt.py).
            hotwords (None): a list of words, or one list per utterance, boosted where the CTC head heard them; needs
                `tokenizer` (hotwords_hubert_gpt.py). hotword_boost (3.0): added over a whole word's tokens.
                hotword_threshold (-1.0; None: no gate, every word boosted everywhere): the keyword score a word needs.
            ctc_draft (False): lossless CTC-draft speculative greedy decoding (speculative_hubert_gpt.py): the
                tokens of plain greedy decoding. ctc_draft_window (32): most draft tokens verified per row and pass.
                ctc_draft_ngram (True): prompt-lookup drafts once the CTC draft is used up.
        Per call only:
            draft_override: with ctc_draft, B token lists (or a callable SpeechPrompt -> lists) drafted instead of the
                CTC head's hypothesis (tests, experiments).
            tokenizer: the LLM's tokenizer, for hotwords and for a CTC head that spells characters (ctc_draft).
            speech_prompt: this audio's `encode_speech(..., ctc_head=True)`, computed once by a caller that reads the
                CTC head too (the pipeline's timestamps).
            labels, ctc_targets: ignored (Seq2SeqTrainer passes its training batch; transcripts are not a prompt).
        Each value is checked once (`resolve_generation`), with one error per bad value or combination. The CTC head's
        log-posteriors and greedy hypothesis are computed once per call and read by the guards, hotwords and drafts.
        """
        refused = {"assistant_model": "transformers would call the assistant without the audio",
                   "prompt_lookup_num_tokens": "it drafts from the prompt's token ids, and this prompt is speech"}
        for name, why in refused.items():
            if kwargs.get(name) is not None:
                raise ValueError(f"{name} is not supported: {why}. Use generate(..., ctc_draft=True), lossless "
                                 "speculative decoding with the CTC head's drafts")
        options = {name: value for name, value in locals().items()  # the hubert-gpt options of the signature
                   if name in OPTIONS or name in ("hotwords", "draft_override", "tokenizer")}
        given = {name: value for name, value in (("logits_processor", logits_processor),
                                                 ("stopping_criteria", stopping_criteria)) if value is not None}
        config, llm_kwargs, fixed = resolve_generation(self, generation_config, options, {**kwargs, **given})
        batch = 1 if input_values is None or input_values.dim() == 1 else input_values.shape[0]
        if speech_prompt is not None:
            batch = len(speech_prompt.sample_lengths)
        words = resolve_hotwords(self, config.hotwords, config.hotword_boost, config.hotword_threshold, batch, tokenizer)
        guards = Guards(config.no_speech_threshold, config.loop_guard)
        needs_head = guards.needs_ctc_head or (words is not None and words[2] is not None) or (
            config.ctc_draft and (draft_override is None or callable(draft_override)))
        speech = speech_prompt
        if speech is None:
            speech = self.encode_speech(input_values, attention_mask, ctc_head=needs_head)
        log_probs = hypotheses = None
        if needs_head and self.ctc_head is not None:
            if speech.ctc_logits is None:
                raise ValueError("this call reads the CTC head: a speech_prompt given to generate must come from "
                                 "encode_speech(..., ctc_head=True)")
            log_probs = speech.ctc_logits.float().log_softmax(-1)  # (B, T, C), once: guards, hotwords, drafts read it
            hypotheses = self.ctc_head.greedy_labels(log_probs, speech.frame_lengths)
        sound = None  # the guard's second witness, from the waveform (not given: the head alone)
        if guards.no_speech_threshold is not None and input_values is not None and log_probs is not None:
            sound = rising_share(input_values.reshape(batch, -1), speech.sample_lengths,
                                 self.config.sampling_rate).tolist()
        guards.read(self.ctc_head, log_probs, speech.frame_lengths, hypotheses, sound)
        boosts = None if words is None else build_hotwords(self, *words, tokenizer, log_probs, speech.frame_lengths)
        check_duration(self, speech.sample_lengths)
        silent = guards.silent()
        decisions = {"speech_mass": guards.speech_mass, "no_speech": silent, "no_speech_doubted": guards.doubted(),
                     "ctc_lengths": None if hypotheses is None else [len(h) for h in hypotheses],
                     "hotword_scores": None if boosts is None else boosts.scores,
                     "hotwords_active": None if boosts is None else boosts.active()}
        # Silent rows leave the batch when only tokens come back (no LLM pass for them); transformers' dict outputs
        # keep every row, the silent ones ended at once by NoSpeechLogitsProcessor: the same tokens either way.
        drop = silent is not None and any(silent) and (config.ctc_draft or not config.return_dict_in_generate)
        rows = [b for b in range(batch) if not (drop and silent[b])]
        out, stats, cuts = None, None, None
        if rows:
            if len(rows) < batch:
                speech = SpeechPrompt(*(None if part is None else part[rows] for part in speech))
                guards, boosts = guards.select(rows), None if boosts is None else boosts.select(rows)
                hypotheses = None if hypotheses is None else [hypotheses[b] for b in rows]
                if isinstance(draft_override, (list, tuple)):
                    draft_override = [draft_override[b] for b in rows]
            out, stats, cuts = self._decode(speech, hypotheses, config, fixed, llm_kwargs, guards, boosts,
                                            None if drop else silent, draft_override, tokenizer)
        if drop:  # the silent rows back in their places: eos, nothing cut, nothing drafted
            bounds = resolve_bounds(self, config, fixed, speech.sample_lengths, 0)
            out = fill_silent_rows(out, rows, batch, bounds, speech.embeds.device)
            cuts = None if cuts is None else _in_places(cuts, rows, batch, None)
            if stats is not None:
                stats = {k: _in_places(v, rows, batch, 0) if isinstance(v, list) else v for k, v in stats.items()}
        if not config.return_dict_in_generate:
            return out
        fields = dict(out) if not isinstance(out, torch.Tensor) else {"sequences": out}
        return HubertGptGenerateOutput(**fields, **decisions, loop_cuts=cuts, draft_stats=stats)

    def _decode(self, speech, hypotheses, config, fixed, llm_kwargs, guards, hotwords, silent, draft_override,
                tokenizer):
        """generate() once the audio is encoded and its rows chosen: pack the prompt, resolve the bounds (the loop
        guard's cap included), decode with hubert-gpt's logits processors (one list for plain, beam and speculative
        decoding: hotwords, the no-speech guard for `silent` rows kept in the batch), cut unsupported repetitions.
        Returns (tokens or the LLM's dict output, the draft statistics or None, the loop guard's cuts or None)."""
        embeds, prompt_mask, position_ids, _ = self.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
        bounds = guards.cap(resolve_bounds(self, config, fixed, speech.sample_lengths, prompt_mask.shape[1]))
        processors = LogitsProcessorList()  # each with .select(rows): the processor of some rows of the batch
        if hotwords is not None and hotwords.any:
            processors.append(hotwords.processor())
        if silent is not None and any(silent):
            processors.append(NoSpeechLogitsProcessor(silent, (bounds.eos_ids or [bounds.pad_id])[0]))
        stats = None
        if config.ctc_draft:
            out, stats = ctc_draft_generate(self, speech, hypotheses, embeds, prompt_mask, position_ids, config, bounds,
                                            llm_kwargs.get("streamer"), draft_override, tokenizer, processors)
        else:
            out = self._generate_tokens(embeds, prompt_mask, position_ids, config, bounds, llm_kwargs, processors)
        cuts = guards.cut_repeats(out if isinstance(out, torch.Tensor) else out.sequences, bounds)
        return out, stats, cuts

    def _generate_tokens(self, embeds, prompt_mask, position_ids, config, bounds, kwargs, processors):
        """language_model.generate after the packed prompt, hubert-gpt's logits processors (`processors`) and its
        per-utterance bound (a stopping criterion) after the caller's."""
        kwargs = dict(kwargs)
        if bounds.per_utterance and config.num_beams > 1 and len(set(bounds.max_new)) > 1:
            return self._generate_in_bound_groups(embeds, prompt_mask, position_ids, config, bounds, kwargs, processors)
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), *processors])
        if bounds.per_utterance:
            config.max_length = None
            config.max_new_tokens = max(bounds.max_new)
            if config.num_beams == 1:
                kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [*(kwargs.get("stopping_criteria") or []), PerUtteranceLimit(bounds.max_new)])
        if (config.num_beams == 1 and config.use_cache is not False and config.cache_implementation is None
                and not {"cache", "past_key_values"} & set(kwargs)):
            # a KV cache that appends in place (beam search reorders its cache every step: it keeps the default)
            kwargs[cache_keyword(self.language_model)[0]] = new_cache(self.language_model)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=prompt_mask, position_ids=position_ids,
                                            generation_config=llm_generation_config(config), **kwargs)

    def _generate_in_bound_groups(self, embeds, prompt_mask, position_ids, config, bounds, kwargs, processors):
        """Beam search with per-utterance bounds: rows that share a bound are decoded together with exactly that
        max_new_tokens (a beam cannot stop at a bound of its own), so each row gets the tokens it gets alone."""
        rows_by_bound = {}
        for row, bound in enumerate(bounds.max_new):
            rows_by_bound.setdefault(bound, []).append(row)
        outputs = [None] * len(bounds.max_new)
        for bound, rows in rows_by_bound.items():
            index = torch.tensor(rows, device=embeds.device)
            keep = int(prompt_mask[index].sum(-1).max())  # drop the left padding no row of this group needs
            group_config = llm_generation_config(config)
            group_config.max_length, group_config.max_new_tokens = None, bound
            group_kwargs = {**kwargs, "logits_processor": LogitsProcessorList(
                [*(kwargs.get("logits_processor") or []), *(processor.select(rows) for processor in processors)])}
            tokens = self.language_model.generate(
                inputs_embeds=embeds[index, -keep:], attention_mask=prompt_mask[index, -keep:],
                position_ids=position_ids[index, -keep:], generation_config=group_config, **group_kwargs)
            for row, out in zip(rows, tokens):
                outputs[row] = out
        width = max(len(out) for out in outputs)
        return torch.stack([F.pad(out, (0, width - len(out)), value=bounds.pad_id) for out in outputs])


HubertGptForConditionalGeneration.register_for_auto_class("AutoModelForSpeechSeq2Seq")
