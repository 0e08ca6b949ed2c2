"""CTC-draft speculative decoding for hubert-gpt: the CTC head's own greedy transcript drafts, the LLM verifies.

A model with a CTC head (`model.ctc_head`: always with `bridge_type="ctc"`, whose bridge picks frames with it; a
conv-bridge model when its config has a `ctc_head_config`) labels every encoder frame with an LLM token or blank.
Its greedy hypothesis (per utterance, over its real frames: argmax, collapse repeats, drop blanks;
`model.ctc_head.greedy_labels`) is a token sequence in the LLM's vocabulary, i.e. a free draft of the transcript. A
character-level head (`ctc_head_config["vocab"]`) spells text instead, which the LLM's tokenizer turns into the draft
(`model.ctc_head.to_tokens`). `model.generate(..., ctc_draft=True)` runs

1. one LLM pass over the speech prompt AND the first draft window (the prefill verifies drafts too), then
2. passes over [tokens decided but not yet in the KV cache] + [the next draft window], until every utterance ends.

In every pass the LLM's greedy token at each draft position is compared with the draft: the longest agreeing prefix
is kept, plus the LLM's own token after it (so each pass yields at least one token, as a plain greedy step does).
Every kept token IS the LLM's argmax given exactly the tokens before it, so the output equals plain greedy decoding
(`model.generate(...)` with the same settings), token for token: lossless. The draft only decides how many tokens
one pass may confirm. Stopping is plain greedy's, resolved for both by `generation_hubert_gpt.resolve_bounds`
(its `Bounds`): eos (one id or a list), the per-utterance bound `model.max_new_tokens_for(sample_lengths)` (from
`model.generation_config.max_new_tokens_per_second` / `max_new_tokens_base`) unless `max_new_tokens` / `max_length`
is given, `min_new_tokens` / `min_length` (eos is masked at those positions, as MinNewTokensLengthLogitsProcessor
does), pad_token_id after eos.

One pass is four steps on the batch state `_Rows`: `propose` (each row's uncached tokens + draft window), `verify`
(one LLM pass: the greedy token at every position that checks a draft token, eos barred before min_new), `accept`
(the agreeing prefix + the LLM's own token; a row ends at eos or its bound) and `crop` (the KV cache rolled back to
the verified length all rows share; finished rows dropped); `speculative_greedy_decode` repeats them.

Drafting and re-alignment (per utterance, `DraftAligner`): the draft is the CTC hypothesis followed by eos (a CTC
transcript never has eos; the LLM ends with it). A pointer walks the draft. After a mismatch the LLM's own token t is
looked up in the draft near where it was expected, nearest first (at most 4 ahead or back): ahead, the draft has
extra tokens (skip them); back, t repeats the last token (CTC collapsed a real double letter) or the draft lacks
tokens the LLM says (an earlier mismatch was taken for a substitution and skipped a token still to come); if t is
nowhere near, it is taken as a substitution and the pointer moves one past. When the draft is used up (or empty),
prompt-lookup drafting takes over: the longest recent n-gram (n <= 3) ending the output is found earlier in draft +
output, and what followed it is proposed. At most `ctc_draft_window` (32) tokens are proposed per pass; after a
mismatch the window shrinks to max(4, 2 x accepted) and after a fully accepted pass it doubles back, so a poor draft
wastes few positions (on a GPU a pass costs about the same for 1 or 32 tokens; on a CPU the extra positions cost
compute).

Batching: rows stay in one batch with one KV cache (`cache_hubert_gpt.new_cache`). Rows accept different numbers of
tokens per pass, so after a pass the cache is cropped to the shortest row's verified length (`cache.crop`); the
other rows' extra verified tokens are fed again next pass, in front of their next draft window (their KV is
recomputed, a few tokens; no tokens are re-verified or lost). Inputs of different lengths are right-padded and
masked, and the crop removes those slots again: beyond the prompt's left padding the cache never keeps a masked
slot, so the attention mask stays [left padding][ones]. Finished rows leave the batch (`cache.batch_select_indices`).
One forward pass of the batch counts as one pass. (Alternatives: row by row costs B passes where one does; keeping
per-row holes in the cache needs masks with holes, which not every attention implementation takes.)

Statistics come back in `generate(..., ctc_draft=True, return_dict_in_generate=True).draft_stats` (a dict):
    llm_forward_passes   LLM forward calls (the prefill included); plain greedy needs max(row_tokens) of them
    row_tokens           generated tokens per utterance (eos included, padding excluded)
    new_tokens           sum(row_tokens)
    draft_lengths        CTC draft length per utterance (before eos is appended)
    proposed_tokens      draft tokens sent for verification, by source {"ctc": n, "ngram": n}
    accepted_tokens      draft tokens the LLM agreed with and that were kept, by source
    row_proposed         draft tokens sent for verification per utterance (both sources)
    row_accepted         draft tokens kept per utterance (both sources)
    recomputed_tokens    verified tokens fed again because another row of the batch accepted fewer
    passes_per_token     llm_forward_passes / max(row_tokens) (1.0 = plain greedy; lower is better)
    accepted_per_pass    sum(accepted_tokens) / llm_forward_passes

Remote code: imports torch and the public transformers API only.
"""

