"""CTC-draft speculative decoding for hubert-gpt: the CTC head's own greedy transcript drafts, the LLM verifies.

With `bridge_type="ctc"` the bridge already computes a CTC head over the LLM vocabulary (+ blank) for every encoder
frame (a conv-bridge model has one too when trained with `ctc_head=True`). Its greedy hypothesis (per utterance,
over its real frames: argmax, collapse repeats, drop blanks) is a token sequence in the LLM's vocabulary, i.e. a
free draft of the transcript. A character-level head (`ctc_head_vocab`) spells text instead, which the LLM's
tokenizer turns into the draft. `model.generate(..., ctc_draft=True)` runs

1. one LLM pass over the speech prompt AND the first draft window (the prefill verifies drafts too), then
2. passes over [tokens decided but not yet in the KV cache] + [the next draft window], until every utterance ends.

In every pass the LLM's greedy token at each draft position is compared with the draft: the longest agreeing prefix
is kept, plus the LLM's own token after it (so each pass yields at least one token, as a plain greedy step does).
Every kept token IS the LLM's argmax given exactly the tokens before it, so the output equals plain greedy decoding
(`model.generate(...)` with the same settings), token for token: lossless. The draft only decides how many tokens
one pass may confirm. Stopping is plain greedy's: eos (one id or a list), the per-utterance bound
`model.max_new_tokens_for(sample_lengths)` unless `max_new_tokens` / `max_length` is given, `min_new_tokens` /
`min_length` (eos is masked at those positions, as MinNewTokensLengthLogitsProcessor does), pad_token_id after eos.

Drafting and re-alignment (per utterance): the draft is the CTC hypothesis followed by eos (a CTC transcript never
has eos; the LLM ends with it). A pointer walks the draft. After a mismatch the LLM's own token t is looked up in the
draft near where it was expected, nearest first (at most 4 ahead or back): ahead, the draft has extra tokens (skip
them); back, t repeats the last token (CTC collapsed a real double letter) or the draft lacks tokens the LLM says
(an earlier mismatch was taken for a substitution and skipped a token still to come); if t is nowhere near, it is
taken as a substitution and the pointer moves one past. When the draft is used up (or empty), prompt-lookup
drafting takes over: the longest recent n-gram (n <= 3) ending the output is found earlier in draft + output, and
what followed it is proposed. At most
`ctc_draft_window` (32) tokens are proposed per pass; after a mismatch the window shrinks to max(4, 2 x accepted)
and after a fully accepted pass it doubles back, so a poor draft wastes few positions (on a GPU a pass costs about the same for 1 or 32
tokens; on a CPU the extra positions cost compute).

Batching: rows stay in one batch with one KV cache (`cache_hubert_gpt.new_cache`). Rows accept different numbers of tokens per pass, so after a
pass the cache is cropped to the shortest row's verified length (`cache.crop`); the other rows' extra verified
tokens are fed again next pass, in front of their next draft window (their KV is recomputed, a few tokens; no
tokens are re-verified or lost). Inputs of different lengths are right-padded and masked, and the crop removes
those slots again: beyond the prompt's left padding the cache never keeps a masked slot, so the attention mask stays
[left padding][ones]. Finished rows leave the batch (`cache.batch_select_indices`). One forward pass of the batch
counts as one pass. (Alternatives: row by row costs B passes where one does; keeping per-row holes in the cache
needs masks with holes, which not every attention implementation takes.)

Statistics of the last call are left in `model.last_generate_stats` (a dict):
    llm_forward_passes   LLM forward calls (the prefill included); plain greedy needs max(row_tokens) of them
    row_tokens           generated tokens per utterance (eos included, padding excluded)
    new_tokens           sum(row_tokens)
    draft_lengths        CTC draft length per utterance (before eos is appended)
    proposed_tokens      draft tokens sent for verification, by source {"ctc": n, "ngram": n}
    accepted_tokens      draft tokens the LLM agreed with and that were kept, by source
    recomputed_tokens    verified tokens fed again because another row of the batch accepted fewer
    passes_per_token     llm_forward_passes / max(row_tokens) (1.0 = plain greedy; lower is better)
    accepted_per_pass    sum(accepted_tokens) / llm_forward_passes

Remote code: imports torch and the public transformers API only.
"""

import copy

import torch

from .cache_hubert_gpt import cache_keyword, new_cache  # a relative import: the file is saved alongside

