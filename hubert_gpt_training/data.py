"""Speech datasets for training: any `datasets` source -> rows of (audio float32 @ rate, text), and the collator.

Sources: a Hub/builder name (`audiofolder`, ...; `streaming=True` for large corpora; `reazon-research/reazonspeech`
is read from its corpus files by hubert_gpt_training.reazonspeech), a `save_to_disk` folder, or a JSONL/CSV manifest of (path, text). Audio is decoded with soundfile
(`datasets`' own decoder needs torchcodec + FFmpeg) and resampled to the encoder's rate.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch.nn.utils.rnn import pad_sequence

from modeling_hubert_gpt.pipeline_hubert_gpt import load_audio

logger = logging.getLogger(__name__)


def load_source(name=None, config=None, split="train", data_dir=None, disk_path=None, manifest=None, streaming=False,
                reazonspeech_base_url=None):
    """One split of one source, as a `datasets.Dataset` (or `IterableDataset` when streaming).

    `reazon-research/reazonspeech` is read from its corpus files (hubert_gpt_training.reazonspeech; its Hub repo is a
    loading script, which datasets >= 4 refuses), from `reazonspeech_base_url` when given."""
    given = [x for x in (name, disk_path, manifest) if x]
    if len(given) != 1:
        raise ValueError(f"give exactly one data source: --dataset_name, --dataset_dir or --manifest (got {given})")
    if disk_path:
        loaded = datasets.load_from_disk(disk_path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{disk_path} has splits {list(loaded)}; no split {split!r}")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if manifest:
        kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(os.path.splitext(manifest)[1])
        if kind is None:
            raise ValueError(f"manifest {manifest!r} must be .jsonl/.json or .csv with a path and a text column")
        loaded = datasets.load_dataset(kind, data_files=manifest, split="train", streaming=streaming)
        root = os.path.dirname(os.path.abspath(manifest))  # relative paths are relative to the manifest
        features = loaded.features  # kept through map, so a streaming manifest still knows its columns
        features = None if features is None else datasets.Features({**features, "__root__": datasets.Value("string")})
        return loaded.map(lambda row: {"__root__": root}, features=features)
    from hubert_gpt_training.reazonspeech import is_reazonspeech, load_reazonspeech

    if is_reazonspeech(name):
        return load_reazonspeech(config, split, streaming, base_url=reazonspeech_base_url)
    return load_builder(name, config, split, data_dir, streaming)


def load_builder(name, config=None, split="train", data_dir=None, streaming=False):
    """`datasets.load_dataset(name, ...)`, except that an audiofolder (local, or a Hub repo of audio files) comes
    with its audio column(s) as file paths, and loads without torchcodec.

    datasets encodes each row with its features while a builder writes it, and `Audio.encode_example` imports
    torchcodec even for a plain file path, so an audiofolder fails where torchcodec (+ FFmpeg) is missing. A streamed
    dataset encodes rows only as they are read, with the features it has then: cast its Audio columns to paths first
    (prepare() reads the files with soundfile). Not streaming, the rows are written to the datasets cache under the
    builder's own cache folder name, which changes when the folder's files do.
    """
    builder = datasets.load_dataset_builder(name, config, data_dir=data_dir)
    if builder.name != "audiofolder":
        return datasets.load_dataset(name, config, split=split, data_dir=data_dir, streaming=streaming)
    rows = builder.as_streaming_dataset(split=split)
    rows = rows.cast(datasets.Features(
        {k: datasets.Value("string") if isinstance(f, datasets.Audio) else f for k, f in rows.features.items()}))
    if streaming:
        return rows
    fingerprint = hashlib.sha256(f"{builder.cache_dir}\n{split}".encode()).hexdigest()[:32]
    return datasets.Dataset.from_generator(rows.__iter__, features=rows.features, fingerprint=fingerprint,
                                           split=datasets.NamedSplit(split))


def prepare(dataset, audio_column="audio", text_column="transcription", sampling_rate=16000, max_seconds=16.0):
    """Decode + resample audio, check text, drop over-long / empty rows. Columns out: audio, text, input_length."""
    def check_columns(names):
        names = [c for c in names if c != "__root__"]
        missing = [c for c in (audio_column, text_column) if c not in names]
        if missing:
            raise ValueError(f"dataset has no column(s) {missing}; its columns are {names} (see --audio_column/--text_column)")

    columns = dataset.column_names
    if columns is not None:
        check_columns(columns)
    if isinstance(dataset.features, dict) and isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))

    def decode(row, index):
        if columns is None:  # a streaming source whose columns show only row by row (CSV)
            check_columns(list(row))
        return {"audio": read_row_audio(row[audio_column], row.get("__root__"), index, sampling_rate),
                "text": check_text(row[text_column], index, text_column)}

    def decode_and_measure(row, index):
        out = decode(row, index)
        out["input_length"] = len(out["audio"])
        return out

    drop = [c for c in (columns or []) if c not in ("audio", "text")] + (["__root__"] if "__root__" in (columns or []) else [])
    drop = sorted(set(drop) | ({audio_column, text_column} - {"audio", "text"}))
    dataset = dataset.map(decode_and_measure, with_indices=True, remove_columns=drop or None)
    if columns is None:
        dataset = dataset.select_columns(["audio", "text", "input_length"])
    max_samples = int(max_seconds * sampling_rate)

    def keep(row):
        return 0 < row["input_length"] <= max_samples and row["text"].strip() != ""

    before = len(dataset) if isinstance(dataset, datasets.Dataset) else None
    dataset = dataset.filter(keep)
    if before is not None:
        logger.info(f"dropped {before - len(dataset)} of {before} utterances (empty transcript or over {max_seconds} s)")
    return dataset


def read_row_audio(value, root, index, sampling_rate):
    """A row's audio (path, {"path","bytes"}, or {"array","sampling_rate"}) -> float32 at sampling_rate."""
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            return load_audio(value["bytes"], sampling_rate)
        if isinstance(value, dict) and value.get("array") is not None:
            return load_audio(value, sampling_rate)
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, str):
            raise TypeError(f"expected a file path, file bytes or an audio array, got {type(value).__name__}")
        return load_audio(os.path.join(root, path) if root else path, sampling_rate)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ValueError(f"row {index}: unreadable audio: {err}") from err


