"""ICD-10-CM helpers (not remote code): code normalisation, validity, descriptions, hierarchy.

Everything except `normalize_code` reads the official CMS tabular list shipped with `simple-icd-10-cm` (74,719
billable codes). The package parses its XML on import (about two seconds), so it is imported on first use: code that
only normalises codes stays fast. Codes are accepted in any case, with or without the dot (`e119`, `E119`, `E11.9`);
blocks (`"E08-E13"`) and chapters (`"4"`) are accepted where the hierarchy is walked.
"""

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

# A letter, a digit (or "A": the April 2026 list added category QA0), a digit or letter, then up to four more after
# the dot. Strings such as "XYZ" stay malformed rather than unknown, so loaders can drop them.
_CODE = re.compile(r"^([A-Z][0-9A][0-9A-Z])\.?([0-9A-Z]{0,4})$")


def normalize_code(code: str) -> str:
    """Upper-case a code and put the dot after the third character (`e119` -> `E11.9`, `I10` -> `I10`).

    Raises ValueError for strings that cannot be an ICD-10-CM code, so callers can report file and line.
    """
    match = _CODE.match(code.strip().upper())
    if match is None:
        raise ValueError(f"not an ICD-10-CM code: {code!r}")
    category, rest = match.groups()
    return f"{category}.{rest}" if rest else category


@functools.cache
def _tabular_list() -> ModuleType:
    import simple_icd_10_cm

    return simple_icd_10_cm


def _node(code: str) -> str:
    """The tabular list's name for a code, block or chapter; ValueError when the list does not have it.

    A code wins over a block of the same name (the list has one-category blocks such as "B20").
    """
    cm = _tabular_list()
    try:
        name = normalize_code(code)
    except ValueError:
        name = None
    if name is not None and cm.is_valid_item(name) and cm.is_category_or_subcategory(name):
        return name
    if cm.is_valid_item(code.strip()) and cm.is_chapter_or_block(code.strip()):
        return code.strip()
    raise ValueError(f"{code.strip()!r} is not in the ICD-10-CM tabular list (CMS, simple-icd-10-cm)")


def _code(code: str) -> str:
    """Like `_node`, but only codes (categories and subcategories) are accepted."""
    name = _node(code)
    if not _tabular_list().is_category_or_subcategory(name):
        raise ValueError(f"{name!r} is a chapter or block of ICD-10-CM, not a code")
    return name


def is_valid(code: str) -> bool:
    """Whether `code` is an ICD-10-CM category or subcategory in the CMS list (billable or not)."""
    try:
        _code(code)
    except ValueError:
        return False
    return True


def is_billable(code: str) -> bool:
    """Whether `code` is a valid leaf of the tabular list, i.e. a code a claim may carry (`E11.9`, not `E11`)."""
    return is_valid(code) and _tabular_list().is_leaf(_code(code))


def description(code: str) -> str:
    """The CMS description of a code, block or chapter (`E11.9` -> "Type 2 diabetes mellitus without complications")."""
    return _tabular_list().get_description(_node(code))


def inclusion_terms(code: str) -> list[str]:
    """Synonyms CMS lists under the code: its inclusion terms, then its "Includes" notes (often empty)."""
    cm = _tabular_list()
    name = _node(code)
    return list(cm.get_inclusion_term(name)) + list(cm.get_includes(name))


def parent(code: str) -> str | None:
    """The parent in the hierarchy: `E11.9` -> `E11`, `E11` -> block `E08-E13`, block -> chapter, chapter -> None."""
    return _tabular_list().get_parent(_node(code)) or None


def ancestors(code: str) -> list[str]:
    """All ancestors from the parent up to the chapter (`E11.9` -> ["E11", "E08-E13", "4"])."""
    return list(_tabular_list().get_ancestors(_node(code)))


def category(code: str) -> str:
    """The three-character category of a code (`E11.9` -> `E11`)."""
    return _code(code)[:3]


def block(code: str) -> str:
    """The block (range of categories) a code belongs to (`E11.9` -> `E08-E13`)."""
    cm = _tabular_list()
    return [node for node in cm.get_ancestors(_code(code)) if cm.is_block(node)][-1]


def chapter(code: str) -> str:
    """The chapter number, as the tabular list names it (`E11.9` -> "4"; its `description` is the title)."""
    path = [_node(code)] + ancestors(code)
    return path[-1]


@functools.cache
def _billable_codes() -> tuple[str, ...]:
    cm = _tabular_list()
    codes = (code for code in cm.get_all_codes(True) if cm.is_category_or_subcategory(code) and cm.is_leaf(code))
    return tuple(dict.fromkeys(codes))


def billable_codes() -> list[str]:
    """Every billable ICD-10-CM code, dotted, in tabular-list order (74,719 in the April 2026 list)."""
    return list(_billable_codes())


def code_problem(code: str, allow_non_billable: bool = False) -> str | None:
    """Why `code` cannot be used as an ICD-10-CM label ("malformed", "unknown", "not billable"), or None if it can."""
    try:
        name = normalize_code(code)
    except ValueError:
        return "malformed"
    if not is_valid(name):
        return "unknown"
    if not allow_non_billable and not is_billable(name):
        return "not billable"
    return None


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
            return f"all {self.num_codes} codes in {self.num_records} records are billable ICD-10-CM codes"
        lines = [
            f"{self.num_bad} of {self.num_codes} codes in {self.num_records} records are not billable ICD-10-CM "
            f"codes ({len(self.problems)} distinct; first occurrence shown):"
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
    records: Iterable[tuple[str, int, Sequence[str]]], allow_non_billable: bool = False
) -> CodeReport:
    """Check the codes of (file, line, codes) records against the CMS list.

    Returns every distinct bad code with its count and first location, most frequent first, so a user can find and
    fix the source rows; spelling variants of one code (`e119`, `E11.9`) are counted together.
    """
    report = CodeReport()
    verdicts: dict[str, str | None] = {}
    found: dict[str, CodeProblem] = {}
    for file, line, codes in records:
        report.num_records += 1
        for code in codes:
            report.num_codes += 1
            if code not in verdicts:
                verdicts[code] = code_problem(code, allow_non_billable)
            if verdicts[code] is None:
                continue
            try:
                key = normalize_code(code)
            except ValueError:
                key = code.strip()
            if key in found:
                found[key].count += 1
            else:
                found[key] = CodeProblem(code=code, reason=verdicts[code], count=1, file=str(file), line=line)
    report.problems = sorted(found.values(), key=lambda problem: -problem.count)
    return report
