"""The CTC head: a label (or blank) per encoder frame, as one module with its own options (`config.ctc_head_config`).

Options:
    vocab (`list[str]` or None): None: the labels are the LLM's tokens (what the ctc bridge needs to pick frames).
        A list of characters: the head spells text, which the LLM's tokenizer cuts into its own pieces for drafts
        (`to_tokens`): far closer to what the LLM writes than token-level CTC, which cannot spell long pieces.
    kernel_size (`int`, odd): 1: one Linear per frame. k > 1: Conv1d over k frames (same padding) + GELU before
        the Linear, so each frame's label sees its neighbours (padded frames are zeroed first: batched == single).
    blank_id (`int` or None): index of blank among the outputs; None: an extra class after the labels.

What reads it: the ctc bridge (frames to keep), the auxiliary CTC loss in training, and speculative decoding's
drafts, all through `HubertGptForConditionalGeneration.ctc_posteriors` / `encode_speech`. Whether the loss reaches
the encoder and its weight are training settings (`forward(..., ctc_loss_weight=, ctc_trains_encoder=)`).

Remote code: imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_OPTIONS = {"vocab": None, "kernel_size": 1, "blank_id": None}


def require_ctc_head(model, what):
    """model.ctc_head, or a ValueError saying that `what` (e.g. "Timestamps come from") needs one and which models
    have one: the one wording for every reader of the head (timestamps, guards, hotwords, posteriors)."""
    if getattr(model, "ctc_head", None) is None:
        raise ValueError(
            f"{what} the CTC head, and this model has none (config.ctc_head_config is None). Models with one: the ctc "
            "bridge (bridge_type='ctc'), a conv-bridge model trained with a CTC head (train_hf.py --ctc_head, as the "
            "embedded default is), or ctc_head_config set when a model is built."
        )
    return model.ctc_head


def check_ctc_head_options(options, text_vocab_size):
    """`config.ctc_head_config` -> complete, checked options (blank_id resolved)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"ctc_head_config has unknown option(s) {unknown}; it takes {sorted(DEFAULT_OPTIONS)}")
    options = {**DEFAULT_OPTIONS, **options}
    vocab, kernel = options["vocab"], options["kernel_size"]
    if vocab is not None:
        if len(set(vocab)) != len(vocab) or not all(isinstance(c, str) and c for c in vocab):
            raise ValueError("ctc_head_config['vocab'] must be a list of distinct, non-empty strings (characters)")
        vocab = list(vocab)
    if not (isinstance(kernel, int) and kernel >= 1 and kernel % 2):
        raise ValueError(f"ctc_head_config['kernel_size'] must be an odd int >= 1, got {kernel!r}")
    labels = text_vocab_size if vocab is None else len(vocab)
    blank = labels if options["blank_id"] is None else options["blank_id"]
    if not (isinstance(blank, int) and 0 <= blank <= labels):
        raise ValueError(f"ctc_head_config['blank_id'] must be in [0, {labels}] ({labels} is the extra class), got {blank!r}")
    return {"vocab": vocab, "kernel_size": kernel, "blank_id": blank}


