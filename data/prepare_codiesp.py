"""Build the CodiEsp corpus (CLEF eHealth 2020) as bert-xml JSON Lines: Spanish or English, diagnoses or procedures.

CodiEsp (Miranda-Escalada et al., "Overview of automatic clinical coding: annotations, guidelines, and solutions for
non-English clinical cases at CodiEsp track of CLEF eHealth 2020") is 1,000 clinical case reports coded by
professional coders, public under CC BY 4.0 (cite the overview when you report results). Download
`final_dataset_v4_to_publish.zip` from Zenodo record 3837305 (https://zenodo.org/records/3837305) and unzip it;
nothing is downloaded here. Each split folder (train, dev, test) holds `<split>D.tsv` (diagnoses, CodiEsp-D) and
`<split>P.tsv` (procedures, CodiEsp-P), lines `articleID<TAB>code` (`n44.8`, `t81.4xx`, `bw03zzz`), and the texts,
one file per report: `text_files/` (Spanish) and `text_files_en/` (English machine translation, a sentence a line).
`<split>X.tsv` repeats the codes with their evidence and is not read.

- dev becomes validation.jsonl; reports are sorted by id, their text one line (line breaks and space runs folded).
- `--codes D` writes the diagnoses (train.py `--code_system icd10cm`), `P` the procedures (`icd10pcs`), `both` both
  (`icd10`). Codes are spelled as that code system reads them, upper case, nothing lost (`n44.8` -> `N44.8`,
  `t81.4xx` -> `T81.4XX`, `bw03zzz` -> `BW03ZZZ`): the dot stays, since under icd10 it tells a diagnosis from a
  seven-character procedure. A report's codes keep the release's order, each once. CodiEsp codes CIE-10-ES, the
  Spanish edition: a code the CMS lists lack is kept, and listed in the summary (train.py reports it too).
- a report without a code of the chosen kind is dropped, as the official evaluation scores only the reports of its
  gold-standard file.
- the test split is held back: choose every setting on validation and score test once, at the end (`--splits train
  dev` builds a corpus without it; benchmarks/quality.py then reports on validation).
- `--codes_file` (CodiEsp's code lists, `codiesp-D_codes.tsv` and/or `codiesp-P_codes.tsv` from Zenodo record 3632523,
  found by themselves in the release folder or beside it, in `codiesp_codes/` or not; lines
  `code<TAB>Spanish description<TAB>English description`) writes `code_descriptions.tsv`, each code's
  description in `--language`, spelled as the labels are. train.py reads it with `--code_descriptions`, and
  benchmarks/quality.py passes a corpus's own to it: the description match and the queries of codes then read the
  notes' language, not the code system's English tables.

    python data/prepare_codiesp.py --release_dir final_dataset_v4_to_publish --language en --codes D \
        --output_dir data/codiesp-en
"""

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from modeling_bertxml.data.code_systems import CodeProblem, CodeSystem, check_codes, get_code_system
from modeling_bertxml.training.stages import DESCRIPTIONS_FILE

TEXT_FOLDERS = {"es": "text_files", "en": "text_files_en"}
CODE_FILES = {"D": ("D",), "P": ("P",), "both": ("D", "P")}  # the letter of each code file read
CODE_SYSTEM = {"D": "icd10cm", "P": "icd10pcs", "both": "icd10"}  # train.py --code_system for each
SPLIT_NAMES = {"train": "train", "dev": "validation", "test": "test"}
DESCRIPTION_COLUMN = {"es": 1, "en": 2}  # the column of each language in CodiEsp's code lists
MAX_LISTED = 20  # unknown codes listed per split


@dataclass
class SplitSummary:
    """What one split holds, for the summary: its notes, the reports dropped and the codes the code system lacks."""

    notes: list[dict]
    dropped: int
    unknown: list[CodeProblem] = field(default_factory=list)

    @property
    def code_counts(self) -> Counter:
        return Counter(code for note in self.notes for code in note["labels"])


