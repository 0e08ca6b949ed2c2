#!/usr/bin/env python
"""Timestamps and guards benchmark, side by side in one run, on a trained folder with a CTC head and its test split.

    python bench/timestamps.py --model runs/default --dataset data/ja-synth-2h-seed42-1257154b --json ts.json

1. Timestamp accuracy: test sentences, each trimmed to its speech (first/last 10 ms frame within 40 dB of the
   utterance's peak), joined `--per_file` at a time with pauses of 0.3-1.0 s: each sentence's true start and end are
   known. The pipeline's char timestamps (return_timestamps="char") give each sentence's start (its first matched
   character's start) and end (its last one's end); characters are matched to the reference with difflib. Reported:
   median and 90th percentile of |error| in ms, for the short files and for one long file (>= --long_s seconds, which
   the pipeline chunks itself).
2. Lost text: CER of the sentences one by one, of the joined files (as they are, with early_stop_split off, and with
   split_at_pauses=True), of files of ~30 s with chunk_length_s=8, and of the long file (auto-chunked); ratios
   against the same sentences one by one as recorded and trimmed; how many test transcripts split_at_pauses=True
   and early_stop_split=False change.
3. No-speech: 40 clips of silence, white and pink noise, hum, room tone and a chord (1-10 s): characters written and LLM passes,
   guards on and off. Speech: every test utterance's text with the guards on and off (identical or not); on the
   corpus's test_noisy / test_reverb / test_phone splits, CER and emptied utterances with the guards on and off.
4. Cost: a batch-16 pipeline run over the test utterances with and without return_timestamps="char", interleaved
   `--rounds` times, the fastest of each (wall ratio).
"""

import argparse
import difflib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubert_gpt_training.augment import sound_bounds  # noqa: E402

RATE = 16000


def trim(audio, floor_db=40.0):
    """The utterance's speech: from the first to the last 10 ms frame within floor_db of its loudest frame."""
    start, end = sound_bounds(audio, floor_db)
    return audio[start:end]


def joined(audios, texts, rng, pause=(0.3, 1.0)):
    """One file of the sentences with random pauses: (audio, [(start_s, end_s)], reference text)."""
    pieces, truth, at = [np.zeros(int(rng.uniform(*pause) * RATE), np.float32)], [], 0
    at = len(pieces[0])
    for audio in audios:
        truth.append((at / RATE, (at + len(audio)) / RATE))
        pieces += [audio, np.zeros(int(rng.uniform(*pause) * RATE), np.float32)]
        at += len(audio) + len(pieces[-1])
    return np.concatenate(pieces), truth, texts


def sentence_times(output, texts):
    """Each reference sentence's (start_s, end_s) from char timestamps, via a difflib match of the characters."""
    hyp_chars, owner = [], []  # every character of the transcript and the chunk holding it
    for k, chunk in enumerate(output["chunks"]):
        hyp_chars += list(chunk["text"])
        owner += [k] * len(chunk["text"])
    ref = "".join(texts)
    sentence_of = [i for i, t in enumerate(texts) for _ in t]
    found = [[] for _ in texts]
    for block in difflib.SequenceMatcher(None, ref, "".join(hyp_chars), autojunk=False).get_matching_blocks():
        for k in range(block.size):
            found[sentence_of[block.a + k]].append(owner[block.b + k])
    times = []
    for chunks in found:
        stamps = [output["chunks"][k]["timestamp"] for k in chunks if output["chunks"][k]["timestamp"][0] is not None]
        times.append((stamps[0][0], stamps[-1][1]) if stamps else None)
    return times


def errors_ms(outputs, files):
    errors, missing = [], 0
    for output, (_, truth, texts) in zip(outputs, files):
        for got, true in zip(sentence_times(output, texts), truth):
            if got is None:
                missing += 1
                continue
            errors += [abs(got[0] - true[0]) * 1000, abs(got[1] - true[1]) * 1000]
    if not errors:
        return {"median_ms": None, "p90_ms": None, "boundaries": 0, "sentences_missing": missing}
    return {"median_ms": round(statistics.median(errors), 1), "p90_ms": round(float(np.percentile(errors, 90)), 1),
            "boundaries": len(errors), "sentences_missing": missing}


def cer(hyps, refs):
    import jiwer

    from hubert_gpt_training.metrics import normalize_text

    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    return jiwer.cer(refs, hyps) if refs else 0.0


