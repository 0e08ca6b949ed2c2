"""hubert-gpt-transcribe MODEL FILES...: batched transcription of audio files; a bad file is reported, not fatal.

Prints `file<TAB>text` per file (or JSON lines with --json); errors go to stderr (and into the JSON line);
exits 1 when any file failed.
"""

import argparse
import json
import sys


def transcribe(model_dir, files, batch_size=8, device=None, out=sys.stdout, as_json=False):
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from modeling_hubert_gpt import load_audio

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    rate = processor.feature_extractor.sampling_rate
    failed = 0

    def emit(path, text=None, error=None):
        if as_json:
            print(json.dumps({"file": path, "text": text} if error is None else {"file": path, "error": error},
                             ensure_ascii=False), file=out, flush=True)
        elif error is None:
            print(f"{path}\t{text}", file=out, flush=True)
        if error is not None:
            print(f"{path}: {error}", file=sys.stderr, flush=True)

    with tqdm(total=len(files), unit="file", file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            batch = []
            for path in files[start : start + batch_size]:
                try:
                    audio = load_audio(path, rate)
                    if len(audio) < model.min_input_samples:
                        raise ValueError(f"{len(audio)} samples is shorter than the {model.min_input_samples} this "
                                         "model needs")
                    batch.append((path, audio))
                except (ValueError, TypeError, OSError) as err:
                    failed += 1
                    emit(path, error=str(err))
            if batch:
                inputs = processor(audio=[a for _, a in batch], sampling_rate=rate, return_tensors="pt").to(device)
                texts = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)
                for (path, _), text in zip(batch, texts):
                    emit(path, text)
            bar.update(min(batch_size, len(files) - start))
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a hubert-gpt folder or Hub id")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="JSON lines: {file, text} or {file, error}")
    args = parser.parse_args(argv)
    failed = transcribe(args.model, args.files, args.batch_size, args.device, as_json=args.json)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
