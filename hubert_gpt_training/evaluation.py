"""hubert-gpt-evaluate MODEL --dataset NAME|FOLDER|MANIFEST ...: CER on test sets, scored as others publish theirs.

    hubert-gpt-evaluate runs/default --dataset japanese-asr/ja_asr.jsut_basic5000 japanese-asr/ja_asr.reazonspeech_test \
        japanese-asr/ja_asr.common_voice_8_0 --batch_size 16 --update_card

Each dataset is a Hub id or builder name (`load_dataset(NAME, CONFIG, split=SPLIT)`), a folder (a `save_to_disk`
folder, or files `load_dataset` reads: parquet, an audiofolder), or a .jsonl/.json/.csv manifest (audio paths
relative to it). Its audio goes through the model's pipeline in batches (longest first within each block of
utterances); the CER is computed with every normaliser of `hubert_gpt_training.normalizers` (raw, kotoba-whisper's,
ReazonSpeech's, hubert-gpt's) as total edits / total reference characters.

Written to --output_dir: `<dataset>.jsonl` (one line per utterance: index, reference, hypothesis, seconds, CER per
normaliser), `<dataset>.json` (the dataset's results) and `results.json` (every dataset evaluated into that folder,
by dataset). `--update_card` adds the figures to MODEL/README.md's `model-index` (MODEL must be a local folder).
"""

import argparse
import itertools
import json
import os
import sys
import time

import datasets

from hubert_gpt_training.data import check_text, load_source, read_row_audio
from hubert_gpt_training.normalizers import LABELS, NORMALIZERS

# The test sets Japanese ASR is compared on (script-free parquet copies; audio + transcription, split "test").
KNOWN_TEST_SETS = {
    "japanese-asr/ja_asr.jsut_basic5000": "JSUT basic5000",
    "japanese-asr/ja_asr.reazonspeech_test": "ReazonSpeech test",
    "japanese-asr/ja_asr.common_voice_8_0": "Common Voice 8.0 (ja)",
}
BLOCK_BATCHES = 8  # utterances read, sorted and transcribed together: batch_size * BLOCK_BATCHES
DTYPES = ("auto", "float32", "bfloat16", "float16")


def dataset_label(spec):
    """A readable name: the known test sets' names, else the Hub id or the folder / file name."""
    if spec in KNOWN_TEST_SETS:
        return KNOWN_TEST_SETS[spec]
    return os.path.basename(os.path.normpath(spec)) if os.path.exists(spec) else spec


def dataset_slug(spec):
    """A file-name-safe id for a dataset: `japanese-asr/ja_asr.jsut_basic5000` -> `japanese-asr__ja_asr.jsut_basic5000`."""
    name = os.path.basename(os.path.normpath(spec)) if os.path.exists(spec) else spec
    return name.replace("/", "__")


def open_dataset(spec, split="test", config=None, streaming=False):
    """One split of a Hub id / builder, folder or manifest, its audio column left undecoded (read with soundfile)."""
    if os.path.isfile(spec):
        return load_source(manifest=spec, streaming=streaming)
    saved = any(os.path.isfile(os.path.join(spec, f)) for f in ("state.json", "dataset_dict.json"))
    if os.path.isdir(spec) and saved:
        return load_source(disk_path=spec, split=split, streaming=streaming)
    return load_source(spec, config, split, streaming=streaming)


def check_columns(dataset, spec, audio_column, text_column):
    columns = [c for c in (dataset.column_names or []) if c != "__root__"]
    missing = [c for c in (audio_column, text_column) if dataset.column_names is not None and c not in columns]
    if missing:
        raise ValueError(f"{spec} has no column(s) {missing}; its columns are {columns} (see --audio_column / "
                         "--text_column)")
    feature = (dataset.features or {}).get(audio_column)
    if isinstance(feature, datasets.Audio):  # datasets' decoder needs torchcodec + FFmpeg: read the bytes ourselves
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


def utterance_scores(reference, hypothesis):
    """{normaliser: (character edits, reference characters)} for one utterance."""
    from rapidfuzz.distance import Levenshtein

    scores = {}
    for name, normalize in NORMALIZERS.items():
        ref, hyp = normalize(reference), normalize(hypothesis)
        scores[name] = (Levenshtein.distance(ref, hyp), len(ref))
    return scores


def transcribe_rows(asr, rows, audio_column, text_column, rate, batch_size):
    """(index, reference, audio) rows -> (index, reference, seconds, hypothesis), a block of rows at a time."""
    rows = iter(rows)
    while block := list(itertools.islice(rows, batch_size * BLOCK_BATCHES)):
        audios = [read_row_audio(row[audio_column], row.get("__root__"), index, rate) for index, row in block]
        references = [check_text(row[text_column], index, text_column) for index, row in block]
        hypotheses = [out["text"] for out in asr(audios, batch_size=batch_size)]
        for (index, _), reference, audio, hypothesis in zip(block, references, audios, hypotheses):
            yield index, reference, len(audio) / rate, hypothesis


