"""The `icd-coding` pipeline as a coder uses it: codes with descriptions and evidence that points at the right text,
checked on a tiny model trained on synthetic notes (tests/synthetic_coding.py)."""

import json
import os
import random
import re
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import pipeline
from transformers.testing_utils import CaptureLogger

from modeling_bertxml import BertXMLForMultiLabelCoding, ICDCodingPipeline
from modeling_bertxml.model import pipeline_bertxml
from modeling_bertxml.model.pipeline_bertxml import evidence_spans, note_evidence, select_codes
from modeling_bertxml.release.pipeline_folder import make_pipeline_ready
from modeling_bertxml.model.configuration_bertxml import vocab_fingerprint
from tests.conftest import folder_state, run_in_fresh_interpreter, shuffled_tokenizer, tiny_config, tiny_tokenizer
from tests.synthetic_coding import CODES, DESCRIPTIONS, synthetic_note, trained_coder


def overlaps(span: dict, start: int, end: int) -> bool:
    return span["start"] < end and start < span["end"]


def assert_same_coding(results: list[list[dict]], expected: list[list[dict]]) -> None:
    """Same codes, descriptions and evidence offsets and text; scores and attention equal up to float noise."""

    def split(notes: list[list[dict]]) -> tuple[list, list]:
        exact, numbers = [], []
        for item in (item for note in notes for item in note):
            spans = [(span["start"], span["end"], span["text"]) for span in item["evidence"]]
            exact.append((item["code"], item["description"], spans))
            numbers += [item["score"]] + [span["attention"] for span in item["evidence"]]
        return exact, numbers

    (exact, numbers), (expected_exact, expected_numbers) = split(results), split(expected)
    assert [len(note) for note in results] == [len(note) for note in expected]
    assert exact == expected_exact
    assert numbers == pytest.approx(expected_numbers, abs=1e-5)


@pytest.fixture(scope="module")
def coder() -> ICDCodingPipeline:
    model, tokenizer = trained_coder()
    return ICDCodingPipeline(model=model, tokenizer=tokenizer, device=-1)


@pytest.fixture(scope="module")
def test_notes() -> list[tuple]:
    rng = random.Random(1)
    return [synthetic_note(rng) for _ in range(100)]


@pytest.fixture(scope="module")
def predictions(coder: ICDCodingPipeline, test_notes: list) -> list[list[dict]]:
    return coder([text for text, *_ in test_notes], batch_size=8)


