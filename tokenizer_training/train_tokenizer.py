"""Train a WordPiece vocabulary on clinical notes, for a BERT-XML model pretrained from scratch.

BERT-XML's gain over off-the-shelf BERT comes partly from a vocabulary learned on EHR text ("dyspnea" one token,
not five). Notes are full of identifiers, and a vocabulary is published with every model, so by default no entry
may look like one (`looks_like_identifier`): digits are split one by one before training, which also keeps every
number codable, and the trained vocabulary is checked against the rule. Names cannot be told apart from words in
general, so notes must be de-identified before training; as a check, the words the notes write as a person's name
(`names.find_names`: after a title or a field label, before a credential) are found in a first pass and their
capitalised occurrences masked out of the notes the trainer reads (`names.NameMask`), so no entry or piece of one exists
because of a name; an entry that still spells one and that the notes never write in lower case is removed.

    python tokenizer_training/train_tokenizer.py --train_file notes/*.jsonl --output_dir my-tokenizer
"""

import argparse
import collections
import itertools
import json
import logging
import math
import re
import shutil
import string
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from modeling_bertxml.data.readers import iter_texts
from modeling_bertxml.training.atomic import (
    OutputDirError, OutputWriteError, check_writable, staging_dir, swap_in, writing,
)  # fmt: skip
from tokenizer_training.names import NameMask, collect_names

logger = logging.getLogger(__name__)

# In this order, so [PAD] is id 0: BERT's (and BertXMLConfig's) default pad_token_id.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HELD_OUT_FRACTION = 0.01
REPORT_FILE = "tokenizer_report.json"
# What a tokenizer folder holds (transformers' files, older versions' too, and the report): a folder holding anything
# else is not one to replace.
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                             "vocab.txt", REPORT_FILE})
# Always in the vocabulary, so a character the training notes lack (";" in a corpus without one) is not [UNK].
ASCII_ALPHABET = [char for char in string.printable if not char.isspace()]

# The privacy rule, one pattern per kind of identifier; a vocabulary entry matching any of them is refused.
IDENTIFIER_PATTERNS = {
    "5+ digits, only letters between (4829113, A12B345: MRNs, account numbers)": re.compile(r"\d(?:[^\W\d_]*\d){4}"),
    "date: day, month and year (2019-03-04, 03/04/2019, 3.4.19)": re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"),
    "phone number (555-1234, (555) 123-4567)": re.compile(r"(?<!\d)\d{3}[-.\s]\d{4}(?!\d)"),
}
DE_IDENTIFY = ("Notes must be de-identified before tokenizer training: the vocabulary ships with every model trained "
               "on it, and only identifier-like strings and names written after a title or a field label or before "
               "a credential are filtered.")


def looks_like_identifier(token: str) -> bool:
    """Whether a vocabulary entry could identify a patient (`IDENTIFIER_PATTERNS`), so must not be published.

    Years, doses and vitals stay allowed: "2019", "1000", "120/80", "98.6".
    """
    return any(pattern.search(token) for pattern in IDENTIFIER_PATTERNS.values())


def build_tokenizer(lowercase: bool = True, split_digits: bool = True) -> Tokenizer:
    """An untrained BERT-style WordPiece pipeline; `split_digits` makes each digit its own pre-token."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    steps = [pre_tokenizers.BertPreTokenizer()]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def drop_tokens(tokenizer: Tokenizer, unwanted: Callable[[str], bool]) -> list[str]:
    """Remove the `unwanted` entries from a trained WordPiece vocabulary, renumbering the rest; return them."""
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab, key=vocab.get)
    removed = [token for token in ordered if unwanted(token)]
    if removed:
        kept = [token for token in ordered if not unwanted(token)]
        tokenizer.model = models.WordPiece({token: i for i, token in enumerate(kept)}, unk_token="[UNK]")
    return removed


def drop_identifier_tokens(tokenizer: Tokenizer) -> list[str]:
    """Remove identifier-like entries; digit splitting already keeps them out, this check does not depend on it."""
    return drop_tokens(tokenizer, looks_like_identifier)


def name_like_tokens(tokenizer: Tokenizer, names: set[str]) -> set[str]:
    """Vocabulary entries that spell one of `names`, in any case (the normaliser may strip accents: "núñez")."""
    spellings = {tokenizer.normalizer.normalize_str(name).lower() for name in names}
    return {entry for entry in tokenizer.get_vocab() if entry.lower() in spellings}


def drop_name_tokens(tokenizer: Tokenizer, name_mask: NameMask, keep: bool = False) -> dict[str, int]:
    """Remove (unless `keep`) the entries that spell a name the notes never write in lower case; masking leaves none
    unless a name is also part of a longer word. Returns the report's counts and logs them, never a name."""
    # "will" stays an entry when the notes also write it as a word, whoever "Patient: Will Smith" is.
    name_like = name_like_tokens(tokenizer, name_mask.names - name_mask.lower_case)
    removed = [] if keep else drop_tokens(tokenizer, name_like.__contains__)
    if name_mask.names:
        logger.warning(
            "%d distinct words are written as a person's name in the notes (after a title or a field label, or "
            "before a credential); %s. The notes are not de-identified: %s", len(name_mask.names),
            f"kept (--allow_name_tokens): {len(name_like)} are vocabulary entries" if keep else
            f"{name_mask.masked} capitalised occurrences masked out of training, {len(removed)} vocabulary "
            "entries removed", DE_IDENTIFY,
        )
    return {"names_found": len(name_mask.names), "name_occurrences_masked": name_mask.masked,
            "name_like_tokens_removed": len(removed), "name_like_tokens_in_vocab": len(name_like) - len(removed)}


