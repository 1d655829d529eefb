"""Synthetic discharge summaries labelled with real ICD-10-CM codes, for the demo and the tests (no real person data).

Why the task is not trivial, and why it can still be learnt:
- every code is mentioned through a fixed set of surface forms: its CMS description, a cleaned-up description, CMS
  inclusion terms and common clinical abbreviations (`HTN`, `T2DM`, ...);
- about as many codes per note are mentioned but must NOT be coded: negated ("denies", "no evidence of",
  "ruled out") or family history. They use the same surface forms, so a bag of words cannot tell them apart; the
  context words next to a mention can;
- about a quarter of the codes are mentioned only in the discharge diagnoses, which always start after word 520 (so
  after token 512 for any tokenizer): a model that reads only the first 512 tokens misses them;
- everything else (vitals, labs, medications, exam) is filler drawn independently of the codes;
- code frequencies follow a Zipf law, so the last codes are rare (a long tail, as in real data).
Output is deterministic given the seed: every split has its own random stream, seeded from (seed, split name).
"""

import argparse
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import icd10

# Frequent inpatient codes, roughly by real prevalence, with the abbreviations and short forms clinicians write.
# Descriptions and inclusion terms come from the CMS list (icd10); only these colloquial forms are hand-written.
COMMON_CODES: list[tuple[str, list[str]]] = [
    ("I10", ["HTN", "hypertension"]),
    ("E78.5", ["HLD", "hyperlipidemia"]),
    ("E11.9", ["T2DM", "DM2", "type 2 diabetes"]),
    ("I25.10", ["CAD", "coronary artery disease"]),
    ("K21.9", ["GERD", "acid reflux"]),
    ("I48.91", ["AFib", "atrial fibrillation"]),
    ("I50.9", ["CHF", "heart failure"]),
    ("N17.9", ["AKI", "acute kidney injury"]),
    ("N18.9", ["CKD", "chronic kidney disease"]),
    ("E03.9", ["hypothyroidism"]),
    ("F32.A", ["depression"]),
    ("J44.9", ["COPD", "emphysema"]),
    ("D64.9", ["anemia"]),
    ("E87.1", ["hyponatremia", "low sodium"]),
    ("N39.0", ["UTI", "urinary tract infection"]),
    ("F41.9", ["anxiety"]),
    ("E66.9", ["obesity"]),
    ("J18.9", ["PNA", "pneumonia"]),
    ("A41.9", ["sepsis"]),
    ("E87.6", ["hypokalemia", "low potassium"]),
    ("G47.33", ["OSA", "sleep apnea"]),
    ("J96.01", ["AHRF", "acute hypoxic respiratory failure"]),
    ("Z79.01", ["chronic anticoagulation"]),
    ("F17.210", ["tobacco use", "current smoker"]),
    ("D69.6", ["thrombocytopenia", "low platelets"]),
    ("R07.9", ["chest pain"]),
    ("J45.909", ["asthma"]),
    ("I21.4", ["NSTEMI"]),
    ("E86.0", ["dehydration"]),
    ("F10.20", ["EtOH dependence", "alcohol use disorder"]),
    ("K92.2", ["GIB", "GI bleed"]),
    ("I63.9", ["CVA", "stroke"]),
    ("I26.99", ["PE", "pulmonary embolism"]),
    ("I82.409", ["DVT", "deep vein thrombosis"]),
    ("R06.02", ["SOB", "shortness of breath"]),
    ("N40.0", ["BPH", "enlarged prostate"]),
    ("E83.42", ["hypomagnesemia"]),
    ("R55", ["syncope"]),
    ("F03.90", ["dementia"]),
    ("K74.60", ["cirrhosis"]),
    ("M81.0", ["osteoporosis"]),
    ("M10.9", ["gout"]),
    ("R50.9", ["fever"]),
    ("R11.2", ["N/V", "nausea and vomiting"]),
    ("I95.9", ["hypotension"]),
    ("E11.65", ["uncontrolled diabetes", "T2DM with hyperglycemia"]),
    ("E11.22", ["diabetic nephropathy", "DM with CKD"]),
    ("E11.42", ["diabetic neuropathy"]),
    ("Z79.4", ["insulin use", "insulin dependent"]),
    ("N18.6", ["ESRD"]),
    ("Z99.2", ["HD dependent", "on hemodialysis"]),
    ("I35.0", ["aortic stenosis"]),
    ("I34.0", ["mitral regurgitation"]),
    ("I27.20", ["pulmonary hypertension"]),
    ("I42.9", ["cardiomyopathy"]),
    ("J90", ["pleural effusion"]),
    ("J98.11", ["atelectasis"]),
    ("R41.82", ["AMS", "altered mental status"]),
    ("F05", ["delirium"]),
    ("L03.90", ["cellulitis"]),
    ("A04.72", ["C. diff colitis", "C diff"]),
    ("K85.90", ["acute pancreatitis"]),
    ("K80.20", ["cholelithiasis", "gallstones"]),
    ("K57.30", ["diverticulosis"]),
    ("K59.00", ["constipation"]),
    ("R10.9", ["abdominal pain"]),
    ("M54.50", ["LBP", "low back pain"]),
    ("M17.9", ["knee OA", "osteoarthritis of the knee"]),
    ("G30.9", ["Alzheimer disease"]),
    ("G20.A1", ["Parkinson disease"]),
    ("G40.909", ["seizure disorder", "epilepsy"]),
    ("B20", ["HIV"]),
    ("B18.2", ["HCV", "hepatitis C"]),
    ("I73.9", ["PVD", "PAD"]),
    ("E55.9", ["vitamin D deficiency"]),
    ("D50.9", ["IDA", "iron deficiency anemia"]),
    ("E05.90", ["hyperthyroidism"]),
    ("E16.2", ["hypoglycemia"]),
    ("R00.1", ["bradycardia"]),
    ("I47.10", ["SVT"]),
    ("J81.0", ["flash pulmonary edema"]),
    ("E87.70", ["volume overload", "fluid overload"]),
    ("C34.90", ["lung cancer", "NSCLC"]),
    ("C50.919", ["breast cancer"]),
    ("C61", ["prostate cancer"]),
    ("C18.9", ["colon cancer"]),
    ("E10.9", ["T1DM", "type 1 diabetes"]),
    ("F31.9", ["bipolar disorder"]),
    ("F20.9", ["schizophrenia"]),
    ("F43.10", ["PTSD"]),
    ("M06.9", ["rheumatoid arthritis"]),
    ("M32.9", ["SLE", "lupus"]),
    ("K29.70", ["gastritis"]),
    ("K52.9", ["gastroenteritis"]),
    ("K56.609", ["SBO", "bowel obstruction"]),
    ("K35.80", ["appendicitis"]),
    ("N20.0", ["nephrolithiasis", "kidney stone"]),
    ("J84.10", ["ILD", "interstitial lung disease"]),
    ("I44.2", ["complete heart block", "CHB"]),
    ("G43.909", ["migraine"]),
    ("D72.829", ["leukocytosis"]),
    ("R73.9", ["hyperglycemia"]),
    ("E87.20", ["acidosis"]),
    ("I65.29", ["carotid stenosis"]),
    ("G89.29", ["chronic pain"]),
    ("J06.9", ["URI", "upper respiratory infection"]),
]
SEX_SPECIFIC = {"N40.0": "M", "C61": "M", "C50.919": "F"}
# Rare codes beyond the common list come from chapters 1-14 and 18 (A00-N99, R00-R99): not pregnancy, perinatal,
# congenital, injury, external causes or health-status codes, whose notes read very differently.
TAIL_LETTERS = "ABCDEFGHIJKLMNR"
_SEX_WORDS = re.compile(
    r"\b(female|male|prostate|ovar\w*|uter\w*|testi\w*|breast|pregnan\w*|vulva|vagin\w*|penis|fallopian|cervix"
    r"|scrot\w*)\b"
)

