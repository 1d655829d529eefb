"""The synthetic corpus: format, determinism, evidence placement, distractors and a long tail."""

import json
import re
from collections import Counter

import pytest

from modeling_bertxml.data import icd10, synthetic
from modeling_bertxml.data.code_systems import check_codes

SIZES = {"num_train": 120, "num_validation": 15, "num_test": 15}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_corpus(output_dir, seed=3, min_words=500, max_words=700, **SIZES)
    return output_dir


def _records(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def _forms(corpus_dir) -> dict[str, list[str]]:
    rows = (corpus_dir / "descriptions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return {code: forms.split(" | ") for code, _, forms in (row.split("\t") for row in rows)}


def _first_mention(text: str, forms: list[str]) -> int | None:
    """Word index of the first mention of any form, or None."""
    starts = [m.start() for form in forms for m in re.finditer(rf"(?<!\w){re.escape(form)}(?!\w)", text, re.I)]
    return len(text[: min(starts)].split()) if starts else None


def test_files_follow_the_design_format(corpus):
    codes = (corpus / "codes.txt").read_text().split()
    assert len(codes) == 50 and len(set(codes)) == 50
    for split in ("train", "validation", "test"):
        records = _records(corpus / f"{split}.jsonl")
        assert len(records) == SIZES[f"num_{split}"]
        assert all(set(record) == {"id", "text", "labels"} for record in records)
        assert len({record["id"] for record in records}) == len(records)
        assert all(record["labels"] == sorted(record["labels"]) for record in records)
        assert all(set(record["labels"]) <= set(codes) for record in records)
        report = check_codes((split, line, record["labels"]) for line, record in enumerate(records, 1))
        assert report.ok, str(report)
    forms = _forms(corpus)
    assert list(forms) == codes
    assert all(forms[code][0] == icd10.description(code) for code in codes)


def test_notes_are_long_with_sections_and_late_discharge_diagnoses(corpus):
    for record in _records(corpus / "train.jsonl"):
        text = record["text"]
        assert len(text.split()) >= 500
        for heading in ("HISTORY OF PRESENT ILLNESS", "PHYSICAL EXAM", "BRIEF HOSPITAL COURSE", "ASSESSMENT AND PLAN"):
            assert f"{heading}:" in text
        assert len(text[: text.index("DISCHARGE DIAGNOSES:")].split()) >= synthetic.LATE_EVIDENCE_WORD


def test_every_code_is_mentioned_some_only_after_token_512_and_others_are_distractors(corpus):
    forms = _forms(corpus)
    late, distracted = 0, 0
    records = _records(corpus / "train.jsonl")
    for record in records:
        positions = [_first_mention(record["text"], forms[code]) for code in record["labels"]]
        assert None not in positions, record["id"]
        late += sum(position > 512 for position in positions)  # words >= tokens, so these are past token 512
        others = [code for code in forms if code not in record["labels"]]
        distracted += any(_first_mention(record["text"], forms[code]) is not None for code in others)
    assert late >= 0.1 * sum(len(record["labels"]) for record in records)
    assert distracted >= 0.9 * len(records)


def test_code_frequencies_have_a_long_tail(corpus):
    counts = Counter(code for record in _records(corpus / "train.jsonl") for code in record["labels"])
    codes = (corpus / "codes.txt").read_text().split()
    head = sum(counts[code] for code in codes[:5])
    tail = sum(counts[code] for code in codes[-5:])
    assert head > 4 * tail


def test_filler_never_names_a_code():
    codes = synthetic.select_codes(len(synthetic.COMMON_CODES))
    filler = [template for templates in synthetic.FILLER.values() for template in templates]
    filler += synthetic.LAB_PANELS + synthetic.DRUGS
    filler += [finding for _, findings in synthetic.EXAM for finding in findings]
    text = "\n".join(filler)
    named = [(code.code, form) for code in codes for form in code.forms if _first_mention(text, [form]) is not None]
    assert named == []


def test_output_is_deterministic_per_seed_and_split(tmp_path):
    small = dict(num_train=5, num_validation=3, num_test=3, num_codes=20, min_words=500, max_words=600)
    first = synthetic.generate_corpus(tmp_path / "a", seed=1, **small)
    again = synthetic.generate_corpus(tmp_path / "b", seed=1, **small)
    other = synthetic.generate_corpus(tmp_path / "c", seed=2, **small)
    more_train = synthetic.generate_corpus(tmp_path / "d", seed=1, **{**small, "num_train": 8})
    for name in ("train", "test", "codes", "descriptions"):
        assert first[name].read_bytes() == again[name].read_bytes()
    assert first["train"].read_bytes() != other["train"].read_bytes()
    assert first["test"].read_bytes() == more_train["test"].read_bytes()  # each split has its own random stream


def test_rare_codes_come_from_the_cms_list_beyond_the_common_ones():
    codes = synthetic.select_codes(len(synthetic.COMMON_CODES) + 10, seed=0)
    rare = codes[len(synthetic.COMMON_CODES) :]
    common_categories = {code[:3] for code, _ in synthetic.COMMON_CODES}
    assert len(rare) == 10 and all(icd10.is_billable(code.code) for code in rare)
    assert not {code.code[:3] for code in rare} & common_categories
    all_forms = [form.lower() for code in codes for form in code.forms]
    assert len(all_forms) == len(set(all_forms))  # a surface form names one code only


@pytest.mark.parametrize(
    "term, expected",
    [
        ("Pneumonia, unspecified organism", "Pneumonia"),
        ("Unspecified atrial fibrillation", "atrial fibrillation"),
        ("Cirrhosis (of liver) NOS", "Cirrhosis"),
        ("Sodium [Na] deficiency", "Sodium deficiency"),
        ("Urinary tract infection, site not specified", "Urinary tract infection"),
    ],
)
def test_clean_term(term, expected):
    assert synthetic.clean_term(term) == expected


def test_cli_writes_the_corpus(tmp_path, capsys):
    synthetic.main(["--output_dir", str(tmp_path), "--num_train", "4", "--num_validation", "2", "--num_test", "2",
                    "--num_codes", "10", "--seed", "0"])
    assert "train: 4 notes" in capsys.readouterr().out
    assert len((tmp_path / "codes.txt").read_text().split()) == 10


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="min_words"):
        synthetic.generate_corpus(tmp_path, min_words=900, max_words=800)
    with pytest.raises(ValueError, match="num_codes"):
        synthetic.select_codes(0)


def test_a_length_notes_cannot_have_is_refused_and_longer_notes_are_reported(tmp_path, capsys):
    small = ["--output_dir", str(tmp_path), "--num_train", "6", "--num_validation", "2", "--num_test", "2",
             "--num_codes", "10"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"^error: .*max_words 200.*after word 520.*--late_fraction 0"):
        synthetic.main([*small, "--max_words", "200"])
    with pytest.raises(SystemExit, match=r"^error: need 0 < min_words <= max_words, got 900 and 800$"):
        synthetic.main([*small, "--min_words", "900", "--max_words", "800"])
    assert not any(tmp_path.iterdir())  # refused before anything was written

    # Without late evidence nothing pads a note to word 520, but its sections and mentions still take more than 200
    # words: said, with how long the notes are.
    synthetic.main([*small, "--min_words", "100", "--max_words", "200", "--late_fraction", "0"])
    out = capsys.readouterr().out
    lengths = [len(json.loads(line)["text"].split()) for line in (tmp_path / "train.jsonl").open()]
    assert f"6 of 6 notes are longer than --max_words 200 (up to {max(lengths)} words)" in out
    assert min(lengths) < 500  # no late-evidence padding


def test_hard_preset_sets_the_benchmark_sizes_and_flags_still_override_it() -> None:
    hard = synthetic.parse_args(["--preset", "hard"])
    assert (hard.num_train, hard.num_validation, hard.num_test, hard.num_codes) == (3000, 500, 1000, 300)
    assert synthetic.parse_args(["--preset", "hard", "--num_codes", "120"]).num_codes == 120
    assert synthetic.parse_args([]).num_codes == 50  # the demo corpus stays the default
