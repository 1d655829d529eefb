"""The one reader, fed random bytes, rows and types: it reads them or raises a NotesError that names the file (and,
for a bad row, its line), never another exception, and never quotes a note or an id."""

import csv
import gzip
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modeling_bertxml.data.notes import read_notes
from modeling_bertxml.data.readers import NotesError, iter_texts

SECRET = "Zorblatt"  # stands for PHI: in every generated note and id, and never in an error message
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=6)
any_text = st.text(st.characters(exclude_categories=[]), max_size=30)  # lone surrogates (category Cs) included
secret_text = any_text.map(lambda text: f"{SECRET} {text}")
# A note or an id is a secret-bearing string, or a value of any other JSON type.
secret_values = secret_text | values.map(lambda value: [SECRET, value]) | values
labels = st.lists(st.sampled_from(["E11.9", "I10", "e119", "XYZ", ""]) | values, max_size=4) | values
rows = st.lists(
    st.fixed_dictionaries({}, optional={"text": secret_values, "labels": labels, "id": secret_values}) | values,
    max_size=6,
)
# Bytes that start like each format, then go wrong anywhere.
prefixes = st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\x1f\x8b\x08\x00", b"PAR1", b'{"text": "', b"text,"])
random_bytes = st.builds(lambda prefix, tail: prefix + tail, prefixes, st.binary(max_size=200))


def read_all(path: Path) -> None:
    """Both entry points of the reader: raw text (tokenizer, MLM, predict) and labelled notes (train.py)."""
    for read in (lambda: list(iter_texts([str(path)])), lambda: read_notes(path, "train")):
        try:
            read()
        except NotesError as error:
            message = str(error)
            assert str(path) in message or message.startswith("empty corpus"), message
            assert SECRET not in message, message


@SETTINGS
@given(content=random_bytes, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet", ".jsonl.gz"]))
@example(content=b"\r\xc2\x80", suffix=".csv")  # a bare carriage return in the header line
def test_random_bytes_are_read_or_refused_with_a_notes_error(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"notes{suffix}"
        path.write_bytes(content)
        read_all(path)


@SETTINGS
@given(rows=rows)
def test_random_json_rows_are_refused_with_file_line_and_never_the_note(rows: list) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "notes.jsonl"
        # ensure_ascii: a lone surrogate becomes a "\ud800" escape, as other tools write it.
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        read_all(path)
        for read in (lambda: list(iter_texts([str(path)])), lambda: read_notes(path, "train")):
            try:
                read()
            except NotesError as error:
                # A row's error gives its line; a file-wide one (no notes, missing column) names the file alone.
                line = re.search(rf"{re.escape(str(path))}:(\d+):", str(error))
                assert line is None or 1 <= int(line.group(1)) <= len(rows)


@SETTINGS
@given(rows=st.lists(st.lists(secret_text | any_text, max_size=4), max_size=5),
       header=st.sampled_from([["text", "labels", "id"], ["text", "labels"], ["id", "note"]]),
       compressed=st.booleans())
def test_random_csv_cells_are_read_or_refused_with_a_notes_error(rows: list, header: list, compressed: bool) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8", errors="surrogatepass")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("notes.csv.gz" if compressed else "notes.csv")
        path.write_bytes(gzip.compress(data) if compressed else data)
        read_all(path)