# Late evidence: the discharge diagnoses start after this many words, so after token 512 for any WordPiece tokenizer.
LATE_EVIDENCE_WORD = 520

# (section, polarity) -> sentence templates; {x} is a surface form, {X} the same capitalised.
TEMPLATES: dict[tuple[str, str], list[str]] = {
    ("chief_complaint", "positive"): ["{X}", "{X}, worsening over several days", "Evaluation of {x}"],
    ("hpi", "positive"): [
        "{Pro} has a known history of {x}.",
        "{Pro} was recently diagnosed with {x} by {pos} primary care physician.",
        "Course has been complicated by {x}.",
        "On arrival {pro} was found to have {x}.",
    ],
    ("hpi", "negated"): [
        "{Pro} denies {x}.",
        "{Pro} denies any history of {x}.",
        "No known history of {x}.",
        "{Pro} was worried about {x}, which was ruled out at an outside hospital.",
    ],
    ("hpi", "family"): ["Family history is notable for {x} in {pos} {relative}.", "{Pos} {relative} has {x}."],
    ("pmh", "positive"): ["- {X}", "- {X}, diagnosed in {year}", "- {X}, followed by {pos} primary care physician"],
    ("family", "family"): [
        "{Relative} with {x}.",
        "{Relative} died of complications of {x} at age {age2}.",
        "{Relative}: {x}.",
    ],
    ("exam", "negated"): ["No evidence of {x} on exam.", "Exam not consistent with {x}."],
    ("results", "positive"): ["Imaging on admission was consistent with {x}.", "Workup confirmed {x}."],
    ("results", "negated"): [
        "CT negative for {x}.",
        "Workup for {x} was negative.",
        "Imaging without evidence of {x}.",
    ],
    ("course", "positive"): [
        "# {X}: treated with {drug} with steady improvement.",
        "# {X}: {pro} was managed for {x} and remained stable.",
        "# {X}: confirmed this admission; {drug} was started and will be continued.",
        "{Pro} was treated for {x} during this admission.",
    ],
    ("course", "negated"): [
        "# {X}: ruled out with serial testing.",
        "{X} was considered but ruled out.",
        "There was initial concern for {x}, but this was ruled out.",
        "# {X}: no evidence of this on repeat studies; no treatment needed.",
    ],
    ("plan", "positive"): [
        "{X}: continue current management.",
        "{X}, stable. Follow up as outpatient.",
        "{X}: active.",
    ],
    ("plan", "negated"): ["{X}: ruled out, no further workup.", "Low suspicion for {x}; monitor clinically."],
    ("discharge", "positive"): ["{X}"],
    ("discharge", "negated"): ["{X}, ruled out"],
}
SLOTS = {
    "positive": ["hpi", "pmh", "results", "course", "course", "plan"],
    "negated": ["hpi", "hpi", "exam", "results", "course", "course", "plan"],
    "family": ["family", "family", "hpi"],
}
RELATIVES = ["mother", "father", "sister", "brother", "maternal grandmother", "paternal uncle", "aunt"]
DRUGS = [
    "acetaminophen 650 mg PO Q6H PRN", "aspirin 81 mg PO daily", "atorvastatin 40 mg PO QHS",
    "metoprolol tartrate 25 mg PO BID", "lisinopril 10 mg PO daily", "furosemide 40 mg PO daily",
    "pantoprazole 40 mg PO Q24H", "senna 8.6 mg PO BID PRN", "docusate sodium 100 mg PO BID",
    "heparin 5000 units SC TID", "amlodipine 5 mg PO daily", "sertraline 50 mg PO daily",
    "levothyroxine 75 mcg PO daily", "ceftriaxone 1 g IV Q24H", "vancomycin 1250 mg IV Q12H",
    "metformin 500 mg PO BID", "insulin glargine 20 units SC QHS", "apixaban 5 mg PO BID",
    "tamsulosin 0.4 mg PO QHS", "albuterol inhaler 2 puffs Q4H PRN", "gabapentin 300 mg PO TID",
    "ondansetron 4 mg IV Q8H PRN", "oxycodone 5 mg PO Q4H PRN", "polyethylene glycol 17 g PO daily",
    "magnesium oxide 400 mg PO daily", "potassium chloride 20 mEq PO daily", "carvedilol 6.25 mg PO BID",
]
# Filler: sentences that say nothing about the codes. Each template is used at most once per note, except lab
# panels, which repeat with new values (as daily labs do) once the prose runs out.
FILLER: dict[str, list[str]] = {
    "hpi": [
        "{Pro} reports feeling generally unwell for about {n} days.",
        "{Pro} was brought in by ambulance after {pos} family called for help.",
        "In the emergency department vital signs were notable for a heart rate of {hr} and blood pressure of {bp}.",
        "{Pro} received {drug} in the emergency department.",
        "{Pro} lives at home and is independent in activities of daily living.",
        "{Pro} was last seen by {pos} outpatient provider {n} weeks ago.",
        "Review of systems was otherwise reviewed and is as per HPI.",
        "{Pos} {companion} noticed that {pro} was more tired than usual over the past week.",
        "{Pro} has not traveled recently and has had no sick contacts.",
        "{Pro} was able to provide a history and confirmed the medication list.",
        "Labs in the emergency department were drawn and are summarized below.",
        "{Pro} was admitted to the medicine service for further management.",
    ],
    "course": [
        "{Pro} was seen by physical therapy, who recommended discharge home with services.",
        "{Pos} diet was advanced as tolerated and {pro} tolerated a regular diet.",
        "Electrolytes were monitored daily and repleted as needed.",
        "Home medications were continued unless noted otherwise.",
        "{Pro} remained hemodynamically stable on the floor.",
        "{Pro} was ambulating independently at the time of discharge.",
        "Code status during this admission was full code.",
        "Venous thromboembolism prophylaxis was given with {prophylaxis}.",
        "Blood pressure ranged from {bp} to {bp2} during the stay.",
        "Occupational therapy saw {pos} on hospital day {n} and cleared {pos} for discharge.",
        "Case management arranged home services and follow-up appointments.",
        "A peripheral IV was placed on admission and removed prior to discharge.",
        "{Pro} was transitioned from IV to oral medications on hospital day {n}.",
        "Pain was controlled with {analgesic}.",
        "Bowel regimen was continued with {laxative}.",
        "{Pos} weight on discharge was {weight} kg.",
        "The team discussed the plan of care with {pos} {companion}, who agreed with the plan.",
        "Nutrition was consulted and recommended oral supplements with meals.",
        "{Pro} was monitored on telemetry for {n} days without events.",
        "{Pos} heart rate remained between {hr} and {hr2} beats per minute.",
        "Medication reconciliation was completed with pharmacy prior to discharge.",
        "Fingerstick glucose checks were performed before meals and at bedtime.",
        "Vital signs on the day of discharge were within normal limits.",
        "{Pro} was counseled on medication changes and expressed understanding.",
        "Social work met with {pos} to review resources after discharge.",
        "{Pro} slept well overnight and had no complaints this morning.",
    ],
    "results": [
        "EKG: sinus rhythm at {hr} beats per minute, normal intervals.",
        "Chest radiograph: lungs are well expanded; no acute osseous abnormality.",
        "Echocardiogram: left ventricular ejection fraction of {ef} percent; no significant valvular disease.",
        "Renal ultrasound: kidneys are normal in size without hydronephrosis.",
        "Blood cultures drawn on admission showed no growth to date.",
        "Abdominal radiograph: nonobstructive bowel gas pattern.",
    ],
    "social": [
        "Lives with {pos} {companion} in an apartment.",
        "Retired {job}.",
        "Walks with a cane at baseline.",
        "Independent in activities of daily living.",
        "Enjoys gardening and walks daily.",
    ],
    "instructions": [
        "You were admitted to the hospital for evaluation and treatment.",
        "Please take your medications as prescribed and keep your follow-up appointments.",
        "Return to the emergency department if you develop new or worsening symptoms.",
        "Please follow up with your primary care physician within {n} weeks.",
        "It was a pleasure taking care of you during your hospital stay.",
    ],
}
FILLER_PER_SECTION = {"hpi": 2, "social": 2, "course": 2, "results": 1, "instructions": 3}
LAB_PANELS = [
    "[**{date}**] 06:{mm}AM BLOOD WBC-{wbc} RBC-{rbc} Hgb-{hgb} Hct-{hct} Plt-{plt}",
    "[**{date}**] 06:{mm}AM BLOOD Glucose-{glu} UreaN-{bun} Creat-{cr} Na-{na} K-{k} Cl-{cl} HCO3-{hco3}",
    "[**{date}**] 06:{mm}AM BLOOD ALT-{alt} AST-{ast} AlkPhos-{alp} TotBili-{bili}",
    "[**{date}**] 06:{mm}AM BLOOD Calcium-{ca} Phos-{phos} Mg-{mg}",
]
EXAM = [  # (system, findings): one line per system, a random finding each
    ("Vitals", ["T {temp} HR {hr} BP {bp} RR {rr} SpO2 {spo2}% on room air"]),
    ("General", ["alert and oriented, in no acute distress", "elderly appearing, resting comfortably"]),
    ("HEENT", ["normocephalic, atraumatic, mucous membranes moist", "sclerae anicteric, oropharynx clear"]),
    ("Neck", ["supple, JVP not elevated", "supple, no lymphadenopathy"]),
    ("CV", ["regular rate and rhythm, normal S1 and S2", "irregular rhythm, no murmurs, rubs or gallops"]),
    ("Lungs", ["clear to auscultation bilaterally", "bibasilar crackles, no wheezes"]),
    ("Abdomen", ["soft, non-tender, non-distended, normal bowel sounds", "obese, soft, mild tenderness"]),
    ("Extremities", ["warm and well perfused, no edema", "trace edema bilaterally"]),
    ("Neuro", ["cranial nerves II through XII grossly intact, strength {m}/5 throughout", "nonfocal exam"]),
]
SECTIONS = [  # (heading, section key); the order of a discharge summary
    ("CHIEF COMPLAINT", "chief_complaint"),
    ("HISTORY OF PRESENT ILLNESS", "hpi"),
    ("PAST MEDICAL HISTORY", "pmh"),
    ("SOCIAL HISTORY", "social"),
    ("FAMILY HISTORY", "family"),
    ("MEDICATIONS ON ADMISSION", "medications"),
    ("PHYSICAL EXAM", "exam"),
    ("PERTINENT RESULTS", "results"),
    ("ASSESSMENT AND PLAN", "plan"),
    ("BRIEF HOSPITAL COURSE", "course"),
    ("DISCHARGE MEDICATIONS", "discharge_medications"),
    ("DISCHARGE DIAGNOSES", "discharge"),
    ("DISCHARGE CONDITION", "condition"),
    ("DISCHARGE INSTRUCTIONS", "instructions"),
]
PADDED_SECTIONS = ["course", "course", "results", "hpi"]  # where filler goes to reach the note's length


