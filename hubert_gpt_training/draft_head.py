"""Fit a model's CTC draft head on its trained encoder, after training (the rest of the model is untouched)."""

import logging
import random

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

logger = logging.getLogger(__name__)


def joined_rows(rows, count, seed=0, sampling_rate=16000, per_row=(2, 3), pause_s=(0.0, 0.6)):
    """`count` rows of 2-3 of `rows` spoken one after another with 0-0.6 s of silence between them (their own edge
    silence adds to it); text joined without a separator. Deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        picked = rng.sample(rows, min(len(rows), rng.randint(*per_row)))
        pieces = []
        for k, row in enumerate(picked):
            if k:
                pieces.append(np.zeros(int(rng.uniform(*pause_s) * sampling_rate), dtype=np.float32))
            pieces.append(np.asarray(row["audio"], dtype=np.float32))
        out.append({"audio": np.concatenate(pieces), "text": "".join(row["text"] for row in picked)})
    return out


def non_speech_rows(count, seed=0, sampling_rate=16000, seconds=(0.5, 6.0)):
    """`count` rows of audio without speech and an empty transcript: digital silence, white or brown noise at a random
    level, or a few steady or wavering sinusoids at random frequencies (100-2000 Hz). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        n = int(rng.uniform(*seconds) * sampling_rate)
        kind = k % 4
        if kind == 0:
            audio = np.zeros(n)
        elif kind in (1, 2):
            audio = rng.standard_normal(n)
            if kind == 2:  # brown: integrated white noise, drift removed
                audio = np.cumsum(audio)
                audio -= np.convolve(audio, np.ones(801) / 801, mode="same")
            audio *= 10 ** rng.uniform(-3.5, -1) / (audio.std() + 1e-9)
        else:
            t = np.arange(n) / sampling_rate
            audio = sum(rng.uniform(0.02, 0.2) * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
                        * (1 + rng.uniform(0, 1) * np.sin(2 * np.pi * rng.uniform(0.2, 5) * t))
                        for _ in range(rng.integers(1, 5)))
        out.append({"audio": audio.astype(np.float32), "text": ""})
    return out


def fit_draft_head(model, rows, collator, steps=3000, batch_size=16, lr=2e-3, seed=0, joined=0, non_speech=0):
    """Train only `model.ctc_head` for `steps` Adam steps on the encoder's output for `rows` (plus `joined` rows of
    2-3 of them spoken in a row, `joined_rows`, and `non_speech` rows of silence, noise or tones with nothing to
    write, `non_speech_rows`).

    For a CTC head the bridge does not use (a draft head next to a conv bridge).
    A draft head trained with its gradient stopped (`ctc_trains_encoder=False`) spends training chasing an
    encoder that is still learning; refitted on the final encoder it drafts far better. The encoder runs once over
    `rows` (a list of training rows as the collator takes them; their hidden states are kept in memory: pass as
    many as fit); the CTC steps then only touch the head. Transcripts do not change (the prompt does not depend on
    the head); speculative decoding's drafts do. The joined rows teach the head to place a sentence's last
    character where it is spoken, not at the input's end (a head that has only seen single sentences waits for the
    end: timestamps and pause cuts of multi-sentence audio need it in place). The non-speech rows teach it to hear
    nothing where nothing is said (the no-speech guard reads that). Returns {"utterances", "steps", "ctc_loss_first", "ctc_loss_last"}
    (mean CTC loss over the first and the last 10% of the steps).
    """
    if steps < 1 or not rows:
        raise ValueError(f"fit_draft_head needs steps >= 1 and some rows (got steps={steps}, {len(rows)} rows)")
    head = model.ctc_head
    if head is None or model.bridge.uses_ctc_head:
        has = ("no CTC head" if head is None else f"a CTC head its {model.config.bridge_type!r} bridge picks frames "
               "with (refitting it would change the prompt)")
        raise ValueError(f"fit_draft_head refits a CTC draft head the bridge does not use (e.g. a conv model with "
                         f"ctc_head_config); this model has {has}")
    was_training = model.training
    model.eval()
    device = next(head.parameters()).device
    hidden, targets = [], []
    rows = list(rows) + joined_rows(rows, joined, seed) + non_speech_rows(non_speech, seed)
    rows = sorted(rows, key=lambda row: len(row["audio"]))  # similar lengths per batch: little padding
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collator(rows[start : start + batch_size])
            states, frames, _ = model.encode_audio(batch["input_values"].to(device), batch["attention_mask"].to(device))
            wanted = head.targets_from(batch["labels"], batch.get("ctc_targets"),
                                       model.generation_config.eos_token_id)  # (B, N), -100 padded
            for state, n, target in zip(states, frames.tolist(), wanted):
                hidden.append(state[:n])  # (T, Da)
                targets.append(target[target != -100])
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    head.train()
    for _ in range(steps):
        pick = torch.randint(len(hidden), (min(batch_size, len(hidden)),), generator=generator).tolist()
        states = pad_sequence([hidden[i] for i in pick], batch_first=True)  # (B, T, Da)
        wanted = pad_sequence([targets[i] for i in pick], batch_first=True, padding_value=-100).to(device)
        frames = torch.tensor([len(hidden[i]) for i in pick], device=device)
        loss = head.loss(head(states, frames), frames, wanted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.train(was_training)
    tenth = max(1, steps // 10)
    report = {"utterances": len(hidden), "steps": steps,
              "ctc_loss_first": sum(losses[:tenth]) / tenth, "ctc_loss_last": sum(losses[-tenth:]) / tenth}
    logger.info(f"draft head refitted on the trained encoder: {report}")
    return report


def main(argv=None):
    """hubert-gpt-refit-draft-head: refit a saved model's CTC draft head on a corpus; writes a copy of the folder."""
    import argparse
    import itertools
    import shutil

    import datasets
    from transformers import AutoModel, AutoProcessor

    from hubert_gpt_training.data import SpeechCollator, prepare

    parser = argparse.ArgumentParser(description="Refit a trained hubert-gpt folder's CTC draft head (conv bridge) on "
                                                 "its final encoder, as train_hf.py's recipe does after training, and "
                                                 "write the folder again with the new head (nothing else changes).")
    parser.add_argument("model", help="a hubert-gpt folder with a CTC draft head")
    parser.add_argument("--dataset", required=True, help="a datasets.save_to_disk folder with audio + transcription")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="the folder to write (a copy of MODEL with the refitted head)")
    parser.add_argument("--utterances", type=int, default=1500)
    parser.add_argument("--joined", type=int, default=750)
    parser.add_argument("--non_speech", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(args.seed)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    rate = processor.feature_extractor.sampling_rate
    train = prepare(datasets.load_from_disk(args.dataset)[args.split], sampling_rate=rate)
    rows = list(itertools.islice(iter(train), args.utterances))
    collator = SpeechCollator(processor, rate, model.ctc_head.vocab if model.ctc_head is not None else None)
    report = fit_draft_head(model, rows, collator, steps=args.steps, seed=args.seed, joined=args.joined,
                            non_speech=args.non_speech)
    shutil.copytree(args.model, args.out, dirs_exist_ok=True)  # card, pipeline code, tokenizer: as they were
    model.save_pretrained(args.out)
    print(report)
