"""Synthetic notes whose codes are each triggered by one phrase, and a tiny coding model trained on them.

Each note holds one to three codes' trigger phrases at random positions, zero to two other codes mentioned negated
("denies X"), and filler between them; with the tiny tokenizer a note spans two to three 16-token chunks.
"""

import functools
import random

import torch
from transformers import PreTrainedTokenizerFast

from modeling_bertxml import BertXMLForMultiLabelCoding
from tests.conftest import tiny_config, tiny_tokenizer

TRIGGERS = {
    "R07.9": "chest pain",
    "E11.9": "type 2 diabetes mellitus",
    "I10": "essential hypertension",
    "J18.9": "pneumonia",
    "N17.9": "acute kidney injury",
    "I50.9": "heart failure",
}
CODES = list(TRIGGERS)
DESCRIPTIONS = {"R07.9": "Chest pain, unspecified", "I10": "Essential (primary) hypertension"}
FILLER = "patient admitted discharged with stable vitals blood pressure glucose insulin metformin the a and to".split()
NEGATIONS = ("denies {}", "no evidence of {}")
SEPARATORS = (" ", "  ", "\n", ", ", ". ")


def synthetic_note(rng: random.Random) -> tuple[str, list[str], dict[str, tuple[int, int]], list[tuple[int, int]]]:
    """A note, its codes, each code's mention (character span) and the spans of the negated mentions."""
    codes = rng.sample(CODES, rng.randint(1, 3))
    negated = rng.sample([code for code in CODES if code not in codes], rng.randint(0, 2))
    pieces = [(code, TRIGGERS[code]) for code in codes]
    pieces += [(None, rng.choice(NEGATIONS).format(TRIGGERS[code])) for code in negated]
    rng.shuffle(pieces)
    text, mentions, negations = "", {}, []
    for code, phrase in pieces:
        text += " ".join(rng.choices(FILLER, k=rng.randint(1, 5))) + rng.choice(SEPARATORS)
        if code is None:
            negations.append((len(text), len(text) + len(phrase)))
        else:
            mentions[code] = (len(text), len(text) + len(phrase))
        text += phrase + rng.choice(SEPARATORS)
    return text + " ".join(rng.choices(FILLER, k=rng.randint(1, 4))), codes, mentions, negations


@functools.cache
def trained_coder() -> tuple[BertXMLForMultiLabelCoding, PreTrainedTokenizerFast]:
    """A 2-layer, 32-wide model trained for 600 steps of 16 notes (about 10 s on one busy core); shared, do not edit."""
    rng = random.Random(0)
    torch.manual_seed(0)
    config = tiny_config(id2label=dict(enumerate(CODES)), label_descriptions=DESCRIPTIONS)
    tokenizer = tiny_tokenizer(config.max_note_length)
    model = BertXMLForMultiLabelCoding(config)
    notes = [synthetic_note(rng) for _ in range(512)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster than two contended ones
    try:
        for _ in range(600):
            batch = rng.sample(notes, 16)
            inputs = tokenizer([text for text, *_ in batch], padding=True, truncation=True, return_tensors="pt")
            labels = torch.tensor([[float(code in codes) for code in CODES] for _, codes, *_ in batch])
            model(**inputs, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tokenizer