@dataclass(frozen=True)
class SyntheticCode:
    """A code of the synthetic corpus and the surface forms its mentions use."""

    code: str
    description: str
    forms: tuple[str, ...]
    sex: str | None = None


def clean_term(term: str) -> str:
    """A CMS term as a clinician would write it: no "NOS", no bracketed qualifiers, no leading or trailing
    "unspecified" clauses (`Pneumonia, unspecified organism` -> `Pneumonia`)."""
    qualifiers = r"\[[^]]*\]|\([^)]*\)|\bNOS\b|^Unspecified "
    trailing = r", (unspecified|site not specified|not elsewhere classified)\b.*$"
    term = re.sub(f"{qualifiers}|{trailing}", "", term)
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s+", " ", term)).strip(" ,")


def surface_forms(code: str, abbreviations: Sequence[str] = ()) -> tuple[str, ...]:
    """The CMS description, then its cleaned form, short CMS inclusion terms and abbreviations (no repeats)."""
    terms = [clean_term(icd10.description(code))] + [clean_term(term) for term in icd10.inclusion_terms(code)][:3]
    forms = {icd10.description(code).lower(): icd10.description(code)}
    for term in terms + list(abbreviations):
        if term and len(term.split()) <= 8:
            forms.setdefault(term.lower(), term)
    return tuple(forms.values())


