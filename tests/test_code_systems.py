"""Code systems, table by table: spelling, validity and descriptions of each system against the official lists
(ICD-10-CM: CMS tabular list April 2026; ICD-10-PCS: CMS 2024; ICD-9-CM: CMS v32), and what train.py reads."""

import json
import logging
from pathlib import Path

import pytest

from modeling_bertxml import BertXMLConfig
from modeling_bertxml.data.code_systems import (
    CODE_SYSTEMS,
    check_codes,
    code_descriptions,
    code_groups,
    get_code_system,
    warn_local_codes,
)
from modeling_bertxml.data.notes import read_code_texts, read_label_file, read_notes
from modeling_bertxml.data.readers import NotesError


# (system, as written, label)
NORMALISED = [
    ("icd10cm", "e119", "E11.9"),
    ("icd10cm", "S020XXA", "S02.0XXA"),
    ("icd10pcs", "0dtj4zz", "0DTJ4ZZ"),
    ("icd10pcs", " 5A1945Z ", "5A1945Z"),
    ("icd10", "e119", "E11.9"),
    ("icd10", "0dtj4zz", "0DTJ4ZZ"),
    ("icd10", "B2111ZZ", "B2111ZZ"),  # a PCS imaging code, though CM chapters also start with B
    ("icd10", "B20", "B20"),
    ("icd9cm", "401.9", "401.9"),
    ("icd9cm", "40.19", "40.19"),  # the procedure that 401.9 becomes without dots
    ("icd9cm", "v4581", "V45.81"),
    ("icd9cm", "E8786", "E878.6"),
    ("icd9cm", "25000", "250.00"),  # five digits: only a diagnosis has them
    ("icd9cm", "486", "486"),  # three digits: a diagnosis
    ("icd9cm", "38", "38"),  # two digits: a procedure category
    ("any", " LOCAL-17 ", "LOCAL-17"),
    ("any", "e119", "e119"),  # local code sets are used as written
]


@pytest.mark.parametrize("system, raw, label", NORMALISED)
def test_normalize(system, raw, label):
    assert get_code_system(system).normalize(raw) == label


# (system, as written, part of the error)
REJECTED = [
    ("icd10cm", "401.9", "not an ICD-10-CM code"),
    ("icd10pcs", "0DTI4ZZ", "no I or O"),  # PCS has no letters I and O
    ("icd10pcs", "0DTJ4Z", "not an ICD-10-PCS code"),
    ("icd10pcs", "E11.9", "not an ICD-10-PCS code"),
    ("icd10", "401.9", "not an ICD-10-CM or ICD-10-PCS code"),
    ("icd9cm", "4019", "diagnosis 401.9 or procedure 40.19; write the dot"),
    ("icd9cm", "E11.9", "not an ICD-9-CM code"),
    ("icd9cm", "0DTJ4ZZ", "not an ICD-9-CM code"),
    ("any", "  ", "empty"),
]


@pytest.mark.parametrize("system, raw, message", REJECTED)
def test_normalize_rejects(system, raw, message):
    with pytest.raises(ValueError, match=message):
        get_code_system(system).normalize(raw)


# (system, code, problem): None for a usable label; the examples first.
PROBLEMS = [
    ("icd9cm", "401.9", None),
    ("icd9cm", "428.0", None),
    ("icd9cm", "47.09", None),
    ("icd9cm", "V45.81", None),
    ("icd10", "0DTJ4ZZ", None),
    ("icd10", "S020XX", "7th character missing; S02.0XXA/B/D/G/K/S exist"),
    ("icd10cm", "S02.0XX", "7th character missing; S02.0XXA/B/D/G/K/S exist"),
    ("icd10cm", "S020", "not billable; 7th character missing (and placeholder X); S02.0XXA/B/D/G/K/S exist"),
    ("icd10cm", "S020A", "placeholder X missing: S02.0XXA"),
    ("icd10cm", "T3601A", "placeholder X missing: T36.0X1A"),
    ("icd10cm", "S020ZZA", "wrong placeholder: S02.0XXA"),
    ("icd10cm", "T36.0Z1A", "wrong placeholder: T36.0X1A"),
    ("icd10cm", "E11", "not billable"),
    ("icd10cm", "Z99.99", "unknown"),
    ("icd10cm", "XYZ", "malformed"),
    ("icd10pcs", "0DTJ4ZY", "unknown"),
    ("icd10pcs", "0DTJ4Z", "malformed"),
    ("icd9cm", "4019", "ambiguous: diagnosis 401.9 or procedure 40.19; write the dot"),
    ("icd9cm", "401", "not billable"),  # CMS lists 401.0, 401.1, 401.9
    ("icd9cm", "38", "not billable"),
    ("icd9cm", "999.99", "unknown"),
    ("icd9cm", "E11.9", "malformed"),
    ("any", "LOCAL-17", None),
    ("any", "", "malformed"),
]


