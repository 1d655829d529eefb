"""Labelled-note loading: every format reads the same, bad input fails with file/line/field, never with note text."""

import csv
import json
import logging
import os
from pathlib import Path

import datasets
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from modeling_bertxml.data.notes import (
    MultiLabelCollator,
    NoteColumns,
    NotesError,
    build_label_space,
    check_disjoint,
    label_indices,
    log_report,
    multi_hot,
    read_notes,
    tokenize_notes,
)
from modeling_bertxml.data.readers import DatasetSource
from tests.conftest import tiny_tokenizer

SECRET = "Mrs Secretname"  # stands for PHI: must never appear in an error or a log line
SECRET_ID = "MRN4829113"  # note ids are often built from MRNs: never in an error either
ROWS = [
    {"id": "n1", "text": f"{SECRET} denies chest pain", "labels": ["e119", "I10"]},
    {"id": "n2", "text": "history of hypertension\nadmitted, stable", "labels": ["I10"]},
    {"id": "n3", "text": "no evidence of pneumonia", "labels": []},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "labels": ";".join(row["labels"])} if "labels" in row else row)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_saved_dataset(path: Path, rows: list[dict]) -> Path:
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "writer, name",
    [(write_jsonl, "n.jsonl"), (write_csv, "n.csv"), (write_parquet, "n.parquet"), (write_saved_dataset, "saved")],
)
def test_every_format_reads_the_same_notes_with_normalised_codes(tmp_path: Path, writer, name: str) -> None:
    notes = read_notes(writer(tmp_path / name, ROWS), "validation")
    assert notes.ids == ["n1", "n2", "n3"]
    assert notes.texts == [row["text"] for row in ROWS]
    assert notes.codes == [["E11.9", "I10"], ["I10"], []]
    assert notes.report.codes.ok and notes.report.empty_notes == 0


def test_csv_cell_written_as_a_list_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text('text,labels\nchest pain,"[\'E11.9\', \'I10\']"\n')
    assert read_notes(path, "train").codes == [["E11.9", "I10"]]


