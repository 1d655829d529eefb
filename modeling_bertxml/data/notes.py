"""Notes with ICD codes for fine-tuning and evaluation: validate, label space, batches.

Files are read by `readers` (formats, and errors with file, line or row and field). Every problem is reported with
its location and never with the note's text or id (notes are PHI). What is fatal and what is counted:

- fatal (`NotesError`): a line that is not JSON, a missing `text`/`labels` column, a note that is not a string, a
  label list that is not a list (only CSV writes codes as one `;`-separated string), a code that is not a string,
  the same note id twice (within a split or across splits: a note in both train and test inflates the metrics);
- counted and reported: empty notes (kept, not a crash; the Endpoint handler answers them with no codes); codes that
  cannot be read in the run's code system (malformed, or ICD-9-CM without the dot that tells diagnosis from
  procedure: dropped), unknown to the official list or not billable (kept), each with its count and first location
  (`code_systems.check_codes`), all fatal with `strict_codes`; codes outside the label space (dropped from the training
  targets; in validation/test reported and passed to the metrics as misses, never silently dropped); notes longer
  than the model reads (truncated, one warning).

A split is read once into a `datasets.Dataset` in `datasets`' cache (Arrow, memory-mapped: a split larger than memory is
fine, and a second run over unchanged files reuses it) and never into Python lists of notes; with `streaming` it is an
`IterableDataset` that reads the source again at every pass (no copy on disk; validated by one pass first, which
counts the notes and codes). Labels are kept as lists of
code indices; `MultiLabelCollator` turns them into a multi-hot matrix per batch (a dense matrix of 8k codes x 1M notes
would take ~32 GB).
"""

import ast
import logging
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from transformers import DataCollatorForLanguageModeling

from .code_systems import CodeReport, CodeSystem, check_codes, get_code_system, looks_like
from .readers import (
    DatasetSource,
    Location,
    NotesError,
    Source,
    describe,
    file_format,
    files_tuple,
    generate_dataset,
    iter_notes,
    row_field,
    source_fingerprint,
)

logger = logging.getLogger(__name__)

CSV_LABEL_SEPARATOR = ";"
MAX_LISTED = 5  # how many codes a report line names
BATCH = 1000  # rows per pass over a split's columns
# A split on disk: the note, its codes (as written, and normalised: unique, malformed ones dropped), its id, and where
# it is (`Location`), for messages that must not quote the note or its id.
NOTE_FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "raw_codes": datasets.Sequence(datasets.Value("string")),
        "codes": datasets.Sequence(datasets.Value("string")),
        "id": datasets.Value("string"),
        "file": datasets.Value("string"),
        "number": datasets.Value("int64"),
        "unit": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class NoteColumns:
    """Names of the columns (JSON fields) that hold the note, its codes and its optional id."""

    text: str = "text"
    labels: str = "labels"
    id: str = "id"


@dataclass
class NotesReport:
    """What was wrong with a split but not fatal, for one summary per split instead of a warning per note."""

    empty_notes: int = 0
    codes: CodeReport = field(default_factory=CodeReport)
    outside_label_space: Counter = field(default_factory=Counter)
    truncated_notes: int = 0


@dataclass
class Notes:
    """One split's notes in file order, after validation: `dataset` has the columns of `NOTE_FEATURES` (empty notes
    are ""; `codes` are normalised, `E11.9`, unique per note). `texts`, `codes` and `ids` are lazy columns (of a
    `Dataset`; a streamed split is an `IterableDataset`, read in `batches`)."""

    split: str
    source: str
    dataset: datasets.Dataset | datasets.IterableDataset
    report: NotesReport
    num_notes: int
    code_counts: Counter  # how many notes carry each code

    def __len__(self) -> int:
        return self.num_notes

    @property
    def streaming(self) -> bool:
        return isinstance(self.dataset, datasets.IterableDataset)

    @property
    def texts(self) -> datasets.arrow_dataset.Column:
        return self.dataset["text"]

    @property
    def codes(self) -> datasets.arrow_dataset.Column:
        return self.dataset["codes"]

    @property
    def ids(self) -> datasets.arrow_dataset.Column:
        return self.dataset["id"]

    def batches(self, *columns: str) -> Iterator[dict[str, list]]:
        """The split's `columns` in batches of BATCH rows (the notes themselves only when asked for)."""
        return self.dataset.select_columns(list(columns)).iter(batch_size=BATCH)

    def note_codes(self) -> Iterator[list[str]]:
        """Each note's normalised codes, in order."""
        for batch in self.batches("codes"):
            yield from batch["codes"]



