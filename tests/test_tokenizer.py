"""Tokenizer training: reload with AutoTokenizer, special-token ids, the identifier and name filters, [UNK] rate."""

import errno
import json
import math
import os
import random
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from benchmarks.name_filter_recall import EXACT, summarise, varied_notes
from modeling_bertxml import BertXMLConfig
from tests.conftest import folder_state
from tokenizer_training.names import NameMask, collect_names, find_names
from tokenizer_training.train_tokenizer import (
    SPECIAL_TOKENS,
    _hold_out_tail,
    build_tokenizer,
    drop_identifier_tokens,
    evaluate_tokenizer,
    looks_like_identifier,
    main,
    train_tokenizer,
)

FINDINGS = ["chest pain", "shortness of breath", "dyspnea on exertion", "bilateral lower extremity edema",
            "productive cough", "type 2 diabetes mellitus", "essential hypertension", "atrial fibrillation",
            "community acquired pneumonia", "acute kidney injury", "congestive heart failure", "hyperlipidemia"]
PLANS = ["start metformin 500 mg twice daily", "continue lisinopril 10 mg", "chest x-ray ordered",
         "follow up in 2 weeks", "echocardiogram shows ejection fraction of 35%", "hemoglobin a1c 8.2"]


# Titles and labels without a name after them.
NO_NAMES = ["Patient: Alert and oriented", "Pt: NPO after midnight", "Drug name: Lisinopril", "CC: Chest Pain",
            "History of MS. Patient denies pain", "severe MR. Plan: diuresis", "HTN, DO NOT resuscitate",
            "Contact: Daughter", "Dr. on call notified"]


def synthetic_notes(num_notes: int, seed: int, num_patients: int = 30) -> list[str]:
    """Notes in which each patient's MRN, birth date and phone recur often enough to be learned as tokens."""
    rng = random.Random(seed)
    patients = [(rng.randint(1_000_000, 9_999_999), f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/1951",
                 f"555-{rng.randint(1000, 9999)}") for _ in range(num_patients)]
    notes = []
    for _ in range(num_notes):
        mrn, birth_date, phone = rng.choice(patients)
        visit = f"2019-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        notes.append(
            f"MRN {mrn} DOB {birth_date} seen on {visit}. Patient is a {rng.randint(20, 95)} year old with "
            f"{rng.choice(FINDINGS)} and {rng.choice(FINDINGS)}. BP {rng.randint(100, 180)}/{rng.randint(60, 100)}, "
            f"HR {rng.randint(50, 130)}. Plan: {rng.choice(PLANS)}. Call {phone} with questions."
        )
    return notes


def train_pipeline(notes: list[str], split_digits: bool = True, vocab_size: int = 1000) -> Tokenizer:
    tokenizer = build_tokenizer(split_digits=split_digits)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tokenizer.train_from_iterator(notes, trainer)
    return tokenizer


def write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def notes_file(tmp_path_factory) -> str:
    return write_lines(tmp_path_factory.mktemp("corpus") / "notes.txt", synthetic_notes(400, seed=0))


@pytest.fixture(scope="module")
def trained(notes_file, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("tokenizer"))
    tokenizer, report = train_tokenizer([notes_file], output_dir, vocab_size=1000, min_frequency=2)
    return tokenizer, report, output_dir


@pytest.mark.parametrize("token, expected", [
    ("4829113", True), ("##48291", True), ("a12b345", True), ("2019-03-04", True), ("03/04/2019", True),
    ("3.4.19", True), ("555-1234", True), ("(555) 123-4567", True),
    ("2019", False), ("1234", False), ("dyspnea", False), ("##ea", False), ("e11.9", False), ("120/80", False),
    ("98.6", False), ("b12", False), ("[UNK]", False), ("100-200", False), ("12345-6789", True),
])
def test_looks_like_identifier(token, expected):
    assert looks_like_identifier(token) is expected


def test_reload_with_auto_tokenizer_tokenises_identically(trained, notes_file):
    tokenizer, _, output_dir = trained
    reloaded = AutoTokenizer.from_pretrained(output_dir)
    texts = synthetic_notes(20, seed=1) + ["Pt: MRN 4829113, febrile 38.9C, naïve to Warfarin"]
    assert reloaded(texts).input_ids == tokenizer(texts).input_ids
    assert reloaded.model_max_length == 4096