class HubertGptCtcHead(nn.Module):
    """Encoder frames (B, T, Da) -> CTC logits (B, T, C): C labels (LLM tokens or characters), blank included."""

    def __init__(self, config):
        super().__init__()
        options = check_ctc_head_options(config.ctc_head_config, config.text_config.vocab_size)
        self.vocab, self.blank_id = options["vocab"], options["blank_id"]
        self.label_count = config.text_config.vocab_size if self.vocab is None else len(self.vocab)
        self.num_labels = self.label_count + 1 if self.blank_id == self.label_count else self.label_count
        width, kernel = config.audio_config.hidden_size, options["kernel_size"]
        self.conv = nn.Conv1d(width, width, kernel, padding=kernel // 2) if kernel > 1 else None
        self.out = nn.Linear(width, self.num_labels)

    def forward(self, hidden, frame_lengths):
        """hidden (B, T, Da), frame_lengths (B,) -> logits (B, T, C)."""
        if self.conv is not None:
            valid = torch.arange(hidden.shape[1], device=hidden.device) < frame_lengths.to(hidden.device)[:, None]
            hidden = hidden * valid[..., None].to(hidden.dtype)  # padded frames are zeros, as after a lone utterance
            hidden = F.gelu(self.conv(hidden.transpose(1, 2))).transpose(1, 2)  # (B, Da, T) for Conv1d, back
        return self.out(hidden)

    @torch.no_grad()
    def resize_labels(self, label_count):
        """A token head follows the LLM's new vocabulary size (`model.resize_token_embeddings`): label rows are kept
        (the first `label_count` of them), added ones start as the mean of the old label rows (an average logit, so no
        new token dominates before training), and a blank that was the extra class stays the extra class (moves to
        `label_count`). Returns the new blank id."""
        if self.vocab is not None:
            return self.blank_id  # a character head does not spell LLM tokens
        extra_blank = self.blank_id == self.label_count
        if not extra_blank and self.blank_id >= label_count:
            raise ValueError(f"the CTC head's blank is LLM token {self.blank_id}, which a vocabulary of {label_count} "
                             "drops; set ctc_head_config['blank_id'] to a kept id or None (an extra class)")
        old, kept = self.out, min(label_count, self.label_count)
        labels = [i for i in range(self.label_count) if i != self.blank_id or extra_blank]  # rows that are labels
        self.num_labels = label_count + 1 if extra_blank else label_count
        self.out = nn.Linear(old.in_features, self.num_labels, device=old.weight.device, dtype=old.weight.dtype)
        self.out.weight[:] = old.weight[labels].mean(0)
        self.out.bias[:] = old.bias[labels].mean(0)
        self.out.weight[:kept], self.out.bias[:kept] = old.weight[:kept], old.bias[:kept]
        self.blank_id = label_count if extra_blank else self.blank_id
        if extra_blank:
            self.out.weight[label_count], self.out.bias[label_count] = old.weight[-1], old.bias[-1]
        self.label_count = label_count
        return self.blank_id

    # --- training ---
    def targets_from(self, labels, ctc_targets=None, eos_token_id=None):
        """What the head learns to spell (B, N), -100 padded: the transcript tokens of `labels` without eos, or for a
        character head the character ids `ctc_targets` (the training collator builds them from `vocab`)."""
        if self.vocab is None:
            return labels if eos_token_id is None else labels.masked_fill(labels == eos_token_id, -100)
        if ctc_targets is None:
            raise ValueError(
                "this model's CTC head spells characters (ctc_head_config['vocab']): its loss needs ctc_targets, the "
                "transcript's character ids (hubert_gpt_training.data.SpeechCollator builds them), or pass "
                "ctc_loss_weight=0"
            )
        return ctc_targets

    def char_ids(self, text):
        """A character head's label ids for `text`; characters it cannot spell are left out."""
        index = {c: i for i, c in enumerate(self.vocab)}
        return [index[c] for c in text if c in index]

    def loss(self, logits, frame_lengths, targets):
        """CTC loss of targets (B, N) (-100 padded) against logits (B, T, C) with frame_lengths (B,)."""
        if (targets == self.blank_id).any():
            raise ValueError(f"CTC targets contain the blank id {self.blank_id}; set ctc_head_config['blank_id'] to an unused id")
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C) as F.ctc_loss wants
        return F.ctc_loss(log_probs, targets[targets != -100], frame_lengths, (targets != -100).sum(-1),
                          blank=self.blank_id, zero_infinity=True)

    # --- reading it ---
    def greedy_labels(self, logits, frame_lengths):
        """Per utterance: argmax over its real frames, repeats collapsed, blanks dropped -> B label lists."""
        hypotheses = []
        for row, n in zip(logits.argmax(-1).cpu(), frame_lengths.cpu().tolist()):  # (T,) each
            row = torch.unique_consecutive(row[:n])
            hypotheses.append([t for t in row.tolist() if t != self.blank_id and t < self.label_count])
        return hypotheses

    def to_tokens(self, label_lists, tokenizer=None):
        """Label lists -> LLM token lists: token heads pass through; a character head's text goes through the LLM's
        tokenizer (which it needs then)."""
        if self.vocab is None:
            return [list(labels) for labels in label_lists]
        if tokenizer is None:
            raise ValueError(
                "this model's CTC head spells characters: turning its text into LLM tokens needs the LLM's tokenizer "
                "(generate(..., tokenizer=processor.tokenizer); the pipeline passes its own)"
            )
        texts = ["".join(self.vocab[i] for i in labels) for labels in label_lists]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