@pytest.fixture(scope="module")
def model_folder(coder: ICDCodingPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("icd-coder")
    coder.model.save_pretrained(folder)
    coder.tokenizer.save_pretrained(folder)
    make_pipeline_ready(folder, descriptions=DESCRIPTIONS)
    return folder


def test_evidence_points_at_the_mention_that_triggered_each_code(
    coder: ICDCodingPipeline, test_notes: list, predictions: list
) -> None:
    hits, later_chunk_hits, later_chunk_mentions, true_positives, gold = 0, 0, 0, 0, 0
    for (text, codes, mentions, _), predicted in zip(test_notes, predictions):
        gold += len(codes)
        offsets = coder.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        for item in predicted:
            if item["code"] not in codes:
                continue
            true_positives += 1
            start, end = mentions[item["code"]]
            top = item["evidence"][0]
            hit = start <= top["start"] and top["end"] <= end  # inside the mention: it points at it
            hits += hit
            if [s for s, _ in offsets].index(start) >= coder.model.config.max_position_embeddings:
                later_chunk_mentions += 1
                later_chunk_hits += hit
    assert true_positives >= 0.8 * gold  # the model learned the codes, so the evidence check is not vacuous
    assert hits >= 0.8 * true_positives
    assert later_chunk_mentions >= 0.2 * true_positives  # notes are longer than one chunk...
    assert later_chunk_hits >= 0.8 * later_chunk_mentions  # ...and evidence in later chunks is found as well


def test_negated_mentions_are_not_offered_as_evidence_more_often_than_chance(
    test_notes: list, predictions: list
) -> None:
    on_negation, by_chance, spans = 0, 0.0, 0
    for (text, _, _, negations), predicted in zip(test_notes, predictions):
        negated_share = sum(end - start for start, end in negations) / len(text)
        for item in predicted:
            for span in item["evidence"]:
                spans += 1
                on_negation += any(overlaps(span, start, end) for start, end in negations)
                by_chance += negated_share
    assert spans > 100
    assert by_chance > 5  # the test notes do hold negations
    assert on_negation <= by_chance


def test_offsets_slice_the_original_text_exactly_whatever_its_spacing_and_unicode(coder: ICDCodingPipeline) -> None:
    note = (
        "Pátient\u00a0admitted  with   CHEST\tpain… 🙂\r\n\r\n"
        "denies  pneumonia.\u200b Type 2 diabetes-mellitus, πνευμονία heart\n\n\nfailure   "
    )
    result = coder(note, threshold=0.0, num_evidence_spans=20)
    assert {item["code"] for item in result} == set(CODES)
    spans = [span for item in result for span in item["evidence"]]
    assert len(spans) > len(CODES)
    for span in spans:
        assert note[span["start"] : span["end"]] == span["text"]
        assert span["text"] == span["text"].strip() and span["text"]
        for inside, outside in ((span["start"], span["start"] - 1), (span["end"] - 1, span["end"])):
            if 0 <= outside < len(note):  # a span never cuts a word in two
                assert not (note[inside].isalnum() and note[outside].isalnum()), span
    # Merged phrases keep the whitespace they cross as written (a tab, blank lines).
    assert any(re.search(r"\w[\t\n]+\w", span["text"]) for span in spans)


@pytest.mark.parametrize(
    "words, weights, expected",
    [
        # [CLS] diab ##etes type 2 [SEP]: sub-words sum into one word, consecutive kept words merge into a phrase
        ([-1, 0, 0, 1, 2, -1], [0.5, 0.2, 0.2, 0.05, 0.05, 0.0], [("diabetes type 2", 0.5)]),
        # a word under a tenth of the heaviest one splits the phrase; the heavier phrase comes first
        ([-1, 0, 0, 1, 2, -1], [0.0, 0.1, 0.0, 0.005, 0.8, 0.095], [("2", 0.8), ("diabetes", 0.1)]),
    ],
)
def test_evidence_spans_are_whole_words_merged_into_phrases(words: list, weights: list, expected: list) -> None:
    text = "  Diabetes type 2"
    offsets = torch.tensor([[0, 0], [2, 6], [6, 10], [11, 15], [16, 17], [0, 0]])
    spans = evidence_spans(text, offsets, torch.tensor(words), torch.tensor(weights), num_spans=5)
    assert [(span["text"].lower(), round(span["attention"], 6)) for span in spans] == expected
    assert evidence_spans(text, offsets, torch.tensor(words), torch.tensor(weights), num_spans=1) == spans[:1]
    # A note's codes at once (the pipeline's path) give each code's own spans.
    several = torch.stack([torch.tensor(weights), torch.tensor(weights).flip(0), torch.zeros(len(weights))])
    assert note_evidence(text, offsets, torch.tensor(words), several, num_spans=5) == [
        evidence_spans(text, offsets, torch.tensor(words), code_weights, num_spans=5) for code_weights in several
    ]


def test_select_codes_applies_threshold_strictly_and_top_k() -> None:
    scores = torch.tensor([[0.9, 0.2, 0.5, 0.7], [0.1, 0.3, 0.05, 0.2]])
    codes, kept = select_codes(scores, threshold=0.5, top_k=None)
    assert codes.tolist() == [[0, 3], [-1, -1]]  # 0.5 is not above 0.5
    codes, kept = select_codes(scores, threshold=None, top_k=3)
    assert codes.tolist() == [[0, 3, 2], [1, 3, 0]]
    torch.testing.assert_close(kept, torch.tensor([[0.9, 0.7, 0.5], [0.3, 0.2, 0.1]]))
    codes, _ = select_codes(scores, threshold=0.25, top_k=1)
    assert codes.tolist() == [[0], [1]]


@pytest.mark.parametrize("label_attention_dim, queries_per_code", [(None, 1), (8, 1), (None, 3)])
def test_attention_of_selected_codes_equals_the_model_label_attentions(
    label_attention_dim: int | None, queries_per_code: int
) -> None:
    """The evidence of a code is the attention of its query that scores best on the note, as the model returns it."""
    config = tiny_config(num_labels=9, label_attention_dim=label_attention_dim, label_queries_per_code=queries_per_code)
    model = BertXMLForMultiLabelCoding(config).eval()
    ids = torch.randint(5, model.config.vocab_size, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 23:] = 0
    codes = torch.tensor([[7, 2, 0], [4, 0, 0]])
    with torch.no_grad():
        full = model(ids, attention_mask=mask, output_label_attentions=True).label_attentions
        states = model.bert(ids, attention_mask=mask).last_hidden_state
        selected = model.label_head.attention(states, mask, codes)
    torch.testing.assert_close(selected[0], full[0, [7, 2, 0]])
    torch.testing.assert_close(selected[1], full[1, [4, 0, 0]])


def test_scores_thresholds_and_batching(coder: ICDCodingPipeline, test_notes: list) -> None:
    notes = [text for text, *_ in test_notes[:6]]
    one_by_one = [coder(note, threshold=0.0) for note in notes]
    batched = coder(notes, threshold=0.0, batch_size=4)
    inputs = coder.tokenizer(notes, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.sigmoid(coder.model(**inputs).logits)
    assert_same_coding(batched, one_by_one)
    for batch, row in zip(batched, probabilities):
        assert [item["score"] for item in batch] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-5)
    assert [len(result) for result in coder(notes, top_k=2)] == [2] * len(notes)
    default = coder(notes)  # the model's tuned threshold
    assert all(item["score"] > coder.model.config.threshold for result in default for item in result)
    assert sum(map(len, default)) < sum(map(len, batched))
    descriptions = {item["code"]: item["description"] for result in batched for item in result}
    assert descriptions == {code: DESCRIPTIONS.get(code) for code in CODES}
    assert coder(["", "  \n"], threshold=0.0) == [[], []]  # an empty note is coded as "no codes"


def test_bad_parameters_and_inputs_are_refused(coder: ICDCodingPipeline) -> None:
    with pytest.raises(ValueError, match="threshold"):
        coder("chest pain", threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        coder("chest pain", top_k=0)
    with pytest.raises(TypeError, match="note"):
        coder(42)
    with pytest.raises(ValueError, match="Unknown parameters.*'topk'"):
        coder.handle_request({"inputs": "chest pain", "parameters": {"topk": 2}})
    with pytest.raises(ValueError, match="inputs"):
        coder.handle_request({"text": "chest pain"})


def test_endpoint_requests_answer_like_the_pipeline(coder: ICDCodingPipeline) -> None:
    notes = ["patient admitted with pneumonia", "denies chest pain, heart failure"]
    answer = coder.handle_request({"inputs": notes, "parameters": {"top_k": 2, "batch_size": 2}})
    assert_same_coding(answer, coder(notes, top_k=2))
    assert_same_coding([coder.handle_request({"inputs": notes[0]})], [coder(notes[0])])


def test_note_longer_than_the_model_reads_is_truncated_with_a_warning(coder: ICDCodingPipeline) -> None:
    note = "pneumonia " + "patient was stable " * 40 + "heart failure"
    with CaptureLogger(pipeline_bertxml.logger) as captured:
        result = coder(note, threshold=0.0)
    assert "only its beginning is coded" in captured.out
    coded_end = coder.tokenizer(note, truncation=True, max_length=64, return_offsets_mapping=True)["offset_mapping"]
    assert all(span["end"] <= coded_end[-2][1] for item in result for span in item["evidence"])
    assert result[0]["code"] == "J18.9"


def test_saved_folder_has_the_pipeline_and_descriptions(model_folder: Path) -> None:
    config = json.loads((model_folder / "config.json").read_text())
    assert config["custom_pipelines"]["icd-coding"]["impl"] == "pipeline_bertxml.ICDCodingPipeline"
    assert config["label_descriptions"] == DESCRIPTIONS
    assert {"pipeline_bertxml.py", "modeling_bertxml.py", "configuration_bertxml.py"} <= set(os.listdir(model_folder))
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("icd-coding", model=str(model_folder))


FRESH_INTERPRETER = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_bertxml"] = None  # the package must not be importable: remote code only
    from transformers import pipeline
    coder = pipeline("icd-coding", model=sys.argv[1], trust_remote_code=True)
    assert not type(coder).__module__.startswith("modeling_bertxml"), type(coder).__module__
    print(json.dumps(coder(json.loads(sys.argv[2]), batch_size=2)))
    """
)


def test_pipeline_runs_from_the_saved_folder_without_the_package(
    coder: ICDCodingPipeline, model_folder: Path, test_notes: list
) -> None:
    notes = [text for text, *_ in test_notes[:3]]
    remote = run_in_fresh_interpreter(FRESH_INTERPRETER, str(model_folder), json.dumps(notes), cwd=model_folder.parent)
    assert_same_coding(remote, coder(notes, batch_size=2))


def test_bf16_runs_only_when_asked_on_cpu_and_codes_the_same(coder: ICDCodingPipeline, test_notes: list) -> None:
    """bf16 autocast is the default on a CUDA GPU only: on CPU the pipeline runs float32 unless asked, and bf16
    changes scores by rounding, not the codes of clear-cut notes."""
    seen: list[torch.dtype] = []
    hook = coder.model.bert.encoder.layer[0].output.dense.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype)
    )
    notes = [text for text, *_ in test_notes[:8]]
    try:
        default = coder(notes, batch_size=4)
        bf16 = coder(notes, batch_size=4, bf16=True)
    finally:
        hook.remove()
    assert not coder.runs_bf16() and coder.runs_bf16(True)
    assert seen == [torch.float32] * 2 + [torch.bfloat16] * 2
    codes = [{item["code"]: item["score"] for item in note} for note in default]
    bf16_codes = [{item["code"]: item["score"] for item in note} for note in bf16]
    assert [set(note) for note in bf16_codes] == [set(note) for note in codes]  # the order of near ties may swap
    for note, expected in zip(bf16_codes, codes):
        assert note == pytest.approx(expected, abs=0.05)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused_at_load(tmp_path: Path) -> None:
    model = BertXMLForMultiLabelCoding(tiny_config(vocab_size=8))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model only 8"):
        pipeline("icd-coding", model=model, tokenizer=tiny_tokenizer(), pipeline_class=ICDCodingPipeline)


def test_a_pretrained_encoder_is_refused_as_a_coder_by_the_pipeline_and_the_export(tmp_path: Path) -> None:
    """A BertXMLForMaskedLM folder loads as a coder with a random code head, which coded every note with LABEL_0..."""
    from modeling_bertxml import BertXMLForMaskedLM
    from modeling_bertxml.release.onnx_export import export_onnx

    tokenizer = tiny_tokenizer()
    BertXMLForMaskedLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    before = folder_state(tmp_path / "mlm")
    refused = rf"{tmp_path / 'mlm'} holds a BertXMLForMaskedLM, not a coder: .* train.py"
    with pytest.raises(ValueError, match=refused):
        pipeline("icd-coding", model=str(tmp_path / "mlm"), pipeline_class=ICDCodingPipeline)
    with pytest.raises(ValueError, match=refused):
        export_onnx(tmp_path / "mlm")
    assert folder_state(tmp_path / "mlm") == before  # the export wrote nothing


def test_another_runs_tokenizer_of_the_same_size_is_refused_at_load() -> None:
    tokenizer = tiny_tokenizer()
    model = BertXMLForMultiLabelCoding(tiny_config(vocab_size=len(tokenizer)))
    model.config.vocab_fingerprint = vocab_fingerprint(tokenizer.get_vocab())  # as train.py records it
    pipeline("icd-coding", model=model, tokenizer=tokenizer, pipeline_class=ICDCodingPipeline)
    with pytest.raises(ValueError, match=r"not the tokenizer the model was trained with: its \d+ tokens are another "
                                         r"vocabulary \(fingerprint \w+, the model's \w+\)"):
        pipeline("icd-coding", model=model, tokenizer=shuffled_tokenizer(tokenizer), pipeline_class=ICDCodingPipeline)