def test_special_token_ids_match_bert_config(trained):
    _, _, output_dir = trained
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == BertXMLConfig().pad_token_id
    ids = tokenizer("chest pain").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.mask_token_id == 4 and tokenizer.unk_token_id == 1


def test_mrns_and_dates_are_split_into_single_digits(trained):
    tokenizer, _, _ = trained
    tokens = tokenizer.tokenize("MRN 4829113 DOB 03/04/1951 seen 2019-03-04")
    assert tokens == ["mrn", *"4829113", "dob", "0", "3", "/", "0", "4", "/", *"1951", "seen", *"2019", "-", "0",
                      "3", "-", "0", "4"]


def test_ascii_characters_absent_from_training_are_still_codable(trained):
    tokenizer, _, _ = trained
    assert tokenizer.tokenize("cough; pain ~ #3 @ edema") == ["cough", ";", "pain", "~", "#", "3", "@", "edema"]
    assert tokenizer.tokenize("☃") == ["[UNK]"]


def test_no_identifier_like_entry_in_a_vocabulary_trained_on_mrns(trained, notes_file, tmp_path):
    tokenizer, report, _ = trained
    assert not [token for token in tokenizer.get_vocab() if looks_like_identifier(token)]
    assert report["identifier_like_tokens_in_vocab"] == 0 and report["name_like_tokens_in_vocab"] == 0
    # The same corpus without the privacy rule learns MRNs, dates and phone numbers as tokens.
    _, leaky_report = train_tokenizer([notes_file], str(tmp_path), vocab_size=1000, min_frequency=2,
                                      allow_identifier_tokens=True)
    assert leaky_report["identifier_like_tokens_in_vocab"] > 0


@pytest.mark.parametrize("text, names", [
    ("Patient: Mr. Quixwell Brandywine seen today. Dr. Zorbalina Fentwhistle", "quixwell brandywine zorbalina "
                                                                              "fentwhistle"),
    ("PATIENT: JOHN SMITH DOB: 01/02/1950", "john smith"),
    ("Patient Name: SMITH, JOHN A", "smith john"),
    ("Name: Smith-Jones, Mary", "smith jones mary"),
    ("Attending: Dr. J. O'Brien", "brien"),
    ("Mr. McDonald called", "mcdonald"),
    ("-- Jane Doe, MD", "jane doe"),
    ("Electronically signed by: Ana Núñez, MD on 2019-03-04", "ana núñez"),
    ("Signed by Jane Doe", "jane doe"),
    ("cc: Jane Roe; Dr. Ben Moe", "jane roe ben moe"),
    ("Paciente: Sra. María José de la Cruz", "maría josé cruz"),
    ("MR. PATEL", "patel"),
    ("Patient: Will Smith", "will smith"),
    *((text, "") for text in NO_NAMES),
])
def test_find_names(text, names):
    assert find_names(text) == set(names.split())


def test_a_corpus_without_names_reaches_the_trainer_unchanged(trained):
    notes = synthetic_notes(400, seed=0) + NO_NAMES
    names = collect_names(notes)
    mask = NameMask(names)
    assert not names and [mask(note) for note in notes] == notes
    _, report, _ = trained
    assert (report["names_found"], report["name_occurrences_masked"], report["name_like_tokens_in_vocab"]) == (0, 0, 0)


def is_piece_of(piece: str, words: set[str]) -> bool:
    """Whether a WordPiece entry could be learned from `words`: "ab" starts one, "##ab" is inside one."""
    if piece.startswith("##"):
        return any(piece[2:] in word[1:] for word in words)
    return any(word.startswith(piece) for word in words)


@pytest.fixture(scope="module")
def named_notes(tmp_path_factory) -> tuple[list, str]:
    """24 invented people written in every pattern the name filter looks for, and bare; one sentence a line."""
    notes = varied_notes(300, seed=0, patterns=(*EXACT, "bare"))
    path = tmp_path_factory.mktemp("named") / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": note.text}) + "\n" for note in notes), encoding="utf-8")
    return notes, str(path)