from dataclasses import dataclass, field

import torch

from .cache_hubert_gpt import cache_keyword, new_cache  # relative imports: the files are saved alongside
from .generation_hubert_gpt import OPTIONS

DEFAULT_WINDOW = OPTIONS["ctc_draft_window"][0]  # most draft tokens verified per row and pass (the default)
MIN_WINDOW = 4  # the adaptive window never shrinks below this
REALIGN_AHEAD = 4  # how far ahead in the draft the LLM's token is looked for after a mismatch
REALIGN_BACK = 4  # ... and how far back (the draft skipped tokens the LLM says, or collapsed a repeat)
MAX_NGRAM = 3  # prompt-lookup n-gram size once the draft is used up

# --- drafts ----------------------------------------------------------------------------------------------------------
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


# --- the verifier: one pass = propose, verify, accept, crop ---------------------------------------------------------
@dataclass
class _Pass:
    """One forward pass of the active rows (lists in the order of `_Rows.active`)."""

    pendings: list = field(default_factory=list)  # decided tokens not yet in the KV cache
    proposals: list = field(default_factory=list)  # the draft window sent for verification
    sources: list = field(default_factory=list)  # where each proposal came from: "ctc" or "ngram"
    width: int = 0  # input positions per row after the prompt (pending + proposal, right-padded)
    survivors: list = field(default_factory=list)  # after accept: indices (into active) of the rows that go on
    verified: list = field(default_factory=list)  # ... and their output tokens whose inputs this pass verified


class _Rows:
    """The batch being decoded: every row's output and draft aligner, the rows still active, the KV cache with its
    attention mask ([left padding][ones]) and the statistics. Stopping is `bounds` (generation_hubert_gpt.Bounds),
    as plain generate resolves it: eos, each row's max_new, eos barred before min_new, pad_id after the end."""

    def __init__(self, language_model, inputs_embeds, attention_mask, position_ids, drafts, bounds, window, ngram,
                 logits_processor=None):
        self.lm, self.bounds, self.device = language_model, bounds, inputs_embeds.device
        self.processors = list(logits_processor or [])  # row-selectable processors (`.select(rows)`) of the call
        self.max_new = [int(x) for x in bounds.max_new]
        self.eos = set(bounds.eos_ids)
        self.prompt_len = inputs_embeds.shape[1]
        self.prompt_lengths = attention_mask.long().sum(-1).tolist()  # real prompt positions; output k sits at this + k
        eos_id = bounds.eos_ids[0] if bounds.eos_ids else None
        self.aligners = [DraftAligner(d, eos_id, ngram, window) for d in drafts]
        self.outputs = [[] for _ in drafts]
        self.stats = {
            "llm_forward_passes": 0,
            "draft_lengths": [len(d) for d in drafts],
            "proposed_tokens": {"ctc": 0, "ngram": 0},
            "accepted_tokens": {"ctc": 0, "ngram": 0},
            "recomputed_tokens": 0,
            "row_proposed": [0] * len(drafts),
            "row_accepted": [0] * len(drafts),
        }
        self.active = [r for r in range(len(drafts)) if self.max_new[r] > 0]  # rows still decoding
        self.cached = 0  # output tokens every active row has in the cache
        self.first = True  # the next pass is the prefill (the prompt goes in too)
        if self.active:
            self.cache_name, self.has_keep = cache_keyword(language_model)
            self.embed = language_model.get_input_embeddings()
            self.cache = _croppable_cache(language_model)
            self.past_mask = attention_mask[self.active].long()  # (B_active, cached slots)
            self.embeds, self.prompt_pos = inputs_embeds[self.active], position_ids[self.active]

    def ends(self, r, token):
        """Whether row r stops after appending `token`: eos, or its bound reached."""
        return token in self.eos or len(self.outputs[r]) >= self.max_new[r]

    def result(self):
        """(tokens (B, N) padded with pad_id after each row's end, stats dict; see the module doc)."""
        row_tokens = [len(o) for o in self.outputs]
        length = max(row_tokens, default=0)
        tokens = torch.full((len(self.outputs), length), self.bounds.pad_id, dtype=torch.long)
        for r, output in enumerate(self.outputs):
            tokens[r, : len(output)] = torch.tensor(output, dtype=torch.long)
        passes = self.stats["llm_forward_passes"]
        self.stats.update(
            row_tokens=row_tokens,
            new_tokens=sum(row_tokens),
            passes_per_token=passes / length if length else 0.0,
            accepted_per_pass=sum(self.stats["accepted_tokens"].values()) / passes if passes else 0.0,
        )
        return tokens.to(self.device), self.stats