@pytest.mark.parametrize("system, code, problem", PROBLEMS)
def test_problem(system, code, problem):
    assert get_code_system(system).problem(code) == problem


@pytest.mark.parametrize("system, code", [("icd9cm", "401"), ("icd10cm", "E11")])
def test_allow_non_billable(system, code):
    assert get_code_system(system).problem(code, allow_non_billable=True) is None


# (system, label, official description, kind)
DESCRIBED = [
    ("icd10cm", "E11.9", "Type 2 diabetes mellitus without complications", "diagnoses"),
    ("icd10pcs", "5A1945Z", "Respiratory Ventilation, 24-96 Consecutive Hours", "procedures"),
    ("icd10", "0DTJ4ZZ", "Resection of Appendix, Percutaneous Endoscopic Approach", "procedures"),
    ("icd10", "I10", "Essential (primary) hypertension", "diagnoses"),
    ("icd9cm", "401.9", "Unspecified essential hypertension", "diagnoses"),
    ("icd9cm", "40.19", "Other diagnostic procedures on lymphatic structures", "procedures"),
    ("icd9cm", "96.6", "Enteral infusion of concentrated nutritional substances", "procedures"),
    ("icd9cm", "V58.61", "Long-term (current) use of anticoagulants", "diagnoses"),
    ("any", "401.9", "Unspecified essential hypertension", "diagnoses"),
    ("any", "0DTJ4ZZ", "Resection of Appendix, Percutaneous Endoscopic Approach", "procedures"),
    ("any", "LOCAL-17", None, "local"),
]


@pytest.mark.parametrize("system, code, description, kind", DESCRIBED)
def test_description_and_kind(system, code, description, kind):
    assert get_code_system(system).description(code) == description
    assert get_code_system(system).kind(code) == kind


def test_unknown_code_system_is_refused_by_name_and_by_the_config():
    with pytest.raises(ValueError, match="unknown code system 'icd11'; choose one of icd10cm, icd10pcs"):
        get_code_system("icd11")
    with pytest.raises(ValueError, match="code_system must be one of"):
        BertXMLConfig(code_system="icd11")
    assert BertXMLConfig().code_system == "icd10"
    assert set(CODE_SYSTEMS) == {"icd10cm", "icd10pcs", "icd10", "icd9cm", "any"}


def test_check_codes_counts_icd9_spellings_of_one_code_together():
    report = check_codes([("a.jsonl", 1, ["V4581", "4019"]), ("a.jsonl", 2, ["V45.81", "999.99"])], system="icd9cm")
    assert [(p.code, p.reason, p.line) for p in report.problems] == [
        ("4019", "ambiguous: diagnosis 401.9 or procedure 40.19; write the dot", 1),
        ("999.99", "unknown", 2),
    ]
    assert "not valid, billable ICD-9-CM codes" in str(report)


def test_code_groups_order_diagnoses_procedures_local():
    labels = ["0DTJ4ZZ", "LOCAL-1", "E11.9", "I10"]
    assert code_groups("any", labels) == {"diagnoses": [2, 3], "procedures": [0], "local": [1]}
    assert code_groups("icd10cm", labels[2:]) == {"diagnoses": [0, 1]}