class _CountingIterator:
    """Counts the notes the trainer pulls, since `train_from_iterator` consumes them out of our sight."""

    def __init__(self, items: Iterable[str]):
        self._items = iter(items)
        self.count = 0

    def __iter__(self) -> "_CountingIterator":
        return self

    def __next__(self) -> str:
        item = next(self._items)
        self.count += 1
        return item


def _hold_out_tail(texts: Iterable[str], held_out: list[str], fraction: float = HELD_OUT_FRACTION) -> Iterator[str]:
    """Yield every note but the last `fraction` of them (at least one), which are appended to `held_out`.

    A stream's length is unknown until it ends, so the newest notes wait in a queue kept at `fraction` of those
    seen: one pass over the corpus, and memory for 1% of it.
    """
    queue: collections.deque[str] = collections.deque()
    for seen, text in enumerate(texts, start=1):
        queue.append(text)
        while len(queue) > math.ceil(seen * fraction):
            yield queue.popleft()
    held_out.extend(queue)


def evaluate_tokenizer(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = 1000) -> dict:
    """[UNK] rate (share of tokens) and fertility (tokens per word; words split at whitespace and punctuation)."""
    word_splitter = pre_tokenizers.BertPreTokenizer()
    unk_id = tokenizer.token_to_id("[UNK]")
    notes = words = tokens = unknown = 0
    texts = iter(tqdm(texts, desc="Evaluating on held-out notes", unit=" notes"))
    while batch := list(itertools.islice(texts, batch_size)):
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            tokens += len(encoding.ids)
            unknown += encoding.ids.count(unk_id)
        words += sum(len(word_splitter.pre_tokenize_str(tokenizer.normalizer.normalize_str(t))) for t in batch)
        notes += len(batch)
    return {"eval_notes": notes, "eval_words": words, "eval_tokens": tokens,
            "unk_rate": round(unknown / max(tokens, 1), 6), "fertility": round(tokens / max(words, 1), 4)}


def prepare_output_dir(output_dir: str) -> Path:
    """The output folder, checked before training: it holds nothing but a tokenizer's files (it is replaced whole,
    never left half written), and both it and the folder beside it where the tokenizer is written first (its
    `staging_dir`) can be written."""
    output = Path(output_dir).resolve()
    check_writable(output)  # a file in the way, a read-only disk: now, not after training
    if others := sorted(path.name for path in output.iterdir() if path.name not in TOKENIZER_FILES):
        raise OutputDirError(
            f"--output_dir {output} holds files that are not a tokenizer's (e.g. {others[0]}), and a new tokenizer "
            "replaces the folder whole: choose an empty or new folder"
        )
    staging = staging_dir(output)
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
    check_writable(staging, f"{output.parent}, where the tokenizer is written before it replaces {output.name},")
    staging.rmdir()  # written into once the tokenizer is trained
    return output