DEFAULT_WINDOW = 32  # most draft tokens verified per row and pass
MIN_WINDOW = 4  # the adaptive window never shrinks below this
REALIGN_AHEAD = 4  # how far ahead in the draft the LLM's token is looked for after a mismatch
REALIGN_BACK = 4  # ... and how far back (the draft skipped tokens the LLM says, or collapsed a repeat)
MAX_NGRAM = 3  # prompt-lookup n-gram size once the draft is used up

# Generation settings that change greedy's choice of token (logits processors, other decoding modes, outputs we do
# not build). Neutral values are accepted; anything else raises.
_NEUTRAL = {
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
    "return_dict_in_generate": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
}


# --- drafts ----------------------------------------------------------------------------------------------------------
def ctc_greedy_drafts(ctc_logits, frame_lengths, blank_id, vocab_size=None):
    """CTC greedy hypotheses: per utterance, argmax over its real frames, collapse repeats, drop blanks.

    ctc_logits (B, T, V+1), frame_lengths (B,) -> list of B token lists (ids < vocab_size when given).
    """
    labels = ctc_logits.argmax(-1).cpu()  # (B, T)
    drafts = []
    for row, n in zip(labels, frame_lengths.cpu().tolist()):
        row = row[:n]
        if len(row):
            starts = torch.ones_like(row, dtype=torch.bool)
            starts[1:] = row[1:] != row[:-1]
            row = row[starts]
        tokens = [t for t in row.tolist() if t != blank_id and (vocab_size is None or t < vocab_size)]
        drafts.append(tokens)
    return drafts


def ngram_proposal(context, output, window, max_ngram=MAX_NGRAM):
    """Prompt lookup: find the longest (<= max_ngram) suffix of `output` earlier in `context + output` and return
    up to `window` tokens that followed its latest occurrence ([] when none)."""
    if window <= 0 or not output:
        return []
    seq = list(context) + list(output)
    for n in range(min(max_ngram, len(output)), 0, -1):
        suffix = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):  # latest earlier occurrence first
            if seq[start : start + n] == suffix:
                follow = seq[start + n : start + n + window]
                if follow:
                    return follow
    return []


class DraftAligner:
    """Walks one utterance's draft: proposes the next window and re-aligns after each verified pass.

    The window adapts per utterance: it doubles (up to `window`) after a pass that accepted every proposed token and
    shrinks to max(MIN_WINDOW, 2 * accepted) after a mismatch, so a poor draft costs few wasted positions.
    """

    def __init__(self, draft, eos_token_id=None, ngram=True, window=DEFAULT_WINDOW):
        self.ctc = list(draft)
        self.draft = self.ctc + ([eos_token_id] if eos_token_id is not None else [])
        self.pointer = 0  # index in self.draft of the token expected next
        self.ngram = ngram
        self.max_window = self.window = max(int(window), 0)

    def propose(self, output, room):
        """(tokens, source): at most min(window, room) tokens; source is "ctc" or "ngram"."""
        size = min(self.window, room)
        if size <= 0:
            return [], "ctc"
        if self.pointer < len(self.draft):
            return self.draft[self.pointer : self.pointer + size], "ctc"
        if self.ngram:
            return ngram_proposal(self.ctc, output, size), "ngram"
        return [], "ngram"

    def update(self, source, proposed, accepted, llm_token):
        """After a pass: of `proposed` tokens `accepted` were kept, then the LLM chose `llm_token` itself."""
        if proposed:
            if accepted == proposed:
                self.window = min(self.max_window, 2 * self.window)
            else:
                self.window = min(self.max_window, max(MIN_WINDOW, 2 * accepted))
        if source != "ctc" or self.pointer >= len(self.draft):
            return
        expected = self.pointer + accepted  # where llm_token should sit in the draft
        if expected < len(self.draft) and self.draft[expected] == llm_token:
            self.pointer = expected + 1
            return
        # After a mismatch, the nearest draft position holding the LLM's token, ahead (the draft has extra tokens) or
        # back (the draft misses tokens the LLM says, so an earlier mismatch skipped too far; or a collapsed repeat);
        # nowhere near: a substitution.
        nearest_first = sorted(range(expected - REALIGN_BACK, expected + REALIGN_AHEAD + 1),
                               key=lambda q: (abs(q - expected), q < expected))  # ties: ahead first
        for q in nearest_first:
            if q != expected and 0 <= q < len(self.draft) and self.draft[q] == llm_token:
                self.pointer = q + 1
                return
        self.pointer = expected + 1