def noises(rng, n=40):
    """n clips of 1-10 s without speech: silence, white and pink noise, mains hum, room tone (pink at the corpus's
    silence level) and a chord with tremolo (a tone mix no training row holds)."""
    from hubert_gpt_training.augment import noise_of

    clips = []
    for i in range(n):
        length = int(rng.uniform(1, 10) * RATE)
        kind = ("silence", "white", "pink", "tones", "hum", "room tone")[i % 6]
        if kind == "silence":
            audio = np.zeros(length)
        elif kind == "tones":
            t = np.arange(length) / RATE
            audio = sum(0.05 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
                        for f in rng.choice([220, 262, 330, 392, 440, 523, 659], size=3, replace=False))
        else:
            level = 3e-4 if kind == "room tone" else 0.1
            audio = level * noise_of("pink" if kind == "room tone" else kind, length, rng)
        clips.append((kind, audio.astype(np.float32)))
    return clips


def count_llm_passes(model):
    counter = {"passes": 0}
    forward = model.language_model.forward

    def counted(*args, **kwargs):
        counter["passes"] += 1
        return forward(*args, **kwargs)

    model.language_model.forward = counted
    return counter


def load_split(path, split, n):
    import datasets
    import soundfile

    rows = datasets.load_from_disk(path)[split].cast_column("audio", datasets.Audio(decode=False))
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    audios = []
    for row in rows:
        audio, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        if rate != RATE:
            raise ValueError(f"expected {RATE} Hz audio, got {rate}")
        audios.append(audio)
    return audios, list(rows["transcription"])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def model_and_split_arguments(parser):
    """--model, --dataset, --split, --utterances: a trained folder and the split of its corpus to measure on."""
    parser.add_argument("--model", required=True, help="a trained hubert-gpt folder with a CTC head")
    parser.add_argument("--dataset", required=True, help="a datasets.save_to_disk folder with audio + transcription")
    parser.add_argument("--split", default="test")
    parser.add_argument("--utterances", type=int, default=0, help="how many (default: the whole split)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_and_split_arguments(parser)
    parser.add_argument("--per_file", type=int, default=4, help="sentences per joined file (default 4)")
    parser.add_argument("--long_s", type=float, default=60.0, help="the long file's least length in seconds")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds for the cost (default 3)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from transformers import pipeline

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True, device="cpu")
    model = asr.model.eval()
    audios, texts = load_split(args.dataset, args.split, args.utterances)
    passes = count_llm_passes(model)
    result = {"model": args.model, "utterances": len(audios)}

    # speech: guards on and off, one by one (the reference CER) and the cost of timestamps at batch 16
    walls_plain, walls_stamped = [], []
    for _ in range(args.rounds):  # interleaved, the fastest of each kept: a shared machine's load moves both alike
        plain, wall = timed(lambda: asr(audios, batch_size=args.batch_size))
        walls_plain.append(wall)
        stamped, wall = timed(lambda: asr(audios, batch_size=args.batch_size, return_timestamps="char"))
        walls_stamped.append(wall)
    wall_plain, wall_stamped = min(walls_plain), min(walls_stamped)
    unguarded = asr(audios, batch_size=args.batch_size, no_speech_threshold=None, loop_guard=False)
    plain_text = [o["text"] for o in plain]
    result["guards_identical_text"] = plain_text == [o["text"] for o in unguarded]
    result["guards_changed"] = sum(a != b["text"] for a, b in zip(plain_text, unguarded))
    result["timestamps_identical_text"] = plain_text == [o["text"] for o in stamped]
    result["timestamp_cost_ratio_b16"] = round(wall_stamped / wall_plain, 3)
    result["cer_one_by_one"] = round(cer(plain_text, texts), 4)

    # timestamps on joined files, and the text they keep
    trimmed = [trim(a) for a in audios]
    order = list(range(len(audios)))
    files = [joined([trimmed[i] for i in order[k : k + args.per_file]], [texts[i] for i in order[k : k + args.per_file]],
                    rng) for k in range(0, len(order) - args.per_file + 1, args.per_file)]
    for key, options in (("joined_files", {}), ("joined_files_early_stop_split_off", {"early_stop_split": False}),
                         ("joined_files_split_at_pauses", {"split_at_pauses": True})):
        outs = asr([f[0] for f in files], batch_size=args.batch_size, return_timestamps="char", **options)
        result[key] = {"files": len(files), "seconds": round(sum(len(f[0]) for f in files) / RATE, 1),
                       **errors_ms(outs, files), "cer": round(cer([o["text"] for o in outs],
                                                                  ["".join(f[2]) for f in files]), 4)}
    split = asr(audios, batch_size=args.batch_size, split_at_pauses=True)
    result["split_at_pauses_changed_test_transcripts"] = sum(a != b["text"] for a, b in zip(plain_text, split))
    whole = asr(audios, batch_size=args.batch_size, early_stop_split=False)
    result["early_stop_split_changed_test_transcripts"] = sum(a != b["text"] for a, b in zip(plain_text, whole))
    per_30 = max(1, round(30 / statistics.mean(len(a) / RATE + 0.65 for a in trimmed)))
    files_30 = [joined(trimmed[k : k + per_30], texts[k : k + per_30], rng)
                for k in range(0, len(order) - per_30 + 1, per_30)]
    outs_30 = [asr(f[0], chunk_length_s=8, return_timestamps="char") for f in files_30]
    used = [t for f in files_30 for t in f[2]]
    result["files_30s_chunk8"] = {"files": len(files_30), "sentences_per_file": per_30, **errors_ms(outs_30, files_30),
                                  "cer": round(cer([o["text"] for o in outs_30], ["".join(f[2]) for f in files_30]), 4),
                                  "cer_one_by_one_same_sentences": round(cer(plain_text[: len(used)], used), 4)}
    n_long, total = 0, 0.0
    while n_long < len(trimmed) and total < args.long_s:
        total += len(trimmed[n_long]) / RATE + 0.65
        n_long += 1
    long_file = joined(trimmed[:n_long], texts[:n_long], rng)
    long_out = asr(long_file[0], return_timestamps="char")  # longer than the model takes: the pipeline chunks it
    result["long_file"] = {"seconds": round(len(long_file[0]) / RATE, 1), "sentences": n_long,
                           **errors_ms([long_out], [long_file]),
                           "cer": round(cer([long_out["text"]], ["".join(long_file[2])]), 4),
                           "cer_one_by_one_same_sentences": round(cer(plain_text[:n_long], texts[:n_long]), 4)}
    # the same trimmed sentences one by one: the joined files' own audio, without the joins
    trimmed_text = [o["text"] for o in asr(trimmed[: max(len(used), n_long)], batch_size=args.batch_size)]
    result["files_30s_chunk8"]["cer_one_by_one_trimmed"] = round(cer(trimmed_text[: len(used)], used), 4)
    result["long_file"]["cer_one_by_one_trimmed"] = round(cer(trimmed_text[:n_long], texts[:n_long]), 4)
    for key in ("files_30s_chunk8", "long_file"):
        for base, name in (("cer_one_by_one_same_sentences", "cer_ratio"), ("cer_one_by_one_trimmed", "cer_ratio_trimmed")):
            one = result[key][base]
            result[key][name] = round(result[key]["cer"] / one, 2) if one else None

    # no speech
    clips = noises(rng)
    for name, options in (("guards_on", {}), ("guards_off", {"no_speech_threshold": None, "loop_guard": False})):
        passes["passes"] = 0
        outs = [asr(audio, **options)["text"] for _, audio in clips]
        result[f"no_speech_{name}"] = {"clips": len(clips), "characters": sum(len(t) for t in outs),
                                       "llm_passes": passes["passes"], "nonempty": sum(bool(t) for t in outs)}
    # speech in noise, rooms and on the telephone: the guards must never empty an utterance that holds speech
    import datasets

    for split in [name for name in ("test_noisy", "test_reverb", "test_phone") if name in datasets.load_from_disk(
            args.dataset)]:
        noisy, refs = load_split(args.dataset, split, args.utterances)
        row = {"utterances": len(noisy)}
        for name, options in (("guards_on", {}), ("guards_off", {"no_speech_threshold": None, "loop_guard": False})):
            outs = [o["text"] for o in asr(noisy, batch_size=args.batch_size, **options)]
            row[name] = {"cer": round(cer(outs, refs), 4), "emptied": sum(not o and bool(r) for o, r in zip(outs, refs))}
        result[split] = row
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