def select_codes(num_codes: int, seed: int = 0) -> list[SyntheticCode]:
    """The `num_codes` codes of the corpus, most frequent first: the common codes, then rare ones from the CMS list.

    A surface form is kept only by the first (most frequent) code that has it, so every mention names one code.
    """
    if num_codes < 1:
        raise ValueError(f"num_codes must be at least 1, got {num_codes}")
    chosen = COMMON_CODES[:num_codes]
    if num_codes > len(COMMON_CODES):
        chosen = chosen + [(code, []) for code in _tail_codes(num_codes - len(COMMON_CODES), seed)]
    codes, taken = [], set()
    for code, abbreviations in chosen:
        forms = [form for form in surface_forms(code, abbreviations) if form.lower() not in taken]
        taken.update(form.lower() for form in forms)
        codes.append(SyntheticCode(code, icd10.description(code), tuple(forms), SEX_SPECIFIC.get(code)))
    return codes


def _tail_codes(count: int, seed: int) -> list[str]:
    """Rare codes: billable, short descriptions, one per category, not in the common list's categories."""
    used = {icd10.category(code) for code, _ in COMMON_CODES}
    candidates: dict[str, str] = {}
    for code in icd10.billable_codes():
        if code[0] not in TAIL_LETTERS or code[:3] in used or code[:3] in candidates:
            continue
        text = icd10.description(code).lower()
        short = len(text.split()) <= 6 and not text.startswith("other") and not _SEX_WORDS.search(text)
        if short:
            candidates[code[:3]] = code
    pool = sorted(candidates.values())
    if count > len(pool):
        raise ValueError(f"asked for {count} rare codes but only {len(pool)} qualify; use fewer --num_codes")
    return random.Random(f"{seed}:codes").sample(pool, count)