def train_tokenizer(
    train_files: list[str],
    output_dir: str,
    validation_files: list[str] | None = None,
    text_column: str = "text",
    vocab_size: int = 30522,
    min_frequency: int = 5,
    lowercase: bool = True,
    max_notes: int | None = None,
    model_max_length: int = 4096,
    allow_identifier_tokens: bool = False,
    allow_name_tokens: bool = False,
) -> tuple[PreTrainedTokenizerFast, dict]:
    """Train, save to `output_dir` (loadable with `AutoTokenizer.from_pretrained`) and report on held-out notes.

    Notes are streamed, so the corpus may be larger than memory; `max_notes` keeps the first notes only. Without
    `validation_files` the last 1% of the (first `max_notes`) notes is held out of training for the report. The
    folder is written beside `output_dir` and renamed into place once complete: a full disk or a kill leaves the
    previous tokenizer there whole, never half a new one.
    """
    logger.info(DE_IDENTIFY)
    output = prepare_output_dir(output_dir)
    start = time.perf_counter()

    def read_notes() -> Iterator[str]:
        return itertools.islice(iter_texts(train_files, text_column), max_notes)

    # A first pass, since a name found in the last note may be written bare ("Smith called") in the first.
    names = collect_names(tqdm(read_notes(), desc="Finding names", unit=" notes"))
    name_mask = NameMask(names, mask=not allow_name_tokens)
    notes: Iterable[str] = read_notes()
    held_out: list[str] = []
    if validation_files is None:
        notes = _hold_out_tail(notes, held_out)  # evaluated as written, names included
    notes = _CountingIterator(map(name_mask, notes))
    tokenizer = build_tokenizer(lowercase, split_digits=not allow_identifier_tokens)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, initial_alphabet=ASCII_ALPHABET,
                                        show_progress=True)
    # The trainer's own progress bars cover reading ("Pre-processing sequences") and computing merges.
    tokenizer.train_from_iterator(notes, trainer, length=max_notes)
    num_train_notes = notes.count
    if num_train_notes == 0:
        raise ValueError(f"corpus too small: {len(held_out)} note(s) in {', '.join(train_files)}, all held out "
                         "for evaluation; add notes or pass --validation_file")
    removed = [] if allow_identifier_tokens else drop_identifier_tokens(tokenizer)
    name_report = drop_name_tokens(tokenizer, name_mask, keep=allow_name_tokens)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )
    training_time = time.perf_counter() - start
    surviving = sum(looks_like_identifier(token) for token in tokenizer.get_vocab())
    if surviving:
        logger.warning("%d vocabulary entries look like identifiers (--allow_identifier_tokens)", surviving)

    # Wrapping the Tokenizer object (not naming BertTokenizer) keeps our normaliser and pre-tokeniser on reload.
    fast_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )
    eval_texts = held_out if validation_files is None else iter_texts(validation_files, text_column)
    report = {
        "vocab_size": tokenizer.get_vocab_size(),
        "train_notes": num_train_notes,
        "eval_source": "validation_file" if validation_files else f"last {HELD_OUT_FRACTION:.0%} of training input",
        **evaluate_tokenizer(tokenizer, eval_texts),
        "training_time_s": round(training_time, 2),
        "identifier_like_tokens_removed": len(removed),
        "identifier_like_tokens_in_vocab": surviving,
        **name_report,
        "allow_name_tokens": allow_name_tokens, "lowercase": lowercase, "min_frequency": min_frequency,
        "model_max_length": model_max_length,
    }
    staging = staging_dir(output)
    with writing(output, staging):
        staging.mkdir()
        fast_tokenizer.save_pretrained(staging)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    swap_in(staging, output)
    return fast_tokenizer, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_file", action="extend", nargs="+", required=True,
                        help=".txt (one note per line), folder of .txt (one per file), .jsonl/.json, .csv, .parquet, "
                             "a save_to_disk folder, or a glob; repeatable")
    parser.add_argument("--validation_file", action="extend", nargs="+",
                        help="held-out notes for the report (default: the last 1%% of the training input)")
    parser.add_argument("--text_column", default="text", help="column holding the note in JSONL/CSV/Parquet")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--vocab_size", type=int, default=30522)
    parser.add_argument("--min_frequency", type=int, default=5, help="fewest occurrences for a merged piece")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max_notes", type=int, help="train on the first N notes only")
    parser.add_argument("--model_max_length", type=int, default=4096,
                        help="longest note the model codes whole (max_chunks x max_position_embeddings)")
    parser.add_argument("--allow_identifier_tokens", action="store_true",
                        help="do not split digits nor filter the vocabulary: MRNs and dates may become entries "
                             "(never for a model you publish)")
    parser.add_argument("--allow_name_tokens", action="store_true",
                        help="train on the names that the notes write after a title or a field label and keep them "
                             "as entries (never for a model you publish; de-identify the notes instead)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    try:
        _, report = train_tokenizer(
            args.train_file, args.output_dir, validation_files=args.validation_file, text_column=args.text_column,
            vocab_size=args.vocab_size, min_frequency=args.min_frequency, lowercase=args.lowercase,
            max_notes=args.max_notes, model_max_length=args.model_max_length,
            allow_identifier_tokens=args.allow_identifier_tokens, allow_name_tokens=args.allow_name_tokens,
        )
    # NotesError (file:line, field); an output dir that cannot be written (before training) or a full disk (after).
    except (OSError, ValueError, OutputDirError, OutputWriteError) as err:
        raise SystemExit(f"error: {err}") from None
    logger.info("Saved tokenizer to %s: %s", args.output_dir, json.dumps(report))


if __name__ == "__main__":
    main()