def _croppable_cache(language_model):
    cache = new_cache(language_model)
    if not getattr(cache, "is_croppable", True) or any(getattr(cache, "is_sliding", None) or []):
        raise ValueError(
            "ctc_draft=True rolls the KV cache back after rejected draft tokens, which this LLM's cache "
            "(sliding-window or linear-attention layers) cannot do; drop ctc_draft"
        )
    return cache


def propose(rows):
    """Each active row's inputs for the next pass: its decided tokens not yet cached, then its draft window."""
    step = _Pass()
    for r in rows.active:
        room = rows.max_new[r] - len(rows.outputs[r]) - 1  # the pass adds the LLM's own token after the proposal
        proposal, source = rows.aligners[r].propose(rows.outputs[r], room)
        step.pendings.append(rows.outputs[r][rows.cached :])
        step.proposals.append(proposal)
        step.sources.append(source)
        rows.stats["proposed_tokens"][source] += len(proposal)
        rows.stats["row_proposed"][r] += len(proposal)
    return step


def _pass_inputs(rows, step):
    """(embeds, attention mask, position ids, starts) of a pass: per row [pending][proposal], right-padded and masked,
    after the prompt on the first pass. starts[b]: the input whose logits give row b's first undecided token."""
    sequences = [p + q for p, q in zip(step.pendings, step.proposals)]
    step.width = width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), rows.bounds.pad_id, dtype=torch.long)
    in_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    positions = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, (r, seq) in enumerate(zip(rows.active, sequences)):
        tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        in_mask[b, : len(seq)] = 1
        positions[b, : len(seq)] = rows.prompt_lengths[r] + rows.cached + torch.arange(len(seq))
    tokens, in_mask, positions = tokens.to(rows.device), in_mask.to(rows.device), positions.to(rows.device)
    embeds = rows.embed(tokens) if width else rows.embeds[:, :0]
    mask = torch.cat([rows.past_mask, in_mask], 1)
    if rows.first:  # every row predicts its first new token at the last prompt position
        embeds = torch.cat([rows.embeds, embeds.to(rows.embeds.dtype)], 1)
        positions = torch.cat([rows.prompt_pos, positions], 1)
        return embeds, mask, positions, [rows.prompt_len - 1] * len(sequences)
    return embeds, mask, positions, [len(p) - 1 for p in step.pendings]


def _bar_early_eos(rows, logits, first):
    """eos is not allowed before bounds.min_new new tokens, as MinNewTokensLengthLogitsProcessor does in generate.
    logits (B_active, K, V); first[b]: the logits index that predicts row b's next new token."""
    min_new, eos_ids = rows.bounds.min_new, rows.bounds.eos_ids
    if not eos_ids or min_new <= 0 or min(len(rows.outputs[r]) for r in rows.active) >= min_new:
        return logits
    keep = logits.shape[1]
    new_index = torch.full((len(rows.active), keep), 1 << 30, dtype=torch.long)  # the new token each index predicts
    for b, r in enumerate(rows.active):
        new_index[b, first[b] :] = len(rows.outputs[r]) + torch.arange(keep - first[b])
    eos_cols = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    eos_cols[eos_ids] = True
    too_early = (new_index < min_new).to(logits.device)[..., None] & eos_cols
    return logits.masked_fill(too_early, float("-inf"))