@dataclass(frozen=True)
class _Patient:
    sex: str
    age: int


_JOBS = ["teacher", "electrician", "accountant", "bus driver", "nurse", "engineer", "chef", "postal worker"]
_FIELDS = {  # placeholder -> random value; capitalised placeholders ({Pro}) capitalise the value
    "pro": lambda rng, patient: "she" if patient.sex == "F" else "he",
    "pos": lambda rng, patient: "her" if patient.sex == "F" else "his",
    "relative": lambda rng, patient: rng.choice(RELATIVES),
    "drug": lambda rng, patient: rng.choice(DRUGS),
    "companion": lambda rng, patient: rng.choice(
        ["daughter", "son", "partner", "wife" if patient.sex == "M" else "husband"]
    ),
    "prophylaxis": lambda rng, patient: rng.choice(["heparin 5000 units SC TID", "enoxaparin 40 mg SC daily"]),
    "analgesic": lambda rng, patient: rng.choice(["acetaminophen 650 mg PO Q6H PRN", "oxycodone 5 mg PO Q4H PRN"]),
    "laxative": lambda rng, patient: rng.choice(["senna 8.6 mg PO BID", "polyethylene glycol 17 g PO daily"]),
    "job": lambda rng, patient: rng.choice(_JOBS),
    "year": lambda rng, patient: str(rng.randint(2150, 2180)),
    "age2": lambda rng, patient: str(rng.randint(45, 90)),
    "n": lambda rng, patient: str(rng.randint(2, 9)),
    "m": lambda rng, patient: str(rng.randint(4, 5)),
    "mm": lambda rng, patient: f"{rng.randint(0, 59):02d}",
    "hr": lambda rng, patient: str(rng.randint(55, 125)),
    "bp": lambda rng, patient: f"{rng.randint(95, 175)}/{rng.randint(50, 100)}",
    "bp2": lambda rng, patient: f"{rng.randint(95, 175)}/{rng.randint(50, 100)}",
    "hr2": lambda rng, patient: str(rng.randint(55, 125)),
    "rr": lambda rng, patient: str(rng.randint(12, 26)),
    "spo2": lambda rng, patient: str(rng.randint(88, 100)),
    "temp": lambda rng, patient: f"{rng.uniform(97.0, 101.5):.1f}",
    "ef": lambda rng, patient: str(rng.randint(25, 70)),
    "weight": lambda rng, patient: f"{rng.uniform(45, 130):.1f}",
    "date": lambda rng, patient: f"{rng.randint(2150, 2180)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    "wbc": lambda rng, patient: f"{rng.uniform(3, 16):.1f}",
    "rbc": lambda rng, patient: f"{rng.uniform(3, 5.5):.2f}",
    "hgb": lambda rng, patient: f"{rng.uniform(7, 16):.1f}",
    "hct": lambda rng, patient: f"{rng.uniform(22, 48):.1f}",
    "plt": lambda rng, patient: str(rng.randint(60, 450)),
    "glu": lambda rng, patient: str(rng.randint(65, 320)),
    "bun": lambda rng, patient: str(rng.randint(6, 70)),
    "cr": lambda rng, patient: f"{rng.uniform(0.5, 4.5):.1f}",
    "na": lambda rng, patient: str(rng.randint(126, 146)),
    "k": lambda rng, patient: f"{rng.uniform(2.9, 5.6):.1f}",
    "cl": lambda rng, patient: str(rng.randint(92, 110)),
    "hco3": lambda rng, patient: str(rng.randint(16, 32)),
    "alt": lambda rng, patient: str(rng.randint(8, 120)),
    "ast": lambda rng, patient: str(rng.randint(10, 140)),
    "alp": lambda rng, patient: str(rng.randint(40, 250)),
    "bili": lambda rng, patient: f"{rng.uniform(0.2, 3.5):.1f}",
    "ca": lambda rng, patient: f"{rng.uniform(7.8, 10.6):.1f}",
    "phos": lambda rng, patient: f"{rng.uniform(2.2, 5.4):.1f}",
    "mg": lambda rng, patient: f"{rng.uniform(1.3, 2.6):.1f}",
    "ph": lambda rng, patient: f"{rng.uniform(5.0, 7.5):.1f}",
}


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _in_sentence(form: str) -> str:
    """A surface form inside a sentence: `Heart failure` -> `heart failure`, acronyms (`AFib`, `HTN`) unchanged."""
    return form[:1].lower() + form[1:] if form[1:2].islower() else form