def test_any_warns_once_listing_the_local_codes(caplog):
    with caplog.at_level(logging.WARNING):
        local = warn_local_codes("any", ["WARD-7", "E11.9", "WARD-7", "401.9", "ABC"])
    assert local == ["ABC", "WARD-7"]
    assert len(caplog.records) == 1 and "2 codes are in no standard code system" in caplog.text
    assert "ABC, WARD-7" in caplog.text
    caplog.clear()
    assert warn_local_codes("icd10", ["E11.9", "0DTJ4ZZ"]) == [] and not caplog.records


def _jsonl(path: Path, labels: list[list[str]]) -> Path:
    path.write_text("".join(json.dumps({"text": "note", "labels": codes}) + "\n" for codes in labels))
    return path


def test_read_notes_keeps_icd9_and_procedure_codes(tmp_path):
    """The issue's reproduction: none of these codes is dropped any more in its code system."""
    path = _jsonl(tmp_path / "n.jsonl", [["401.9", "428.0", "47.09"], ["V45.81"]])
    notes = read_notes(path, "train", code_system="icd9cm", strict_codes=True)
    assert notes.codes == [["401.9", "428.0", "47.09"], ["V45.81"]]
    path = _jsonl(tmp_path / "m.jsonl", [["0dtj4zz", "e119"]])
    assert read_notes(path, "train", strict_codes=True).codes == [["0DTJ4ZZ", "E11.9"]]  # icd10, the default


def test_read_notes_reports_ambiguous_icd9_codes_with_their_location(tmp_path):
    path = _jsonl(tmp_path / "n.jsonl", [["401.9"], ["4019", "38.93"]])
    notes = read_notes(path, "train", code_system="icd9cm")
    assert notes.codes == [["401.9"], ["38.93"]]
    assert len(notes.report.codes.problems) == 1
    assert f"{path}:2: '4019' ambiguous" in str(notes.report.codes)


def test_label_file_is_read_in_the_code_system(tmp_path):
    path = tmp_path / "codes.txt"
    path.write_text("401.9\n40.19\nV4581\n")
    assert read_label_file(path, "icd9cm") == ["401.9", "40.19", "V45.81"]
    path.write_text("401.9\n4019\n")
    with pytest.raises(ValueError, match=r"codes.txt:2: '4019' is not a label of --code_system icd9cm: ambiguous"):
        read_label_file(path, "icd9cm")


def test_a_users_code_texts_replace_the_official_ones_of_the_codes_they_list(tmp_path):
    """CodiEsp's codes file: lower-case dotted codes, Spanish then English description, a header."""
    path = tmp_path / "codes.tsv"
    pain = ["Dolor, no clasificado bajo otro concepto", "Pain, unspecified"]
    path.write_text(f"code\tes\ten\nr52\t{pain[0]}\t{pain[1]}\nn44.8\tOtras torsiones\t\n")
    texts = read_code_texts(path, "icd10cm")
    assert texts == {"R52": pain, "N44.8": ["Otras torsiones"]}
    described = code_descriptions(["R52", "I10"], code_system="icd10cm", own=texts)
    assert described["R52"] == texts["R52"]
    assert described["I10"][0] == "Essential (primary) hypertension"  # not listed: the official text
    path.write_text("R52\tDolor\nnot a code\tx\n")
    with pytest.raises(NotesError, match=rf"{path}:2: 'not a code' is not a code of --code_system icd10cm"):
        read_code_texts(path, "icd10cm")


@pytest.mark.parametrize("read", [read_label_file, read_code_texts])
def test_a_code_file_that_cannot_be_read_is_one_error_naming_it(tmp_path, read):
    with pytest.raises(NotesError, match=rf"{tmp_path / 'missing.tsv'}: cannot be read \(No such file or directory\)"):
        read(tmp_path / "missing.tsv", "icd10cm")
    (tmp_path / "latin1.tsv").write_bytes("I10\tHipertensi\xf3n\n".encode("latin-1"))
    with pytest.raises(NotesError, match="latin1.tsv: cannot be read"):
        read(tmp_path / "latin1.tsv", "icd10cm")