def _process(rows, step, logits, first):
    """Each verified position's logits as the call's logits processors make them in plain decoding, given the tokens
    decided before it (the row's output, then the proposal up to there). logits (B_active, K, V)."""
    if not rows.processors:
        return logits
    logits = logits.float()  # as generate() hands scores to its processors
    for b, (r, proposal) in enumerate(zip(rows.active, step.proposals)):
        processors = [processor.select([r]) for processor in rows.processors]  # this utterance's alone
        for j in range(min(len(proposal) + 1, logits.shape[1] - first[b])):
            prefix = torch.tensor([rows.outputs[r] + proposal[:j]], dtype=torch.long)  # (1, n) tokens before it
            scores = logits[b, first[b] + j][None]  # (1, V)
            for processor in processors:
                scores = processor(prefix.to(scores.device), scores)
            logits[b, first[b] + j] = scores[0]
    return logits


def verify(rows, step):
    """One LLM pass; per active row the greedy token at its first undecided position and after each proposed token:
    (B_active, span) lists (argmax: the first of ties, as generate)."""
    embeds, mask, positions, starts = _pass_inputs(rows, step)
    total_in = embeds.shape[1]
    keep = total_in - min(starts)  # logits from the earliest position any row needs
    kwargs = {rows.cache_name: rows.cache, "use_cache": True}
    if rows.has_keep:
        kwargs["logits_to_keep"] = keep
    logits = rows.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **kwargs).logits
    logits = logits[:, -keep:]  # (B_active, keep, V); logits index i <-> input index total_in - keep + i
    rows.stats["llm_forward_passes"] += 1
    first = [s - (total_in - keep) for s in starts]
    logits = _process(rows, step, _bar_early_eos(rows, logits, first), first)
    span = max(len(q) for q in step.proposals) + 1
    index = (torch.tensor(first)[:, None] + torch.arange(span)).clamp(max=keep - 1).to(rows.device)
    return logits.argmax(-1).gather(1, index).tolist()


def accept(rows, step, greedy):
    """Per row: the longest prefix of its proposal the LLM agrees with, then the LLM's own next token, up to eos or
    its bound. Returns each row's newly decided tokens; records which rows go on (step.survivors) and how many of
    their output tokens this pass verified (step.verified: pending + accepted draft tokens)."""
    decided = []
    for b, (r, pending, proposal, source) in enumerate(
        zip(rows.active, step.pendings, step.proposals, step.sources)
    ):
        llm = greedy[b]
        accepted = 0
        while accepted < len(proposal) and llm[accepted] == proposal[accepted]:
            accepted += 1
        before, done = len(rows.outputs[r]), False
        for token in llm[: accepted + 1]:
            rows.outputs[r].append(token)
            if rows.ends(r, token):
                done = True
                break
        decided.append(rows.outputs[r][before:])
        rows.stats["accepted_tokens"][source] += min(accepted, len(decided[-1]))
        rows.stats["row_accepted"][r] += min(accepted, len(decided[-1]))
        if not done:
            rows.aligners[r].update(source, len(proposal), accepted, llm[accepted])
            step.survivors.append(b)
            step.verified.append(rows.cached + len(pending) + accepted)
    return decided


def crop(rows, step):
    """Roll the KV cache back to the verified output tokens every surviving row has (a row's extra verified tokens
    are fed again next pass) and drop the finished rows from the batch."""
    if not step.survivors:
        rows.active = []
        return
    target = min(step.verified)
    rows.stats["recomputed_tokens"] += sum(v - target for v in step.verified)
    # drop the unverified and the not-common tail of this pass: every row keeps `target` output tokens cached
    to_remove = rows.past_mask.shape[1] + step.width - (rows.prompt_len + target)
    if to_remove > 0:
        rows.cache.crop(-to_remove)
    grown = rows.past_mask.new_ones((len(rows.active), target - rows.cached))
    rows.past_mask = torch.cat([rows.past_mask, grown], 1)
    if len(step.survivors) < len(rows.active):
        select = torch.tensor(step.survivors, dtype=torch.long, device=rows.device)
        rows.cache.batch_select_indices(select)
        rows.past_mask, rows.embeds = rows.past_mask[select], rows.embeds[select]
        rows.prompt_pos = rows.prompt_pos[select]
    rows.active = [rows.active[b] for b in step.survivors]
    rows.cached, rows.first = target, False