def _render(template: str, rng: random.Random, patient: _Patient, form: str = "") -> str:
    """Fill a template's placeholders: {x}/{X} with the surface form, the others with fresh random values."""
    values = {"x": _in_sentence(form), "X": _capitalize(form)}
    for field in re.findall(r"{(\w+)}", template):
        if field not in values:
            value = _FIELDS[field.lower()](rng, patient)
            values[field] = _capitalize(value) if field[0].isupper() else value
    return template.format(**values)


def _sample_codes(
    rng: random.Random, codes: list[SyntheticCode], weights: list[float], count: int, exclude: set[str], sex: str | None
) -> list[SyntheticCode]:
    """Draw `count` distinct codes by frequency weight, at most one per category and none from `exclude`d ones."""
    pool = [(code, weight) for code, weight in zip(codes, weights) if code.code[:3] not in exclude]
    pool = [(code, weight) for code, weight in pool if sex is None or code.sex in (None, sex)]
    picked = []
    while pool and len(picked) < count:
        code = rng.choices([code for code, _ in pool], [weight for _, weight in pool])[0]
        picked.append(code)
        pool = [(other, weight) for other, weight in pool if other.code[:3] != code.code[:3]]
    return picked


def _plan_mentions(
    rng: random.Random,
    patient: _Patient,
    positives: list[SyntheticCode],
    distractors: list[SyntheticCode],
    late_fraction: float,
) -> dict[str, list[tuple[str, SyntheticCode]]]:
    """Decide where each code is mentioned: section -> [(polarity, code)].

    The first positive is the reason for admission; each other positive is mentioned only in the discharge diagnoses
    with probability `late_fraction`, else once or twice in the body and maybe in the discharge diagnoses.
    Distractors are negated (same sex only) or family history, once or twice, rarely in the discharge diagnoses.
    """
    mentions: dict[str, list[tuple[str, SyntheticCode]]] = {key: [] for _, key in SECTIONS}
    for index, code in enumerate(positives):
        if index == 0:
            slots = ["chief_complaint", "hpi", "course", "discharge"]
        elif rng.random() < late_fraction:
            slots = ["discharge"]
        else:
            slots = rng.sample(sorted(set(SLOTS["positive"])), rng.randint(1, 2))
            slots += ["discharge"] if rng.random() < 0.5 else []
        mentions.update({slot: mentions[slot] + [("positive", code)] for slot in slots})
    for code in distractors:
        can_be_family = code.code[0] not in "RZ"  # symptoms and status codes do not run in families
        can_be_negated = code.sex in (None, patient.sex)
        polarity = "negated" if can_be_negated and (not can_be_family or rng.random() < 0.75) else "family"
        slots = list(dict.fromkeys(rng.choices(SLOTS[polarity], k=rng.randint(1, 2))))
        slots += ["discharge"] if polarity == "negated" and rng.random() < 0.1 else []
        mentions.update({slot: mentions[slot] + [(polarity, code)] for slot in slots})
    return mentions


