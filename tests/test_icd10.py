"""ICD-10-CM helpers, checked against codes and descriptions of the CMS tabular list (April 2026)."""

import pytest

from modeling_bertxml.data import icd10
from modeling_bertxml.data.code_systems import check_codes


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("e119", "E11.9"),
        ("E11.9", "E11.9"),
        (" i10 ", "I10"),
        ("S72001A", "S72.001A"),
        ("t360x1a", "T36.0X1A"),
        ("qa00101", "QA0.0101"),
    ],
)
def test_normalize_code(raw, expected):
    assert icd10.normalize_code(raw) == expected


@pytest.mark.parametrize("raw", ["401.9", "", "E1", "E11.12345", "E11-9", "XYZ"])
def test_normalize_code_rejects_non_icd10(raw):
    with pytest.raises(ValueError, match="not an ICD-10-CM code"):
        icd10.normalize_code(raw)


# (code, CMS description, billable) straight from the tabular list.
CMS_CODES = [
    ("E11.9", "Type 2 diabetes mellitus without complications", True),
    ("I10", "Essential (primary) hypertension", True),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified", True),
    ("S72.001A", "Fracture of unspecified part of neck of right femur, initial encounter for closed fracture", True),
    ("B20", "Human immunodeficiency virus [HIV] disease", True),
    ("QA0.0101", "SCN2A-related neurodevelopmental disorder", True),
    ("E11", "Type 2 diabetes mellitus", False),
    ("S72.001", "Fracture of unspecified part of neck of right femur", False),
]


@pytest.mark.parametrize("code, text, billable", CMS_CODES)
def test_cms_descriptions_and_billability(code, text, billable):
    assert icd10.is_valid(code)
    assert icd10.description(code) == text
    assert icd10.description(code.replace(".", "").lower()) == text
    assert icd10.is_billable(code) is billable


@pytest.mark.parametrize("code", ["Z99.99", "E11.99", "401.9", "U99", "4", "E08-E13"])
def test_unknown_codes_blocks_and_chapters_are_not_valid_codes(code):
    assert not icd10.is_valid(code)
    assert not icd10.is_billable(code)


def test_inclusion_terms_come_from_the_cms_list():
    assert "Chronic obstructive airway disease NOS" in icd10.inclusion_terms("J44.9")
    assert "high blood pressure" in icd10.inclusion_terms("I10")
    assert icd10.inclusion_terms("E11.9") == []


def test_hierarchy_walks_category_block_chapter():
    assert icd10.parent("E11.9") == "E11"
    assert icd10.parent("E11") == "E08-E13"
    assert icd10.parent("E08-E13") == "4"
    assert icd10.parent("4") is None
    assert icd10.ancestors("e1165") == ["E11.6", "E11", "E08-E13", "4"]
    assert icd10.category("S72.001A") == "S72"
    assert icd10.block("S72.001A") == "S70-S79"
    assert icd10.chapter("S72.001A") == "19"
    assert icd10.description(icd10.chapter("E11.9")) == "Endocrine, nutritional and metabolic diseases (E00-E89)"
    assert icd10.description("E08-E13") == "Diabetes mellitus (E08-E13)"


def test_hierarchy_of_unknown_code_raises():
    with pytest.raises(ValueError, match="Z99.99"):
        icd10.ancestors("Z99.99")
    with pytest.raises(ValueError, match="not a code"):
        icd10.block("E08-E13")


def test_billable_codes_are_the_leaves_of_the_tabular_list():
    codes = icd10.billable_codes()
    assert len(codes) == len(set(codes)) == 74_719
    assert {"E11.9", "I10", "B20", "S72.001A"} <= set(codes)
    assert "E11" not in codes
    assert all(icd10.normalize_code(code) == code for code in codes)
    assert all(icd10.is_billable(code) for code in codes[::500])


def test_check_codes_reports_counts_and_first_location():
    records = [
        ("train.jsonl", 1, ["E11.9", "I10"]),
        ("train.jsonl", 2, ["e11", "401.9", "I10"]),
        ("train.jsonl", 3, ["E11", "Z99.99"]),
        ("validation.jsonl", 1, ["z9999"]),
    ]
    report = check_codes(records)
    assert (report.num_records, report.num_codes, report.num_bad) == (4, 8, 5)
    assert not report.ok
    by_code = {problem.code: problem for problem in report.problems}
    assert set(by_code) == {"e11", "401.9", "Z99.99"}
    assert (by_code["e11"].reason, by_code["e11"].count, by_code["e11"].line) == ("not billable", 2, 2)
    assert (by_code["401.9"].reason, by_code["401.9"].file) == ("malformed", "train.jsonl")
    assert (by_code["Z99.99"].reason, by_code["Z99.99"].count) == ("unknown", 2)
    assert report.problems[0].count == 2
    message = str(report)
    assert "train.jsonl:2: '401.9' malformed (1 occurrence)" in message
    assert "train.jsonl:3: 'Z99.99' unknown (2 occurrences)" in message


def test_check_codes_can_allow_non_billable_codes():
    report = check_codes([("notes.csv", 7, ["E11", "I10"])], allow_non_billable=True)
    assert report.ok
    assert "all 2 codes in 1 records" in str(report)
