"""Build the MIMIC-III and MIMIC-IV coding datasets of Edin et al. (2023) as bert-xml JSON Lines.

Needs credentialed PhysioNet access to MIMIC-III v1.4, or MIMIC-IV (v2.2) and MIMIC-IV-Note; nothing is
downloaded. The steps follow the medical-coding-reproducibility preprocessing:
- discharge summaries only (MIMIC-III: CATEGORY "Discharge summary", report and addenda of an admission joined);
- diagnosis and procedure codes of the admission, duplicates removed, dots restored (ICD-9 diagnoses after the
  third character, or the fourth for E codes; ICD-9 procedures after the second; ICD-10 diagnoses after the third;
  ICD-10-PCS procedures have none);
- mimiciii_full keeps every code, mimiciii_50 the 50 codes of Mullenbach et al. (2018), mimiciii_clean and the
  MIMIC-IV sets the codes with at least 10 occurrences; admissions left without codes are dropped;
- text lower-cased, non-alphanumerics and stand-alone numbers removed (`--keep_raw_text` skips this);
- train/validation/test from the published split files, given by path: Mullenbach's hadm_id lists
  (`--train_ids --validation_ids --test_ids`) or Edin's split table (`--split_file`, columns `_id`/`hadm_id` and
  `split` with train/val/test).

Codes are written as train.py's `--code_system` reads them (`CODE_SYSTEM`: icd9cm for the ICD-9 sets, icd10 for
mimiciv_icd10), so none is dropped on the way; the ICD-9 dot stays, since it tells diagnosis 401.9 from procedure 40.19.

    python data/prepare_mimic.py --dataset mimiciv_icd10 --mimic_dir physionet.org/files/mimiciv/2.2 \
        --note_dir physionet.org/files/mimic-iv-note/2.2 --split_file mimiciv_icd10_split.feather \
        --output_dir data/mimiciv_icd10
"""

import argparse
import json
import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from modeling_bertxml.data.icd10 import normalize_code

logger = logging.getLogger(__name__)

DATASETS = ["mimiciii_full", "mimiciii_50", "mimiciii_clean", "mimiciv_icd9", "mimiciv_icd10"]
MIN_CODE_COUNT = {"mimiciii_full": 1, "mimiciii_50": 1, "mimiciii_clean": 10, "mimiciv_icd9": 10, "mimiciv_icd10": 10}
# The top-50 codes of Mullenbach et al. (2018), which Edin et al. keep rather than recomputing them on MIMIC-III v1.4.
MULLENBACH_TOP_50 = {
    "401.9", "38.93", "428.0", "427.31", "414.01", "96.04", "96.6", "584.9", "250.00", "96.71",
    "272.4", "518.81", "99.04", "39.61", "599.0", "530.81", "96.72", "272.0", "285.9", "88.56",
    "244.9", "486", "38.91", "285.1", "36.15", "276.2", "496", "99.15", "995.92", "V58.61",
    "507.0", "038.9", "88.72", "585.9", "403.90", "311", "305.1", "37.22", "412", "33.24",
    "39.95", "287.5", "410.71", "276.1", "V45.81", "424.0", "45.13", "V15.82", "511.9", "37.23",
}
CODE_SYSTEM = {  # train.py --code_system for each dataset
    "mimiciii_full": "icd9cm", "mimiciii_50": "icd9cm", "mimiciii_clean": "icd9cm", "mimiciv_icd9": "icd9cm",
    "mimiciv_icd10": "icd10",
}
SPLIT_NAMES = {"train": "train", "val": "validation", "dev": "validation", "validation": "validation", "test": "test"}
CHUNK_ROWS = 100_000


def format_icd9(code: str, is_diagnosis: bool) -> str:
    """Put back the dot MIMIC leaves out: `4019` -> `401.9`, `E8786` -> `E878.6`, procedure `3893` -> `38.93`."""
    code = code.strip().replace(".", "")
    position = (4 if code.startswith("E") else 3) if is_diagnosis else 2
    return f"{code[:position]}.{code[position:]}" if len(code) > position else code


def format_code(code: str, version: int, is_diagnosis: bool) -> str:
    """A MIMIC code in the spelling of its code system (ICD-10 diagnoses as in `normalize_code`)."""
    if version == 9:
        return format_icd9(code, is_diagnosis)
    if version == 10:
        return normalize_code(code) if is_diagnosis else code.strip().replace(".", "")
    raise ValueError(f"ICD version must be 9 or 10, got {version!r}")


def preprocess_text(text: str) -> str:
    """Edin et al.'s normalisation: lower case, alphanumeric words only, stand-alone numbers removed."""
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    text = re.sub(r"(\s\d+)+\s", " ", f" {text} ")
    return re.sub(r"\s+", " ", text).strip()


