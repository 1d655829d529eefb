"""Names of people in clinical notes, kept out of a tokenizer's vocabulary.

A vocabulary ships with every model trained on it, and a name that recurs in the notes ("Mr. Quixwell Brandywine",
his doctor's signature) becomes an entry, or pieces that only a name has. Names cannot be told from words in general,
so the notes must be de-identified; as a check, `find_names` reads the places notes write a person's name (after a
title or a field label, before a credential) and `NameMask` hides every capitalised occurrence of those names from
the trainer, wherever it is. Lower-case uses stay: "Will" is a name in "Patient: Will Smith", "will" is a word.

Letters are Unicode letters (`regex`'s `\\p{Lu}`), so Spanish notes ("Paciente: Sra. María Núñez") are read too.
"""

from collections.abc import Iterable, Iterator

import regex

# Written as a person's title: "Mr. Smith", "Dra. Núñez". All-caps titles need their period ("MS" is a disease).
_TITLE_WORDS = "Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sr|Sra|Srta|Dra"
_TITLE = rf"(?:(?:{_TITLE_WORDS})\.?|(?:{_TITLE_WORDS.upper()})\.)"
_CREDENTIALS = r"MD|M\.D\.|DO|D\.O\.|RN|LPN|NP|APRN|FNP|DNP|CRNA|PA|PA-C|PhD|MBBS|PharmD|DPM|LCSW|MSW"
# Who someone is, not their name: "Contact: Daughter", "Signed by: Resident".
_ROLES = ("Daughter|Son|Wife|Husband|Spouse|Mother|Father|Sister|Brother|Family|Friend|Self|Patient|Nurse|Resident"
          "|Fellow|Attending|Staff|Team|Service|Unknown|None|Hija|Hijo|Esposa|Esposo|Madre|Padre")
_NOT_A_NAME = (rf"(?!(?:{_TITLE_WORDS}|{_TITLE_WORDS.upper()}|{_CREDENTIALS}|{_ROLES}|{_ROLES.upper()})"
               r"(?![\p{L}\p{M}]))")
# A name word: Smith, Núñez, McDonald, O'Brien, Smith-Jones; or in capitals, SMITH, O'BRIEN (2 letters at least).
_CAPITALISED = r"\p{Lu}\p{M}*[\p{Ll}\p{M}]+(?:\p{Lu}[\p{Ll}\p{M}]+)?"
_ALL_CAPS = r"\p{Lu}[\p{Lu}\p{M}]+"


def _phrase(word: str) -> str:
    """One to four name words of one case, maybe with a middle initial or a particle between ("María de la Cruz");
    a word before a colon is the next field's label ("PATIENT: JOHN SMITH DOB: ...")."""
    word = (rf"(?<![\p{{L}}\p{{M}}\d'’-]){_NOT_A_NAME}(?:\p{{Lu}}['’])?{word}(?:-{word})*(?![\p{{L}}\p{{M}}\d])"
            r"(?![ \t]*:)")
    between = r"[ \t]+(?:(?:\p{Lu}\.|de|del|la|las|los|y|van|von|der|den|da|di|du|dos|le)[ \t]+)*"
    return rf"{word}(?:{between}{word}){{0,3}}"


_NAME = rf"(?:{_phrase(_CAPITALISED)}|{_phrase(_ALL_CAPS)})"
_INITIALS = r"(?:\p{Lu}\.[ \t]*)*"
# Field labels before a name, written in lower case, Capitalised, Title Case or CAPITALS: "Name:", "PATIENT:",
# "Attending physician:", "Signed by", "Paciente:"; not "Drug name:", nor "CC:" (the chief complaint). Each label is
# looked for behind a colon or a "by": trying dozens of labels at every character reads notes 10x slower.
_LABELS = ("patient name", "pt name", "full name", "patient", "pt", "paciente", "nombre", "médico", "medico",
           "attending", "attending physician", "resident", "fellow", "intern", "surgeon", "anesthesiologist", "pcp",
           "physician", "provider", "primary care physician", "primary care provider", "referring physician",
           "referring provider", "consulting physician", "ordering provider", "nurse", "guardian", "contact",
           "emergency contact", "signed", "cosigned", "co-signed", "electronically signed")
_SIGNED = ("signed", "electronically signed", "cosigned", "dictated", "transcribed", "reviewed", "firmado")


def _cases(labels: Iterable[str]) -> str:
    """An alternation of `labels` as notes write them."""
    variants = {case for label in labels for case in (label, label.capitalize(), label.title(), label.upper())}
    return "|".join(regex.escape(label) for label in sorted(variants))