def _listed(counter: Counter) -> str:
    shown = ", ".join(f"{code} x{count}" for code, count in counter.most_common(MAX_LISTED))
    return shown + (f" and {len(counter) - MAX_LISTED} more" if len(counter) > MAX_LISTED else "")


def log_report(notes: Notes, max_length: int | None = None) -> None:
    """Log one summary per split: counts and code names, never note text."""
    report = notes.report
    logger.info(f"{notes.split} ({notes.source}): {len(notes):,} notes")
    if report.empty_notes:
        logger.warning(f"{notes.split}: {report.empty_notes:,} empty notes, kept as notes without text")
    if not report.codes.ok:
        logger.warning(f"{notes.split}: {report.codes}\nMalformed and ambiguous codes are dropped (a local code set: "
                       "--code_system any), the others kept; --strict_codes makes any of them an error")
    if report.outside_label_space:
        consequence = "dropped from the training targets" if notes.split == "train" else "counted as misses"
        logger.warning(
            f"{notes.split}: {sum(report.outside_label_space.values()):,} code occurrences "
            f"({len(report.outside_label_space):,} codes) are outside the label space, {consequence}: "
            f"{_listed(report.outside_label_space)}"
        )
    if report.truncated_notes:
        logger.warning(
            f"{notes.split}: {report.truncated_notes:,} of {len(notes):,} notes are longer than {max_length:,} "
            "tokens and were truncated (raise max_chunks to read more)"
        )


# --- validating rows ---------------------------------------------------------------------------------------------


def _raw_labels(value: object, where: Location, column: str, is_csv: bool) -> list:
    """The row's label list; CSV cells are `;`-separated (a written Python/JSON list is also understood)."""
    if value is None:
        return []
    if is_csv and isinstance(value, str):
        value = value.strip()
        if not value.startswith("["):
            return [code for code in value.split(CSV_LABEL_SEPARATOR) if code.strip()]
        try:
            value = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise NotesError(f"{where}: field {column!r}: starts with '[' but is not a list of codes; "
                             f"write codes {CSV_LABEL_SEPARATOR!r}-separated, e.g. E11.9;I10") from None
    if isinstance(value, str):
        raise NotesError(f"{where}: field {column!r}: a string, expected a list of codes such as "
                         '["E11.9", "I10"] (only CSV files write codes as one ";"-separated string)')
    if not isinstance(value, (list, tuple)):
        raise NotesError(f"{where}: field {column!r}: expected a list of codes, got {type(value).__name__}")
    return list(value)


def _check_code_types(raw: list, where: Location, column: str) -> list[str]:
    for position, item in enumerate(raw, start=1):
        if not isinstance(item, str):
            raise NotesError(f"{where}: field {column!r}: code {position} is a {type(item).__name__}, not a string")
    return raw


def _normalized(raw: list[str], system: CodeSystem) -> list[str]:
    """Normalised codes of one note, unreadable ones dropped (reported by `check_codes`), duplicates once."""
    codes: dict[str, None] = {}
    for item in raw:
        try:
            codes[system.normalize(item)] = None
        except ValueError:
            pass
    return list(codes)