def find_table(directory: Path, name: str) -> Path:
    """`name.csv.gz` or `name.csv` in `directory` (PhysioNet ships the first; some users unzip)."""
    for candidate in (directory / f"{name}.csv.gz", directory / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {name}.csv.gz nor {name}.csv in {directory}")


def read_table(path: Path, columns: list[str], dtype: dict | None = None, row_filter=None) -> pd.DataFrame:
    """Read the needed columns of a (possibly huge) MIMIC table in chunks, keeping the rows `row_filter` accepts."""
    header = pd.read_csv(path, nrows=0).columns
    missing = [column for column in columns if column not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(header)}")
    chunks = pd.read_csv(path, usecols=columns, dtype=dtype, chunksize=CHUNK_ROWS)
    kept = [chunk if row_filter is None else chunk[row_filter(chunk)] for chunk in tqdm(chunks, desc=path.name)]
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=columns)


def mimic3_notes(mimic_dir: Path) -> pd.DataFrame:
    """Discharge summaries per admission (hadm_id, text): report and addenda joined in file order."""
    path = find_table(mimic_dir, "NOTEEVENTS")
    notes = read_table(
        path,
        ["SUBJECT_ID", "HADM_ID", "CATEGORY", "TEXT"],
        dtype={"TEXT": str, "CATEGORY": str},
        row_filter=lambda chunk: chunk["CATEGORY"] == "Discharge summary",
    )
    notes = notes.dropna(subset=["HADM_ID", "TEXT"]).astype({"HADM_ID": "int64"})
    notes = notes.groupby(["SUBJECT_ID", "HADM_ID"], sort=True)["TEXT"].agg(" ".join).reset_index()
    return notes.rename(columns={"HADM_ID": "hadm_id", "TEXT": "text"})[["hadm_id", "text"]]


def mimic3_codes(mimic_dir: Path) -> pd.DataFrame:
    """(hadm_id, code) rows of ICD-9 diagnoses and procedures, formatted and de-duplicated."""
    frames = []
    for name, is_diagnosis in (("DIAGNOSES_ICD", True), ("PROCEDURES_ICD", False)):
        path = find_table(mimic_dir, name)
        table = read_table(path, ["HADM_ID", "ICD9_CODE"], dtype={"ICD9_CODE": str}).dropna()
        table["code"] = table["ICD9_CODE"].map(lambda code: format_icd9(code, is_diagnosis))
        frames.append(table.rename(columns={"HADM_ID": "hadm_id"})[["hadm_id", "code"]])
    return pd.concat(frames, ignore_index=True).astype({"hadm_id": "int64"}).drop_duplicates()


def mimic4_notes(note_dir: Path) -> pd.DataFrame:
    """MIMIC-IV-Note discharge notes (hadm_id, text), empty and repeated notes removed."""
    notes = read_table(find_table(note_dir / "note", "discharge"), ["hadm_id", "text"], dtype={"text": str})
    return notes.dropna().astype({"hadm_id": "int64"}).drop_duplicates(subset=["hadm_id", "text"])


def mimic4_codes(mimic_dir: Path, version: int) -> pd.DataFrame:
    """(hadm_id, code) rows of one ICD version's diagnoses and procedures, formatted and de-duplicated."""
    frames = []
    for name, is_diagnosis in (("diagnoses_icd", True), ("procedures_icd", False)):
        path = find_table(mimic_dir / "hosp", name)
        table = read_table(path, ["hadm_id", "icd_code", "icd_version"], dtype={"icd_code": str}).dropna()
        table = table[table["icd_version"] == version]
        try:
            table["code"] = table["icd_code"].map(lambda code: format_code(code, version, is_diagnosis))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        frames.append(table[["hadm_id", "code"]])
    return pd.concat(frames, ignore_index=True).astype({"hadm_id": "int64"}).drop_duplicates()


def attach_codes(notes: pd.DataFrame, codes: pd.DataFrame, keep: set[str] | None, min_count: int) -> pd.DataFrame:
    """Notes with their sorted `labels`: only `keep` codes (if given) seen in >= `min_count` notes; no empty rows."""
    codes = codes[codes["hadm_id"].isin(set(notes["hadm_id"]))]
    if keep is not None:
        codes = codes[codes["code"].isin(keep)]
    labels = codes.groupby("hadm_id")["code"].agg(lambda values: sorted(set(values)))
    dataset = notes.merge(labels.rename("labels"), left_on="hadm_id", right_index=True, how="inner")
    counts = Counter(code for row in dataset["labels"] for code in row)
    frequent = {code for code, count in counts.items() if count >= min_count}
    dataset["labels"] = dataset["labels"].map(lambda row: [code for code in row if code in frequent])
    logger.info("%d codes, %d with >= %d occurrences", len(counts), len(frequent), min_count)
    return dataset[dataset["labels"].map(len) > 0].reset_index(drop=True)


