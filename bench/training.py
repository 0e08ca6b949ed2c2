#!/usr/bin/env python
"""Training benchmark: the recipe's training steps/s with each speed lever switched; padding with and without
length grouping.

    python bench/training.py --quick            # about 2.5 minutes on 2 CPU cores (compile left out)
    python bench/training.py --json train.json  # more steps and data, a bigger grouping model
    python bench/training.py --section levers   # one section only (levers or grouping)

Levers (--section levers): the embedded recipe's training step, as train_hf.py's recipe sets it up (its model built
by train_hf.build_model, its collator, batch 16, length-grouped batches from its synthetic corpus, fused AdamW with
weight decay, gradient clipping at 1.0, the CTC draft head's loss with its weight), timed as it is and with one
lever switched at a time:
  workers     collation (audio decoding from arrow, padding, tokenizing) in a DataLoader worker process
  no_dropout  the encoder's dropout off (the model from a config with every *dropout at 0)
  hop320      the encoder at 50 Hz instead of the recipe's 25 Hz (train_hf.py --encoder_hop 320): the encoder's
              layers, the bridge and the LLM's speech prompt see twice the frames (the same weights: the stacked
              log-mel windows sit at a quarter of either hop)
  prompt6hz   the conv bridge's strides 2,2 instead of the recipe's 2,1 (--bridge_strides 2,2): a 6.25 Hz speech
              prompt, half as long (the same weights)
  compile     torch.compile (default settings) of the model for training; its compile time is reported apart
  bf16        bf16 autocast around forward and loss
Every variant starts from the same weights and trains on the same batches in the same order; the variants take
turns, a few steps each, for several rounds (each round starting with the next variant), so that a change in the
machine's load hits all of them alike.
Dropout is seeded per turn, so `workers` gives the recipe's losses exactly (it changes where collation runs, not
what is computed).

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
import copy
import json
import os
import sys
import tempfile
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


LEVERS = ("recipe", "workers", "no_dropout", "hop320", "prompt6hz", "compile", "bf16")


def recipe_setup(corpus_hours, corpus_dir, model_size, work_dir):
    """The recipe's arguments, training split, model (random init) and collator, through train_hf itself."""
    import train_hf
    from hubert_gpt_training.data import SpeechCollator

    argv = ["--output_dir", work_dir, "--corpus_hours", str(corpus_hours), "--corpus_dir", corpus_dir,
            "--model_size", model_size]
    margs, dargs, rargs, targs = train_hf.parse(argv)
    # The recipe's augmentation (edge-silence crop, rooms and noise, non-speech rows) is left out: its draws are random
    # per read and per worker process, so the workers lever could not give the recipe's losses; its cost on the data
    # path is left out of every lever alike.
    dargs.edge_silence_crop = dargs.room_augment = dargs.non_speech = 0.0
    train, _, _ = train_hf.load_data(dargs, rargs, RATE, targs.seed)
    torch.manual_seed(targs.seed)
    model, processor = train_hf.build_model(margs, train["text"], work_dir)
    vocab = None if model.ctc_head is None else model.ctc_head.vocab
    return margs, targs, train, model, SpeechCollator(processor, RATE, vocab)