def read_notes(
    files: Source,
    split: str,
    columns: NoteColumns = NoteColumns(),
    strict_codes: bool = False,
    allow_non_billable: bool = False,
    code_system: str | CodeSystem = "icd10",
    streaming: bool = False,
) -> Notes:
    """Read and validate one split from one or more files (rows concatenated in order), or from a dataset's split;
    `streaming` leaves it where it is (an `IterableDataset`) after one validating pass.

    Raises `NotesError` naming file, line/row and field for anything that cannot be a labelled note; see the
    module docstring for what is only counted. Codes are read in `code_system` and checked against its official
    list (`code_systems.check_codes`): malformed or ambiguous ones are dropped, unknown or non-billable ones kept;
    with `strict_codes` any of them is an error.
    """
    system = get_code_system(code_system)
    source = files_tuple(files)
    kwargs = {"files": source, "split": split, "columns": (columns.text, columns.labels, columns.id),
              "code_system": system.name}  # fmt: skip
    settings = ("labelled notes", system.name, *kwargs["columns"])
    fingerprint = None if streaming else source_fingerprint(source, split, *settings)
    dataset = generate_dataset(_validated_rows, NOTE_FEATURES, kwargs, fingerprint, streaming)
    report, count, code_counts = NotesReport(), Counter(), Counter()

    def records() -> Iterator[tuple[str, int, list[str]]]:
        for batch in dataset.select_columns(["text", "codes", "file", "number", "raw_codes"]).iter(batch_size=BATCH):
            count.update(notes=len(batch["text"]), empty=sum(not text for text in batch["text"]))
            code_counts.update(code for codes in batch["codes"] for code in codes)
            yield from zip(batch["file"], batch["number"], batch["raw_codes"])

    report.codes = check_codes(records(), allow_non_billable, system)  # a streamed split: the pass that validates it
    report.empty_notes = count["empty"]
    if strict_codes and not report.codes.ok:
        raise NotesError(f"{split}: {report.codes}\n(--strict_codes: fix these codes or drop the flag)")
    return Notes(split, describe(files), dataset, report, count["notes"], code_counts)


def _validated_rows(
    files: "tuple[str, ...] | DatasetSource", split: str, columns: tuple[str, str, str], code_system: str
) -> Iterator[dict]:
    """The rows of `NOTE_FEATURES`, one per note; what the module docstring calls fatal raises a `NotesError` here."""
    text_column, label_column, id_column = columns
    system = get_code_system(code_system)
    first_seen: dict[str, Location] = {}
    found = False
    for where, row, text in iter_notes(files, text_column, split, [(label_column, "--label_column")]):
        # CSV, and datasets built from CSV files, write the codes as one ";"-separated string.
        separated = isinstance(files, DatasetSource) or where.unit == "line" and file_format(Path(where.file)) == ".csv"
        raw = _raw_labels(row_field(row, label_column, "--label_column", where), where, label_column, separated)
        raw = _check_code_types(raw, where, label_column)
        yield {
            "text": text if text and text.strip() else "",
            "raw_codes": raw,
            "codes": _normalized(raw, system),
            "id": _note_id(row.get(id_column), where, id_column, first_seen),
            "file": where.file,
            "number": where.number,
            "unit": where.unit,
        }
        found = True
    if not found:
        raise NotesError(f"{describe(files)}: no notes in the {split} split")


def _note_id(value: object, where: Location, column: str, first_seen: dict[str, Location]) -> str | None:
    if value is None or value == "":
        return None
    note_id = str(value)
    if note_id in first_seen:  # the id itself is not shown: ids are often built from MRNs
        raise NotesError(f"{where}: field {column!r}: the same note id as {first_seen[note_id]}")
    first_seen[note_id] = where
    return note_id


def check_disjoint(*splits: Notes) -> None:
    """Refuse a note id that appears in two splits: a training note in the test set makes the metrics a lie."""
    seen: dict[str, tuple[str, Location]] = {}
    for notes in splits:
        for batch in notes.batches("id", "file", "number", "unit"):
            for note_id, where in zip(batch["id"], map(Location, batch["file"], batch["number"], batch["unit"])):
                if note_id is None:
                    continue
                split, first = seen.setdefault(note_id, (notes.split, where))
                if split == notes.split:
                    continue
                raise NotesError(f"{where}: the note id of {first} (the {split} split) is also in the "
                                 f"{notes.split} split; splits must not share notes")


# --- label space -------------------------------------------------------------------------------------------------


