#!/usr/bin/env python
"""Confidence benchmark: do the pipeline's per-chunk confidences separate right words from wrong ones?

    python bench/confidence.py --model runs/default --dataset data/ja-synth-2h-seed42-1257154b --json confidence.json

On a trained folder with a CTC head and its test split, clean and with white noise mixed in at each `--snr_db`: the
pipeline transcribes every utterance once (batch `--batch_size`), and its chunks are made at "char" and at "word"
level from that one decoding; each chunk is marked right when all of
its letters (characters that are letters or digits: punctuation and spaces are not judged) lie in the blocks difflib
matches between the transcript and the reference, wrong otherwise. Reported per condition and level: chunks, the
share wrong, the mean confidence of right and of wrong chunks, and the AUROC of confidence as a detector of right
chunks (the chance that a right chunk scores above a wrong one; ties count half; 0.5 is chance), for the shipped
confidence (`combined`) and for each of its two readers alone (`llm`: the LLM's token probabilities; `ctc`: the CTC
head's posteriors over the aligned frames), with the CER of the condition.
"""

import argparse
import difflib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timestamps import cer, load_split, model_and_split_arguments  # noqa: E402  (the split, its CER)

READERS = {"combined": None, "llm": lambda llm, ctc: llm, "ctc": lambda llm, ctc: ctc}


def judged(chunks, reference):
    """[(confidence, right)] for the chunks that hold a letter and have a confidence: right when every letter of the
    chunk lies in a block difflib matches between the chunks' letters and the reference's."""
    letters, owner = [], []  # the transcript's letters and the chunk of each
    for k, chunk in enumerate(chunks):
        for c in chunk["text"]:
            if c.isalnum():
                letters.append(c)
                owner.append(k)
    matched = set()
    reference = [c for c in reference if c.isalnum()]
    for block in difflib.SequenceMatcher(None, letters, reference, autojunk=False).get_matching_blocks():
        matched.update(range(block.a, block.a + block.size))
    right = {}
    for position, k in enumerate(owner):
        right[k] = right.get(k, True) and position in matched
    return [(chunks[k]["confidence"], ok) for k, ok in sorted(right.items()) if chunks[k]["confidence"] is not None]


def auroc(scores):
    """[(score, right)] -> the chance that a right one scores above a wrong one (ties half), or None."""
    right = np.array([s for s, ok in scores if ok], dtype=float)
    wrong = np.array([s for s, ok in scores if not ok], dtype=float)
    if len(right) == 0 or len(wrong) == 0:
        return None
    above = (right[:, None] > wrong[None, :]).sum() + 0.5 * (right[:, None] == wrong[None, :]).sum()
    return round(float(above / (len(right) * len(wrong))), 4)


def summary(scores):
    right = [s for s, ok in scores if ok]
    wrong = [s for s, ok in scores if not ok]
    return {"chunks": len(scores), "wrong_share": round(len(wrong) / len(scores), 4) if scores else None,
            "mean_right": round(float(np.mean(right)), 4) if right else None,
            "mean_wrong": round(float(np.mean(wrong)), 4) if wrong else None, "auroc": auroc(scores)}


def with_noise(audios, snr_db, rng):
    """Each utterance with white noise at `snr_db` dB below its own mean power."""
    out = []
    for audio in audios:
        power = float(np.mean(audio.astype(np.float64) ** 2)) or 1e-10
        noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr_db / 10))
        out.append((audio + noise).astype(np.float32))
    return out


def alignment_module(asr):
    """The pipeline's own alignment module (loaded from the model folder as remote code)."""
    return sys.modules[type(asr).__module__.rsplit(".", 1)[0] + ".alignment_hubert_gpt"]


def decoded(asr, inputs, batch_size):
    """The pipeline's model outputs for `inputs` with char timestamps (the LLM's token probabilities kept), which its
    postprocess turns into chunks at each level and with each reader without decoding again."""
    preprocess, forward, _ = asr._sanitize_parameters(return_timestamps="char")
    batch = sys.modules[type(asr).__module__]._Inputs(list(inputs), batch_size)
    return asr.forward(asr.preprocess(batch, **preprocess), **forward)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_and_split_arguments(parser)
    parser.add_argument("--snr_db", type=float, nargs="*", default=[10.0, 0.0], help="noisy conditions (default 10 0)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from transformers import pipeline

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    asr = pipeline("automatic-speech-recognition", model=args.model, trust_remote_code=True, device="cpu")
    alignment = alignment_module(asr)
    combine = alignment.char_confidence
    audios, texts = load_split(args.dataset, args.split, args.utterances)
    conditions = {"clean": audios, **{f"snr_{snr:g}db": with_noise(audios, snr, rng) for snr in args.snr_db}}
    result = {"model": args.model, "utterances": len(audios), "conditions": {}}
    for name, inputs in conditions.items():
        model_outputs, row = decoded(asr, inputs, args.batch_size), {}
        for level in ("char", "word"):
            for reader, rule in READERS.items():
                alignment.char_confidence = rule or combine
                try:
                    outputs = asr.postprocess(model_outputs, return_timestamps=level)
                finally:
                    alignment.char_confidence = combine
                scores = [s for out, ref in zip(outputs, texts) for s in judged(out["chunks"], ref)]
                row[f"{level}_{reader}"] = summary(scores)
        row["cer"] = round(cer([o["text"] for o in outputs], texts), 4)
        result["conditions"][name] = row
        print(name, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