def test_no_name_nor_piece_of_one_is_learned_and_the_report_counts_them(named_notes, tmp_path, caplog):
    notes, corpus = named_notes
    caplog.set_level("INFO")
    tokenizer, report = train_tokenizer([corpus], str(tmp_path / "out"), vocab_size=2000, min_frequency=2)
    written = [word for note in notes for sentence in note.sentences for word in sentence.names]
    names = {word.lower() for word in written}
    normalise = tokenizer.backend_tokenizer.normalizer.normalize_str
    spellings = {normalise(name) for name in names}
    vocab = set(tokenizer.get_vocab())
    assert not vocab & spellings
    words = {word for note in notes for word, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        normalise(note.name_free))}
    assert [piece for piece in vocab - set(SPECIAL_TOKENS)
            if len(piece.removeprefix("##")) > 1 and not is_piece_of(piece, words)] == []
    assert summarise(notes, "test")["recall"] == summarise(notes, "test")["precision"] == 1.0
    trained_on = notes[:report["train_notes"]]
    assert report["names_found"] == len(names) and not report["allow_name_tokens"]
    assert report["name_occurrences_masked"] == sum(len(sentence.names) for note in trained_on
                                                    for sentence in note.sentences)
    assert (report["name_like_tokens_removed"], report["name_like_tokens_in_vocab"]) == (0, 0)
    assert f"{len(names)} distinct words are written as a person's name" in caplog.text
    assert not any(name in caplog.text.lower() for name in names)

    # Without the filter the names are learned whole, and the report says how many.
    leaky, kept = train_tokenizer([corpus], str(tmp_path / "kept"), vocab_size=2000, min_frequency=2,
                                  allow_name_tokens=True)
    learned = set(leaky.get_vocab()) & spellings
    assert learned and kept["allow_name_tokens"] and kept["names_found"] == len(names)
    assert (kept["name_occurrences_masked"], kept["name_like_tokens_removed"]) == (0, 0)
    assert kept["name_like_tokens_in_vocab"] == len(learned)


def test_a_name_that_is_also_a_word_stays_learnable_from_its_lower_case_uses(tmp_path):
    rng = random.Random(1)
    names = {"Mr. Zorblatt Quixley": 2, "Mrs. Ondrava": 1, "Patient: Will Brennick": 2}  # name words in each
    chosen = [rng.choice(list(names)) for _ in range(300)]
    notes = [f"{name} seen today. {note} Patient will follow up." for name, note in
             zip(chosen, synthetic_notes(300, seed=3))]
    corpus = write_lines(tmp_path / "named.txt", notes)
    tokenizer, report = train_tokenizer([corpus], str(tmp_path / "out"), vocab_size=1000, min_frequency=2)
    vocab = tokenizer.get_vocab()
    assert not {"zorblatt", "quixley", "ondrava", "brennick"} & set(vocab) and "will" in vocab
    # "Will" is found and its capitalised uses masked, but "will" is written as a word: not name-like.
    assert report["names_found"] == 5
    assert report["name_occurrences_masked"] == sum(names[name] for name in chosen[:report["train_notes"]])
    assert (report["name_like_tokens_removed"], report["name_like_tokens_in_vocab"]) == (0, 0)


