"""ICD-10-CM helpers: code normalisation, validity, descriptions, hierarchy.

Everything except `normalize_code` reads the official CMS tabular list shipped with `simple-icd-10-cm` (74,719
billable codes). The package parses its XML on import (about two seconds), so it is imported on first use: code that
only normalises codes stays fast. Codes are accepted in any case, with or without the dot (`e119`, `E119`, `E11.9`);
blocks (`"E08-E13"`) and chapters (`"4"`) are accepted where the hierarchy is walked.
"""

import functools
import re
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


@functools.cache
def _seventh_characters() -> dict[str, str]:
    """The 7th characters (extensions) each six-character stem takes: `S02.0XX` -> "ABDGKS"."""
    stems: dict[str, str] = {}
    for code in _billable_codes():
        if len(code) == 8:  # seven characters and the dot
            stems[code[:-1]] = stems.get(code[:-1], "") + code[-1]
    return stems


@functools.cache
def _codes_with_placeholders() -> dict[str, tuple[str, ...]]:
    """Seven-character codes holding placeholder Xs, by category (`S02` -> ("S02.0XXA", ...))."""
    by_category: dict[str, list[str]] = {}
    for code in _billable_codes():
        if len(code) == 8 and "X" in code[4:7]:
            by_category.setdefault(code[:3], []).append(code)
    return {category: tuple(codes) for category, codes in by_category.items()}


def seventh_character_hint(name: str) -> str | None:
    """What is wrong with a normalised code that lacks its 7th character or misplaces the placeholder X, else None.

    `S02.0XX` -> "7th character missing; S02.0XXA/B/D/G/K/S exist", `S02.0A` -> "placeholder X missing: S02.0XXA",
    `S02.0ZZA` -> "wrong placeholder: S02.0XXA". National editions and exports often drop or change these characters.
    """
    stems = _seventh_characters()
    body = name.replace(".", "")
    padded = normalize_code(body.ljust(6, "X")) if len(body) <= 6 else None
    if padded in stems:
        missing = "" if padded == name else " (and placeholder X)"
        return f"7th character missing{missing}; {padded}{'/'.join(stems[padded])} exist"
    candidates = _codes_with_placeholders().get(body[:3], ())
    if len(body) < 7:  # the 7th character written right after the last real one
        matches = [code for code in candidates if code.replace(".", "").replace("X", "") == body.replace("X", "")]
        return f"placeholder X missing: {' or '.join(matches)}" if matches else None
    if len(body) == 7:  # another character where the placeholder goes
        def fits(code: str) -> bool:
            return all(a == b or (b == "X" and not a.isdigit()) for a, b in zip(body, code.replace(".", "")))

        matches = [code for code in candidates if fits(code)]
        return f"wrong placeholder: {' or '.join(matches)}" if matches else None
    return None


def code_problem(code: str, allow_non_billable: bool = False) -> str | None:
    """Why `code` cannot be used as an ICD-10-CM label, or None if it can: "malformed", "unknown", "not billable", or
    a 7th-character or placeholder hint (`seventh_character_hint`) where one applies."""
    try:
        name = normalize_code(code)
    except ValueError:
        return "malformed"
    if not is_valid(name):
        return seventh_character_hint(name) or "unknown"
    if not allow_non_billable and not is_billable(name):
        hint = seventh_character_hint(name)
        return f"not billable; {hint}" if hint else "not billable"
    return None