# (file name, content, expected message): each message names file, line/row and field.
BAD_INPUTS = [
    ("bad.jsonl", [ROWS[0], '{"text": "x", "labels": [}'], r"bad\.jsonl:2: not valid JSON"),
    ("bad.jsonl", [ROWS[0], '{"text": "x'],
     r"bad\.jsonl:2: not valid JSON \(Unterminated string starting at column 10\)$"),  # json's message ends in "at"
    ("bad.jsonl", [ROWS[0], '["a list"]'], r"bad\.jsonl:2: expected a JSON object"),
    ("bad.jsonl", [{"note": SECRET, "labels": []}],
     r"bad\.jsonl:1: no field 'text' \(fields: note, labels\).*--text_column"),
    ("bad.jsonl", [{"text": SECRET}], r"bad\.jsonl:1: no field 'labels'.*--label_column"),
    ("bad.jsonl", [ROWS[1], {"text": 12345, "labels": []}], r"bad\.jsonl:2: field 'text': the note is a int"),
    ("bad.jsonl", [{"text": SECRET, "labels": "E11.9;I10"}],
     r"bad\.jsonl:1: field 'labels': a string, expected a list"),
    ("bad.jsonl", [{"text": SECRET, "labels": {"E11.9": 1}}], r"bad\.jsonl:1: field 'labels': expected a list .*dict"),
    ("bad.jsonl", [{"text": SECRET, "labels": ["I10", 4829113]}], r"bad\.jsonl:1: field 'labels': code 2 is a int"),
    ("bad.jsonl", [{"text": [SECRET], "labels": []}], r"bad\.jsonl:1: field 'text': the note is a list"),
    ("bad.jsonl", ['{"text": "\\ud800 %s", "labels": []}' % SECRET], r"bad\.jsonl:1: field 'text': .*invalid"),
    ("bad.jsonl", [{**ROWS[0], "id": SECRET_ID}, ROWS[1], {**ROWS[2], "id": SECRET_ID}],
     r"bad\.jsonl:3: field 'id': the same note id as .*bad\.jsonl:1$"),
    ("bad.jsonl", f'{{"text": "{SECRET}", "labels": []}}\n{{"text": "\xe9 {SECRET}"}}\n'.encode("latin-1"),
     r"bad\.jsonl:2: not UTF-8 text"),
    ("bad.jsonl", "", r"bad\.jsonl: no notes in the train split"),
    ("bad.csv", "notes,labels\nx,I10\n", r"bad\.csv: no column 'text' \(columns: notes, labels\).*--text_column"),
    ("bad.csv", f'text,labels\n"{SECRET}\nline two",I10\nx,"[E11.9"\n',
     r"bad\.csv:4: field 'labels': starts with '\['"),  # the quoted note spans lines 2-3
    ("bad.csv", "text,labels\nx,I10,extra\n", r"bad\.csv:2: 3 cells, but the header has 2 columns"),
    ("bad.csv", f'text,labels\n"{SECRET},I10\n', r"bad\.csv:2: 1 cells, but the header has 2 columns"),
    ("bad.csv", f"text,labels\n{SECRET}\r{SECRET},I10\n", r"bad\.csv:2: not valid CSV \(new-line character"),
    ("bad.txt", f"{SECRET}\n", r"bad\.txt: no column 'labels' \(columns: text\)"),
    ("bad.docx", "x\n", r"bad\.docx: unknown file type '\.docx'"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS)
def test_bad_input_is_refused_naming_file_line_and_field_but_not_the_note(
    tmp_path: Path, name: str, content, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_jsonl(path, content) if isinstance(content, list) else path.write_text(content)
    with pytest.raises(NotesError, match=message) as error:
        read_notes(path, "train")
    assert SECRET not in str(error.value) and SECRET_ID not in str(error.value)


def test_missing_file_plain_folder_unreadable_file_and_missing_split_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotesError, match="nope.jsonl: no such file"):
        read_notes(tmp_path / "nope.jsonl", "train")
    (tmp_path / "folder").mkdir()
    with pytest.raises(NotesError, match="folder: folder holds no .txt files and is not a dataset saved"):
        read_notes(tmp_path / "folder", "train")
    locked = write_jsonl(tmp_path / "locked.jsonl", ROWS)
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # root reads anything
        with pytest.raises(NotesError, match="locked.jsonl: cannot be read"):
            read_notes(locked, "train")
    saved = write_saved_dataset(tmp_path / "saved", ROWS)
    with pytest.raises(NotesError, match="no split 'test'.*validation"):
        read_notes(saved, "test")


def test_custom_column_names(tmp_path: Path) -> None:
    rows = [{"note_id": "a", "body": "chest pain", "icd": ["I10"]}]
    notes = read_notes(write_jsonl(tmp_path / "n.jsonl", rows), "train", NoteColumns("body", "icd", "note_id"))
    assert (notes.ids, notes.texts, notes.codes) == (["a"], ["chest pain"], [["I10"]])


def test_empty_and_null_notes_are_kept_as_notes_and_counted(tmp_path: Path, caplog) -> None:
    rows = [{"text": "", "labels": ["I10"]}, {"text": None, "labels": None}, {"text": "  \n", "labels": []}, ROWS[1]]
    notes = read_notes(write_jsonl(tmp_path / "n.jsonl", rows), "train")
    assert notes.texts[:3] == ["", "", ""] and notes.codes[:2] == [["I10"], []]
    assert notes.report.empty_notes == 3
    with caplog.at_level(logging.INFO):
        log_report(notes)
    assert "3 empty notes" in caplog.text


def test_bad_codes_are_counted_with_first_location_and_strict_makes_them_fatal(tmp_path: Path, caplog) -> None:
    rows = [
        {"text": SECRET, "labels": ["E11.9", "XYZ"]},
        {"text": "x", "labels": ["xyz", "Q99.99", "E11"]},
        {"text": "y", "labels": ["XYZ"]},
    ]
    path = write_jsonl(tmp_path / "n.jsonl", rows)
    notes = read_notes(path, "train")
    assert notes.codes == [["E11.9"], ["Q99.99", "E11"], []]  # malformed dropped, unknown/non-billable kept
    problems = {problem.code: problem for problem in notes.report.codes.problems}
    assert (problems["XYZ"].count, problems["XYZ"].line, problems["xyz"].line) == (2, 1, 2)
    assert problems["Q99.99"].reason == "unknown" and problems["E11"].reason == "not billable"
    with caplog.at_level(logging.INFO):
        log_report(notes)
    assert f"{path}:1: 'XYZ' malformed (2 occurrences)" in caplog.text and "--strict_codes" in caplog.text
    assert SECRET not in caplog.text
    with pytest.raises(NotesError, match=rf"{path}:2: 'Q99.99' unknown"):
        read_notes(path, "train", strict_codes=True)


def test_a_note_id_in_two_splits_is_refused(tmp_path: Path) -> None:
    train = read_notes(write_jsonl(tmp_path / "train.jsonl", ROWS), "train")
    test = read_notes(write_jsonl(tmp_path / "test.jsonl", [{**ROWS[0], "id": "n9"}, {**ROWS[1], "id": "n2"}]), "test")
    check_disjoint(train, read_notes(write_jsonl(tmp_path / "other.jsonl", [{**ROWS[0], "id": "n7"}]), "validation"))
    with pytest.raises(NotesError, match=r"test\.jsonl:2: the note id of .*train\.jsonl:2 \(the train split\) is also "
                       "in the test split") as error:
        check_disjoint(train, test)
    assert "n2" not in str(error.value).replace(str(tmp_path), "")


def test_excel_csv_with_a_byte_order_mark_keeps_its_id_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("id,text,labels\nn1,chest pain,I10\nn1,cough,J18.9\n", encoding="utf-8-sig")
    with pytest.raises(NotesError, match=r"excel\.csv:3: field 'id': the same note id as"):
        read_notes(path, "train")


def test_label_space_from_training_counts_or_a_label_file(tmp_path: Path) -> None:
    rows = [{"text": "a", "labels": ["I10", "E11.9"]}, {"text": "b", "labels": ["I10", "J18.9"]}]
    train = read_notes(write_jsonl(tmp_path / "train.jsonl", rows), "train")
    assert build_label_space(train) == ["E11.9", "I10", "J18.9"]
    assert build_label_space(train, min_code_count=2) == ["I10"]
    label_file = tmp_path / "codes.txt"
    label_file.write_text("# our codes\nj189\n\nI10  # hypertension\n")
    assert build_label_space(train, label_file=str(label_file)) == ["J18.9", "I10"]
    label_file.write_text("I10\nnot-a-code\n")
    with pytest.raises(NotesError, match=rf"{label_file}:2: 'not-a-code'"):
        build_label_space(train, label_file=str(label_file))
    with pytest.raises(NotesError, match="no code occurs at least 3 times"):
        build_label_space(train, min_code_count=3)


def test_codes_of_another_system_say_so_and_which_system_they_look_like(tmp_path: Path) -> None:
    rows = [{"text": "a", "labels": ["E11.9", "I10"]}, {"text": "b", "labels": ["I10"]}, {"text": "c", "labels": []},
            {"text": "d", "labels": ["0DTJ4ZZ"]}]  # fmt: skip
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    train = read_notes(path, "train", code_system="icd9cm")
    with pytest.raises(NotesError) as refused:
        build_label_space(train, code_system="icd9cm")
    message = str(refused.value)
    assert message.startswith(f"{path}: all 4 codes of the training notes are malformed for --code_system icd9cm "
                              "(ICD-9-CM), so none can be a label: ")
    assert f"'I10' x2 ({path}:1) looks like ICD-10-CM (--code_system icd10cm)" in message
    assert f"'0DTJ4ZZ' ({path}:4) looks like ICD-10-PCS (--code_system icd10pcs)" in message
    assert "no code occurs" not in message


def test_codes_outside_the_label_space_are_counted_and_reported_as_misses(tmp_path: Path, caplog) -> None:
    rows = [{"text": "a", "labels": ["I10", "N17.9"]}, {"text": "b", "labels": ["N17.9", "E11.9"]}]
    validation = read_notes(write_jsonl(tmp_path / "v.jsonl", rows), "validation")
    assert label_indices(validation, {"E11.9": 0, "I10": 1}) == [[1], [0]]
    assert validation.report.outside_label_space == {"N17.9": 2}
    with caplog.at_level(logging.INFO):
        log_report(validation)
    assert "2 code occurrences (1 codes) are outside the label space, counted as misses: N17.9 x2" in caplog.text


def test_long_notes_are_truncated_keeping_sep_with_one_summary_warning(tmp_path: Path, caplog) -> None:
    tokenizer = tiny_tokenizer()
    rows = [{"text": "chest pain " * 20, "labels": ["I10"]}, {"text": "chest pain", "labels": []}] * 2
    notes = read_notes(write_jsonl(tmp_path / "n.jsonl", rows), "train")
    dataset = tokenize_notes(notes, {"I10": 0}, tokenizer, max_length=16)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    assert lengths == [16, 4, 16, 4]
    assert dataset[0]["input_ids"][-1] == tokenizer.sep_token_id
    assert notes.report.truncated_notes == 2
    with caplog.at_level(logging.WARNING):
        log_report(notes, max_length=16)
    assert [r.message for r in caplog.records if "truncated" in r.message] == [
        "train: 2 of 4 notes are longer than 16 tokens and were truncated (raise max_chunks to read more)"
    ]


def test_collator_pads_and_builds_multi_hot_labels_per_batch(tmp_path: Path) -> None:
    notes = read_notes(write_jsonl(tmp_path / "n.jsonl", ROWS), "train")
    label2id = {code: i for i, code in enumerate(build_label_space(notes))}
    dataset = tokenize_notes(notes, label2id, tiny_tokenizer(), max_length=64)
    batch = MultiLabelCollator(num_labels=len(label2id), pad_token_id=0)([dataset[i] for i in range(3)])
    assert batch["labels"].tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert (batch["labels"].to(torch.int8).numpy() == multi_hot(dataset["label_ids"], 2)).all()
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [len(ids) for ids in dataset["input_ids"]]
    assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)