def read_codes(path: Path) -> list[tuple[int, str, str]]:
    """(line number, article id, code as written) of each line of a CodiEsp D or P file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the release's codes of this split)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = [value.strip() for value in line.split("\t")]
        if fields == [""]:
            continue
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{path}:{number}: expected articleID<TAB>code, got {line!r}")
        rows.append((number, fields[0], fields[1]))
    return rows


def spell(code: str, system: CodeSystem) -> str:
    """`code` as `system` spells its labels; one it cannot read stays as written, upper case, for train.py to report
    (a code is never dropped here)."""
    try:
        return system.normalize(code)
    except ValueError:
        return code.upper()


def prepare_split(split_dir: Path, language: str, codes: str, system: CodeSystem) -> SplitSummary:
    """One split's notes (id, text, labels) sorted by id, the reports it drops for having no code of the chosen kind,
    and the codes `system` does not know (with file and line)."""
    split = split_dir.name
    text_dir = split_dir / TEXT_FOLDERS[language]
    if not text_dir.is_dir():
        raise FileNotFoundError(f"{text_dir}: no such folder (the {split} split's texts for --language {language})")
    labels: dict[str, dict[str, None]] = {}  # article -> its codes in the release's order, each once
    records = []
    for letter in CODE_FILES[codes]:
        path = split_dir / f"{split}{letter}.tsv"
        for number, article, code in read_codes(path):
            labels.setdefault(article, {})[spell(code, system)] = None
            records.append((str(path), number, [code]))
    notes = []
    for article in sorted(labels):
        path = text_dir / f"{article}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file, though the {split} split's code files code {article}")
        text = " ".join(path.read_text(encoding="utf-8-sig").split())
        notes.append({"id": article, "text": text, "labels": list(labels[article])})
    dropped = len({path.stem for path in text_dir.glob("*.txt")} - set(labels))
    report = check_codes(records, allow_non_billable=True, system=system)  # unknown or malformed, not non-billable
    return SplitSummary(notes, dropped, report.problems)


def read_descriptions(paths: list[Path], language: str, system: CodeSystem) -> dict[str, str]:
    """Code -> its description in `language`, from CodiEsp's code lists (`code<TAB>es<TAB>en`). Left out: a code
    without a description in that language (a few lack an English one), and one `system` cannot read (the procedure
    list's codes cut at the 4th axis), which train.py would refuse in --code_descriptions."""
    descriptions = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (CodiEsp's codiesp-D_codes.tsv or codiesp-P_codes.tsv)")
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            fields = [value.strip() for value in line.split("\t")]
            if fields == [""]:
                continue
            if len(fields) != 3 or not fields[0]:
                raise ValueError(f"{path}:{number}: expected code<TAB>Spanish<TAB>English description, got {line!r}")
            try:
                code = system.normalize(fields[0])
            except ValueError:
                continue
            if fields[DESCRIPTION_COLUMN[language]]:
                descriptions[code] = fields[DESCRIPTION_COLUMN[language]]
    if not descriptions:
        raise ValueError(f"{', '.join(map(str, paths))}: no code has a description in --language {language}")
    return descriptions


def write_jsonl(notes: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as file:
        for note in notes:
            file.write(json.dumps(note, ensure_ascii=False) + "\n")


def summary(splits: dict[str, SplitSummary], system: CodeSystem) -> str:
    """A table of notes, codes and code occurrences per split, then the codes the code system does not know."""
    lines = [
        f"| split | notes | dropped (no code) | codes | code occurrences | codes not in {system.title} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, split in splits.items():
        counts = split.code_counts
        lines.append(f"| {name} | {len(split.notes):,} | {split.dropped:,} | {len(counts):,} | "
                     f"{sum(counts.values()):,} | {len(split.unknown):,} |")  # fmt: skip
    for name, split in splits.items():
        if split.unknown:
            lines.append(f"\n{name}: codes not in {system.title} (kept: train.py reports them, --strict_codes stops):")
            lines += [f"  {problem.file}:{problem.line}: {problem.code!r} {problem.reason} ({problem.count}x)"
                      for problem in split.unknown[:MAX_LISTED]]  # fmt: skip
            if len(split.unknown) > MAX_LISTED:
                lines.append(f"  ... and {len(split.unknown) - MAX_LISTED} more")
    return "\n".join(lines)


def found_codes_files(release: Path, codes: str) -> list[Path]:
    """CodiEsp's code lists for `codes` where a user who unzipped both downloads keeps them: `codiesp_codes/` (or the
    files themselves) in the release folder or beside it. All of them or none."""
    places = [folder / sub for folder in (release, release.parent) for sub in ("codiesp_codes", ".")]
    found = []
    for letter in CODE_FILES[codes]:
        candidates = [place / f"codiesp-{letter}_codes.tsv" for place in places]
        found.append(next((path for path in candidates if path.is_file()), None))
    return found if all(found) else []


def prepare(args: argparse.Namespace) -> dict[str, SplitSummary]:
    """Write OUT/<split>.jsonl for each of `args.splits`; return what each holds."""
    release, output_dir = Path(args.release_dir), Path(args.output_dir)
    system = get_code_system(CODE_SYSTEM[args.codes])
    # Every split is read before anything is written: a missing file leaves no half-written corpus.
    splits = {SPLIT_NAMES[split]: prepare_split(release / split, args.language, args.codes, system)
              for split in args.splits}  # fmt: skip
    descriptions = None
    if args.codes_file:
        descriptions = read_descriptions([Path(path) for path in args.codes_file], args.language, system)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        write_jsonl(split.notes, output_dir / f"{name}.jsonl")
    if descriptions:
        lines = "".join(f"{code}\t{text}\n" for code, text in descriptions.items())
        (output_dir / DESCRIPTIONS_FILE).write_text(f"code\tdescription\n{lines}", encoding="utf-8")
    return splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release_dir", required=True,
                        help="The unzipped release: the folder holding train/, dev/ and test/.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--language", choices=sorted(TEXT_FOLDERS), default="es",
                        help="es: the reports as written (text_files/); en: their English machine translation.")
    parser.add_argument("--codes", choices=list(CODE_FILES), default="D",
                        help="D: ICD-10-CM diagnoses; P: ICD-10-PCS procedures; both.")
    parser.add_argument("--splits", nargs="+", choices=list(SPLIT_NAMES), default=list(SPLIT_NAMES),
                        help="Release splits to write (dev is written as validation).")
    parser.add_argument("--codes_file", nargs="+", default=None,
                        help="CodiEsp's codiesp-D_codes.tsv / codiesp-P_codes.tsv: write each code's description in "
                        f"--language to OUTPUT_DIR/{DESCRIPTIONS_FILE} (train.py --code_descriptions). Default: "
                        "those in RELEASE_DIR or beside it (in codiesp_codes/ or not), when they are there.")
    args = parser.parse_args(argv)
    if args.codes_file is None:
        args.codes_file = [str(path) for path in found_codes_files(Path(args.release_dir), args.codes)] or None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        splits = prepare(args)
    except (OSError, ValueError) as error:  # a missing folder or file, a malformed line: the message, not a traceback
        raise SystemExit(f"error: {error}") from None
    system = CODE_SYSTEM[args.codes]
    print(summary(splits, get_code_system(system)))
    files = " ".join(f"--{name}_file {Path(args.output_dir) / name}.jsonl" for name in splits)
    if args.codes_file:
        files += f" --code_descriptions {Path(args.output_dir) / DESCRIPTIONS_FILE}"
    print(f"\nWrote {', '.join(splits)} to {args.output_dir}. Train with:\n"
          f"  python train.py --code_system {system} {files} ...")  # fmt: skip


if __name__ == "__main__":
    main()
