"""CodiEsp preparation on a tiny fake release with the real layout: split folders, D/P/X files, text_files(_en)/."""

import json

import pytest

from data import prepare_codiesp
from modeling_bertxml.data.code_systems import get_code_system
from modeling_bertxml.data.notes import read_notes

CASE_1, CASE_2, CASE_3 = "S0004-06142005000700014-1", "S0004-06142005000900013-1", "S0211-69952009000500014-1"
DEV_CASE, TEST_CASE = "S1130-01082008000400014-1", "S0365-66912006000600009-1"
# split -> (D lines, P lines, {article: (Spanish text, English text)}); CASE_3 has no code, CASE_1 one code twice.
RELEASE = {
    "train": (
        [(CASE_2, "r52"), (CASE_1, "n44.8"), (CASE_1, "t81.4xx"), (CASE_1, "z20.818"), (CASE_1, "n44.8")],
        [(CASE_1, "bw03zzz"), (CASE_1, "0dt")],  # 0dt: a truncated procedure code, kept for train.py to report
        {
            CASE_1: ("Varón de 37 años.\nDolor   testicular.\n", "Man aged 37.\nTesticular  pain.\n"),
            CASE_2: ("Dolor.\n", "Pain.\n"),
            CASE_3: ("Sin códigos.\n", "No codes.\n"),
        },
    ),
    "dev": ([(DEV_CASE, "r52")], [(DEV_CASE, "0dtj4zz")], {DEV_CASE: ("Apendicitis.\n", "Appendicitis.\n")}),
    "test": ([(TEST_CASE, "n44.8")], [], {TEST_CASE: ("Orquitis.\n", "Orchitis.\n")}),
}


@pytest.fixture
def release(tmp_path):
    """final_dataset_v4_to_publish/ as unzipped from Zenodo 3837305, three splits, a handful of reports."""
    root = tmp_path / "final_dataset_v4_to_publish"
    for split, (diagnoses, procedures, texts) in RELEASE.items():
        folder = root / split
        for language, name in enumerate(("text_files", "text_files_en")):
            (folder / name).mkdir(parents=True)
            for article, text in texts.items():
                (folder / name / f"{article}.txt").write_text(text[language], encoding="utf-8")
        for letter, rows in (("D", diagnoses), ("P", procedures)):
            (folder / f"{split}{letter}.tsv").write_text("".join(f"{a}\t{c}\n" for a, c in rows), encoding="utf-8")
        (folder / f"{split}X.tsv").write_text("")  # the evidence file is not read
    return root