# --- the verifier ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def speculative_greedy_decode(
    language_model,
    inputs_embeds,
    attention_mask,
    position_ids,
    drafts,
    limits,
    eos_token_id=None,
    pad_token_id=0,
    min_new_tokens=0,
    window=DEFAULT_WINDOW,
    ngram=True,
    streamer=None,
):
    """Greedy decoding of `language_model` after a left-padded embedded prompt, verifying `drafts`.

    inputs_embeds (B, L, D), attention_mask (B, L) (0 on the left padding), position_ids (B, L);
    drafts: B token lists; limits: B ints (most new tokens per row); eos_token_id: int, list or None.
    Returns (tokens (B, N) long padded with pad_token_id after each row's end, stats dict; see the module doc).
    """
    batch, prompt_len, _ = inputs_embeds.shape
    device = inputs_embeds.device
    eos_ids = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    eos_set = set(eos_ids)
    limits = [int(x) for x in limits]
    window = max(int(window), 0)
    cache_name, has_keep = cache_keyword(language_model)
    embed = language_model.get_input_embeddings()
    aligners = [DraftAligner(d, eos_ids[0] if eos_ids else None, ngram, window) for d in drafts]
    outputs = [[] for _ in range(batch)]
    stats = {
        "llm_forward_passes": 0,
        "draft_lengths": [len(d) for d in drafts],
        "proposed_tokens": {"ctc": 0, "ngram": 0},
        "accepted_tokens": {"ctc": 0, "ngram": 0},
        "recomputed_tokens": 0,
    }
    prompt_lengths = attention_mask.long().sum(-1).tolist()  # real prompt positions; output k sits at this + k
    active = [r for r in range(batch) if limits[r] > 0]
    if streamer is not None:
        streamer.put(torch.empty((1, 0), dtype=torch.long))  # the (empty) prompt, as generate() does
    if active:
        cache = new_cache(language_model)
        if not getattr(cache, "is_croppable", True) or any(getattr(cache, "is_sliding", None) or []):
            raise ValueError(
                "ctc_draft=True rolls the KV cache back after rejected draft tokens, which this LLM's cache "
                "(sliding-window or linear-attention layers) cannot do; drop ctc_draft"
            )
        past_mask = attention_mask[active].long()  # (B_active, cached slots)
        embeds = inputs_embeds[active]
        prompt_pos = position_ids[active]
    cached = 0  # output tokens every active row has in the cache
    first = True
    while active:
        # -- inputs: prompt (first pass only) or the row's decided-but-uncached tokens, then the draft window
        pendings, proposals, sources = [], [], []
        for r in active:
            pending = outputs[r][cached:]
            room = limits[r] - len(outputs[r]) - 1  # the pass adds the LLM's own token after the proposal
            proposal, source = aligners[r].propose(outputs[r], room)
            pendings.append(pending)
            proposals.append(proposal)
            sources.append(source)
            stats["proposed_tokens"][source] += len(proposal)
        width = max(len(p) + len(q) for p, q in zip(pendings, proposals))
        tokens = torch.full((len(active), width), pad_token_id, dtype=torch.long)
        in_mask = torch.zeros((len(active), width), dtype=torch.long)
        positions = torch.zeros((len(active), width), dtype=torch.long)
        for b, (r, p, q) in enumerate(zip(active, pendings, proposals)):
            row = p + q
            tokens[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            in_mask[b, : len(row)] = 1
            positions[b, : len(row)] = prompt_lengths[r] + cached + torch.arange(len(row))
        tokens, in_mask, positions = tokens.to(device), in_mask.to(device), positions.to(device)
        step_embeds = embed(tokens) if width else embeds[:, :0]
        if first:
            step_embeds = torch.cat([embeds, step_embeds.to(embeds.dtype)], 1)
            positions = torch.cat([prompt_pos, positions], 1)
            full_mask = torch.cat([past_mask, in_mask], 1)
            # row b predicts its first new token at the last prompt position
            starts = [prompt_len - 1] * len(active)
        else:
            full_mask = torch.cat([past_mask, in_mask], 1)
            starts = [len(p) - 1 for p in pendings]
        total_in = step_embeds.shape[1]
        keep = total_in - min(starts)  # logits from the earliest position any row needs
        kwargs = {cache_name: cache, "use_cache": True}
        if has_keep:
            kwargs["logits_to_keep"] = keep
        logits = language_model(
            inputs_embeds=step_embeds, attention_mask=full_mask, position_ids=positions, **kwargs
        ).logits
        logits = logits[:, -keep:]  # (B_active, keep, V); logits index i <-> input index total_in - keep + i
        stats["llm_forward_passes"] += 1
        # -- greedy token at every position that verifies a draft token (or follows the last one)
        span = max(len(q) for q in proposals) + 1
        index = torch.zeros((len(active), span), dtype=torch.long)
        for b in range(len(active)):
            index[b] = (starts[b] - (total_in - keep) + torch.arange(span)).clamp(max=keep - 1)
        index = index.to(device)
        if eos_ids and min_new_tokens > 0 and min(len(outputs[r]) for r in active) < min_new_tokens:
            # eos is not allowed before min_new_tokens (as MinNewTokensLengthLogitsProcessor does)
            new_index = torch.full((len(active), keep), 1 << 30, dtype=torch.long)
            for b, r in enumerate(active):
                first_index = starts[b] - (total_in - keep)
                new_index[b, first_index:] = len(outputs[r]) + torch.arange(keep - first_index)
            eos_cols = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
            eos_cols[eos_ids] = True
            too_early = (new_index < min_new_tokens).to(device)[..., None] & eos_cols
            logits = logits.masked_fill(too_early, float("-inf"))
        greedy = logits.argmax(-1).gather(1, index).tolist()  # (B_active, span); argmax: first of ties, as generate
        # -- accept the agreeing prefix plus the LLM's own next token; stop on eos / the row's bound
        new_cached, still_active, streamed = [], [], []
        for b, (r, p, q, source) in enumerate(zip(active, pendings, proposals, sources)):
            g = greedy[b]
            accepted = 0
            while accepted < len(q) and g[accepted] == q[accepted]:
                accepted += 1
            done = False
            before = len(outputs[r])
            for j in range(accepted + 1):
                outputs[r].append(g[j])
                if g[j] in eos_set or len(outputs[r]) >= limits[r]:
                    done = True
                    break
            kept = len(outputs[r]) - before
            stats["accepted_tokens"][source] += min(accepted, kept)
            if b == 0 and streamer is not None:
                streamed = outputs[r][before:]
            if done:
                continue
            aligners[r].update(source, len(q), accepted, g[accepted])
            still_active.append(b)
            # verified inputs: the pending tokens and the accepted draft tokens (all now in outputs[r])
            new_cached.append(cached + len(p) + accepted)
        if streamer is not None and streamed:
            streamer.put(torch.tensor(streamed, dtype=torch.long))
        if not still_active:
            break
        target = min(new_cached)
        stats["recomputed_tokens"] += sum(c - target for c in new_cached)
        cache_len = past_mask.shape[1] + width
        # drop the unverified and the not-common tail of this pass: every row keeps `target` output tokens cached
        to_remove = cache_len - (prompt_len + target)
        if to_remove > 0:
            cache.crop(-to_remove)
        past_mask = torch.cat([past_mask, past_mask.new_ones((len(active), target - cached))], 1)
        if len(still_active) < len(active):
            select = torch.tensor(still_active, dtype=torch.long, device=device)
            cache.batch_select_indices(select)
            past_mask = past_mask[select]
            embeds, prompt_pos = embeds[select], prompt_pos[select]
        active = [active[b] for b in still_active]
        cached = target
        first = False
    if streamer is not None:
        streamer.end()
    row_tokens = [len(o) for o in outputs]
    length = max(row_tokens, default=0)
    result = torch.full((batch, length), pad_token_id, dtype=torch.long)
    for r, o in enumerate(outputs):
        result[r, : len(o)] = torch.tensor(o, dtype=torch.long)
    accepted_total = sum(stats["accepted_tokens"].values())
    stats.update(
        row_tokens=row_tokens,
        new_tokens=sum(row_tokens),
        passes_per_token=stats["llm_forward_passes"] / length if length else 0.0,
        accepted_per_pass=accepted_total / stats["llm_forward_passes"] if stats["llm_forward_passes"] else 0.0,
    )
    return result.to(device), stats


# --- model.generate(..., ctc_draft=True) -----------------------------------------------------------------------------
def _check_greedy(generation_config):
    bad = {k: getattr(generation_config, k) for k, ok in _NEUTRAL.items() if getattr(generation_config, k, None) not in ok}
    if bad:
        raise ValueError(
            f"ctc_draft=True is lossless speculative GREEDY decoding; these settings are not supported with it: {bad}. "
            "Drop ctc_draft for beam search, sampling, logits processors or extra outputs."
        )


def ctc_draft_generate(
    model,
    input_values=None,
    attention_mask=None,
    generation_config=None,
    draft_override=None,
    ctc_draft_window=DEFAULT_WINDOW,
    ctc_draft_ngram=True,
    tokenizer=None,
    **kwargs,
):
    """`model.generate(input_values, attention_mask, ctc_draft=True, ...)`: same tokens as plain greedy generate.

    draft_override: B token lists (or a callable SpeechPrompt -> lists) used instead of the CTC hypothesis (tests,
    experiments). ctc_draft_window: most draft tokens verified per row and pass. ctc_draft_ngram: prompt-lookup
    drafting once the CTC draft is used up. tokenizer: the LLM's tokenizer, needed (and only used) when the CTC
    head spells characters (`config.ctc_head_vocab`): its greedy text is tokenized into the draft. Statistics:
    `model.last_generate_stats` (see the module doc).
    """
    if not model.config.ctc_head:
        raise ValueError(
            f"ctc_draft=True drafts with the CTC head's hypothesis, but this model (bridge_type "
            f"{model.config.bridge_type!r}) has no CTC head; use a bridge_type='ctc' model or a conv-bridge model "
            "trained with ctc_head=True, or drop ctc_draft"
        )
    chars = model.config.ctc_head_vocab
    if chars is not None and tokenizer is None and draft_override is None:
        raise ValueError(
            "this model's CTC head spells characters (config.ctc_head_vocab): generate(ctc_draft=True) needs "
            "tokenizer=processor.tokenizer to turn its text into LLM tokens (the pipeline passes its own)"
        )
    kwargs.pop("labels", None)
    kwargs.pop("use_cache", None)  # the result does not depend on it; the verifier always caches
    streamer = kwargs.pop("streamer", None)
    for name in ("logits_processor", "stopping_criteria"):
        if kwargs.pop(name, None):
            raise ValueError(f"ctc_draft=True does not take a custom {name}; drop ctc_draft to use one")
    original, per_utterance = model.generation_config_for(generation_config, kwargs)
    if kwargs:
        raise TypeError(f"generate(ctc_draft=True) got unexpected keyword arguments {sorted(kwargs)}")
    # As language_model.generate() would: unset values come from the LLM's own generation config.
    config = copy.deepcopy(original)
    lm_config = getattr(model.language_model, "generation_config", None)
    if lm_config is not None:
        config.update(**lm_config.to_dict(), defaults_only=True)
    _check_greedy(config)

    needs_head = draft_override is None or callable(draft_override)  # given drafts (a list) need no CTC head
    speech = model.encode_speech(input_values, attention_mask, with_ctc=needs_head)
    embeds, prompt_mask, position_ids, _ = model.pack_prompt(speech.embeds, speech.lengths, left_pad=True)
    batch, prompt_len = prompt_mask.shape
    if batch > 1 and streamer is not None:
        raise ValueError("a streamer takes one utterance at a time (batch size 1)")
    # Bounds, as generate() sets them: per utterance, else max_new_tokens, else max_length (which counts the prompt).
    if per_utterance:
        limits = model.max_new_tokens_for(speech.sample_lengths).tolist()
    elif config.max_new_tokens is not None:
        limits = [config.max_new_tokens] * batch
    else:
        limits = [max(config.max_length - prompt_len, 0)] * batch
    if config.min_new_tokens is not None:
        min_new = config.min_new_tokens
    else:
        min_new = max((config.min_length or 0) - prompt_len, 0)
    eos = config.eos_token_id
    pad = config.pad_token_id
    if pad is None:
        pad = (eos if isinstance(eos, int) else eos[0]) if eos is not None else 0
    if callable(draft_override):
        drafts = draft_override(speech)
    elif draft_override is not None:
        drafts = draft_override
    else:
        drafts = ctc_greedy_drafts(
            speech.ctc_logits, speech.frame_lengths, model.config.ctc_blank_id, model.config.ctc_label_vocab_size
        )
        if chars is not None:  # characters -> text -> the LLM's own pieces
            texts = ["".join(chars[i] for i in draft) for draft in drafts]
            drafts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    drafts = [[int(t) for t in d] for d in drafts]
    if len(drafts) != batch:
        raise ValueError(f"draft_override has {len(drafts)} drafts for {batch} utterances")
    tokens, stats = speculative_greedy_decode(
        model.language_model,
        embeds,
        prompt_mask,
        position_ids,
        drafts,
        limits,
        eos_token_id=eos,
        pad_token_id=pad,
        min_new_tokens=min_new,
        window=ctc_draft_window,
        ngram=ctc_draft_ngram,
        streamer=streamer,
    )
    model.last_generate_stats = stats
    return tokens
