"""The CTC head as a second opinion while the LLM writes: a no-speech guard and a loop guard.

An LLM writes fluent text for silence and noise, and can repeat a phrase until its length bound. The CTC head hears
the same audio frame by frame and has no language model to please, so for models with one (`model.ctc_head`):

- No-speech guard (`no_speech_threshold`, a float; DEFAULT_NO_SPEECH_THRESHOLD unless the generation config or the
  call says otherwise; None turns it off): an utterance whose CTC non-blank mass (the sum over its frames of
  1 - P(blank), i.e. how many labels the head expects to hear) is below the threshold is taken as silence: its
  transcript is empty (eos, then padding) and the LLM does not run for it; in a batch the other rows go on.
- Loop guard (`loop_guard`, True unless the generation config or the call says False): an utterance stops after
  int(LOOP_RATIO * n + LOOP_BASE) new tokens, n the length of the CTC head's greedy hypothesis (characters or
  tokens; an LLM token spells at least one character, so this leaves room for everything the head heard), on top
  of the usual per-utterance bound; and an output longer than n tokens (more than the head heard) that repeats a run of
  up to MAX_REPEAT_UNIT tokens at least MIN_REPEATS times in a row is cut after the run's first copy.

Models without a CTC head have neither (asking for them is an error). Both hold in batches (each row on its own
evidence), with beams and with ctc_draft=True. On ordinary speech neither changes a transcript (bench/timestamps.py
checks it on the embedded default's whole test split).

Remote code: imports torch only.
"""

from dataclasses import dataclass

import torch

from .ctc_head_hubert_gpt import require_ctc_head

DEFAULT_NO_SPEECH_THRESHOLD = 1.0  # expected CTC labels: below one character, nothing was said
LOOP_RATIO, LOOP_BASE = 1.5, 8
MIN_REPEATS, MAX_REPEAT_UNIT = 3, 8
_UNSET = object()


@dataclass
class Guards:
    """One generate call's guards and the CTC head's evidence per row of the batch being decoded."""

    no_speech_threshold: float | None
    loop_guard: bool
    speech_mass: list | None = None  # B floats: sum over real frames of 1 - P(blank)
    hypothesis_lengths: list | None = None  # B ints: CTC greedy hypothesis length

    @property
    def needs_ctc_head(self):
        return self.no_speech_threshold is not None or self.loop_guard

    def read(self, ctc_head, ctc_logits, frame_lengths):
        """Collect the evidence from the CTC head's logits (B, T, C) over frame_lengths (B,)."""
        if not self.needs_ctc_head:
            return self
        blank = ctc_logits.float().log_softmax(-1)[..., ctc_head.blank_id].exp()  # (B, T)
        real = torch.arange(blank.shape[1], device=blank.device) < frame_lengths.to(blank.device)[:, None]
        self.speech_mass = ((1 - blank) * real).sum(-1).tolist()
        self.hypothesis_lengths = [len(h) for h in ctc_head.greedy_labels(ctc_logits, frame_lengths)]
        return self

    def speaking_rows(self):
        """Indices of the rows the LLM decodes (all of them without the no-speech guard)."""
        if self.no_speech_threshold is None:
            return list(range(len(self.speech_mass or [])))
        return [b for b, mass in enumerate(self.speech_mass) if mass >= self.no_speech_threshold]

    def select(self, rows):
        return Guards(self.no_speech_threshold, self.loop_guard,
                      [self.speech_mass[b] for b in rows], [self.hypothesis_lengths[b] for b in rows])

    def cap(self, bounds):
        """The loop guard's per-row bound on new tokens, on top of `bounds` (generation_hubert_gpt.Bounds)."""
        if self.loop_guard:
            bounds.max_new = [min(int(m), int(LOOP_RATIO * n + LOOP_BASE))
                              for m, n in zip(bounds.max_new, self.hypothesis_lengths)]
            bounds.per_utterance = True
        return bounds

    def cut_repeats(self, tokens, bounds):
        """tokens (B, N) -> the same with each unsupported repetition cut (eos after the run's first copy)."""
        if not self.loop_guard or not isinstance(tokens, torch.Tensor):
            return tokens
        ends = set(bounds.eos_ids) | {bounds.pad_id}
        for b, row in enumerate(tokens.tolist()):
            length = next((i for i, t in enumerate(row) if t in ends), len(row))
            if length <= self.hypothesis_lengths[b]:
                continue
            cut = repeat_cut(row[:length])
            if cut is not None:
                tokens[b, cut:] = bounds.pad_id
                if bounds.eos_ids:
                    tokens[b, cut] = bounds.eos_ids[0]
        return tokens


def repeat_cut(tokens):
    """Where a run of 1..MAX_REPEAT_UNIT tokens repeated MIN_REPEATS+ times in a row first ends its first copy, or
    None. The earliest such run wins; among runs starting there, the shortest unit."""
    for start in range(len(tokens)):
        for unit in range(1, MAX_REPEAT_UNIT + 1):
            piece = tokens[start : start + unit]
            if len(piece) < unit:
                break
            if all(tokens[start + k * unit : start + (k + 1) * unit] == piece for k in range(1, MIN_REPEATS)):
                return start + unit
    return None


def resolve_guards(model, kwargs):
    """Pop `no_speech_threshold` / `loop_guard` from generate()'s keywords: this call's Guards."""
    threshold = kwargs.pop("no_speech_threshold", _UNSET)
    loop = kwargs.pop("loop_guard", _UNSET)
    if model.ctc_head is None:
        asked = [name for name, value in (("no_speech_threshold", threshold), ("loop_guard", loop))
                 if value not in (_UNSET, None, False)]
        if asked:
            require_ctc_head(model, f"{asked} read")
        return Guards(None, False)
    config = model.generation_config
    if threshold is _UNSET:
        threshold = getattr(config, "no_speech_threshold", DEFAULT_NO_SPEECH_THRESHOLD)
    if loop is _UNSET:
        loop = getattr(config, "loop_guard", True)
    if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"no_speech_threshold must be None (off) or a number >= 0, got {threshold!r}")
    if not isinstance(loop, bool):
        raise ValueError(f"loop_guard must be True or False, got {loop!r}")
    return Guards(threshold, loop)


def fill_silent_rows(tokens, rows, batch, bounds, device):
    """The decoded rows' tokens (len(rows), N) or None, back in a (B, N') batch on `device` whose other rows are
    silent: eos then padding (just padding without an eos)."""
    width = max(1, 0 if tokens is None else tokens.shape[1])
    out = torch.full((batch, width), bounds.pad_id, dtype=torch.long, device=device)
    if bounds.eos_ids:
        out[:, 0] = bounds.eos_ids[0]
    if tokens is not None and rows:
        out[rows, : tokens.shape[1]] = tokens
    return out