def evaluate_dataset(asr, spec, output_dir, split="test", config=None, audio_column="audio",
                     text_column="transcription", batch_size=16, max_samples=None, streaming=False):
    """Transcribe and score one dataset; writes `<slug>.jsonl` and `<slug>.json`, returns the results dict."""
    from tqdm import tqdm

    dataset = check_columns(open_dataset(spec, split, config, streaming), spec, audio_column, text_column)
    total = len(dataset) if isinstance(dataset, datasets.Dataset) else None
    if max_samples is not None:
        total = max_samples if total is None else min(total, max_samples)
    rows = itertools.islice(enumerate(dataset), max_samples)
    rate = asr.feature_extractor.sampling_rate
    sums = {name: [0, 0] for name in NORMALIZERS}  # edits, reference characters
    empty = {name: 0 for name in NORMALIZERS}
    count, seconds, started = 0, 0.0, time.time()
    slug = dataset_slug(spec)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{slug}.jsonl"), "w", encoding="utf-8") as lines, \
            tqdm(total=total, unit="utt", desc=dataset_label(spec), file=sys.stderr) as bar:
        for index, reference, duration, hypothesis in transcribe_rows(asr, rows, audio_column, text_column, rate,
                                                                       batch_size):
            scores = utterance_scores(reference, hypothesis)
            for name, (edits, chars) in scores.items():
                sums[name][0] += edits
                sums[name][1] += chars
                empty[name] += chars == 0
            line = {"index": index, "reference": reference, "hypothesis": hypothesis, "seconds": round(duration, 3),
                    "cer": {name: e / c if c else None for name, (e, c) in scores.items()}}
            lines.write(json.dumps(line, ensure_ascii=False) + "\n")
            count, seconds = count + 1, seconds + duration
            bar.update(1)
    if count == 0:
        raise ValueError(f"{spec} (split {split!r}) has no utterances to evaluate")
    wall = time.time() - started
    results = {
        "dataset": spec, "dataset_name": dataset_label(spec), "config": config, "split": split,
        "num_utterances": count, "audio_seconds": round(seconds, 2),
        "cer": {name: e / c if c else None for name, (e, c) in sums.items()},
        "edits": {name: e for name, (e, _) in sums.items()},
        "reference_characters": {name: c for name, (_, c) in sums.items()},
        "num_empty_references": empty, "normalisers": LABELS,
        "batch_size": batch_size, "wall_s": round(wall, 2), "rtf": round(wall / seconds, 4) if seconds else None,
    }
    with open(os.path.join(output_dir, f"{slug}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    return results


def load_pipeline(model, device=None, dtype="auto"):
    import torch
    from transformers import pipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return pipeline("automatic-speech-recognition", model=model, trust_remote_code=True, device=device, dtype=dtype)


def write_summary(output_dir, model, results):
    """Merge this run's results into output_dir/results.json (keyed by dataset)."""
    path = os.path.join(output_dir, "results.json")
    summary = {"model": model, "datasets": {}}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("model") != model:
            raise ValueError(f"{path} holds results of {summary.get('model')!r}, not {model!r}; pick another "
                             "--output_dir")
    for result in results:
        summary["datasets"][result["dataset"]] = result
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    return summary


def format_table(results):
    names = list(NORMALIZERS)
    rows = ["| dataset | utterances | " + " | ".join(f"CER % ({n})" for n in names) + " |",
            "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for r in results:
        cells = ["n/a" if r["cer"][n] is None else f"{100 * r['cer'][n]:.2f}" for n in names]
        rows.append(f"| {r['dataset_name']} | {r['num_utterances']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", help="a hubert-gpt folder or Hub id")
    parser.add_argument("--dataset", nargs="+", required=True, help="Hub ids / builder names, folders or manifests")
    parser.add_argument("--split", default="test")
    parser.add_argument("--config", default=None, help="the datasets' config name")
    parser.add_argument("--audio_column", default="audio")
    parser.add_argument("--text_column", default="transcription")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N utterances of each dataset")
    parser.add_argument("--streaming", action="store_true", help="read Hub datasets as they stream (no full download)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="model weights' dtype (auto: as saved)")
    parser.add_argument("--output_dir", default="eval_results")
    parser.add_argument("--update_card", action="store_true",
                        help="add the CERs to MODEL/README.md's model-index, one entry per dataset")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_samples is not None and args.max_samples < 1):
        parser.error("--batch_size and --max_samples must be at least 1")
    if args.update_card and not os.path.isdir(args.model):
        parser.error(f"--update_card writes MODEL/README.md: {args.model!r} is not a local folder")

    asr = load_pipeline(args.model, args.device, args.dtype)
    results = [evaluate_dataset(asr, spec, args.output_dir, args.split, args.config, args.audio_column,
                                args.text_column, args.batch_size, args.max_samples, args.streaming)
               for spec in args.dataset]
    write_summary(args.output_dir, args.model, results)
    print(format_table(results))
    if args.update_card:
        from hubert_gpt_training.model_index import add_eval_results

        add_eval_results(args.model, results)
        print(f"model-index updated: {os.path.join(args.model, 'README.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