def test_drop_identifier_tokens_keeps_ids_contiguous_and_numbers_codable(notes_file):
    tokenizer = train_pipeline(synthetic_notes(200, seed=0), split_digits=False)
    size_before = tokenizer.get_vocab_size()
    removed = drop_identifier_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    assert removed and all(looks_like_identifier(token) for token in removed)
    assert not [token for token in vocab if looks_like_identifier(token)]
    assert sorted(vocab.values()) == list(range(size_before - len(removed)))
    assert [vocab[token] for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    encoding = tokenizer.encode("MRN 4829113 seen 2019-03-04")
    assert "[UNK]" not in encoding.tokens and not any(looks_like_identifier(t) for t in encoding.tokens)


def test_report_on_held_out_tail(trained):
    _, report, output_dir = trained
    with open(f"{output_dir}/tokenizer_report.json", encoding="utf-8") as f:
        assert json.load(f) == report
    assert report["eval_notes"] == math.ceil(400 * 0.01) and report["train_notes"] == 400 - report["eval_notes"]
    assert report["unk_rate"] < 0.005
    assert 1.0 <= report["fertility"] < 3.0
    assert report["vocab_size"] <= 1000 and report["training_time_s"] > 0


def test_evaluate_tokenizer_counts_unknown_tokens_and_words():
    tokenizer = train_pipeline(["chest pain"] * 10, vocab_size=100)
    # "chest pain ☃" -> words chest, pain, ☃ -> tokens chest, pain, [UNK] (☃ never seen).
    metrics = evaluate_tokenizer(tokenizer, ["chest pain ☃", "Chest"])
    assert metrics == {"eval_notes": 2, "eval_words": 4, "eval_tokens": 4, "unk_rate": 0.25, "fertility": 1.0}


@pytest.mark.parametrize("num_notes", [1, 99, 100, 101, 250])
def test_hold_out_tail_keeps_the_last_percent(num_notes):
    held_out = []
    trained_on = list(_hold_out_tail(range(num_notes), held_out))
    tail = math.ceil(num_notes / 100)
    assert trained_on == list(range(num_notes - tail)) and held_out == list(range(num_notes - tail, num_notes))


def test_cli_with_validation_file_max_notes_and_cased_vocab(notes_file, tmp_path):
    validation = write_lines(tmp_path / "valid.txt", synthetic_notes(30, seed=2))
    output_dir = tmp_path / "out"
    main(["--train_file", notes_file, "--validation_file", validation, "--output_dir", str(output_dir),
          "--vocab_size", "300", "--min_frequency", "2", "--max_notes", "200", "--no-lowercase",
          "--model_max_length", "1024"])
    report = json.loads((output_dir / "tokenizer_report.json").read_text())
    assert report["train_notes"] == 200 and report["eval_notes"] == 30 and report["unk_rate"] < 0.005
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.model_max_length == 1024 and "MRN" in tokenizer.tokenize("MRN 12")


@pytest.mark.parametrize("make_input, message", [
    (lambda d: str(d / "missing.txt"), "missing.txt: no such file"),
    (lambda d: write_lines(d / "blank.txt", ["", "   "]), "empty corpus"),
    (lambda d: write_lines(d / "notes.jsonl", ['{"body": "chest pain", "id": 1}']),
     "notes.jsonl:1: no field 'text' (fields: body, id); pass --text_column"),
    (lambda d: write_lines(d / "notes.jsonl", ['{"text": "chest pain"}'] * 10 + ['{"text": ["Mr. John Smith"]}']),
     "notes.jsonl:11: field 'text': the note is a list, not a string"),
    (lambda d: write_lines(d / "empty.jsonl", []), "empty corpus"),
    (lambda d: write_lines(d / "one.txt", ["a single note"]), "corpus too small"),
])
def test_cli_errors_are_clear(tmp_path, make_input, message):
    with pytest.raises(SystemExit, match=re.escape(message)) as error:
        main(["--train_file", make_input(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert "John Smith" not in str(error.value)


def test_an_output_dir_that_is_a_file_fails_before_training(notes_file, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SystemExit, match="error: .*File exists"):
        main(["--train_file", notes_file, "--output_dir", str(tmp_path / "out")])


def test_a_full_disk_leaves_the_previous_tokenizer_whole_and_says_so(notes_file, tmp_path, monkeypatch):
    output = tmp_path / "tokenizer"
    flags = ["--train_file", notes_file, "--output_dir", str(output), "--min_frequency", "2"]
    main([*flags, "--vocab_size", "300"])
    before = folder_state(output)

    def disk_full(self, save_directory, *args, **kwargs):
        (Path(save_directory) / "tokenizer.json").write_text('{"version": "1.0", "trunc')  # half written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", disk_full)
    with pytest.raises(SystemExit, match=rf"^error: {output}: could not be written \(No space left on device; "
                                         r"[\d,]+ MiB free on that disk\); nothing already saved there was changed$"):
        main([*flags, "--vocab_size", "200"])
    assert folder_state(output) == before and [path.name for path in tmp_path.iterdir()] == ["tokenizer"]
    assert len(AutoTokenizer.from_pretrained(output)) == json.loads(before["tokenizer_report.json"][0])["vocab_size"]


def test_an_output_dir_holding_other_files_is_refused_before_training(notes_file, tmp_path):
    """The tokenizer folder is replaced whole (never left half-written): a folder of someone's files cannot be it."""
    (tmp_path / "notes.txt").write_text("chest pain\n")
    before = folder_state(tmp_path)
    with pytest.raises(SystemExit, match=rf"^error: --output_dir {tmp_path} holds files that are not a tokenizer's "
                                         r"\(e\.g\. notes\.txt\)"):
        main(["--train_file", notes_file, "--output_dir", str(tmp_path)])
    assert folder_state(tmp_path) == before and not (tmp_path.parent / f".{tmp_path.name}.tmp").exists()