@torch.no_grad()
def speculative_greedy_decode(language_model, inputs_embeds, attention_mask, position_ids, drafts, bounds,
                              window=DEFAULT_WINDOW, ngram=True, streamer=None, logits_processor=None):
    """Greedy decoding of `language_model` after a left-padded embedded prompt, verifying `drafts`.

    inputs_embeds (B, L, D), attention_mask (B, L) (0 on the left padding), position_ids (B, L); drafts: B token
    lists; bounds: `generation_hubert_gpt.Bounds` (max_new per row, min_new, eos_ids, pad_id); logits_processor: the
    call's hubert-gpt processors (hotwords, ...; each with `select(rows)`), applied at every verified position as in
    plain decoding.
    Returns (tokens (B, N) long padded with bounds.pad_id after each row's end, stats dict; see the module doc).
    """
    rows = _Rows(language_model, inputs_embeds, attention_mask, position_ids, drafts, bounds, window, ngram,
                 logits_processor)
    if streamer is not None:
        streamer.put(torch.empty((1, 0), dtype=torch.long))  # the (empty) prompt, as generate() does
    while rows.active:
        step = propose(rows)
        decided = accept(rows, step, verify(rows, step))
        if streamer is not None and decided[0]:
            streamer.put(torch.tensor(decided[0], dtype=torch.long))
        crop(rows, step)
    if streamer is not None:
        streamer.end()
    return rows.result()


# --- model.generate(..., ctc_draft=True) -----------------------------------------------------------------------------
def ctc_draft_generate(model, speech, hypotheses, embeds, prompt_mask, position_ids, config, bounds, streamer=None,
                       draft_override=None, tokenizer=None, logits_processor=None):
    """`model.generate(input_values, attention_mask, ctc_draft=True, ...)`: same tokens as plain greedy generate.

    speech: the model's SpeechPrompt; hypotheses: the CTC head's greedy labels per row (None when drafts are given);
    embeds / prompt_mask / position_ids: the left-padded prompt; config, bounds: from generation_hubert_gpt (checked
    there: greedy settings only); config.ctc_draft_window: most draft tokens verified per row and pass;
    config.ctc_draft_ngram: prompt-lookup drafting once the CTC draft is used up. draft_override: B token lists (or a
    callable SpeechPrompt -> lists) used instead of the CTC hypothesis (tests, experiments). tokenizer: the LLM's
    tokenizer, for a CTC head that spells characters. logits_processor: the call's hubert-gpt logits processors, the
    list plain and beam decoding get too (hotwords): verification uses the processed logits, so the output equals
    greedy decoding with them. Returns (tokens, stats).
    """
    if model.ctc_head is None and (draft_override is None or callable(draft_override)):
        raise ValueError(
            f"ctc_draft=True drafts with the CTC head's hypothesis, but this model (bridge_type "
            f"{model.config.bridge_type!r}) has no CTC head (config.ctc_head_config is None); use a model with one, or "
            "drop ctc_draft"
        )
    batch = prompt_mask.shape[0]
    if batch > 1 and streamer is not None:
        raise ValueError("a streamer takes one utterance at a time (batch size 1)")
    if callable(draft_override):
        drafts = draft_override(speech)
    elif draft_override is not None:
        drafts = draft_override
    else:
        drafts = model.ctc_head.to_tokens(hypotheses, tokenizer)
    drafts = [[int(t) for t in d] for d in drafts]
    if len(drafts) != batch:
        raise ValueError(f"draft_override has {len(drafts)} drafts for {batch} utterances")
    return speculative_greedy_decode(model.language_model, embeds, prompt_mask, position_ids, drafts, bounds,
                                     window=config.ctc_draft_window, ngram=config.ctc_draft_ngram, streamer=streamer,
                                     logits_processor=logits_processor)