def _run(release, output_dir, *flags) -> dict[str, dict[str, dict]]:
    prepare_codiesp.main(["--release_dir", str(release), "--output_dir", str(output_dir), *flags])
    splits = {}
    for path in sorted(output_dir.glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        splits[path.stem] = {record["id"]: record for record in records}
    return splits


def test_spanish_diagnoses(release, tmp_path, capsys):
    splits = _run(release, tmp_path / "es", "--language", "es", "--codes", "D")
    assert list(splits) == ["test", "train", "validation"]
    assert list(splits["train"]) == [CASE_1, CASE_2]  # sorted by id; CASE_3 has no code and is dropped
    first = splits["train"][CASE_1]
    assert first["text"] == "Varón de 37 años. Dolor testicular."  # one line, spaces folded
    assert first["labels"] == ["N44.8", "T81.4XX", "Z20.818"]  # the release's order, each once, spelled as icd10cm
    assert splits["validation"][DEV_CASE]["labels"] == ["R52"]
    assert "Varón" in (tmp_path / "es" / "train.jsonl").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    out = capsys.readouterr().out
    assert "| train | 2 | 1 | 4 | 4 | 1 |" in out  # notes, dropped, codes, occurrences, codes ICD-10-CM lacks
    assert "trainD.tsv:3: 't81.4xx' unknown (1x)" in out
    assert "python train.py --code_system icd10cm --train_file" in out


def test_english_procedures(release, tmp_path):
    splits = _run(release, tmp_path / "en", "--language", "en", "--codes", "P")
    assert list(splits["train"]) == [CASE_1]  # CASE_2 has no procedure
    assert splits["train"][CASE_1]["text"] == "Man aged 37. Testicular pain."
    assert splits["train"][CASE_1]["labels"] == ["BW03ZZZ", "0DT"]  # 0DT: as written, upper case
    assert splits["validation"][DEV_CASE]["labels"] == ["0DTJ4ZZ"]
    assert splits["test"] == {}  # the test report has no procedure: an empty split, written all the same


def test_both_kinds_read_back_as_train_py_reads_them(release, tmp_path, capsys):
    splits = _run(release, tmp_path / "both", "--codes", "both")
    assert splits["train"][CASE_1]["labels"] == ["N44.8", "T81.4XX", "Z20.818", "BW03ZZZ", "0DT"]
    assert "--code_system icd10 " in capsys.readouterr().out
    # train.py's reader keeps every code as written here; only the truncated procedure code is malformed (dropped
    # there, and reported)
    notes = read_notes(str(tmp_path / "both" / "train.jsonl"), "train", code_system="icd10")
    assert set(notes.code_counts) == {"N44.8", "T81.4XX", "Z20.818", "BW03ZZZ", "R52"}
    malformed = [problem.code for problem in notes.report.codes.problems if problem.reason == "malformed"]
    assert malformed == ["0DT"]
    # the shared English CodiEsp files spell codes without their dot: the same labels
    assert get_code_system("icd10cm").normalize("T814XX") == "T81.4XX"


def test_held_back_test_split_can_be_left_out(release, tmp_path):
    splits = _run(release, tmp_path / "no-test", "--splits", "train", "dev")
    assert list(splits) == ["train", "validation"]


def test_a_missing_text_file_is_named(release, tmp_path):
    (release / "dev" / "text_files_en" / f"{DEV_CASE}.txt").unlink()
    with pytest.raises(SystemExit, match=rf"dev/text_files_en/{DEV_CASE}\.txt: no such file, though the dev split"):
        _run(release, tmp_path / "out", "--language", "en")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_missing_text_folder_is_named(release, tmp_path):
    for text in (release / "test" / "text_files").iterdir():
        text.unlink()
    (release / "test" / "text_files").rmdir()
    with pytest.raises(SystemExit, match=r"test/text_files: no such folder \(the test split's texts for --language es"):
        _run(release, tmp_path / "out")
    _run(release, tmp_path / "out", "--language", "en")  # the English texts are still there


def test_a_malformed_code_line_is_named(release, tmp_path):
    (release / "train" / "trainD.tsv").write_text(f"{CASE_1}\tn44.8\n{CASE_1} r52\n")
    with pytest.raises(SystemExit, match=r"trainD\.tsv:2: expected articleID<TAB>code"):
        _run(release, tmp_path / "out")


def _codes_file(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "codiesp-D_codes.tsv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_code_descriptions_in_the_notes_language_read_back_as_train_py_reads_them(release, tmp_path, capsys):
    from modeling_bertxml.data.notes import read_code_texts

    codes = _codes_file(tmp_path, [
        "n44.8\tOtras enfermedades no inflamatorias de testículo\tOther noninflammatory disorders of testis",
        "r52\tDolor, no especificado\tPain, unspecified",
        "z20.818\tContacto con enfermedad bacteriana transmisible\t",  # no English description in the list
        "0dt\tResección de tracto gastrointestinal\tResection of gastrointestinal tract",  # not a diagnosis code
    ])  # fmt: skip
    for language, expected in (("es", {"N44.8": ["Otras enfermedades no inflamatorias de testículo"],
                                       "R52": ["Dolor, no especificado"],
                                       "Z20.818": ["Contacto con enfermedad bacteriana transmisible"]}),
                               ("en", {"N44.8": ["Other noninflammatory disorders of testis"],
                                       "R52": ["Pain, unspecified"]})):  # fmt: skip
        out = tmp_path / language
        _run(release, out, "--language", language, "--codes_file", codes)
        assert read_code_texts(out / "code_descriptions.tsv", "icd10cm") == expected  # spelled as the labels
        assert f"--code_descriptions {out / 'code_descriptions.tsv'}" in capsys.readouterr().out


def test_a_malformed_codes_file_is_named_and_nothing_is_written(release, tmp_path):
    codes = _codes_file(tmp_path, ["r52\tDolor, no especificado\tPain, unspecified", "n44.8 Otras enfermedades"])
    with pytest.raises(SystemExit, match=r"codiesp-D_codes\.tsv:2: expected code<TAB>Spanish<TAB>English"):
        _run(release, tmp_path / "out", "--codes_file", codes)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"missing\.tsv: no such file \(CodiEsp's codiesp-D_codes\.tsv"):
        _run(release, tmp_path / "out", "--codes_file", str(tmp_path / "missing.tsv"))


def test_the_code_lists_beside_the_release_are_found_without_the_flag(release, tmp_path, capsys):
    _run(release, tmp_path / "none", "--language", "es")
    assert not (tmp_path / "none" / "code_descriptions.tsv").exists()  # none there: no file, as before
    (release.parent / "codiesp_codes").mkdir()
    (release.parent / "codiesp_codes" / "codiesp-D_codes.tsv").write_text("r52\tDolor, no especificado\tPain\n")
    _run(release, tmp_path / "es", "--language", "es")
    assert (tmp_path / "es" / "code_descriptions.tsv").read_text() == "code\tdescription\nR52\tDolor, no especificado\n"
    assert f"--code_descriptions {tmp_path / 'es' / 'code_descriptions.tsv'}" in capsys.readouterr().out
    _run(release, tmp_path / "both", "--codes", "both")  # the procedure list is missing: none is used
    assert not (tmp_path / "both" / "code_descriptions.tsv").exists()
