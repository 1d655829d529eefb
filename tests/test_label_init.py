"""Description-initialised label queries: codes start out attending to (and scoring) text like their description."""

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers.testing_utils import CaptureLogger

from modeling_bertxml import BertXMLForMultiLabelCoding

from modeling_bertxml.training import label_init
from modeling_bertxml.data.code_systems import code_descriptions
from modeling_bertxml.training.label_init import embed_texts, init_label_queries_from_descriptions
from modeling_bertxml.model.pipeline_bertxml import evidence_spans
from modeling_bertxml.release.pipeline_folder import make_pipeline_ready
from tests.conftest import tiny_config, tiny_tokenizer
from tests.synthetic_coding import CODES, FILLER, TRIGGERS, trained_coder

NOTE = (
    "patient admitted with pneumonia and heart failure, history of type 2 diabetes mellitus, chest pain, "
    "acute kidney injury and essential hypertension"
)


def head_with_random_queries() -> tuple[BertXMLForMultiLabelCoding, object]:
    """The trained tiny model's encoder under a label head that has forgotten everything."""
    trained, tokenizer = trained_coder()
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.label_head.queries.normal_(0.0, model.config.initializer_range)
        model.label_head.output_weight.normal_(0.0, model.config.initializer_range)
    return model, tokenizer