def _small_file_lines(path: str | Path) -> list[str]:
    """The lines of a small text file a flag names (codes, code texts); one error line if it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise NotesError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None


def read_label_file(path: str | Path, code_system: str | CodeSystem = "icd10") -> list[str]:
    """Codes from a file of one code per line (blank lines and `#` comments skipped), normalised, in file order."""
    system = get_code_system(code_system)
    codes: dict[str, None] = {}
    for number, line in enumerate(_small_file_lines(path), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            codes[system.normalize(line)] = None
        except ValueError as error:
            message = f"{line!r} is not a label of --code_system {system.name}: {error}"
            raise NotesError(f"{path}:{number}: {message}") from None
    if not codes:
        raise NotesError(f"{path}: the label file holds no codes")
    return list(codes)


def read_code_texts(path: str | Path, code_system: str | CodeSystem = "icd10") -> dict[str, list[str]]:
    """A user's texts of codes (descriptions in the notes' language, synonyms, local codes' names): one line per code,
    `code<TAB>text[<TAB>another text ...]`, e.g. CodiEsp's codes file (code, Spanish and English description). A
    first line whose code is not one is a header; any later one is an error naming the file and line."""
    system = get_code_system(code_system)
    texts: dict[str, list[str]] = {}
    for number, line in enumerate(_small_file_lines(path), start=1):
        code, *code_texts = line.split("\t")
        if not code.strip():
            continue
        try:
            code = system.normalize(code)
        except ValueError as error:
            if number == 1:
                continue
            message = f"{code!r} is not a code of --code_system {system.name}: {error}"
            raise NotesError(f"{path}:{number}: {message}") from None
        texts.setdefault(code, []).extend(text.strip() for text in code_texts if text.strip())
    if not any(texts.values()):
        raise NotesError(f"{path}: no line holds a code and its text (code<TAB>text)")
    return texts


def build_label_space(
    train: Notes, min_code_count: int = 1, label_file: str | None = None, code_system: str | CodeSystem = "icd10"
) -> list[str]:
    """The codes the model predicts: those of `label_file`, else the training codes seen `min_code_count` times."""
    if label_file is not None:
        return read_label_file(label_file, code_system)
    counts = train.code_counts
    labels = sorted(code for code, count in counts.items() if count >= min_code_count)
    if not counts and not train.report.codes.ok:  # every code was dropped: written in another code system?
        raise NotesError(_unreadable_codes(train, get_code_system(code_system)))
    if not labels:
        raise NotesError(f"{train.source}: no code occurs at least {min_code_count} times in the training notes")
    if len(labels) < len(counts):
        logger.info(f"label space: {len(labels):,} codes; {len(counts) - len(labels):,} training codes seen fewer "
                    f"than {min_code_count} times are left out (--min_code_count)")
    return labels


def _unreadable_codes(train: Notes, system: CodeSystem) -> str:
    """Why a split whose every code is malformed in `system` has no label space: its first codes, each with the
    standard system that lists it."""
    report = train.report.codes
    shown = []
    for problem in report.problems[:MAX_LISTED]:
        other = looks_like(problem.code)
        count = f" x{problem.count}" if problem.count > 1 else ""
        shown.append(f"{problem.code!r}{count} ({problem.file}:{problem.line}) "
                     + (f"looks like {other.title} (--code_system {other.name})" if other else "is in no code system"))
    more = f"; and {len(report.problems) - MAX_LISTED} more" if len(report.problems) > MAX_LISTED else ""
    return (f"{train.source}: all {report.num_bad} codes of the training notes are malformed for --code_system "
            f"{system.name} ({system.title}), so none can be a label: {'; '.join(shown)}{more}")


def count_outside_label_space(notes: Notes, label2id: dict[str, int]) -> None:
    """Count, in the split's report, the code occurrences that the label space lacks."""
    outside = notes.report.outside_label_space
    outside.clear()
    outside.update({code: count for code, count in notes.code_counts.items() if code not in label2id})


def label_indices(notes: Notes, label2id: dict[str, int]) -> list[list[int]]:
    """Each note's codes as label indices (for baselines); codes outside the label space are counted in the report."""
    count_outside_label_space(notes, label2id)
    return [[label2id[code] for code in codes if code in label2id] for codes in notes.note_codes()]


