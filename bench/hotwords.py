#!/usr/bin/env python
"""Hotword benchmark, side by side in one run, on a trained folder with a CTC head, its corpus's hotword set
(hubert_gpt_training.corpus.build_hotword_set) and its test split.

    python bench/hotwords.py --model runs/default --hotword_set data/ja-synth-2h-seed42-1257154b-hotwords100-seed0

1. Recall of the held-out names (the exact name in the transcript) on the hotword set: no hotwords, each utterance's
   true names, its true names among the 20 distractors; gated (the CTC head's gate, the default) and ungated
   (`hotword_threshold=None`: plain shallow fusion, the peers' way) side by side.
2. Leakage: the same audio with the 20 distractor names (none is said): the share of transcripts holding one (that
   the reference does not hold); gated and ungated. The test split with those distractors: the share of utterances
   whose text is identical to plain decoding, and the CER of each.
3. What the gate decided: the share of (utterance, word) pairs it let through, for true names and for distractors.
4. Cost: the test split at batch 16 with the 20 distractors (gated and ungated) against plain decoding, each run
   twice interleaved, the faster of the two taken (wall ratio).
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timestamps import cer, load_split  # noqa: E402  (bench/timestamps.py: the test split and the CER)


def load_hotword_set(folder, n=0):
    import datasets
    import soundfile

    rows = datasets.load_from_disk(folder).cast_column("audio", datasets.Audio(decode=False))
    rows = rows.select(range(min(n, len(rows)))) if n else rows
    audios = [soundfile.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0] for row in rows]
    info = json.loads((Path(folder) / "hotwords.json").read_text())
    return audios, list(rows["transcription"]), list(rows["names"]), info


def recall(texts, names):
    said = [(t, n) for t, row in zip(texts, names) for n in row]
    return round(sum(n in t for t, n in said) / len(said), 4)


def leakage(texts, refs, distractors):
    leaked = [any(d in t and d not in r for d in distractors) for t, r in zip(texts, refs)]
    return round(sum(leaked) / len(leaked), 4)


def gate_log(model):
    """Record, per generate call, each row's words and the ones the gate let through."""
    seen, generate = [], model.generate

    def logged(*args, **kwargs):
        out = generate(*args, **{**kwargs, "return_dict_in_generate": True})  # the pipeline reads .sequences
        if out.hotword_scores is not None:
            for scores, active in zip(out.hotword_scores, out.hotwords_active):
                seen.append((set(scores), set(active)))
        return out

    model.generate = logged
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained hubert-gpt folder with a CTC head")
    parser.add_argument("--hotword_set", required=True, help="a folder from corpus.build_hotword_set")
    parser.add_argument("--dataset", help="the corpus folder (default: the one the hotword set was built from)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--utterances", type=int, default=0, help="how many of each set (default: all)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--boost", type=float, default=None, help="hotword_boost (default: the model's default)")
    parser.add_argument("--threshold", type=float, default=None, help="hotword_threshold (default: the default)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True, device="cpu")
    model = asr.model.eval()
    audios, refs, names, info = load_hotword_set(args.hotword_set, args.utterances)
    distractors = info["distractors"]
    test_audios, test_refs = load_split(args.dataset or info["corpus"], args.split, args.utterances)
    options = {k: v for k, v in (("hotword_boost", args.boost), ("hotword_threshold", args.threshold)) if v is not None}
    gated, ungated = options, {**options, "hotword_threshold": None}
    log = gate_log(model)
    result = {"model": args.model, "hotword_utterances": len(audios), "test_utterances": len(test_audios),
              "spoken_names": len(info["spoken"]), "distractors": len(distractors), "options": options}

    def run(inputs, hotwords=None, **extra):
        kwargs = {} if hotwords is None else {"hotwords": hotwords, **extra}
        return [o["text"] for o in asr(inputs, batch_size=args.batch_size, **kwargs)]

    # 1-2. the hotword set
    true_lists = [list(n) for n in names]
    with_distractors = [list(dict.fromkeys(n + distractors)) for n in names]
    plain = run(audios)
    conditions = {"none": plain}
    for gate_name, gate in (("gated", gated), ("ungated", ungated)):
        conditions[f"true_{gate_name}"] = run(audios, true_lists, **gate)
        conditions[f"true_and_distractors_{gate_name}"] = run(audios, with_distractors, **gate)
        log.clear()
        conditions[f"distractors_{gate_name}"] = run(audios, distractors, **gate)
        if gate_name == "gated":
            result["gate_distractors_let_through"] = round(sum(len(a) for _, a in log) / max(1, sum(len(w) for w, _ in log)), 4)
    log.clear()
    run(audios, true_lists, **gated)
    result["gate_true_names_let_through"] = round(sum(len(a) for _, a in log) / max(1, sum(len(w) for w, _ in log)), 4)
    result["hotword_set"] = {name: {"recall": recall(texts, names), "leakage": leakage(texts, refs, distractors),
                                    "cer": round(cer(texts, refs), 4)} for name, texts in conditions.items()}

    # 2. the test split with the distractors; 4. the cost at batch 16 (runs interleaved, the faster of two)
    walls = {"plain": [], "gated": [], "ungated": []}
    texts = {}
    for _ in range(2):
        for name, hotwords, gate in (("plain", None, {}), ("gated", distractors, gated), ("ungated", distractors, ungated)):
            start = time.perf_counter()
            texts[name] = run(test_audios, hotwords, **gate)
            walls[name].append(time.perf_counter() - start)
    result["test_split"] = {name: {"identical_to_plain": round(sum(a == b for a, b in zip(texts[name], texts["plain"]))
                                                               / len(test_refs), 4),
                                   "cer": round(cer(texts[name], test_refs), 4),
                                   "leakage": leakage(texts[name], test_refs, distractors)} for name in texts}
    result["cost_b16_20_hotwords"] = {name: round(min(walls[name]) / min(walls["plain"]), 3) for name in ("gated", "ungated")}
    result["wall_s"] = {name: [round(w, 2) for w in v] for name, v in walls.items()}
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