def _section_lines(
    rng: random.Random, patient: _Patient, key: str, mentions: list[tuple[str, SyntheticCode]]
) -> list[str]:
    """The lines of one section before filler: its mentions (shuffled) and its fixed structure."""
    lines = [
        _render(rng.choice(TEMPLATES[key, polarity]), rng, patient, rng.choice(code.forms))
        for polarity, code in mentions
    ]
    if key == "discharge":
        return ["Primary:", lines[0], "Secondary:"] + [f"- {line}" for line in rng.sample(lines[1:], len(lines) - 1)]
    rng.shuffle(lines)
    if key == "hpi":
        return [f"{patient.age}-year-old {'woman' if patient.sex == 'F' else 'man'} presenting to the ED."] + lines
    if key == "exam":
        exam = [f"{system}: {_render(rng.choice(findings), rng, patient)}." for system, findings in EXAM]
        return exam + lines
    if key in ("medications", "discharge_medications"):
        return [f"{number}. {drug}" for number, drug in enumerate(rng.sample(DRUGS, rng.randint(4, 9)), start=1)]
    if key == "condition":
        return ["Mental status: clear and coherent.", "Activity status: ambulatory, independent."]
    if key == "pmh":
        return lines + [rng.choice(["- s/p tonsillectomy", "- seasonal allergies", "- remote knee arthroscopy"])]
    return lines or (["Noncontributory."] if key == "family" else [])


def _count_words(sections: dict[str, list[str]], until: str | None = None) -> int:
    words = 0
    for heading, key in SECTIONS:
        if key == until:
            break
        words += len(heading.split()) + sum(len(line.split()) for line in sections[key])
    return words


def _add_filler(
    rng: random.Random, patient: _Patient, sections: dict[str, list[str]], num_words: int, discharge_from: int
) -> None:
    """Insert filler at random places until the note has `num_words` words and the discharge diagnoses start after
    word `discharge_from`."""
    unused = {key: rng.sample(templates, len(templates)) for key, templates in FILLER.items()}

    def insert(key: str) -> int:
        key, template = (key, unused[key].pop()) if unused[key] else ("results", rng.choice(LAB_PANELS))
        line = _render(template, rng, patient)
        sections[key].insert(rng.randint(1 if key == "hpi" else 0, len(sections[key])), line)
        return len(line.split())

    for key, count in FILLER_PER_SECTION.items():
        for _ in range(count):
            insert(key)
    total, before_discharge = _count_words(sections), _count_words(sections, until="discharge")
    while total < num_words or before_discharge < discharge_from:
        words = insert(rng.choice(PADDED_SECTIONS))  # padded sections all come before the discharge diagnoses
        total, before_discharge = total + words, before_discharge + words


def generate_note(
    rng: random.Random,
    codes: list[SyntheticCode],
    weights: list[float],
    num_words: int,
    codes_per_note: tuple[int, int] = (3, 8),
    distractors_per_note: tuple[int, int] = (3, 7),
    late_fraction: float = 0.25,
) -> tuple[str, list[str]]:
    """One discharge summary of about `num_words` words (more if its content needs it, or its late evidence: see
    `LATE_EVIDENCE_WORD`) and its sorted codes."""
    patient = _Patient(sex=rng.choice("FM"), age=rng.randint(22, 95))
    positives = _sample_codes(rng, codes, weights, rng.randint(*codes_per_note), set(), patient.sex)
    exclude = {code.code[:3] for code in positives}
    distractors = _sample_codes(rng, codes, weights, rng.randint(*distractors_per_note), exclude, None)
    mentions = _plan_mentions(rng, patient, positives, distractors, late_fraction)
    sections = {key: _section_lines(rng, patient, key, mentions[key]) for _, key in SECTIONS}
    _add_filler(rng, patient, sections, num_words, LATE_EVIDENCE_WORD if late_fraction > 0 else 0)
    header = [
        "DISCHARGE SUMMARY",
        f"Admission Date: [**{_FIELDS['date'](rng, patient)}**]",
        f"Sex: {patient.sex}   Age: {patient.age}   Service: MEDICINE",
    ]
    body = ["\n".join([f"{heading}:"] + sections[key]) for heading, key in SECTIONS]
    return "\n\n".join(["\n".join(header)] + body), sorted(code.code for code in positives)


def zipf_weights(num_codes: int, exponent: float = 1.0) -> list[float]:
    """Relative frequency of the code of each rank: 1 / rank**exponent (a long tail)."""
    return [1.0 / rank**exponent for rank in range(1, num_codes + 1)]