def multi_hot(label_ids: Sequence[Sequence[int]], num_labels: int) -> np.ndarray:
    """Dense 0/1 targets for one evaluation split (evaluation needs its probabilities dense anyway)."""
    targets = np.zeros((len(label_ids), num_labels), dtype=np.int8)
    for row, indices in enumerate(label_ids):
        targets[row, list(indices)] = 1
    return targets


# --- tokenising and batching -------------------------------------------------------------------------------------


def _tokenize_batch(batch: dict, tokenizer, max_length: int, label2id: dict[str, int]) -> dict:
    # Overflowing windows tell exactly which notes the tokenizer truncated; only each note's first window is kept.
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length, return_overflowing_tokens=True)
    sample = encoded["overflow_to_sample_mapping"]
    first = [i for i in range(len(sample)) if i == 0 or sample[i] != sample[i - 1]]
    windows = Counter(sample)
    return {
        "input_ids": [encoded["input_ids"][i] for i in first],
        "label_ids": [[label2id[code] for code in codes if code in label2id] for codes in batch["codes"]],
        "truncated": [windows[note] > 1 for note in range(len(batch["text"]))],
    }


def tokenize_notes(
    notes: Notes, label2id: dict[str, int], tokenizer, max_length: int, num_proc: int | None = None
) -> datasets.Dataset:
    """A dataset of `input_ids` (at most `max_length`) and `label_ids`, in file order (written to `datasets`' cache,
    memory-mapped); counts the truncated notes and the codes outside the label space."""
    count_outside_label_space(notes, label2id)
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "label_ids": datasets.Sequence(datasets.Value("int32")),
            "truncated": datasets.Value("bool"),
        }
    )
    fn_kwargs = {"tokenizer": tokenizer, "max_length": max_length, "label2id": label2id}
    columns = list(NOTE_FEATURES)
    if notes.streaming:  # tokenised while training; truncated notes are not counted ahead
        mapped = notes.dataset.map(_tokenize_batch, batched=True, remove_columns=columns, features=features,
                                   fn_kwargs=fn_kwargs)  # fmt: skip
        return mapped.remove_columns("truncated")
    dataset = notes.dataset.map(
        _tokenize_batch, batched=True, num_proc=num_proc, remove_columns=columns, features=features,
        fn_kwargs=fn_kwargs, desc=f"Tokenising {notes.split} notes",
    )  # fmt: skip
    notes.report.truncated_notes = pc.sum(dataset.data.column("truncated")).as_py() or 0
    return dataset.remove_columns("truncated")


@dataclass
class MultiLabelCollator:
    """Pads `input_ids` and builds the batch's multi-hot `labels` from `label_ids` (never a dense dataset).

    With `mlm`, also masks the batch's tokens as that collator does (`mlm_labels`, for the masked-LM loss kept while
    coding), drawing from a generator seeded by the batch's tokens: a resumed run masks exactly as the uninterrupted
    one, whatever the loader had prefetched."""

    num_labels: int
    pad_token_id: int
    mlm: DataCollatorForLanguageModeling | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        labels = torch.zeros((len(features), self.num_labels), dtype=torch.float)
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            labels[row, list(feature["label_ids"])] = 1.0
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.mlm is not None:
            self.mlm.generator = torch.Generator().manual_seed(zlib.crc32(input_ids.numpy().tobytes()))
            batch["input_ids"], batch["mlm_labels"] = mask_for_mlm(self.mlm, input_ids)
        return batch


def mask_for_mlm(mlm: DataCollatorForLanguageModeling, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` masked as `mlm` masks (BERT's 80/10/10 by default) and their `mlm_labels` (-100 where unmasked):
    any token but the special ones ([CLS], [SEP], padding), which a padded coding batch has no mask for."""
    special = torch.isin(input_ids, torch.tensor(mlm.tokenizer.all_special_ids))
    return mlm.torch_mask_tokens(input_ids, special)


__all__ = [
    "MultiLabelCollator",
    "NoteColumns",
    "Notes",
    "NotesError",
    "NotesReport",
    "build_label_space",
    "check_disjoint",
    "count_outside_label_space",
    "label_indices",
    "log_report",
    "mask_for_mlm",
    "read_code_texts",
    "read_label_file",
    "read_notes",
    "multi_hot",
    "tokenize_notes",
]
