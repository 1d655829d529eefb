"""Loading clinical notes from disk (not remote code).

`load_text_dataset` is the one place that turns the file formats we accept into a `datasets` dataset, so the
tokenizer trainer and MLM pretraining read exactly the same corpora and fail with the same clear errors.
"""

import glob
import itertools
import os
from collections.abc import Iterator
from functools import partial

import datasets

# file extension -> `datasets` packaged builder; a compression suffix after it is handled by `datasets`.
TEXT_FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")  # what `save_to_disk` writes into its folder
# Declared on every part, so parts concatenate and an empty streamed part needs no schema inference.
_TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})


def _classify(path: str) -> tuple[str, list[str]]:
    """Say how to load one existing path: (`datasets` builder or "disk" or "document", files)."""
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, marker)) for marker in _SAVED_DATASET_MARKERS):
            return "disk", [path]
        notes = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        if not notes:
            raise ValueError(f"{path}: folder holds no .txt files and is not a dataset saved with save_to_disk")
        return "document", notes  # one file = one note
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    extension = os.path.splitext(name)[1]
    if extension not in TEXT_FILE_BUILDERS:
        known = ", ".join(TEXT_FILE_BUILDERS)
        raise ValueError(f"{path}: unknown file type {extension!r}; expected {known}, a folder of .txt files "
                         "or a dataset saved with save_to_disk")
    return TEXT_FILE_BUILDERS[extension], [path]


def _resolve_sources(files: list[str]) -> list[tuple[str, list[str]]]:
    """Expand globs and group consecutive files of one kind, so a thousand shards are one `load_dataset` call."""
    sources: list[tuple[str, list[str]]] = []
    for pattern in files:
        paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not paths:
            raise FileNotFoundError(f"{pattern}: no file matches this pattern")
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file or folder")
            kind, kind_files = _classify(path)
            if sources and kind != "disk" and sources[-1][0] == kind:
                sources[-1][1].extend(kind_files)
            else:
                sources.append((kind, kind_files))
    return sources


def _load_source(kind: str, files: list[str], streaming: bool, split: str):
    if kind == "disk":
        dataset = datasets.load_from_disk(files[0])
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{files[0]}: no split {split!r} (splits: {', '.join(dataset)})")
            dataset = dataset[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    if kind == "document":
        return datasets.load_dataset("text", data_files=files, sample_by="document", split="train",
                                     streaming=streaming)
    return datasets.load_dataset(kind, data_files=files, split="train", streaming=streaming)


def _column_names(dataset) -> list[str]:
    """Column names, read from the first row where a streamed file (text, CSV) declares no schema."""
    if dataset.column_names is not None:
        return dataset.column_names
    first = next(iter(dataset), None)
    return list(first) if first is not None else []


def _is_note(row: dict, index: int, source: str) -> bool:
    """Keep non-blank notes (blank lines and empty CSV cells are skipped); refuse a non-string value."""
    text = row["text"]
    if text is None:
        return False
    if not isinstance(text, str):
        raise ValueError(f"{source}: row {index + 1}: text is {type(text).__name__} ({text!r}), not a string")
    return bool(text.strip())


def load_text_dataset(
    files: list[str], text_column: str = "text", streaming: bool = False, split: str = "train"
) -> datasets.Dataset | datasets.IterableDataset:
    """Raw notes as a dataset with one column, `text`, of non-blank strings.

    `files` may mix paths and globs of `.txt` (one note per line), folders of `.txt` files (one file = one note),
    `.jsonl`/`.json`, `.csv`, `.parquet` (the note in `text_column`) and folders written by `save_to_disk`
    (`split` picks from a saved `DatasetDict`). `streaming=True` returns an `IterableDataset` that reads lazily,
    for corpora larger than memory.
    """
    if isinstance(files, str):
        files = [files]
    parts = []
    for kind, source_files in _resolve_sources(files):
        dataset = _load_source(kind, source_files, streaming, split)
        name = source_files[0] if len(source_files) == 1 else f"{source_files[0]} (and {len(source_files) - 1} more)"
        columns = _column_names(dataset)
        if not columns:
            continue  # an empty file: only an empty corpus as a whole is an error
        column = "text" if kind in ("text", "document") else text_column
        if column not in columns:
            raise ValueError(f"{name}: no text column {column!r} (columns: {', '.join(columns)}); set --text_column")
        dataset = dataset.select_columns([column])
        if column != "text":
            dataset = dataset.rename_column(column, "text")
        dataset = dataset.filter(partial(_is_note, source=name), with_indices=True)
        parts.append(dataset if dataset.features == _TEXT_FEATURES else dataset.cast(_TEXT_FEATURES))
    dataset = datasets.concatenate_datasets(parts) if parts else None
    if dataset is None or next(iter(dataset), None) is None:
        raise ValueError(f"empty corpus: no non-blank note in {', '.join(files)}")
    return dataset


def iter_texts(dataset: datasets.Dataset | datasets.IterableDataset, max_notes: int | None = None,
               batch_size: int = 1000) -> Iterator[str]:
    """Yield the notes of a `load_text_dataset` result, stopping after `max_notes`; reads in batches for speed."""
    texts = (text for batch in dataset.iter(batch_size=batch_size) for text in batch["text"])
    yield from itertools.islice(texts, max_notes)