def check_text(value, index, column):
    if value is None:  # an empty CSV cell / JSON null: an empty transcript, dropped by prepare()
        return ""
    if not isinstance(value, str):
        raise ValueError(f"row {index}: column {column!r} must hold a string transcript, got {type(value).__name__}")
    return value


@dataclass
class SpeechCollator:
    """Rows of (audio, text) -> input_values (B, S), attention_mask (B, S), labels (B, N) via the processor.

    With `ctc_vocab` (a character CTC head's `model.ctc_head.vocab`) also ctc_targets (B, C): each transcript's
    character ids, -100 padded; characters outside the vocabulary are left out (that head cannot spell them).
    """

    processor: Any
    sampling_rate: int = 16000
    ctc_vocab: list | None = None

    def __post_init__(self):
        self._char_ids = None if self.ctc_vocab is None else {c: i for i, c in enumerate(self.ctc_vocab)}

    def __call__(self, rows):
        batch = self.processor(
            audio=[row["audio"] for row in rows],
            text=[row["text"] for row in rows],
            sampling_rate=self.sampling_rate,
            return_tensors="pt",
        )
        if self._char_ids is not None:
            ids = [torch.tensor([self._char_ids[c] for c in row["text"] if c in self._char_ids], dtype=torch.long)
                   for row in rows]
            batch["ctc_targets"] = pad_sequence(ids, batch_first=True, padding_value=-100)  # (B, C)
        return batch
