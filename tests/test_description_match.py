"""The description match beside label attention: the TF-IDF cosine of a note and a code's official texts, codes
scored by it alone (zero-shot), and what a user sees of it (pipeline evidence, saved folders)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from transformers import pipeline

from modeling_bertxml import BertXMLForMultiLabelCoding, ICDCodingPipeline
from modeling_bertxml.data.code_systems import code_descriptions
from modeling_bertxml.data.notes import read_notes
from modeling_bertxml.release.pipeline_folder import make_pipeline_ready
from modeling_bertxml.training.label_init import add_description_match
from tests.conftest import assert_close_scaled, tiny_config, tiny_tokenizer

ATTENTION_CODES = ["E11.9", "I10"]
ZERO_SHOT_CODES = ["R07.9", "N17.9", "J18.9"]  # chest pain; acute kidney failure; pneumonia: in no training note
TRAIN_NOTES = [
    "patient with type 2 diabetes mellitus on metformin and insulin",
    "hypertension essential on lisinopril blood pressure stable",
    "type 2 diabetes mellitus glucose stable and hypertension",
]


@pytest.fixture
def model(tmp_path: Path) -> BertXMLForMultiLabelCoding:
    """A tiny coder of two codes with attention rows and three more scored by the match alone."""
    notes_file = tmp_path / "train.jsonl"
    notes_file.write_text("".join(json.dumps({"text": text, "labels": ["E11.9"]}) + "\n" for text in TRAIN_NOTES))
    tokenizer = tiny_tokenizer()
    config = tiny_config(
        vocab_size=len(tokenizer), id2label=dict(enumerate(ATTENTION_CODES)), num_labels=len(ATTENTION_CODES),
        code_system="icd10cm",
    )  # fmt: skip
    model = BertXMLForMultiLabelCoding(config).eval()
    frequencies = {code: 0.1 for code in ATTENTION_CODES + ZERO_SHOT_CODES}
    train = read_notes(str(notes_file), "train")
    add_description_match(model, tokenizer, train, ZERO_SHOT_CODES, frequencies, "icd10cm", 64, 64)
    return model


def encode(texts: list[str]) -> dict[str, torch.Tensor]:
    return tiny_tokenizer()(texts, padding=True, return_tensors="pt")


def test_the_match_is_the_tfidf_cosine_of_the_note_and_the_codes_texts(model) -> None:
    """scikit-learn's TF-IDF (sublinear counts, smoothed idf from the training notes, unit norm) over the tokens
    that are not special, as the reference: each logit is label attention's (or the prior bias) + scale x cosine."""
    tokenizer = tiny_tokenizer()
    special = set(tokenizer.all_special_ids)
    codes = ATTENTION_CODES + ZERO_SHOT_CODES
    texts = [" ; ".join(code_descriptions([code], code_system="icd10cm")[code]) for code in codes]
    notes = ["patient denies chest pain", "acute kidney injury and pneumonia with chest pain pain", "hypertension"]

    def tokens(text: str) -> list[int]:
        return [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i not in special]

    reference = TfidfVectorizer(analyzer=tokens, sublinear_tf=True, vocabulary=range(len(tokenizer)), lowercase=False)
    reference.fit(TRAIN_NOTES)
    cosine = (reference.transform(notes) @ reference.transform(texts).T).toarray()

    batch = encode(notes)
    with torch.no_grad():
        logits = model(**batch).logits
        states = model.bert(**batch).last_hidden_state
        attention_logits, _ = model.label_head(states, batch["attention_mask"])
    base = torch.cat([attention_logits, model.description_match.bias.expand(len(notes), -1)], dim=-1)
    expected = base + model.description_match.scale.detach() * torch.tensor(cosine, dtype=torch.float32)
    assert_close_scaled(logits, expected)
    assert cosine[0, codes.index("R07.9")] > 0.3  # the test means something: the note does read like the code


