#!/usr/bin/env python
"""Training benchmark: audio seconds trained per wall second, and padding, with and without length grouping.

    python bench/training.py --quick            # seconds on 2 CPU cores
    python bench/training.py --json train.json  # more data, a bigger model

One epoch over synthetic tone utterances (hubert_gpt_training.synthetic: 2 to 16 characters, 0.3 to 2.4 s, so
lengths vary as in real corpora), in two orders, from the same initial weights:
  random   a shuffled order (torch RandomSampler), as Trainer's default
  grouped  transformers' LengthGroupedSampler (Trainer's `train_sampling_strategy="group_by_length"`, what
           train_hf.py uses): megabatches of 50 batches sorted by length, so a batch holds similar lengths
Reported side by side: wall time of the epoch (forward + backward + AdamW step), real audio seconds per wall second,
and the share of padded positions: encoder input samples (right-padded audio) and LLM positions (speech prompt +
[bos]/[sep] + transcript + eos, padded to the batch's longest).

A short epoch understates what grouping does: transformers sorts megabatches of min(50, N // (4 * batch)) batches,
so 64 utterances are sorted in pairs of batches. The padding shares are therefore also computed, from lengths
alone (no training), for an epoch of the embedded recipe's size (--scale_utterances, default 2944 = the 2-hour
corpus' train split, at --scale_batch 16).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import RandomSampler  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hubert_gpt_training.synthetic import SMOKE_ALPHABET, tone_rows, tone_utterance  # noqa: E402
from hubert_gpt_training.tiny import tiny_config  # noqa: E402
from modeling_hubert_gpt import HubertGptForConditionalGeneration  # noqa: E402

RATE = 16000
FIRST_CHAR_ID = 4  # ids 0..3: pad, bos, eos, [SEP] (tiny_config's layout)


def encode_text(text, eos):
    return [FIRST_CHAR_ID + SMOKE_ALPHABET.index(c) for c in text] + [eos]


def collate(rows):
    audio = [torch.from_numpy(r["audio"]["array"]) for r in rows]
    values = torch.zeros(len(rows), max(len(a) for a in audio))
    mask = torch.zeros(values.shape, dtype=torch.long)
    for i, a in enumerate(audio):
        values[i, : len(a)] = a
        mask[i, : len(a)] = 1
    texts = [r["ids"] for r in rows]
    labels = torch.full((len(rows), max(map(len, texts))), -100, dtype=torch.long)
    for i, t in enumerate(texts):
        labels[i, : len(t)] = torch.tensor(t)
    return values, mask, labels


def batches(order, batch_size):
    order = list(order)
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def pad_counts(sample_lengths, llm_lengths):
    """(real, padded) encoder samples and LLM positions of one batch, from per-utterance lengths (B,)."""
    batch = len(sample_lengths)
    return (int(sample_lengths.sum()), batch * int(sample_lengths.max()),
            int(llm_lengths.sum()), batch * int(llm_lengths.max()))


def pad_shares(counts):
    real_samples, padded_samples, real_llm, padded_llm = map(sum, zip(*counts))
    return {"encoder_pad_share": 1 - real_samples / padded_samples, "llm_pad_share": 1 - real_llm / padded_llm}


def orders(lengths, batch, seed):
    n = len(lengths)
    return {
        "random": list(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))),
        "grouped": list(LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(seed))),
    }


def padding_at_scale(model, n, batch, seed):
    """Padding shares of both orders for n tone utterances (lengths only: no audio is made, nothing trains)."""
    rng = np.random.default_rng(seed)
    chars = rng.integers(2, 17, size=n)  # as tone_rows(min_chars=2, max_chars=16)
    samples = torch.as_tensor(chars) * len(tone_utterance("あ", rng))  # each character is one fixed-length tone
    speech = model.bridge.output_lengths(model.encoder_output_lengths(samples))
    llm = speech + 2 + torch.as_tensor(chars) + 1  # [bos] + speech + [sep] + transcript + eos
    return {name: pad_shares([pad_counts(samples[idx], llm[idx]) for idx in batches(order, batch)])
            for name, order in orders(samples.tolist(), batch, seed).items()}


def run_epoch(model, rows, index_batches, lr=1e-3):
    """Train one epoch; returns wall seconds, real audio seconds, padding shares (encoder samples, LLM positions)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    counts = []
    start = time.perf_counter()
    for idx in index_batches:
        values, mask, labels = collate([rows[i] for i in idx])
        out = model(values, mask, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        llm = out.speech_lengths + 2 + (labels != -100).sum(-1)  # [bos] + speech + [sep] + transcript + eos
        counts.append(pad_counts(mask.sum(-1), llm))
    wall = time.perf_counter() - start
    real_samples, padded_samples = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {
        "steps": len(index_batches),
        "wall_s": wall,
        "audio_s": real_samples / RATE,
        "audio_s_per_s": real_samples / RATE / wall,
        "padded_audio_s": padded_samples / RATE,
        **pad_shares(counts),
        "final_loss": out.loss.item(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 utterances, batch 8, a tiny model")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--utterances", type=int, help="epoch size (default 64 quick, 256)")
    parser.add_argument("--batch", type=int, help="batch size (default 8 quick, 16)")
    parser.add_argument("--bridge", choices=["conv", "ctc"], default="conv")
    parser.add_argument("--width", type=int, help="model width (default 64 quick, 128)")
    parser.add_argument("--layers", type=int, help="layers of encoder and LLM each (default 2 quick, 4)")
    parser.add_argument("--scale_utterances", type=int, default=2944, help="epoch size for the padding-only count")
    parser.add_argument("--scale_batch", type=int, default=16, help="batch size for the padding-only count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady timings on a shared machine)")
    args = parser.parse_args(argv)
    n = args.utterances or (64 if args.quick else 256)
    batch = args.batch or (8 if args.quick else 16)
    width, layers = args.width or (64 if args.quick else 128), args.layers or (2 if args.quick else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()

    rows = tone_rows(n, seed=args.seed, min_chars=2, max_chars=16)
    config = tiny_config(args.bridge, width=width, layers=layers)
    eos = config.text_config.eos_token_id
    for row in rows:
        row["ids"] = encode_text(row["transcription"], eos)
    lengths = [len(r["audio"]["array"]) for r in rows]
    torch.manual_seed(args.seed)
    initial = HubertGptForConditionalGeneration(config).state_dict()
    results = {}
    for name, order in orders(lengths, batch, args.seed).items():
        model = HubertGptForConditionalGeneration(config)
        model.load_state_dict(initial)
        run_epoch(model, rows, [order[:batch]])  # warm-up step, not counted
        model.load_state_dict(initial)
        results[name] = run_epoch(model, rows, batches(order, batch))
        print(f"  {name}: {results[name]['wall_s']:.2f} s", file=sys.stderr)

    print(f"\nhubert-gpt training benchmark - cpu ({torch.get_num_threads()} threads); {args.bridge} bridge, width "
          f"{width}, {layers}+{layers} layers; {n} utterances ({sum(lengths) / RATE:.1f} s), batch {batch}")
    header = f"{'order':<10}{'steps':>6}{'wall s':>9}{'audio s/s':>11}{'vs random':>11}{'padded audio s':>16}" \
             f"{'encoder pad':>13}{'LLM pad':>9}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<10}{r['steps']:>6}{r['wall_s']:>9.2f}{r['audio_s_per_s']:>11.1f}"
              f"{r['audio_s_per_s'] / results['random']['audio_s_per_s']:>10.2f}x{r['padded_audio_s']:>16.1f}"
              f"{100 * r['encoder_pad_share']:>12.1f}%{100 * r['llm_pad_share']:>8.1f}%")
    summary = {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "bridge": args.bridge,
        "utterances": n,
        "batch": batch,
        "results": results,
        "grouped_speedup": results["grouped"]["audio_s_per_s"] / results["random"]["audio_s_per_s"],
    }
    print(f"\ngrouped / random throughput: {summary['grouped_speedup']:.2f}x")
    scale = padding_at_scale(model, args.scale_utterances, args.scale_batch, args.seed)
    summary["padding_at_scale"] = {"utterances": args.scale_utterances, "batch": args.scale_batch, **scale}
    print(f"\npadding for an epoch of {args.scale_utterances} utterances at batch {args.scale_batch} (lengths only):")
    for name, r in scale.items():
        print(f"  {name:<8} encoder {100 * r['encoder_pad_share']:5.1f}%   LLM {100 * r['llm_pad_share']:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
