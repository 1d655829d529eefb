"""Raw notes for the tokenizer and MLM: every accepted format gives the same notes, streamed or not; bad input is a
NotesError naming the file (and line), never the note."""

import json
import re

import datasets
import pytest

from modeling_bertxml.data.readers import NotesError, iter_texts, load_text_dataset

NOTES = ["Chest pain, MRN 4829113.", "Seen 2019-03-04 for dyspnea", "Type 2 diabetes; start metformin"]


def texts_of(files, streaming, **kwargs) -> list[str]:
    dataset = load_text_dataset(files, streaming=streaming, **kwargs)
    assert isinstance(dataset, datasets.IterableDataset if streaming else datasets.Dataset)
    texts = [row["text"] for row in dataset]
    assert texts == list(iter_texts(files, **kwargs))
    return texts


def write_txt(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_table(path, rows: dict) -> str:
    """A JSONL, CSV or Parquet file (by `path`'s extension) holding `rows` (column -> values)."""
    table = datasets.Dataset.from_dict(rows)
    {".jsonl": lambda p: table.to_json(p, lines=True), ".csv": lambda p: table.to_csv(p, index=False),
     ".parquet": table.to_parquet}[path.suffix](str(path))
    return str(path)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("extension", [".jsonl", ".csv", ".parquet"])
def test_tables_read_the_text_column_and_skip_empty_notes(tmp_path, extension, streaming):
    rows = {"id": [1, 2, 3, 4], "body": [NOTES[0], None, NOTES[1], NOTES[2]]}
    path = write_table(tmp_path / f"notes{extension}", rows)
    assert texts_of([path], streaming, text_column="body") == NOTES


@pytest.mark.parametrize("streaming", [False, True])
def test_txt_is_one_note_per_line_and_skips_blank_lines(tmp_path, streaming):
    path = write_txt(tmp_path / "notes.txt", [NOTES[0], "", "   ", NOTES[1], NOTES[2]])
    assert texts_of([path], streaming) == NOTES


@pytest.mark.parametrize("streaming", [False, True])
def test_folder_of_txt_is_one_note_per_file(tmp_path, streaming):
    (tmp_path / "notes" / "2019").mkdir(parents=True)
    write_txt(tmp_path / "notes" / "a.txt", ["HPI: chest pain", "Plan: troponin"])
    write_txt(tmp_path / "notes" / "2019" / "b.txt", [NOTES[1]])
    (tmp_path / "notes" / "readme.md").write_text("not a note")
    texts = texts_of([str(tmp_path / "notes")], streaming)
    assert sorted(text.strip() for text in texts) == sorted(["HPI: chest pain\nPlan: troponin", NOTES[1]])


@pytest.mark.parametrize("streaming", [False, True])
def test_saved_dataset_and_dataset_dict_split(tmp_path, streaming):
    datasets.Dataset.from_dict({"text": NOTES}).save_to_disk(str(tmp_path / "single"))
    splits = {"train": NOTES[:1], "validation": NOTES[1:]}
    datasets.DatasetDict({name: datasets.Dataset.from_dict({"note": notes}) for name, notes in splits.items()}
                         ).save_to_disk(str(tmp_path / "dict"))
    assert texts_of([str(tmp_path / "single")], streaming) == NOTES
    assert texts_of([str(tmp_path / "dict")], streaming, text_column="note", split="validation") == NOTES[1:]


@pytest.mark.parametrize("streaming", [False, True])
def test_globs_and_mixed_formats_concatenate_in_order(tmp_path, streaming):
    write_txt(tmp_path / "part-0.txt", NOTES[:1])
    write_txt(tmp_path / "part-1.txt", NOTES[1:2])
    write_txt(tmp_path / "part-2-blank.txt", [""])
    jsonl = write_table(tmp_path / "more.jsonl", {"text": NOTES[2:]})
    assert texts_of([str(tmp_path / "part-*.txt"), jsonl], streaming) == NOTES


@pytest.mark.parametrize("make_files, message", [
    (lambda d: [str(d / "absent.jsonl")], "absent.jsonl: no such file or folder"),
    (lambda d: [str(d / "*.parquet")], "*.parquet: no file matches this pattern"),
    (lambda d: [write_txt(d / "notes.docx", NOTES)], "notes.docx: unknown file type '.docx'"),
    (lambda d: [write_table(d / "notes.csv", {"id": [1], "body": ["x"]})],
     "notes.csv: no column 'text' (columns: id, body)"),
    (lambda d: [write_txt(d / "a.txt", [""]), write_table(d / "b.csv", {"text": [None], "id": [1]})],
     "empty corpus: no non-blank note in"),
    (lambda d: [write_txt(d / "empty.jsonl", [])], "empty corpus: no non-blank note in"),
    (lambda d: [str(d)], "holds no .txt files and is not a dataset saved with save_to_disk"),
])
@pytest.mark.parametrize("streaming", [False, True])
def test_bad_input_raises_an_error_naming_the_file(tmp_path, make_files, message, streaming):
    with pytest.raises(NotesError, match=re.escape(message)):
        load_text_dataset(make_files(tmp_path), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_bad_row_after_good_ones_names_file_and_line_but_not_the_note(tmp_path, streaming):
    rows = [{"text": NOTES[0]}] * 10 + [{"text": [NOTES[1]]}]  # line 11 holds a list
    path = write_txt(tmp_path / "notes.jsonl", [json.dumps(row) for row in rows])
    with pytest.raises(NotesError, match=re.escape("notes.jsonl:11: field 'text': the note is a list")) as error:
        list(load_text_dataset([path], streaming=streaming))
    assert NOTES[1] not in str(error.value)


def test_missing_split_and_non_string_text_are_named(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": NOTES})}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=re.escape("dict: no split 'test' (splits: train)")):
        load_text_dataset([str(tmp_path / "dict")], split="test")
    path = write_table(tmp_path / "codes.jsonl", {"text": [NOTES[0]], "code": [4829113]})
    with pytest.raises(NotesError, match=re.escape("codes.jsonl:1: field 'code': the note is a int")) as error:
        list(iter_texts([path], text_column="code"))
    assert "4829113" not in str(error.value)


def test_a_changed_file_is_read_again_not_taken_from_the_cache(tmp_path):
    path = write_txt(tmp_path / "notes.txt", NOTES[:1])
    assert texts_of([path], streaming=False) == NOTES[:1]
    write_txt(tmp_path / "notes.txt", NOTES)
    assert texts_of([path], streaming=False) == NOTES
