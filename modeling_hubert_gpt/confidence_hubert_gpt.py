"""Per-word (and per-character) confidence for the pipeline's timestamps, as faster-whisper's `Word.probability`.

Two readers of the same audio score each character of a transcript:
- the LLM: the probability of the token that wrote it, read from the LLM's softmax over its vocabulary (no logits
  processors, no temperature) with the transcript fed back after the speech prompt (teacher forcing, one pass per
  batch after decoding: the same value whatever decoding wrote the text: greedy, beams, speculative);
- the CTC head: the mean posterior of the character's label over the frames the forced alignment gave it (its spike,
  before timestamps widen it over the sound around it; alignment_hubert_gpt.py). Characters the head cannot spell
  (punctuation, spaces, rare characters) have no CTC value.
A character's confidence is the geometric mean of the two (the LLM's alone where the head has none); a chunk's
(character, word) is the mean over its characters, rounded to CONFIDENCE_DECIMALS. Low values flag doubtful words.

Remote code: imports torch only.
"""

import math

import torch

CONFIDENCE_DECIMALS = 3  # a padded batch and a lone input differ by ~2e-9 (float32, CPU): they round alike


def transcript_probabilities(model, speech, token_lists, takes_logits_to_keep=False):
    """The LLM's probability of each transcript token after its speech prompt: speech (SpeechPrompt of B inputs),
    token_lists (B lists of transcript ids, no eos) -> B lists of floats. One LLM pass over the batch, prompts
    left-padded so that every transcript ends at the last position (with `takes_logits_to_keep`, an LLM whose forward
    takes logits_to_keep computes only those positions' logits)."""
    longest = max((len(ids) for ids in token_lists), default=0)
    if longest == 0:
        return [[] for _ in token_lists]
    text_ids = torch.full((len(token_lists), longest), -100, dtype=torch.long, device=speech.embeds.device)
    for row, ids in enumerate(token_lists):
        text_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    embeds, mask, positions, labels = model.pack_prompt(speech.embeds, speech.lengths, text_ids, left_pad=True)
    keep = {"logits_to_keep": longest + 1} if takes_logits_to_keep else {}
    logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **keep).logits
    logits = logits[:, -(longest + 1) : -1]  # (B, longest, V): each predicts the next position's token
    targets = labels[:, -longest:]  # (B, longest), -100 before a shorter transcript
    picked = logits.float().log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None])[..., 0].exp()  # (B, longest)
    return [row[target != -100].tolist() for row, target in zip(picked.cpu(), targets.cpu())]


def char_probabilities(decode, ids, probabilities):
    """Per character of `decode(ids)`: the probability of the token whose text holds it. A token's characters are
    found by decoding the growing prefix (sentencepiece's spaces and multi-byte characters decode as in the whole)."""
    text, out = decode(ids), []
    for k, probability in enumerate(probabilities):
        end = len(decode(ids[: k + 1])) if k + 1 < len(ids) else len(text)
        out += [probability] * max(0, min(end, len(text)) - len(out))
    return out + [None] * (len(text) - len(out))


def char_confidence(llm, ctc):
    """One character's confidence from the LLM's probability and the CTC head's (None where a reader has none)."""
    if llm is None or ctc is None:
        return llm if ctc is None else ctc
    return math.sqrt(llm * ctc)


def chunk_confidence(values):
    """The mean of a chunk's characters' confidences (None for none), rounded to CONFIDENCE_DECIMALS."""
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), CONFIDENCE_DECIMALS) if values else None
