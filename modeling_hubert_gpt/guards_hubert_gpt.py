"""The CTC head as a second opinion while the LLM writes: a no-speech guard and a loop guard.

An LLM writes fluent text for silence and noise, and can repeat a phrase until its length bound. The CTC head hears
the same audio frame by frame and has no language model to please, so for models with one (`model.ctc_head`):

- No-speech guard (`no_speech_threshold`, a float; 1.0 unless the generation config or the call says otherwise;
  None turns it off): an utterance whose CTC non-blank mass (the sum over its frames of 1 - P(blank), i.e. how many
  labels the head expects to hear) is below the threshold is taken as silence: its transcript is empty (eos, then
  padding). When generate returns tokens only, the LLM does not run for it (the other rows of a batch go on); with
  transformers' dict outputs (scores, hidden states, ...) the row stays in the batch and `NoSpeechLogitsProcessor`
  makes its first token eos, so every row has its outputs. Either way the same tokens. The head is not trusted
  alone: a head that cannot hear speech through noise or a room it never met would throw that speech away. So the
  waveform is a second witness (`sound_hubert_gpt.rising_share`): when at least DOUBT_SHARE of an utterance's frames
  rise RISE_DB above its own floor (speech does, through steady noise; silence, hiss, hum and room tone do not), the
  guard doubts the head, the LLM decides (trained with non-speech rows, it writes nothing for sound without speech),
  the loop guard does not cap the row by the head's length, and the output says so (`no_speech_doubted`).
- Loop guard (`loop_guard`, True unless the generation config or the call says False): an utterance stops after
  int(LOOP_RATIO * n + LOOP_BASE) new tokens, n the length of the CTC head's greedy hypothesis (characters or
  tokens; an LLM token spells at least one character, so this leaves room for everything the head heard), on top
  of the usual per-utterance bound; and an output longer than n tokens (more than the head heard) that repeats a run of
  up to MAX_REPEAT_UNIT tokens at least MIN_REPEATS times in a row is cut after the run's first copy.

Models without a CTC head have neither (asking for them is an error). Both hold in batches (each row on its own
evidence), with beams and with ctc_draft=True. On ordinary speech neither changes a transcript (bench/timestamps.py
checks it on the embedded default's whole test split).

The options' defaults and checks: generation_hubert_gpt.OPTIONS. What the guards decided per row comes back in
generate's dict output (`speech_mass`, `no_speech`, `ctc_lengths`, `loop_cuts`).

Remote code: imports torch and the public transformers API only.
"""

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

LOOP_RATIO, LOOP_BASE = 1.5, 8
DOUBT_SHARE = 0.1  # frames rising above the floor: speech at 10 dB SNR has ~0.4, steady noise 0 (sound_hubert_gpt)
MIN_REPEATS, MAX_REPEAT_UNIT = 3, 8


@dataclass
class Guards:
    """One generate call's guards and the CTC head's evidence per row of the batch being decoded."""

    no_speech_threshold: float | None
    loop_guard: bool
    speech_mass: list | None = None  # B floats: sum over real frames of 1 - P(blank)
    hypothesis_lengths: list | None = None  # B ints: CTC greedy hypothesis length
    sound_share: list | None = None  # B floats: the waveform's rising frames (None: the waveform was not given)

    @property
    def needs_ctc_head(self):
        return self.no_speech_threshold is not None or self.loop_guard

    def read(self, ctc_head, log_probs, frame_lengths, hypotheses, sound_share=None):
        """Collect the evidence from the CTC head's log-posteriors (B, T, C) over frame_lengths (B,), its greedy
        hypotheses (B label lists) and the waveform's rising share (B floats, or None)."""
        if not self.needs_ctc_head:
            return self
        self.sound_share = sound_share
        blank = log_probs[..., ctc_head.blank_id].exp()  # (B, T)
        real = torch.arange(blank.shape[1], device=blank.device) < frame_lengths.to(blank.device)[:, None]
        self.speech_mass = ((1 - blank) * real).sum(-1).tolist()
        self.hypothesis_lengths = [len(h) for h in hypotheses]
        return self

    def unheard(self):
        """Per row whether the CTC head heard less than the threshold (None without the no-speech guard)."""
        if self.no_speech_threshold is None or self.speech_mass is None:
            return None
        return [mass < self.no_speech_threshold for mass in self.speech_mass]

    def doubted(self):
        """Per row whether the head heard nothing but the waveform rises like speech: the LLM decides (None without
        the no-speech guard)."""
        unheard = self.unheard()
        if unheard is None:
            return None
        shares = self.sound_share or [0.0] * len(unheard)
        return [quiet and share >= DOUBT_SHARE for quiet, share in zip(unheard, shares)]

    def silent(self):
        """Per row whether the no-speech guard takes it for silence (None without the guard)."""
        unheard, doubted = self.unheard(), self.doubted()
        return None if unheard is None else [quiet and not doubt for quiet, doubt in zip(unheard, doubted)]

    def select(self, rows):
        pick = (lambda values: None if values is None else [values[b] for b in rows])
        return Guards(self.no_speech_threshold, self.loop_guard, pick(self.speech_mass),
                      pick(self.hypothesis_lengths), pick(self.sound_share))

    def cap(self, bounds):
        """The loop guard's per-row bound on new tokens, on top of `bounds` (generation_hubert_gpt.Bounds); a row the
        guard doubts keeps its bound (the head's length is no yardstick where it heard nothing)."""
        if self.loop_guard:
            doubted = self.doubted() or [False] * len(self.hypothesis_lengths)
            bounds.max_new = [int(m) if doubt else min(int(m), int(LOOP_RATIO * n + LOOP_BASE))
                              for m, n, doubt in zip(bounds.max_new, self.hypothesis_lengths, doubted)]
            bounds.per_utterance = True
        return bounds

    def cut_repeats(self, tokens, bounds):
        """Cut in place each unsupported repetition of tokens (B x returned sequences, N) (eos after the run's first
        copy). Returns per row the index of that eos or None (None without the loop guard)."""
        if not self.loop_guard:
            return None
        ends = set(bounds.eos_ids) | {bounds.pad_id}
        per_row = tokens.shape[0] // len(self.hypothesis_lengths)  # sequences returned per utterance
        cuts = []
        for b, row in enumerate(tokens.tolist()):
            length = next((i for i, t in enumerate(row) if t in ends), len(row))
            cut = repeat_cut(row[:length]) if length > self.hypothesis_lengths[b // per_row] else None
            if cut is not None:
                tokens[b, cut:] = bounds.pad_id
                if bounds.eos_ids:
                    tokens[b, cut] = bounds.eos_ids[0]
            cuts.append(cut)
        return cuts


class NoSpeechLogitsProcessor(LogitsProcessor):
    """Makes eos the only choice for the rows the no-speech guard took for silence (`silent`: B bools), so they end
    at once while staying in the batch. input_ids (B x beams, n), scores (B x beams, V)."""

    def __init__(self, silent, eos_token_id):
        self.silent, self.eos = torch.tensor(silent), eos_token_id

    def select(self, rows):
        """The processor of some utterances of the batch (rows: their indices)."""
        return NoSpeechLogitsProcessor(self.silent[rows].tolist(), self.eos)

    def __call__(self, input_ids, scores):
        rows = self.silent.to(scores.device).repeat_interleave(scores.shape[0] // len(self.silent))
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.eos] = 0.0
        return torch.where(rows[:, None], forced, scores)


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