_LABEL = (rf"(?::(?<=(?:\b(?:{_cases(_LABELS)})|\b[Cc]c|(?<![\p{{L}}\p{{M}}][ \t]*)(?:{_cases(['name'])}))[ \t]*:)"
          rf"|(?:{_cases(['by', 'por'])})\b(?<=\b(?:{_cases(_SIGNED)})[ \t]+\p{{L}}+)[ \t]*:?)")
# "Mr. John Smith", "Dr. J. O'Brien"; an all-caps title names in capitals ("MR. JOHN SMITH", not "severe MR. Plan").
_AFTER_TITLE = regex.compile(rf"(?<![\p{{L}}\p{{M}}])(?:(?:{_TITLE_WORDS})\.?|(?:{_TITLE_WORDS.upper()})\.(?=[ \t]+"
                             rf"{_INITIALS}\p{{Lu}}{{2}}))[ \t]+{_INITIALS}(?P<names>{_NAME})")
# "Name: Jane Doe", "PATIENT: SMITH, JOHN", "cc: Jane Roe; Dr. Ben Moe" (a title right after a label: the pattern
# above); `then` marks a lower-case word after the name.
_AFTER_LABEL = regex.compile(rf"{_LABEL}[ \t]*{_INITIALS}(?P<names>(?:{_NAME}[ \t]*,[ \t]*)?{_NAME}"
                             rf"(?:[ \t]*(?:;|&|/|\band\b|\by\b)[ \t]*(?:{_TITLE}[ \t]+)?{_INITIALS}{_NAME})*)"
                             r"(?P<then>[ \t]+\p{Ll})?")
# Signatures: "-- Jane Doe, MD", "JANE DOE RN"; not "HTN, DO NOT". Found from the credential, then the name before it
# (within `_SIGNATURE_REACH` characters): trying the name at every capital letter reads notes 3x slower.
_CREDENTIAL = regex.compile(rf"(?<=[ \t])(?:{_CREDENTIALS})(?![\p{{L}}\p{{M}}])(?![ \t]+\p{{Lu}}{{2}})")
_BEFORE_CREDENTIAL = regex.compile(rf"(?P<names>{_NAME}),?[ \t]+\Z")
_SIGNATURE_REACH = 200
_NAME_WORD = regex.compile(rf"(?<![\p{{L}}\p{{M}}]){_NOT_A_NAME}\p{{Lu}}[\p{{L}}\p{{M}}]+")  # not "de", "Dr", "J."
LETTERS = regex.compile(r"[\p{L}\p{M}]+")


def _name_regions(text: str) -> Iterator[str]:
    """The stretches of `text` that are one or more people's names."""
    for match in _AFTER_TITLE.finditer(text):
        yield match.group("names")
    for match in _AFTER_LABEL.finditer(text):
        region = match.group("names")
        # One word after a label and before a lower-case word is a word: "Patient: Alert and oriented".
        if not match.group("then") or regex.search(r"[ \t,;&/]", region):
            yield region
    for match in _CREDENTIAL.finditer(text):
        name = _BEFORE_CREDENTIAL.search(text, max(0, match.start() - _SIGNATURE_REACH), match.start())
        if name:
            yield name.group("names")


def find_names(text: str) -> set[str]:
    """The words `text` writes as a person's name, lower-cased; a name's parts ("O'Brien", "Smith-Jones") are the
    runs of two or more letters ("brien", "smith", "jones"), as the tokenizer splits them."""
    return {word.lower() for region in _name_regions(text) for word in _NAME_WORD.findall(region)}


def collect_names(texts: Iterable[str]) -> set[str]:
    """Every name `find_names` sees in `texts`; memory grows with the distinct names, not with the notes."""
    names: set[str] = set()
    for text in texts:
        names |= find_names(text)
    return names


class NameMask:
    """Deletes the capitalised occurrences of `names` (Smith, SMITH, McDonald) from notes, counting them, and
    records which names the notes also write in lower case ("will" is a word): those may stay in the vocabulary.

    With `mask=False` notes pass unchanged and only lower-case uses are recorded.
    """

    def __init__(self, names: set[str], mask: bool = True):
        self.names = names
        self.mask = mask
        self.masked = 0
        self.lower_case: set[str] = set()

    def __call__(self, text: str) -> str:
        if not self.names:
            return text
        words = LETTERS.findall(text)
        distinct = set(words)
        self.lower_case |= distinct & self.names
        hits = {word for word in distinct - self.names if word.lower() in self.names}
        if not hits or not self.mask:
            return text
        self.masked += sum(word in hits for word in words)
        return LETTERS.sub(lambda match: "" if match.group() in hits else match.group(), text)