def test_padding_and_batching_do_not_change_the_match(model) -> None:
    notes = ["patient denies chest pain", "acute kidney injury with pneumonia admitted and discharged with insulin"]
    with torch.no_grad():
        together = model(**encode(notes)).logits
        alone = torch.cat([model(**encode([note])).logits for note in notes])
    assert_close_scaled(together, alone)


def test_a_code_no_training_note_carries_ranks_the_notes_that_name_it_first(model) -> None:
    notes = ["patient denies chest pain", "acute kidney injury", "history of pneumonia", "hypertension essential"]
    with torch.no_grad():
        logits = model(**encode(notes)).logits
    for note, code in enumerate(["R07.9", "N17.9", "J18.9"]):
        column = model.config.label2id[code]
        assert logits[:, column].argmax() == note, (code, logits[:, column])
    # A note that shares no word with any code text is scored at the codes' prior, nothing more.
    with torch.no_grad():
        plain = model(**encode(["the a and of"])).logits[0, len(ATTENTION_CODES) :]
    assert_close_scaled(plain, model.description_match.bias)


def test_the_loss_is_label_attentions_alone(model) -> None:
    """Codes without attention rows learn nothing from training notes (none carries them): their targets do not
    move the loss."""
    batch = encode(["patient with type 2 diabetes mellitus", "chest pain"])
    labels = torch.zeros(2, model.config.num_labels)
    labels[0, 0] = 1
    with_zero_shot_target = labels.clone()
    with_zero_shot_target[1, model.config.label2id["R07.9"]] = 1
    loss = model(**batch, labels=labels).loss
    torch.testing.assert_close(model(**batch, labels=with_zero_shot_target).loss, loss)
    attention = model.config.attention_labels
    logits = model(**batch).logits[:, :attention]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[:, :attention])
    torch.testing.assert_close(loss, expected)


def test_a_saved_model_reloads_with_equal_logits_and_new_codes_drop_the_old_tables(model, tmp_path: Path) -> None:
    batch = encode(["patient denies chest pain and acute kidney injury", "type 2 diabetes mellitus"])
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "coder")
    reloaded = BertXMLForMultiLabelCoding.from_pretrained(tmp_path / "coder").eval()
    assert reloaded.config.num_attention_labels == len(ATTENTION_CODES)
    assert [reloaded.config.id2label[i] for i in range(5)] == ATTENTION_CODES + ZERO_SHOT_CODES
    with torch.no_grad():
        assert_close_scaled(reloaded(**batch).logits, expected)
    # Other codes: the attention rows move with their codes; the match's tables were the old codes', so it goes.
    kept = reloaded.set_codes(["I10", "E11.9", "Z99.9"])
    assert kept == ["I10", "E11.9"] and reloaded.description_match is None
    with torch.no_grad():
        logits = reloaded(**batch).logits
        states = model.bert(**batch).last_hidden_state
        attention_logits, _ = model.label_head(states, batch["attention_mask"])
    assert logits.shape == (2, 3)
    assert_close_scaled(logits[:, :2], attention_logits[:, [1, 0]])


def test_the_pipeline_shows_the_words_a_zero_shot_code_shares_with_its_texts(model, tmp_path: Path) -> None:
    model.config.label_descriptions = {"R07.9": "Chest pain, unspecified"}
    model.config.threshold = 0.0  # every code: the order is what is checked
    folder = tmp_path / "coder"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    make_pipeline_ready(folder)
    coder = pipeline("icd-coding", model=str(folder), pipeline_class=ICDCodingPipeline)
    note = "the patient was admitted and denies chest pain"
    results = {item["code"]: item for item in coder(note, top_k=5)}
    chest = results["R07.9"]
    assert chest["description"] == "Chest pain, unspecified"
    assert [span["text"] for span in chest["evidence"]] == ["chest pain"]
    assert note[chest["evidence"][0]["start"] : chest["evidence"][0]["end"]] == "chest pain"
    assert results["N17.9"]["evidence"] == []  # shares no word with the note: no evidence rather than any
    scores = np.array([results[code]["score"] for code in ZERO_SHOT_CODES])
    assert scores.argmax() == 0
