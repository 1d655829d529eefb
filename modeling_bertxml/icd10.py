"""ICD-10-CM helpers (not remote code): code normalisation, validity, descriptions, hierarchy."""

import re

_CODE = re.compile(r"^([A-Z][0-9][0-9A-Z])\.?([0-9A-Z]{0,4})$")


def normalize_code(code: str) -> str:
    """Upper-case a code and put the dot after the third character (`e119` -> `E11.9`, `I10` -> `I10`).

    Raises ValueError for strings that cannot be an ICD-10-CM code, so callers can report file and line.
    """
    match = _CODE.match(code.strip().upper())
    if match is None:
        raise ValueError(f"not an ICD-10-CM code: {code!r}")
    category, rest = match.groups()
    return f"{category}.{rest}" if rest else category