def top_evidence(model: BertXMLForMultiLabelCoding, tokenizer, note: str) -> list[str]:
    """The heaviest evidence span of every code in `note`."""
    encoded = tokenizer(note, return_offsets_mapping=True, return_tensors="pt")
    word_ids = torch.tensor([-1 if word is None else word for word in encoded.word_ids()])
    with torch.no_grad():
        states = model.bert(encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
        codes = torch.arange(model.config.num_labels)[None]
        attentions = model.label_head.attention(states, encoded["attention_mask"], codes)[0]
    offsets = encoded["offset_mapping"][0]
    return [evidence_spans(note, offsets, word_ids, weights, 1)[0]["text"] for weights in attentions]


def attention_on_own_words(model: BertXMLForMultiLabelCoding, tokenizer, note: str) -> torch.Tensor:
    """Each code's attention mass on the tokens of its own trigger phrase in `note`."""
    encoded = tokenizer(note, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        states = model.bert(encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
        codes = torch.arange(model.config.num_labels)[None]
        attentions = model.label_head.attention(states, encoded["attention_mask"], codes)[0]
    masses = []
    offsets = encoded["offset_mapping"][0].tolist()
    for code, weights in zip(CODES, attentions):
        start, end = note.index(TRIGGERS[code]), note.index(TRIGGERS[code]) + len(TRIGGERS[code])
        inside = [start <= a and b <= end and a < b for a, b in offsets]
        masses.append(weights[torch.tensor(inside)].sum())
    return torch.stack(masses)


def test_description_queries_attend_to_the_description_in_a_note() -> None:
    """Averaged over codes: with the default head initialisation the tiny coder's encoder serves some descriptions
    better than others (pneumonia not at all), so the claim is the feature's purpose, not a per-code guarantee."""
    model, tokenizer = head_with_random_queries()
    assert not any(top == TRIGGERS[code] for code, top in zip(CODES, top_evidence(model, tokenizer, NOTE)))
    before = attention_on_own_words(model, tokenizer, NOTE)
    initialised = init_label_queries_from_descriptions(model, tokenizer, TRIGGERS)
    assert initialised == CODES
    after = attention_on_own_words(model, tokenizer, NOTE)
    assert after.mean() > 2 * before.mean(), (before, after)


def test_description_output_weights_score_notes_that_mention_the_description_higher() -> None:
    model, tokenizer = head_with_random_queries()
    init_label_queries_from_descriptions(model, tokenizer, TRIGGERS)
    rng = random.Random(0)
    for index, (code, phrase) in enumerate(TRIGGERS.items()):
        before, after = " ".join(rng.choices(FILLER, k=8)), " ".join(rng.choices(FILLER, k=8))
        notes = tokenizer([f"{before} {phrase} {after}", f"{before} {after}"], padding=True, return_tensors="pt")
        with torch.no_grad():
            mentioned, absent = model(**notes).logits[:, index]
        assert mentioned > absent, code

    kept = model.label_head.output_weight.clone()
    init_label_queries_from_descriptions(model, tokenizer, {"I10": "heart failure"}, init_output_weights=False)
    assert torch.equal(model.label_head.output_weight, kept)


@pytest.mark.parametrize("label_attention_dim", [None, 8])
def test_query_is_the_unit_direction_of_the_mean_embedding_of_the_code_texts(label_attention_dim: int | None) -> None:
    model = BertXMLForMultiLabelCoding(tiny_config(num_labels=3, label_attention_dim=label_attention_dim)).train()
    tokenizer = tiny_tokenizer()
    codes = list(model.config.id2label.values())
    texts = {codes[0]: "chest pain", codes[2]: ["heart failure", "history of heart failure"]}
    encoder = copy.deepcopy(model.bert.state_dict())
    untouched = model.label_head.queries[1].clone()
    with CaptureLogger(label_init.logger) as captured:
        assert init_label_queries_from_descriptions(model, tokenizer, texts) == [codes[0], codes[2]]
    assert "1 codes have no description" in captured.out and codes[1] in captured.out
    assert torch.equal(model.label_head.queries[1], untouched)
    assert model.training
    assert all(torch.equal(tensor, model.bert.state_dict()[name]) for name, tensor in encoder.items())

    model.eval()
    with torch.no_grad():
        vectors = embed_texts(model, tokenizer, ["chest pain", "heart failure", "history of heart failure"])
        vectors = torch.stack([vectors[0], vectors[1:].mean(0)])
        projection = model.label_head.projection
        expected = F.normalize(torch.tanh(projection(vectors)) if projection is not None else vectors, dim=-1)
    torch.testing.assert_close(model.label_head.queries[[0, 2]], expected)


def test_icd10_descriptions_fill_the_queries_and_the_saved_folder(tmp_path: Path) -> None:
    texts = code_descriptions(["I10", "N17.9", "LOCAL1"])
    assert texts["I10"][0] == "Essential (primary) hypertension" and "high blood pressure" in texts["I10"]
    assert "Acute kidney injury (nontraumatic)" in texts["N17.9"]
    assert "LOCAL1" not in texts  # a hospital's own code: its query stays random
    assert code_descriptions(["I10"], inclusion_terms=False) == {"I10": ["Essential (primary) hypertension"]}

    model = BertXMLForMultiLabelCoding(tiny_config(num_labels=2, id2label={0: "I10", 1: "LOCAL1"}))
    model.save_pretrained(tmp_path)
    make_pipeline_ready(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["label_descriptions"] == {"I10": "Essential (primary) hypertension"}
    assert "icd-coding" in config["custom_pipelines"]


def test_note_keywords_are_the_words_particular_to_each_codes_notes_in_the_notes_language(tmp_path: Path) -> None:
    from modeling_bertxml.data.notes import read_notes

    rows = [  # Spanish notes: no word of ICD-10-CM's English texts; "paciente" and "con" are in every note
        ("Paciente con neumonía y tos, 38 grados.", ["J18.9"]),
        ("Paciente con neumonía bilateral.", ["J18.9", "I10"]),
        ("Paciente con hipertensión arterial, 150 mmHg.", ["I10"]),
        ("Paciente con hipertensión y cefalea.", ["I10", "R51.9"]),
        ("Paciente con fractura.", ["S52.501A"]),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": text, "labels": codes}) + "\n" for text, codes in rows))
    notes = read_notes(str(path), "train", code_system="icd10cm")
    keywords = label_init.note_keywords(notes, ["J18.9", "I10", "R51.9", "E11.9"], tiny_tokenizer(), words=2)
    assert set(keywords) == {"J18.9", "I10", "R51.9"}  # E11.9: no note carries it; S52.501A: not asked for
    assert keywords["J18.9"] == "neumonia bilateral"  # in both its notes, then alphabetically among the rest
    assert keywords["I10"] == "hipertension arterial"  # the tokenizer's words: BERT's normaliser drops accents
    assert keywords["R51.9"] == "cefalea hipertension"  # "y" as often but in more notes; "paciente" is in every one
    assert not any(character.isdigit() for words in keywords.values() for character in words)
    # A code of fewer notes shares them with the other codes of those notes: it can be left to its texts.
    asked = ["J18.9", "I10", "R51.9"]
    assert label_init.note_keywords(notes, asked, tiny_tokenizer(), words=2, min_notes=2).keys() == {"J18.9", "I10"}