def without_dropout(model):
    """A copy of `model` built from its config with every `*dropout` probability at 0, with the same weights."""
    config = copy.deepcopy(model.config)
    for sub in (config.audio_config, config.text_config):
        for key, value in vars(sub).items():
            if key.endswith("dropout") and isinstance(value, float):
                setattr(sub, key, 0.0)
    plain = rebuilt(model, config)
    left = [name for name, m in plain.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if left:
        raise RuntimeError(f"dropout left on in {left[:3]}: the config keys above do not reach it")
    return plain


def at_hop(model, hop):
    """A copy of `model` whose encoder takes `hop` samples per frame (`tiny.conv_stack`), with the same weights (a
    log-mel front end has none for its conv stack's layers)."""
    from hubert_gpt_training.tiny import conv_stack

    config = copy.deepcopy(model.config)
    audio = config.audio_config
    audio.conv_kernel, audio.conv_stride = conv_stack(hop)
    audio.conv_dim = (audio.conv_dim[-1],) * len(audio.conv_kernel)
    audio.num_feat_extract_layers = len(audio.conv_kernel)
    return rebuilt(model, config)


def with_bridge_strides(model, strides):
    """A copy of `model` whose conv bridge takes `strides` (kernel sizes kept), with the same weights."""
    config = copy.deepcopy(model.config)
    config.bridge_config = {**config.bridge_config, "strides": list(strides)}
    return rebuilt(model, config)


def rebuilt(model, config):
    """A new model of `model`'s class from `config`, holding `model`'s weights (the levers change no weight shape)."""
    other = type(model)(config)
    other.load_state_dict(model.state_dict())
    return other


def lever_batches(lengths, batch, count, seed):
    """`count` full batches of dataset indices, length-grouped as Trainer's group_by_length, epoch after epoch."""
    out, epoch = [], 0
    while len(out) < count:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = list(LengthGroupedSampler(batch, lengths=lengths, generator=generator))
        out += [b for b in batches(order, batch) if len(b) == batch]
        epoch += 1
    return out[:count]


class Variant:
    """One lever setting: its own model (from the shared initial weights), optimizer and step."""

    def __init__(self, name, model, targs, margs, train, collator):
        self.name, self.train, self.collator = name, train, collator
        self.workers = 1 if name == "workers" else 0
        changed = {"no_dropout": without_dropout, "hop320": lambda m: at_hop(m, 320),
                   "prompt6hz": lambda m: with_bridge_strides(m, [2, 2])}.get(name, copy.deepcopy)
        self.model = changed(model)
        self.model.train()
        self.forward = torch.compile(self.model) if name == "compile" else self.model
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16")
        fused = "fused" in str(targs.optim)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=targs.learning_rate,
                                           weight_decay=targs.weight_decay, fused=fused)
        self.max_grad_norm = targs.max_grad_norm
        self.loss_kwargs = {"ctc_loss_weight": margs.ctc_loss_weight, "ctc_trains_encoder": margs.ctc_trains_encoder}
        self.losses, self.audio_s = [], 0.0

    def run(self, index_batches, seed):
        """Train on `index_batches` (a fresh DataLoader: a worker starts, as each Trainer epoch starts one);
        returns wall seconds."""
        start = time.perf_counter()
        loader = iter(torch.utils.data.DataLoader(self.train, batch_sampler=index_batches, collate_fn=self.collator,
                                                  num_workers=self.workers))
        torch.manual_seed(seed)  # after the loader drew its seed: every variant's dropout draws the same masks
        for inputs in loader:
            with self.autocast:
                loss = self.forward(**inputs, **self.loss_kwargs).loss
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.losses.append(loss.item())
            self.audio_s += inputs["attention_mask"].sum().item() / RATE
        return time.perf_counter() - start