def test_collator_masks_training_notes_for_the_mlm_loss_the_same_way_for_the_same_batch(tmp_path: Path) -> None:
    notes = read_notes(write_jsonl(tmp_path / "n.jsonl", ROWS), "train")
    label2id = {code: i for i, code in enumerate(build_label_space(notes))}
    tokenizer = tiny_tokenizer()
    features = [tokenize_notes(notes, label2id, tokenizer, max_length=64)[i] for i in range(3)] * 40
    plain = MultiLabelCollator(num_labels=len(label2id), pad_token_id=0)(features)
    collator = MultiLabelCollator(len(label2id), 0, mlm=DataCollatorForLanguageModeling(tokenizer))
    batch = collator(features)
    masked = batch["mlm_labels"] != -100
    assert torch.equal(batch["mlm_labels"][masked], plain["input_ids"][masked])
    special = torch.isin(plain["input_ids"], torch.tensor(tokenizer.all_special_ids))  # [CLS], [SEP], padding
    assert not masked[special].any() and 0.10 < masked[~special].float().mean() < 0.20
    assert torch.equal(batch["labels"], plain["labels"])
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    again = collator(features)  # a resumed run re-collates its batches: same masks
    assert torch.equal(again["input_ids"], batch["input_ids"]) and torch.equal(again["mlm_labels"], batch["mlm_labels"])