def generate_corpus(
    output_dir: str | Path,
    num_train: int = 1500,
    num_validation: int = 250,
    num_test: int = 250,
    num_codes: int = 50,
    seed: int = 0,
    min_words: int = 500,
    max_words: int = 900,
    codes_per_note: tuple[int, int] = (3, 8),
    distractors_per_note: tuple[int, int] = (3, 7),
    late_fraction: float = 0.25,
    zipf_exponent: float = 1.0,
) -> dict[str, Path]:
    """Write train/validation/test.jsonl (`{"id", "text", "labels"}`), codes.txt and descriptions.tsv.

    codes.txt is the label list (most frequent first); descriptions.tsv holds each code's CMS description and the
    surface forms its mentions use, tab-separated (label queries can be initialised from the descriptions).
    Notes are at least as long as their sections and mentions need, which `max_words` cannot undercut; with late
    evidence (`late_fraction` above 0) that is past word `LATE_EVIDENCE_WORD`, so a shorter `max_words` is refused.
    """
    if late_fraction > 0 and max_words <= LATE_EVIDENCE_WORD:
        raise ValueError(
            f"max_words {max_words}: with late evidence (late_fraction {late_fraction}) the discharge diagnoses start "
            f"after word {LATE_EVIDENCE_WORD}, so notes are longer; pass a larger --max_words, or --late_fraction 0 "
            "for shorter notes (their sections and code mentions still take a few hundred words)"
        )
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words} and {max_words}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    codes = select_codes(num_codes, seed)
    weights = zipf_weights(num_codes, zipf_exponent)
    paths = {}
    for split, size in (("train", num_train), ("validation", num_validation), ("test", num_test)):
        rng = random.Random(f"{seed}:{split}")
        paths[split] = output_dir / f"{split}.jsonl"
        with paths[split].open("w", encoding="utf-8") as file:
            for index in tqdm(range(size), desc=f"Writing {split}", disable=size < 1000):
                num_words = rng.randint(min_words, max_words)
                text, labels = generate_note(
                    rng, codes, weights, num_words, codes_per_note, distractors_per_note, late_fraction
                )
                file.write(json.dumps({"id": f"{split}-{index:06d}", "text": text, "labels": labels}) + "\n")
    paths["codes"] = output_dir / "codes.txt"
    paths["codes"].write_text("".join(f"{code.code}\n" for code in codes), encoding="utf-8")
    paths["descriptions"] = output_dir / "descriptions.tsv"
    rows = [f"{code.code}\t{code.description}\t{' | '.join(code.forms)}\n" for code in codes]
    paths["descriptions"].write_text("code\tdescription\tsurface_forms\n" + "".join(rows), encoding="utf-8")
    return paths


# Named corpus sizes. "demo" is `make demo`'s corpus; "hard" is the quality benchmark's (benchmarks/quality.py): six
# times the codes on a Zipf tail, four times the test notes, notes about as long as a MIMIC discharge summary's body.
PRESETS: dict[str, dict] = {
    "demo": {},
    "hard": dict(num_train=3000, num_validation=500, num_test=1000, num_codes=300, min_words=400, max_words=600),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a synthetic ICD-10-CM coding corpus (JSON Lines).")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="Corpus sizes to start from (explicit flags override them); see PRESETS.")
    parser.add_argument("--output_dir", type=str, default="data/synthetic")
    parser.add_argument("--num_train", type=int, default=1500)
    parser.add_argument("--num_validation", type=int, default=250)
    parser.add_argument("--num_test", type=int, default=250)
    parser.add_argument("--num_codes", type=int, default=50, help="Label set size (up to several hundred).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_words", type=int, default=500)
    parser.add_argument("--max_words", type=int, default=900)
    parser.add_argument("--codes_per_note", type=int, nargs=2, default=(3, 8), metavar=("MIN", "MAX"))
    parser.add_argument("--distractors_per_note", type=int, nargs=2, default=(3, 7), metavar=("MIN", "MAX"),
                        help="Codes mentioned negated or as family history, which must not be coded.")
    parser.add_argument("--late_fraction", type=float, default=0.25,
                        help="Share of secondary codes mentioned only in the discharge diagnoses (after word 520).")
    parser.add_argument("--zipf_exponent", type=float, default=1.0, help="Larger: a longer tail of rare codes.")
    preset, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[preset.preset])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()}
    del options["preset"]
    try:
        paths = generate_corpus(**options)
    except ValueError as error:  # sizes that cannot be honoured: said before anything is written
        raise SystemExit(f"error: {error}") from None
    seconds = time.perf_counter() - start
    for split in ("train", "validation", "test"):
        records = [json.loads(line) for line in paths[split].open(encoding="utf-8")]
        lengths = [len(record["text"].split()) for record in records]
        words = sum(lengths) / max(len(records), 1)
        labels = sum(len(record["labels"]) for record in records) / max(len(records), 1)
        print(f"{split:>10}: {len(records)} notes, {words:.0f} words and {labels:.1f} codes per note -> {paths[split]}")
        if longer := sum(length > args.max_words for length in lengths):
            print(f"{'':>10}  {longer} of {len(records)} notes are longer than --max_words {args.max_words} (up to "
                  f"{max(lengths)} words): a note has at least the words its header, sections and code mentions take"
                  + (f", and its discharge diagnoses start after word {LATE_EVIDENCE_WORD}" if args.late_fraction > 0
                     else ""))
    print(f"Wrote {paths['codes']} and {paths['descriptions']} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