def read_splits(split_file: str | None, id_files: dict[str, str | None]) -> dict[int, str]:
    """hadm_id -> train/validation/test, from a split table or from one hadm_id list per split."""
    if split_file is not None:
        path = Path(split_file)
        readers = {".feather": pd.read_feather, ".parquet": pd.read_parquet}
        table = readers.get(path.suffix, pd.read_csv)(path)
        id_column = next((column for column in ("_id", "hadm_id", "HADM_ID") if column in table.columns), None)
        if id_column is None or "split" not in table.columns:
            raise ValueError(f"{path}: need columns `_id` (or `hadm_id`) and `split`; found {list(table.columns)}")
        unknown = sorted(set(table["split"]) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"{path}: unknown split name(s) {unknown}; expected train, val or test")
        return {int(hadm_id): SPLIT_NAMES[split] for hadm_id, split in zip(table[id_column], table["split"])}
    splits = {}
    for split, file in id_files.items():
        ids = pd.read_csv(file, header=None, dtype=str)[0].str.strip()
        if not ids.str.isdigit().all():  # Mullenbach's files have no header: anything else is a wrong file
            bad = int((~ids.str.isdigit()).idxmax())
            raise ValueError(f"{file}, line {bad + 1}: {ids[bad]!r} is not a hadm_id")
        splits.update({int(hadm_id): split for hadm_id in ids})
    return splits


def write_splits(dataset: pd.DataFrame, splits: dict[int, str], output_dir: Path) -> dict[str, int]:
    """Write train/validation/test.jsonl and codes.txt (train codes, most frequent first, ties by code)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataset.assign(split=dataset["hadm_id"].map(splits), id=dataset["hadm_id"].astype(str))
    missing = len(set(splits) - set(dataset["hadm_id"]))
    if missing:
        logger.info("%d split hadm_ids have no discharge summary with codes (dropped, as Edin et al. do)", missing)
    sizes = {}
    for split in ("train", "validation", "test"):
        rows = dataset[dataset["split"] == split][["id", "text", "labels"]]
        with (output_dir / f"{split}.jsonl").open("w", encoding="utf-8") as file:
            for record in rows.to_dict(orient="records"):
                file.write(json.dumps(record) + "\n")
        sizes[split] = len(rows)
    train_counts = Counter(code for row in dataset[dataset["split"] == "train"]["labels"] for code in row)
    codes = sorted(train_counts, key=lambda code: (-train_counts[code], code))
    (output_dir / "codes.txt").write_text("".join(f"{code}\n" for code in codes))
    return sizes


def prepare(args: argparse.Namespace) -> dict[str, int]:
    """Build one dataset from the raw tables and write it; return the split sizes."""
    mimic_dir = Path(args.mimic_dir)
    if args.dataset.startswith("mimiciii"):
        notes, codes = mimic3_notes(mimic_dir), mimic3_codes(mimic_dir)
    else:
        version = 9 if args.dataset == "mimiciv_icd9" else 10
        notes, codes = mimic4_notes(Path(args.note_dir or args.mimic_dir)), mimic4_codes(mimic_dir, version)
    keep = MULLENBACH_TOP_50 if args.dataset == "mimiciii_50" else None
    min_count = args.min_code_count if args.min_code_count is not None else MIN_CODE_COUNT[args.dataset]
    dataset = attach_codes(notes, codes, keep, min_count)
    if not args.keep_raw_text:
        dataset["text"] = [preprocess_text(text) for text in tqdm(dataset["text"], desc="Preprocessing text")]
    id_files = {"train": args.train_ids, "validation": args.validation_ids, "test": args.test_ids}
    return write_splits(dataset, read_splits(args.split_file, id_files), Path(args.output_dir))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--mimic_dir", type=str, required=True,
                        help="MIMIC-III: the folder with NOTEEVENTS, DIAGNOSES_ICD, PROCEDURES_ICD. "
                             "MIMIC-IV: the folder holding hosp/.")
    parser.add_argument("--note_dir", type=str, default=None, help="MIMIC-IV-Note: the folder holding note/.")
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--split_file", type=str, default=None, help="Table with `_id`/`hadm_id` and `split`.")
    parser.add_argument("--train_ids", type=str, default=None, help="File of train hadm_ids, one per line.")
    parser.add_argument("--validation_ids", type=str, default=None)
    parser.add_argument("--test_ids", type=str, default=None)
    parser.add_argument("--min_code_count", type=int, default=None,
                        help="Keep codes in at least this many notes (default: 10, or 1 for mimiciii_full/50).")
    parser.add_argument("--keep_raw_text", action="store_true", help="Skip the lower-casing and cleaning.")
    args = parser.parse_args(argv)
    given_ids = [file is not None for file in (args.train_ids, args.validation_ids, args.test_ids)]
    if (args.split_file is not None and any(given_ids)) or (args.split_file is None and not all(given_ids)):
        parser.error("give either --split_file, or all of --train_ids, --validation_ids and --test_ids")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = parse_args(argv)
    sizes = prepare(args)
    logger.info("Wrote %s to %s", ", ".join(f"{count} {split}" for split, count in sizes.items()), args.output_dir)
    logger.info("Train with: python train.py --code_system %s --train_file %s/train.jsonl --validation_file "
                "%s/validation.jsonl --test_file %s/test.jsonl ...", CODE_SYSTEM[args.dataset], *[args.output_dir] * 3)


if __name__ == "__main__":
    main()
