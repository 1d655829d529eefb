"""MIMIC preparation on small fake tables with the real MIMIC-III / MIMIC-IV column names and file layout."""

import json

import pandas as pd
import pytest

from data import prepare_mimic

MIMIC3_ADMISSIONS = list(range(1001, 1016))  # 1014 has only a rare code; 1016 has a summary but no codes


def _diagnoses3(hadm_id: int) -> list[str]:
    if hadm_id == 1014:
        return ["E8786"]
    codes = ["4019"] + (["4280"] if hadm_id <= 1012 else []) + (["V5861"] if hadm_id <= 1003 else [])
    return codes + (["E8786", "4019"] if hadm_id == 1001 else [])  # a second rare code and a duplicate row


@pytest.fixture
def mimic3_dir(tmp_path):
    directory = tmp_path / "mimic-iii-clinical-database-1.4"
    directory.mkdir()
    notes = [
        (hadm_id - 1000, hadm_id, "Discharge summary", "Report", f"Admission {hadm_id}: Pt is 65 y/o with CHF.")
        for hadm_id in MIMIC3_ADMISSIONS + [1016]
    ]
    notes += [
        (1, 1001, "Discharge summary", "Addendum", "Addendum: follow-up in 2 weeks."),
        (1, 1001, "Nursing", "Nursing Progress Note", "nursing note about the night"),
        (99, None, "Discharge summary", "Report", "summary without an admission"),
    ]
    noteevents = pd.DataFrame(notes, columns=["SUBJECT_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "TEXT"])
    noteevents.insert(0, "ROW_ID", range(1, len(noteevents) + 1))
    noteevents.insert(3, "CHARTDATE", "2150-01-01")
    noteevents.to_csv(directory / "NOTEEVENTS.csv.gz", index=False)
    for name, codes_of in (("DIAGNOSES_ICD", _diagnoses3), ("PROCEDURES_ICD", lambda h: ["3893"] if h <= 1011 else [])):
        rows = [(h - 1000, h, seq, code) for h in MIMIC3_ADMISSIONS for seq, code in enumerate(codes_of(h), 1)]
        rows.append((1, 1001, 9, None))  # MIMIC has admissions with an empty code
        table = pd.DataFrame(rows, columns=["SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"])
        table.insert(0, "ROW_ID", range(1, len(table) + 1))
        table.to_csv(directory / f"{name}.csv.gz", index=False)
    splits = {"train": [*range(1001, 1011), 1016, 9999], "dev": [1011, 1012], "test": [1013, 1014, 1015]}
    for split, ids in splits.items():
        (tmp_path / f"{split}_full_hadm_ids.csv").write_text("".join(f"{hadm_id}\n" for hadm_id in ids))
    return directory


@pytest.fixture
def mimic4_dirs(tmp_path):
    hosp, note = tmp_path / "mimiciv" / "2.2" / "hosp", tmp_path / "mimic-iv-note" / "2.2" / "note"
    hosp.mkdir(parents=True)
    note.mkdir(parents=True)
    diagnoses, procedures, notes = [], [], []
    for hadm_id in range(2001, 2019):  # 2001-2012 are coded in ICD-10, 2013-2018 in ICD-9
        icd10 = hadm_id <= 2012
        codes = ["I10"] + (["E119"] if hadm_id <= 2010 else []) + (["J189"] if hadm_id <= 2002 else [])
        for seq, code in enumerate(codes if icd10 else ["4019"], 1):
            diagnoses.append((hadm_id - 2000, hadm_id, seq, code, 10 if icd10 else 9))
        if hadm_id <= 2010 or hadm_id >= 2013:
            procedure = ("0DTJ4ZZ", 10) if icd10 else ("3893", 9)  # ICD-9 procedure 38.93, not diagnosis 389.3
            procedures.append((hadm_id - 2000, hadm_id, 1, "2180-01-02", *procedure))
        notes.append((f"{hadm_id}-DS-1", hadm_id - 2000, hadm_id, "DS", 1, "2180-01-03", "2180-01-03",
                      f"Discharge summary of {hadm_id}. BP 120/80."))
    notes.append(notes[0])  # a repeated note is kept once
    pd.DataFrame(diagnoses, columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]).to_csv(
        hosp / "diagnoses_icd.csv.gz", index=False
    )
    procedure_columns = ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"]
    pd.DataFrame(procedures, columns=procedure_columns).to_csv(hosp / "procedures_icd.csv", index=False)  # unzipped
    columns = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
    pd.DataFrame(notes, columns=columns).to_csv(note / "discharge.csv.gz", index=False)
    split = ["train"] * 8 + ["val"] * 2 + ["test"] * 2 + ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    pd.DataFrame({"_id": range(2001, 2019), "split": split}).to_feather(tmp_path / "mimiciv_icd10_split.feather")
    return tmp_path / "mimiciv" / "2.2", tmp_path / "mimic-iv-note" / "2.2", tmp_path / "mimiciv_icd10_split.feather"


def _read(output_dir, split):
    return {record["id"]: record for record in map(json.loads, (output_dir / f"{split}.jsonl").open())}


def _run_mimic3(mimic3_dir, output_dir, dataset, *extra):
    root = mimic3_dir.parent
    prepare_mimic.main([
        "--dataset", dataset, "--mimic_dir", str(mimic3_dir), "--output_dir", str(output_dir),
        "--train_ids", str(root / "train_full_hadm_ids.csv"), "--validation_ids", str(root / "dev_full_hadm_ids.csv"),
        "--test_ids", str(root / "test_full_hadm_ids.csv"), *extra,
    ])
    return {split: _read(output_dir, split) for split in ("train", "validation", "test")}


@pytest.mark.parametrize(
    "code, is_diagnosis, expected",
    [("4019", True, "401.9"), ("E8786", True, "E878.6"), ("E879", True, "E879"), ("V5861", True, "V58.61"),
     ("486", True, "486"), ("3893", False, "38.93"), ("966", False, "96.6")],
)
def test_format_icd9(code, is_diagnosis, expected):
    assert prepare_mimic.format_icd9(code, is_diagnosis) == expected


def test_format_icd10_diagnoses_get_a_dot_and_procedures_do_not():
    assert prepare_mimic.format_code("E119", 10, True) == "E11.9"
    assert prepare_mimic.format_code("I10", 10, True) == "I10"  # no trailing dot
    assert prepare_mimic.format_code("0DTJ4ZZ", 10, False) == "0DTJ4ZZ"


def test_preprocess_text_follows_edin_et_al():
    assert prepare_mimic.preprocess_text("Pt is 65 y/o, BP 120/80.\nHx: CHF, B12 def.") == "pt is y o bp hx chf b12 def"


def test_mimiciii_full_keeps_discharge_summaries_and_every_code(mimic3_dir, tmp_path):
    splits = _run_mimic3(mimic3_dir, tmp_path / "full", "mimiciii_full", "--keep_raw_text")
    assert sorted(splits["train"]) == [str(hadm_id) for hadm_id in range(1001, 1011)]
    assert sorted(splits["validation"]) == ["1011", "1012"]
    assert sorted(splits["test"]) == ["1013", "1014", "1015"]
    first = splits["train"]["1001"]
    assert first["text"] == "Admission 1001: Pt is 65 y/o with CHF. Addendum: follow-up in 2 weeks."
    assert first["labels"] == ["38.93", "401.9", "428.0", "E878.6", "V58.61"]
    assert splits["test"]["1014"]["labels"] == ["E878.6"]
    codes = (tmp_path / "full" / "codes.txt").read_text().split()
    assert codes == ["38.93", "401.9", "428.0", "V58.61", "E878.6"]  # train counts 10, 10, 10, 3, 1


def test_mimiciii_50_keeps_only_mullenbach_codes(mimic3_dir, tmp_path):
    splits = _run_mimic3(mimic3_dir, tmp_path / "top50", "mimiciii_50")
    assert "1014" not in splits["test"]  # its only code is not in the top 50
    assert splits["train"]["1001"]["labels"] == ["38.93", "401.9", "428.0", "V58.61"]
    assert splits["train"]["1001"]["text"] == "admission pt is y o with chf addendum follow up in weeks"


def test_mimiciii_clean_drops_codes_with_fewer_than_10_occurrences(mimic3_dir, tmp_path):
    splits = _run_mimic3(mimic3_dir, tmp_path / "clean", "mimiciii_clean")
    labels = {code for split in splits.values() for record in split.values() for code in record["labels"]}
    assert labels == {"38.93", "401.9", "428.0"}
    assert "1014" not in splits["test"]


def test_mimiciv_icd10_with_edin_split_file(mimic4_dirs, tmp_path):
    mimic_dir, note_dir, split_file = mimic4_dirs
    output_dir = tmp_path / "mimiciv_icd10"
    prepare_mimic.main([
        "--dataset", "mimiciv_icd10", "--mimic_dir", str(mimic_dir), "--note_dir", str(note_dir),
        "--split_file", str(split_file), "--output_dir", str(output_dir),
    ])
    train, validation, test = (_read(output_dir, split) for split in ("train", "validation", "test"))
    assert sorted(train) == [str(hadm_id) for hadm_id in range(2001, 2009)]  # the ICD-9 admissions are not in it
    assert (len(validation), len(test)) == (2, 2)
    assert train["2001"]["labels"] == ["0DTJ4ZZ", "E11.9", "I10"]  # J18.9 occurs twice only
    assert train["2001"]["text"] == "discharge summary of bp"
    assert test["2012"]["labels"] == ["I10"]


def test_mimiciv_icd9_takes_the_version_9_codes(mimic4_dirs, tmp_path):
    mimic_dir, note_dir, split_file = mimic4_dirs
    prepare_mimic.main([
        "--dataset", "mimiciv_icd9", "--mimic_dir", str(mimic_dir), "--note_dir", str(note_dir),
        "--split_file", str(split_file), "--output_dir", str(tmp_path / "icd9"), "--min_code_count", "1",
    ])
    train = _read(tmp_path / "icd9", "train")
    assert {hadm_id: record["labels"] for hadm_id, record in train.items()} == {
        "2013": ["38.93", "401.9"], "2014": ["38.93", "401.9"]
    }


def test_missing_column_names_the_file(mimic3_dir, tmp_path):
    pd.DataFrame({"HADM_ID": [1001], "CODE": ["4019"]}).to_csv(mimic3_dir / "DIAGNOSES_ICD.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"DIAGNOSES_ICD\.csv\.gz: missing column\(s\) \['ICD9_CODE'\]"):
        _run_mimic3(mimic3_dir, tmp_path / "out", "mimiciii_full")


def test_bad_split_files_are_reported(tmp_path):
    (tmp_path / "train.csv").write_text("HADM_ID\n1001\n")
    with pytest.raises(ValueError, match=r"train.csv, line 1: 'HADM_ID' is not a hadm_id"):
        prepare_mimic.read_splits(None, {"train": str(tmp_path / "train.csv")})
    pd.DataFrame({"_id": [1], "split": ["holdout"]}).to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(ValueError, match="unknown split name"):
        prepare_mimic.read_splits(str(tmp_path / "splits.csv"), {})


def test_split_arguments_must_be_one_kind(tmp_path, capsys):
    base = ["--dataset", "mimiciii_full", "--mimic_dir", "x", "--output_dir", "y"]
    for extra in (["--split_file", "s", "--train_ids", "t"], ["--train_ids", "t"], []):
        with pytest.raises(SystemExit):
            prepare_mimic.parse_args(base + extra)
    assert "give either --split_file" in capsys.readouterr().err


# --- prepare -> train: every dataset's codes reach the model -------------------------------------------------------

# The fake tables' raw codes as labels (ICD-9: dot restored; ICD-10-CM: dot after 3; PCS as is), written out here
# rather than computed by prepare_mimic, so the label space is checked against the tables themselves.
RAW_LABELS = {"4019": "401.9", "4280": "428.0", "V5861": "V58.61", "E8786": "E878.6", "3893": "38.93",
              "I10": "I10", "E119": "E11.9", "J189": "J18.9", "0DTJ4ZZ": "0DTJ4ZZ"}


def _train_codes_in_tables(dataset: str, tables: dict[str, pd.DataFrame], train_ids: set[int], min_count: int):
    """Labels of the train admissions straight from the raw code tables, as the dataset's rules select them."""
    counts = pd.concat(tables.values()).drop_duplicates().groupby("code")["hadm_id"].nunique()
    codes = set(pd.concat(tables.values()).query("hadm_id in @train_ids")["code"])
    frequent = {code for code in codes if counts[code] >= min_count}
    if dataset == "mimiciii_50":
        frequent &= prepare_mimic.MULLENBACH_TOP_50
    return frequent


def _mimic3_tables(mimic3_dir) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in ("DIAGNOSES_ICD", "PROCEDURES_ICD"):
        table = pd.read_csv(mimic3_dir / f"{name}.csv.gz", dtype={"ICD9_CODE": str}).dropna()
        tables[name] = pd.DataFrame({"hadm_id": table["HADM_ID"], "code": table["ICD9_CODE"].map(RAW_LABELS)})
    return tables


def _mimic4_tables(mimic_dir, version: int) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in ("diagnoses_icd.csv.gz", "procedures_icd.csv"):
        table = pd.read_csv(mimic_dir / "hosp" / name, dtype={"icd_code": str}).query("icd_version == @version")
        tables[name] = pd.DataFrame({"hadm_id": table["hadm_id"], "code": table["icd_code"].map(RAW_LABELS)})
    return tables


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny MLM checkpoint and tokenizer, as pretrain.py writes them."""
    from modeling_bertxml import BertXMLForMaskedLM
    from tests.conftest import tiny_config, tiny_tokenizer

    folder = tmp_path_factory.mktemp("pretrained")
    tokenizer = tiny_tokenizer()
    config = tiny_config(max_chunks=2, vocab_size=len(tokenizer))
    BertXMLForMaskedLM(config).save_pretrained(folder)
    tiny_tokenizer(model_max_length=config.max_note_length).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "dataset, extra",
    [("mimiciii_full", []), ("mimiciii_50", []), ("mimiciii_clean", []),
     ("mimiciv_icd9", ["--min_code_count", "1"]), ("mimiciv_icd10", [])],
)
def test_every_prepared_dataset_trains_with_all_its_codes(
    dataset, extra, mimic3_dir, mimic4_dirs, pretrained, tmp_path
):
    from transformers import AutoConfig, pipeline

    from modeling_bertxml.training.train import main as train_main

    output_dir = tmp_path / dataset
    if dataset.startswith("mimiciii"):
        _run_mimic3(mimic3_dir, output_dir, dataset, *extra)
        tables = _mimic3_tables(mimic3_dir)
    else:
        mimic_dir, note_dir, split_file = mimic4_dirs
        prepare_mimic.main(["--dataset", dataset, "--mimic_dir", str(mimic_dir), "--note_dir", str(note_dir),
                            "--split_file", str(split_file), "--output_dir", str(output_dir), *extra])
        tables = _mimic4_tables(mimic_dir, 9 if dataset == "mimiciv_icd9" else 10)
    code_system = prepare_mimic.CODE_SYSTEM[dataset]
    train_main([
        "--model_name_or_path", str(pretrained), "--code_system", code_system, "--strict_codes",
        *(f"--{name}_file={output_dir / name}.jsonl" for name in ("train", "validation", "test")),
        "--output_dir", str(output_dir / "coder"), "--max_train_steps", "2", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-3", "--seed", "0",
    ])  # --strict_codes: a code train.py could not read (dropped) or does not know would stop the run

    config = AutoConfig.from_pretrained(output_dir / "coder")
    labels = set(config.label2id)
    train_ids = {int(record["id"]) for record in _read(output_dir, "train").values()}
    min_count = int(extra[1]) if extra else prepare_mimic.MIN_CODE_COUNT[dataset]
    assert labels == _train_codes_in_tables(dataset, tables, train_ids, min_count)
    assert config.code_system == code_system
    assert f"`{code_system}`" in (output_dir / "coder" / "README.md").read_text()  # the model card names it
    assert set(config.label_descriptions) == labels  # every code has its official description
    coder = pipeline("icd-coding", model=str(output_dir / "coder"), trust_remote_code=True)
    coded = coder("discharge summary of bp", threshold=0.0)
    assert {item["code"] for item in coded} == labels and all(item["description"] for item in coded)
    results = json.loads((output_dir / "coder" / "test_results.json").read_text())
    test_codes = {code for record in _read(output_dir, "test").values() for code in record["labels"]}
    assert test_codes <= labels  # nothing of the test split counted as unseen
    groups = results.get("code_systems", {})
    if {"401.9", "38.93"} <= labels or {"E11.9", "0DTJ4ZZ"} <= labels:  # diagnoses and procedures
        assert set(groups) == {"diagnoses", "procedures"}
        assert sum(group["num_codes"] for group in groups.values()) == results["num_codes"] == len(labels)