def measure_levers(args, quick):
    """Steps/s of the recipe and of each lever, taking turns; returns a dict for the JSON and the table."""
    hours = args.lever_corpus_hours or (0.1 if quick else 0.3)
    rounds, steps, warmup = args.lever_rounds or (4 if quick else 5), args.lever_steps or (3 if quick else 8), 2
    with tempfile.TemporaryDirectory() as work_dir:
        margs, targs, train, model, collator = recipe_setup(hours, args.corpus_dir, args.lever_model_size, work_dir)
        batch = args.lever_batch or targs.per_device_train_batch_size
        plan = lever_batches(train["input_length"], batch, warmup + rounds * steps, targs.seed)
        variants = [Variant(name, model, targs, margs, train, collator) for name in args.levers]
        warm, failed = {}, {}
        for v in list(variants):  # warm-up (and compilation): not counted
            try:
                warm[v.name] = v.run(plan[:warmup], targs.seed)
            except Exception as err:  # a lever that does not run here (e.g. a compiler error) is a result too
                if v.name == "recipe":
                    raise
                failed[v.name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
                variants.remove(v)
            print(f"  {v.name}: warm-up {warm.get(v.name, float('nan')):.1f} s {failed.get(v.name, '')}",
                  file=sys.stderr)
        turns = {v.name: [] for v in variants}
        audio_before = {v.name: v.audio_s for v in variants}
        for r in range(rounds):
            chunk = plan[warmup + r * steps : warmup + (r + 1) * steps]
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:  # each round starts elsewhere
                turns[v.name].append(v.run(chunk, targs.seed + 1 + r))
    timed = {name: sum(seconds) for name, seconds in turns.items()}
    base = next(v for v in variants if v.name == "recipe")
    out = {"corpus_hours": hours, "model_size": args.lever_model_size, "batch": batch, "rounds": rounds,
           "steps_per_round": steps, "warmup_steps": warmup, "parameters": sum(p.numel() for p in model.parameters()),
           "levers": {}, "failed": failed}
    for v in variants:
        count = rounds * steps
        out["levers"][v.name] = {
            "steps": count, "timed_s": timed[v.name], "turns_s": turns[v.name], "steps_per_s": count / timed[v.name],
            "audio_s_per_s": (v.audio_s - audio_before[v.name]) / timed[v.name],
            "vs_recipe": timed["recipe"] / timed[v.name], "warmup_s": warm[v.name],
            "extra_warmup_s": warm[v.name] - warm["recipe"], "losses": v.losses,
            "same_losses_as_recipe": v.losses == base.losses,
        }
    return out


def print_levers(result, threads):
    print(f"\nrecipe training step, levers side by side - cpu ({threads} threads); model_size "
          f"{result['model_size']} ({result['parameters'] / 1e6:.2f} M parameters), batch {result['batch']}, "
          f"{result['rounds']} rounds x {result['steps_per_round']} steps per variant after {result['warmup_steps']} "
          f"warm-up steps; corpus {result['corpus_hours']:g} h")
    header = (f"{'variant':<12}{'steps/s':>9}{'audio s/s':>11}{'vs recipe':>11}{'warm-up s':>11}"
              f"{'extra warm-up s':>17}{'same losses':>13}")
    print(header)
    print("-" * len(header))
    for name, r in result["levers"].items():
        print(f"{name:<12}{r['steps_per_s']:>9.3f}{r['audio_s_per_s']:>11.1f}{r['vs_recipe']:>10.2f}x"
              f"{r['warmup_s']:>11.1f}{r['extra_warmup_s']:>17.1f}{'yes' if r['same_losses_as_recipe'] else 'no':>13}")
    for name, error in result["failed"].items():
        print(f"{name:<12}failed: {error}")
    compiled, recipe = result["levers"].get("compile"), result["levers"]["recipe"]
    saved = compiled and 1 / recipe["steps_per_s"] - 1 / compiled["steps_per_s"]  # seconds saved per step
    if compiled and saved > 0:
        print(f"compile pays after {compiled['extra_warmup_s'] / saved:.0f} steps (its extra warm-up / seconds saved "
              f"per step)")


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
    parser.add_argument("--section", choices=["all", "grouping", "levers"], default="all")
    parser.add_argument("--levers", type=lambda s: s.split(","),
                        help=f"comma-separated, from {','.join(LEVERS)} (recipe is always run; default all, --quick "
                             f"all but compile: minutes of C++ compilation here)")
    parser.add_argument("--corpus_dir", default=os.path.join(ROOT, "data"), help="levers: synthetic corpus cache")
    parser.add_argument("--lever_corpus_hours", type=float, help="levers: corpus size (default 0.1 quick, 0.3)")
    parser.add_argument("--lever_model_size", choices=["tiny", "small"], default="small",
                        help="levers: train_hf's --model_size (small: the recipe's)")
    parser.add_argument("--lever_batch", type=int, help="levers: batch size (default: the recipe's, 16)")
    parser.add_argument("--lever_rounds", type=int, help="levers: turns per variant (default 4 quick, 5)")
    parser.add_argument("--lever_steps", type=int, help="levers: steps per turn (default 3 quick, 8)")
    args = parser.parse_args(argv)
    args.levers = args.levers or [name for name in LEVERS if not (args.quick and name == "compile")]
    unknown = sorted(set(args.levers) - set(LEVERS))
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
    args.levers = ["recipe"] + [name for name in LEVERS[1:] if name in args.levers]
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    summary = {"device": f"cpu ({torch.get_num_threads()} threads)"}
    if args.section in ("all", "grouping"):
        summary |= grouping(args)
    if args.section in ("all", "levers"):
        summary["levers"] = measure_levers(args, args.quick)
        print_levers(summary["levers"], torch.get_num_threads())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def grouping(args):
    """Random vs length-grouped batches: one epoch each of a tone model, and padding at the recipe's scale."""
    n = args.utterances or (64 if args.quick else 256)
    batch = args.batch or (8 if args.quick else 16)
    width, layers = args.width or (64 if args.quick else 128), args.layers or (2 if args.quick else 4)
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
    return summary


if __name__ == "__main__":
    sys.exit(main())
