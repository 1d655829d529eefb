"""Recall and precision of the tokenizer's name filter (`tokenizer_training.names`) on notes that write names as
hospital notes do; the "Names" table of docs/training.md.

    python benchmarks/name_filter_recall.py              # 2,000 notes, 10 s on 2 shared cores
    python benchmarks/name_filter_recall.py --notes 500 --seed 1

The notes are synthetic: 24 recurring people with invented names (syllables that make no English word: "Gwyshthrilb
Zorkyax"), each sentence written in one pattern (`PATTERNS`): after a title or a field label (`Name:`, `Patient:
Mr.`, `Attending: Dr.`, `cc:`), in a signature (`-- Jane Doe, MD`), in capitals, hyphenated or with `O'`/`Mc`, in
Spanish; and in patterns no cue marks: bare ("Gwyshthrilb tolerated the procedure"), a relative never named
elsewhere, in lower case; plus labels and titles followed by no name ("Patient: Alert and oriented", "Reviewed by:
Radiology"). Per pattern: the names written, the share the detector finds in their own sentence, the share masked
after the first pass over the whole corpus (a name found once is masked wherever it is capitalised), and the words
wrongly taken for names. Then recall and precision over the distinct names, for notes with one sentence a line and
for notes flattened to one line each. Prints markdown.
"""