def write_dataset_folder(path: Path, splits: dict[str, list[dict]]) -> Path:
    """A folder of data files named by split, as `datasets.load_dataset(folder)` reads it."""
    path.mkdir()
    for split, rows in splits.items():
        write_jsonl(path / f"{split}.jsonl", rows)
    return path


@pytest.mark.parametrize("kind", ["save_to_disk", "data files"])
def test_a_dataset_reads_like_files_into_a_memory_mapped_arrow_table(tmp_path: Path, kind: str) -> None:
    splits = {"train": [{**row, "id": f"t{i}"} for i, row in enumerate(ROWS)], "validation": ROWS}
    if kind == "save_to_disk":
        datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
            str(tmp_path / "saved")
        )
        source = DatasetSource(str(tmp_path / "saved"))
    else:
        source = DatasetSource(str(write_dataset_folder(tmp_path / "folder", splits)))
    assert sorted(source.split_names()) == ["train", "validation"]
    notes = read_notes(source, "validation")
    from_file = read_notes(write_jsonl(tmp_path / "n.jsonl", ROWS), "validation")
    assert (notes.ids, notes.texts, notes.codes) == (list(from_file.ids), list(from_file.texts), list(from_file.codes))
    # On disk in datasets' cache and memory-mapped, not held in Python lists.
    assert isinstance(notes.dataset.data, datasets.table.MemoryMappedTable) and notes.dataset.cache_files
    with pytest.raises(NotesError, match=r"no split 'test' \(splits: train, validation\)"):
        read_notes(source, "test")


def test_bad_rows_of_a_dataset_are_named_by_dataset_split_row_and_field(tmp_path: Path) -> None:
    rows = [{**ROWS[0], "id": SECRET_ID}, ROWS[1], {**ROWS[2], "id": SECRET_ID}]
    folder = write_dataset_folder(tmp_path / "folder", {"train": rows})
    with pytest.raises(NotesError, match=r"folder\[train\]: row 3: field 'id': the same note id as .*folder\[train\]: "
                       "row 1$") as error:
        read_notes(DatasetSource(str(folder)), "train")
    assert SECRET not in str(error.value) and SECRET_ID not in str(error.value)
    with pytest.raises(NotesError, match=r"folder\[train\]: no column 'body' \(columns: id, text, labels\).*--text_col"):
        read_notes(DatasetSource(str(folder)), "train", NoteColumns(text="body"))
    with pytest.raises(NotesError, match="--dataset_name notes.py: a dataset loading script; datasets 4"):
        read_notes(DatasetSource("notes.py"), "train")
    with pytest.raises(NotesError, match=r"--dataset_name .*nowhere: cannot be loaded"):
        read_notes(DatasetSource(str(tmp_path / "nowhere")), "train")


def test_a_dataset_built_from_csv_files_splits_codes_on_semicolons(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    write_csv(tmp_path / "folder" / "train.csv", ROWS)
    assert read_notes(DatasetSource(str(tmp_path / "folder")), "train").codes == [["E11.9", "I10"], ["I10"], []]
