"""The one reader of notes files, behind the tokenizer trainer, pretrain.py, train.py and predict.

Accepted: `.jsonl`/`.json` (one JSON object per line), `.csv` (a header row; Excel's "CSV UTF-8" byte-order mark is
fine), `.txt` (one note per line), any of those compressed (`.gz`, `.bz2`, `.xz`), `.parquet`, a folder of `.txt` files
(one file = one note) and a folder written by `datasets`' `save_to_disk`; globs expand to files in sorted order.
In place of files, a `DatasetSource` (--dataset_name): a Hub dataset, a local folder of data files or a saved dataset,
one split of which is read row by row like a table.

Hospital exports are messy and notes are PHI, so anything this module cannot read is one `NotesError` whose message
names the file, the line (text formats) or row (tables) and the field, and never quotes a note, an id or any other
value of the file. Reading is lazy: a corpus larger than memory streams.
"""

import bz2
import codecs
import csv
import glob
import gzip
import hashlib
import json
import lzma
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_COMPRESSED: dict[str, Callable[[Path], IO[bytes]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_FORMATS = (".jsonl", ".json", ".csv", ".txt", ".parquet")
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")  # what `save_to_disk` writes into its folder
_TABLE_BATCH = 1000


class NotesError(ValueError):
    """A notes file that cannot be read as notes; the message names the file, line or row and field, never a value."""


@dataclass(frozen=True)
class Location:
    """Where a row is: a line of a text file (where the row starts), or a row of a table."""

    file: str
    number: int
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.file}:{self.number}" if self.unit == "line" else f"{self.file}: row {self.number}"


Rows = Iterator[tuple[Location, dict]]


def file_format(path: Path) -> str:
    """The format of a file by its extension (a compression suffix ignored): ".jsonl", ".csv", ..."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    extension = suffixes[-1] if suffixes else ""
    if extension not in _FORMATS:
        raise NotesError(f"{path}: unknown file type {extension or path.name!r}; expected {', '.join(_FORMATS)} "
                         "(optionally .gz/.bz2/.xz), a folder of .txt files or a folder written by save_to_disk")
    if extension == ".parquet" and path.suffix.lower() in _COMPRESSED:
        raise NotesError(f"{path}: Parquet compresses itself; decompress the file first")
    return extension


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).exists() for marker in _SAVED_DATASET_MARKERS)


def _checked(path: Path) -> Path:
    """`path` if it exists and is a notes file or folder of a known kind, else a `NotesError` saying why not."""
    if not path.exists():
        raise NotesError(f"{path}: no such file or folder")
    if path.is_dir():
        if not _is_saved_dataset(path) and not _folder_notes(path):
            raise NotesError(f"{path}: folder holds no .txt files and is not a dataset saved with save_to_disk")
    else:
        file_format(path)
    return path


def resolve_files(patterns: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files and folders named by `patterns` (globs expanded, sorted), each checked to exist and be of a known kind."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    paths: list[Path] = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise NotesError(f"{pattern}: no file matches this pattern")
        paths.extend(_checked(Path(path)) for path in matches)
    return paths


def _is_plain_text(path: Path) -> bool:
    """A `.txt` file or a folder of them: the note is the whole row, whatever --text_column says."""
    return not _is_saved_dataset(path) if path.is_dir() else file_format(path) == ".txt"


def _folder_notes(path: Path) -> list[Path]:
    return sorted(Path(name) for name in glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))


def _open_bytes(path: Path) -> IO[bytes]:
    try:
        return _COMPRESSED.get(path.suffix.lower(), open)(path, "rb")
    except OSError as error:  # PermissionError, IsADirectoryError, ...: the reason, not a traceback
        raise NotesError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None


def _lines(path: Path, counter: list[int]) -> Iterator[str]:
    """The decoded lines of a text file; `counter[0]` follows the line number, for readers (csv) that hide it."""
    with _open_bytes(path) as file:
        try:
            for counter[0], raw in enumerate(file, start=1):
                try:
                    yield raw.decode("utf-8-sig" if counter[0] == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    utf16 = counter[0] == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
                    found = "UTF-16 text" if utf16 else f"not UTF-8 text (bad byte at column {error.start + 1})"
                    raise NotesError(f"{path}:{counter[0]}: {found}; save the file as UTF-8") from None
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:  # a corrupt .gz/.bz2/.xz, a read error
            raise NotesError(f"{path}: cannot be read ({type(error).__name__})") from None


def _jsonl_rows(path: Path) -> Rows:
    counter = [0]
    for line in _lines(path, counter):
        if not line.strip():
            continue
        where = Location(str(path), counter[0])
        try:
            row = json.loads(line.rstrip("\r\n"))  # the line's end is no part of the row ("Invalid control character")
        except json.JSONDecodeError as error:
            # Some of json's messages end in "at" ("Unterminated string starting at"): one "at" before the column.
            reason = error.msg.removesuffix(" at")
            raise NotesError(f"{where}: not valid JSON ({reason} at column {error.colno})") from None
        except (ValueError, RecursionError):  # an integer of over 4,300 digits, nesting too deep
            raise NotesError(f"{where}: JSON that Python cannot read (a huge number or deep nesting)") from None
        if not isinstance(row, dict):
            raise NotesError(f"{where}: expected a JSON object with fields, got a {type(row).__name__}")
        yield where, row


def _csv_rows(path: Path) -> Rows:
    counter = [0]
    csv.field_size_limit(sys.maxsize)  # a note can be longer than csv's default 128 KB cell
    reader = csv.reader(_lines(path, counter))
    try:
        header = next(reader, None)
        if header is None:
            return
        start = counter[0] + 1
        for cells in reader:
            where = Location(str(path), start)
            start = counter[0] + 1  # a quoted note may span several lines
            if not cells:
                continue
            if len(cells) != len(header):
                raise NotesError(f"{where}: {len(cells)} cells, but the header has {len(header)} columns")
            yield where, dict(zip(header, cells))
    except csv.Error as error:  # e.g. a bare carriage return in an unquoted cell; csv's messages quote no cell
        raise NotesError(f"{path}:{counter[0]}: not valid CSV ({error})") from None


def _txt_rows(path: Path) -> Rows:
    counter = [0]
    for line in _lines(path, counter):
        yield Location(str(path), counter[0]), {"text": line.rstrip("\r\n")}


def _document_rows(folder: Path) -> Rows:
    for path in _folder_notes(folder):
        counter = [0]
        yield Location(str(path), 1), {"text": "".join(_lines(path, counter))}


def _table_rows(batches: Iterable[list[dict]], name: str) -> Rows:
    number = 0
    for batch in batches:
        for row in batch:
            number += 1
            yield Location(name, number, unit="row"), row


@contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    import pyarrow

    try:
        yield
    except (pyarrow.ArrowException, OSError) as error:
        raise NotesError(f"{path}: not a readable Parquet file ({type(error).__name__})") from None


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    with _parquet_errors(path):
        batches = pq.ParquetFile(path).iter_batches(batch_size=_TABLE_BATCH)
        yield from _table_rows((batch.to_pylist() for batch in batches), str(path))


def _load_saved(path: Path, split: str):
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise NotesError(f"{path}: not a readable saved dataset ({type(error).__name__})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise NotesError(f"{path}: no split {split!r} (splits: {', '.join(dataset)})")
        dataset = dataset[split]
    return dataset


def _saved_dataset_rows(path: Path, split: str) -> Rows:
    return _source_rows(DatasetSource(str(path)), split)


_ROW_READERS: dict[str, Callable[[Path], Rows]] = {
    ".jsonl": _jsonl_rows, ".json": _jsonl_rows, ".csv": _csv_rows, ".txt": _txt_rows, ".parquet": _parquet_rows,
}


@dataclass(frozen=True)
class DatasetSource:
    """--dataset_name (+ --dataset_config_name): a folder written by `save_to_disk` (`load_from_disk`), or anything
    `datasets.load_dataset` opens (a Hub dataset id, a local folder of JSON Lines/CSV/Parquet files named by split).
    Rows are located as `name[split]: row N`. Dataset loading scripts do not run (datasets 4 dropped them)."""

    name: str
    config: str | None = None

    def __str__(self) -> str:
        return self.name if self.config is None else f"{self.name} ({self.config})"

    def split_names(self) -> list[str]:
        """The dataset's splits ("train", "validation", ...)."""
        import datasets

        path = Path(self.name)
        if path.suffix == ".py":
            raise NotesError(f"--dataset_name {self}: a dataset loading script; datasets 4+ no longer runs them: "
                             "convert the data to JSON Lines, CSV or Parquet files (or save_to_disk) and name those")
        if path.is_dir() and _is_saved_dataset(path):
            saved = datasets.load_from_disk(str(path))
            return list(saved) if isinstance(saved, datasets.DatasetDict) else ["train"]
        try:
            return datasets.get_dataset_split_names(self.name, self.config)
        except (OSError, ValueError) as error:
            raise self._error(error) from None

    def _error(self, error: Exception) -> NotesError:
        """A loading failure (not found, offline, a bad config name) as one line: the reason, no traceback."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return NotesError(f"--dataset_name {self}: cannot be loaded ({type(error).__name__}: {reason})")

    def load(self, split: str, streaming: bool = False):
        """The split as a memory-mapped `Dataset` (or an `IterableDataset` when `streaming`); a `NotesError` names
        what is wrong (no such dataset, no such split, a loading script)."""
        import datasets

        path = Path(self.name)
        if path.is_dir() and _is_saved_dataset(path):
            dataset = _load_saved(path, split)
            return dataset.to_iterable_dataset() if streaming else dataset
        splits = self.split_names()
        if split not in splits:
            raise NotesError(f"--dataset_name {self}: no split {split!r} (splits: {', '.join(splits)})")
        try:
            return datasets.load_dataset(self.name, self.config, split=split, streaming=streaming)
        except (OSError, ValueError) as error:
            raise self._error(error) from None


def _source_rows(source: DatasetSource, split: str) -> Rows:
    dataset = source.load(split)
    rows = ([dict(zip(batch, values)) for values in zip(*batch.values())] for batch in dataset.iter(_TABLE_BATCH))
    yield from _table_rows(rows, f"{source}[{split}]")


def _columns_of(path: Path, split: str = "train") -> list[str] | None:
    """A file's column names, so a missing column is refused before any row is read (None: JSON Lines, per row)."""
    if path.is_dir():
        return _load_saved(path, split).column_names if _is_saved_dataset(path) else ["text"]
    kind = file_format(path)
    if kind == ".txt":
        return ["text"]
    if kind == ".csv":
        try:
            return next(csv.reader(_lines(path, [0])), [])
        except csv.Error as error:  # a bare carriage return in the header, as `_csv_rows` reports it for other lines
            raise NotesError(f"{path}:1: not valid CSV ({error})") from None
    if kind == ".parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(path):
            return pq.read_schema(path).names
    return None


def _require_columns(where: object, names: list[str] | None, required: Iterable[tuple[str, str]]) -> None:
    """Refuse a file (or dataset) whose columns `names` lack one of the `(column, flag that names it)` pairs."""
    for name, flag in required:
        if names is not None and name not in names:
            raise NotesError(f"{where}: no column {name!r} (columns: {', '.join(names)}); pass {flag}")


def iter_rows(path: str | Path, split: str = "train") -> Rows:
    """(location, row) for every row of one file or folder (a `.txt` line is the row `{"text": line}`)."""
    path = _checked(Path(path))
    if path.is_dir():
        return _saved_dataset_rows(path, split) if _is_saved_dataset(path) else _document_rows(path)
    return _ROW_READERS[file_format(path)](path)


def _note_text(value: object, where: Location, column: str) -> str | None:
    """The note of a row: a string, or None when the cell is empty; anything else is a `NotesError`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NotesError(f"{where}: field {column!r}: the note is a {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape: no tokenizer can read it
        raise NotesError(f"{where}: field {column!r}: the note holds an invalid \\uD800-\\uDFFF escape") from None
    return value


def row_field(row: dict, name: str, flag: str, where: Location) -> object:
    """`row[name]`, or a `NotesError` naming the flag that picks another field."""
    if name not in row:
        raise NotesError(f"{where}: no field {name!r} (fields: {', '.join(map(str, row))}); pass {flag}")
    return row[name]


def iter_notes(
    files: "str | Path | Sequence[str | Path] | DatasetSource",
    text_column: str = "text",
    split: str = "train",
    required: Sequence[tuple[str, str]] = (),
) -> Iterator[tuple[Location, dict, str | None]]:
    """(location, the row's other fields, note or None for an empty cell) for every row of `files` (or of the
    dataset's `split`), in order.

    The note column (`text` in a `.txt` file, which has no other) and the `required` `(column, flag)` pairs are
    checked before the first row of each file is read.
    """
    for column, rows in _note_sources(files, text_column, split, required):
        for where, row in rows:
            text = _note_text(row_field(row, column, "--text_column", where), where, column)
            yield where, {name: value for name, value in row.items() if name != column}, text


def _note_sources(
    files: "str | Path | Sequence[str | Path] | DatasetSource", text_column: str, split: str,
    required: Sequence[tuple[str, str]],
) -> Iterator[tuple[str, Rows]]:  # fmt: skip
    """(note column, rows) per file or dataset, each checked for its columns just before its rows are read."""
    if isinstance(files, DatasetSource):
        names = files.load(split).column_names
        _require_columns(f"{files}[{split}]", names, [(text_column, "--text_column"), *required])
        yield text_column, _source_rows(files, split)
        return
    for path in resolve_files(files):
        column = "text" if _is_plain_text(path) else text_column
        _require_columns(path, _columns_of(path, split), [(column, "--text_column"), *required])
        yield column, iter_rows(path, split)


Source = "str | Path | Sequence[str | Path] | DatasetSource"  # what --train_file or --dataset_name name


def as_source(files: Source) -> "list[str | Path] | DatasetSource":
    """`files` as a list of files (one file given alone becomes a list of one), or the `DatasetSource` itself."""
    if isinstance(files, DatasetSource):
        return files
    return [files] if isinstance(files, (str, Path)) else list(files)


def iter_texts(files: Source, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """The non-blank notes of `files` (or of a dataset's `split`), in order, for tokenizer training and MLM; blank
    notes are skipped.

    A corpus without any note is a `NotesError` (raised when the notes run out).
    """
    files = as_source(files)
    found = False
    for _, _, text in iter_notes(files, text_column, split):
        if text and text.strip():
            found = True
            yield text
    if not found:
        raise NotesError(f"empty corpus: no non-blank note in {describe(files)}")


def describe(files: Source) -> str:
    """The files or dataset split as a message names them."""
    files = as_source(files)
    return str(files) if isinstance(files, DatasetSource) else ", ".join(map(str, files))


def _fingerprint(paths: list[Path], *settings: str) -> str:
    """Changes whenever a file under `paths` changes, so a cached dataset is never one of an older corpus."""
    digest = hashlib.sha256("\0".join(settings).encode())
    for path in paths:
        for name in sorted(path.rglob("*")) if path.is_dir() else [path]:
            stat = name.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


def source_fingerprint(files: Source, split: str, *settings: str) -> str:
    """Changes whenever the notes may have: the files' names, sizes and modification times, or a loaded dataset's own
    fingerprint, so a cached dataset is never one of an older corpus."""
    files = as_source(files)
    if isinstance(files, DatasetSource):
        if not _is_saved_dataset(Path(files.name)):
            return _fingerprint([], str(files), split, files.load(split)._fingerprint, *settings)
        return _fingerprint([Path(files.name)], str(files), split, *settings)
    return _fingerprint(resolve_files(files), split, *settings, *map(str, files))


def generate_dataset(generator: Callable[..., Iterator[dict]], features, gen_kwargs: dict, fingerprint: str | None,
                     streaming: bool = False):
    """`generator(**gen_kwargs)`'s rows as a `datasets.Dataset`, written once to `datasets`' cache (Arrow,
    memory-mapped) under `fingerprint`, or read lazily as an `IterableDataset` when `streaming`. A `NotesError` raised
    while generating comes out as itself, not wrapped in `DatasetGenerationError`."""
    import datasets

    # Tuples, not lists, in gen_kwargs: `datasets` would read a list as shards and run the generator once per item.
    if streaming:
        return datasets.IterableDataset.from_generator(generator, features=features, gen_kwargs=gen_kwargs)
    try:
        return datasets.Dataset.from_generator(
            generator, features=features, gen_kwargs=gen_kwargs, fingerprint=fingerprint
        )
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, NotesError):
            raise error.__cause__ from None
        raise


def files_tuple(files: Source) -> "tuple[str, ...] | DatasetSource":
    """`files` as `generate_dataset` takes them in gen_kwargs: a dataset as itself, paths as a tuple of strings."""
    files = as_source(files)
    return files if isinstance(files, DatasetSource) else tuple(map(str, files))


def _text_rows(files: "tuple[str, ...] | DatasetSource", text_column: str, split: str) -> Iterator[dict]:
    yield from ({"text": text} for text in iter_texts(files, text_column, split))


def load_text_dataset(files: Source, text_column: str = "text", streaming: bool = False, split: str = "train"):
    """`iter_texts` as a `datasets` dataset with one column, `text` (for `map`-based tokenisation).

    `streaming=True` gives an `IterableDataset` that reads lazily (a corpus larger than memory); bad rows are then
    found while training, as the same `NotesError`. Otherwise the notes are written once to `datasets`' cache, under
    a fingerprint of the files' names, sizes and modification times (or of the dataset named by --dataset_name).
    """
    import datasets

    files = files_tuple(files)
    texts = iter_texts(files, text_column, split)
    next(texts)  # an empty corpus fails now, not in the middle of training
    features = datasets.Features({"text": datasets.Value("string")})
    kwargs = {"files": files, "text_column": text_column, "split": split}
    fingerprint = None if streaming else source_fingerprint(files, split, text_column)
    return generate_dataset(_text_rows, features, kwargs, fingerprint, streaming)


__all__ = [
    "DatasetSource",
    "Location",
    "NotesError",
    "as_source",
    "describe",
    "file_format",
    "files_tuple",
    "generate_dataset",
    "iter_notes",
    "iter_rows",
    "iter_texts",
    "load_text_dataset",
    "resolve_files",
    "row_field",
    "source_fingerprint",
]