import argparse
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/name_filter_recall.py` from anywhere

from benchmarks.bench_model import markdown  # noqa: E402
from tokenizer_training.names import LETTERS, NameMask, collect_names, find_names  # noqa: E402

ONSETS = ["qu", "z", "v", "br", "thr", "k", "dr", "fl", "sk", "gw", "y", "x"]
VOWELS = ["a", "e", "i", "o", "u", "y"]
CODAS = ["x", "rn", "lb", "sh", "v", "nd", "rk", "z", "th", "mp", "lw"]
SPANISH_VOWELS = ["á", "é", "í", "ó", "ú", "a", "e"]
# {first} {last}: a person's names; {FIRST} {LAST} in capitals, {first_lower} {last_lower} in lower case; {other}
# another person's full name; {relative} the name of someone the notes never write after a cue.
PATTERNS = {
    "title": ["Mr. {first} {last} presents for follow up.", "Mrs. {last} reports less pain.",
              "Seen with Ms. {first} {last} today.", "Prof. {last} reviewed the films."],
    "patient_title": ["Patient: Mr. {first} {last}", "Patient: Mrs. {first} {last}, seen in clinic."],
    "name_label": ["Name: {first} {last}", "Patient Name: {last}, {first}", "Pt name: {first} {initial}. {last}"],
    "attending": ["Attending: Dr. {first} {last}", "Attending physician: {first} {last}",
                  "Referring provider: Dr. {last}"],
    "signature": ["-- {first} {last}, MD", "{first} {last}, RN", "Electronically signed by: {first} {last}, MD",
                  "Dictated by: {first} {initial}. {last}"],
    "all_caps": ["PATIENT: {FIRST} {LAST}", "PATIENT NAME: {LAST}, {FIRST}", "MR. {FIRST} {LAST}",
                 "{FIRST} {LAST}, MD"],
    "all_caps_prose": ["MR. {FIRST} {LAST} SEEN TODAY."],
    "hyphen_apostrophe": ["Name: {first} {last}-{other_last}", "Dr. O'{last} was consulted.", "Mr. {mc} called."],
    "cc_list": ["cc: {first} {last}; Dr. {other}"],
    "spanish": ["Paciente: Sra. {first_es} {last_es}", "Médico: Dra. {first_es} {last_es}",
                "Firmado por: Dr. {first_es} {last_es}"],
    "bare": ["{first} tolerated the procedure well.", "Spoke with {first} {last} about the plan.",
             "{last}'s daughter called."],
    "relative": ["Her daughter {relative} called.", "Lives with his wife {relative}."],  # never after a cue
    "label_then_verb": ["Patient: {first} presents with cough."],  # read as "Patient: Alert and oriented"
    "lower_case": ["pt {first_lower} {last_lower} seen in clinic."],
    "no_name": ["Patient: Alert and oriented.", "Patient: 67 year old male.", "Pt: NPO after midnight.",
                "Drug name: Lisinopril.", "CC: Chest pain.", "Dr. on call notified.", "History of MS. Denies pain.",
                "HTN, DO NOT resuscitate.", "Reviewed by: Radiology.", "Signed by: Cardiology Fellow.",
                "Name: unknown.", "Contact: Daughter, phone on file."],
}
# The patterns the filter marks without false names. "bare" and "label_then_verb" are caught only by masking (the
# same people are written after a cue elsewhere); "relative" and "lower_case" not at all.
EXACT = ("title", "patient_title", "name_label", "attending", "signature", "all_caps", "hyphen_apostrophe",
         "cc_list", "spanish")
FILLER = ["Chest pain resolved.", "Continue metformin 500 mg twice daily.", "Echocardiogram shows ejection fraction "
          "of 35%.", "Denies fever or chills.", "Follow up in 2 weeks.", "Lungs clear to auscultation bilaterally.",
          "Plan: chest x-ray.", "Patient will follow up with cardiology.", "Hemoglobin A1c 8.2."]


def invented_name(rng: random.Random, vowels: Sequence[str] = VOWELS) -> str:
    """Two syllables that make no English word, capitalised: "Zorkyax"."""
    return "".join(rng.choice(ONSETS) + rng.choice(vowels) + rng.choice(CODAS) for _ in range(2)).capitalize()


@dataclass(frozen=True)
class Sentence:
    pattern: str
    text: str
    name_free: str  # the same sentence with the names left out
    names: tuple[str, ...]  # the name words as written, split as the filter counts them ("O'Vorn" gives "Vorn")


@dataclass(frozen=True)
class Note:
    """One sentence a line, as notes exported with their line breaks."""

    sentences: tuple[Sentence, ...]

    @property
    def text(self) -> str:
        return "\n".join(sentence.text for sentence in self.sentences)

    @property
    def name_free(self) -> str:
        return "\n".join(sentence.name_free for sentence in self.sentences)


def _person(rng: random.Random) -> dict[str, str]:
    first, last = invented_name(rng), invented_name(rng)
    return {"first": first, "last": last, "FIRST": first.upper(), "LAST": last.upper(), "initial": first[0],
            "mc": "Mc" + last, "first_es": invented_name(rng, SPANISH_VOWELS),
            "last_es": invented_name(rng, SPANISH_VOWELS), "relative": invented_name(rng),
            "first_lower": first.lower(), "last_lower": last.lower()}


def _sentence(pattern: str, template: str, person: dict[str, str], other: dict[str, str]) -> Sentence:
    fields = {**person, "other": f"{other['first']} {other['last']}", "other_last": other["last"]}
    text = template.format(**fields)
    name_free = template.format(**{key: "" for key in fields})
    names = Counter(LETTERS.findall(text)) - Counter(LETTERS.findall(name_free))
    return Sentence(pattern, text, name_free, tuple(word for word in names.elements() if len(word) > 1))


def varied_notes(num_notes: int, seed: int = 0, patterns: Sequence[str] = tuple(PATTERNS),
                 people: int = 24) -> list[Note]:
    """`num_notes` notes, each three filler sentences and one sentence of each of `patterns`, about `people`
    recurring people (so that a vocabulary trained on them would learn their names)."""
    rng = random.Random(seed)
    persons = [_person(rng) for _ in range(people)]
    notes = []
    for _ in range(num_notes):
        sentences = [Sentence("filler", text, text, ()) for text in rng.sample(FILLER, 3)]
        for pattern in patterns:
            person, other = rng.sample(persons, 2)
            sentences.append(_sentence(pattern, rng.choice(PATTERNS[pattern]), person, other))
        rng.shuffle(sentences)
        notes.append(Note(tuple(sentences)))
    return notes


def measure(notes: Sequence[Note]) -> list[dict]:
    """Per pattern: the names written, the share found in their own sentence and the share masked after the pass over
    the corpus, and the words wrongly taken for names."""
    mask = NameMask(collect_names(note.text for note in notes))
    counts = {pattern: Counter() for pattern in PATTERNS}
    for sentence in (sentence for note in notes for sentence in note.sentences if sentence.pattern != "filler"):
        found = find_names(sentence.text)
        left = Counter(LETTERS.findall(mask(sentence.text)))
        count = counts[sentence.pattern]
        count["written"] += len(sentence.names)
        count["found"] += sum(word.lower() in found for word in sentence.names)
        count["masked"] += sum(times - min(left[word], times) for word, times in Counter(sentence.names).items())
        count["wrong"] += len(found - {word.lower() for word in sentence.names})
    return [{"pattern": pattern, "names written": count["written"],
             "recall in the sentence": count["found"] / count["written"] if count["written"] else None,
             "recall after masking": count["masked"] / count["written"] if count["written"] else None,
             "words wrongly found": count["wrong"]} for pattern, count in counts.items() if count]


def summarise(notes: Sequence[Note], layout: str, flatten: bool = False) -> dict:
    """Recall and precision over the distinct names of the corpus, and the share of name occurrences masked;
    `flatten` joins each note's lines, as a .txt corpus of one note a line does (a name then runs into the next
    sentence: "Name: Jane Doe Lungs clear")."""
    texts = [note.text.replace("\n", " ") if flatten else note.text for note in notes]
    names = collect_names(texts)
    mask = NameMask(names)
    written = [word for note in notes for sentence in note.sentences for word in sentence.names]
    left = Counter(word for text in texts for word in LETTERS.findall(mask(text)))
    truth = {word.lower() for word in written}
    masked = sum(times - min(left[word], times) for word, times in Counter(written).items())
    return {"layout": layout, "distinct names": len(truth), "found": len(names),
            "recall": len(names & truth) / len(truth), "precision": len(names & truth) / max(len(names), 1),
            "occurrences masked": masked / len(written)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    notes = varied_notes(args.notes, args.seed)
    exact = varied_notes(args.notes, args.seed, EXACT)
    summary = [summarise(notes, "all patterns, one sentence a line"),
               summarise(notes, "all patterns, one line a note", flatten=True),
               summarise(exact, "cued patterns only (EXACT), one sentence a line")]
    print(markdown(measure(notes)) + "\n\n" + markdown(summary))


if __name__ == "__main__":
    main()
