"""What the code system's own texts give a coder before training: description-initialised label queries (as HiLAT and
CoLa: each code starts out attending to text like its official description and inclusion terms, instead of a random
direction), the words particular to a code's own training notes (`note_keywords`: they name it in the notes'
language when its texts are in another), and the tables of the description match (`BertXMLDescriptionMatch`).

A code seen in a handful of notes cannot learn where to look from them alone, and one seen in none cannot learn at
all; its description still names it. Used by `train.py --init_label_queries_from_descriptions` and
`--description_match`.
"""

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..data.code_systems import code_descriptions
from ..data.notes import Notes
from ..model.modeling_bertxml import BertXMLForMultiLabelCoding

logger = logging.get_logger(__name__)

# train.py adds note keywords to codes of this many training notes or more: those of fewer share their notes with the
# notes' other codes (11 a note on CodiEsp), whose words then start the query (docs/learning.md, "Real notes").
KEYWORD_MIN_NOTES = 6


@torch.no_grad()
def embed_texts(
    model: BertXMLForMultiLabelCoding, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """(len(texts), hidden_size): the mean of the encoder's states over each text's tokens, special tokens excluded."""
    device = model.device
    pooled = []
    starts = range(0, len(texts), batch_size)  # 83,321 texts for every billable ICD-10-CM code: minutes on a CPU
    for start in tqdm(starts, desc="Embedding code descriptions", disable=len(starts) < 20, leave=False):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=model.config.max_position_embeddings,
            return_special_tokens_mask=True,
            return_tensors="pt",
        ).to(device)
        states = model.bert(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
        keep = (encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()).unsqueeze(-1)
        pooled.append((states * keep).sum(1) / keep.sum(1).clamp(min=1))
    return torch.cat(pooled).float()


@torch.no_grad()
def init_label_queries_from_descriptions(
    model: BertXMLForMultiLabelCoding,
    tokenizer: PreTrainedTokenizerBase,
    descriptions: dict[str, str | list[str]],
    init_output_weights: bool = True,
    batch_size: int = 64,
) -> list[str]:
    """Set each attention code's queries (and output weight) from the model's own embedding of its description(s).

    A code's vector is the mean over its texts of `embed_texts`; the head starts the code's row from it
    (`BertXMLLabelWiseHead.set_rows_from_vectors`), with `init_output_weights` the output weight too, at the norm of
    BERT's random initialisation. With several queries per code (`config.label_queries_per_code`), each starts from
    one of the code's texts, in turn (a code of fewer texts than queries repeats them). Codes without a description
    keep their random queries (a warning counts them).

    Returns the codes that were initialised.
    """
    codes = [model.config.id2label[i] for i in range(model.config.attention_labels)]
    known = [i for i, code in enumerate(codes) if descriptions.get(code)]
    if len(known) < len(codes):
        missing = [code for i, code in enumerate(codes) if not descriptions.get(code)]
        logger.warning(f"{len(missing)} codes have no description and keep a random query, e.g. {missing[:5]}")
    if not known:
        return []
    texts, owners = [], []
    for slot, i in enumerate(known):
        code_texts = descriptions[codes[i]]
        code_texts = [code_texts] if isinstance(code_texts, str) else code_texts
        texts.extend(code_texts)
        owners.extend([slot] * len(code_texts))

    was_training = model.training
    model.eval()  # dropout would make the embedding of a description random
    embeddings = embed_texts(model, tokenizer, texts, batch_size)
    model.train(was_training)
    owners = torch.tensor(owners, device=embeddings.device)
    counts = torch.bincount(owners, minlength=len(known))
    vectors = torch.zeros(len(known), embeddings.shape[1], device=embeddings.device).index_add_(0, owners, embeddings)
    vectors /= counts.unsqueeze(-1)
    # Query j of a code starts from its text j modulo its count (a code's texts are consecutive in `embeddings`).
    per_code = model.label_head.queries_per_code
    first = counts.cumsum(0) - counts
    texts_of_queries = first[:, None] + torch.arange(per_code, device=counts.device) % counts[:, None]
    query_vectors = embeddings[texts_of_queries] if per_code > 1 else None

    norm = model.config.initializer_range * math.sqrt(model.config.hidden_size) if init_output_weights else None
    rows = torch.tensor(known, device=embeddings.device)
    model.label_head.set_rows_from_vectors(rows, vectors, output_norm=norm, query_vectors=query_vectors)
    return [codes[i] for i in known]


def note_keywords(
    train: Notes, codes: Iterable[str], tokenizer: PreTrainedTokenizerBase, words: int, min_notes: int = 1
) -> dict[str, str]:
    """Each of `codes` that at least `min_notes` training notes carry -> the `words` words most particular to its
    notes, space-joined: the centroid of binary TF-IDF over the notes that carry it (share of them holding the word x
    log((1 + notes) / (1 + notes holding it))), ties broken alphabetically.

    Why: the code system's texts name a code in their own language (ICD-10-CM's are English); notes in another
    language share none of their words, and the queries and the match they start would read nothing. A code's own
    notes name it in theirs. Words are the tokenizer's (its normaliser and pre-tokeniser: any language), and only
    those with a letter (no dates, doses, numbers).
    """
    backend = tokenizer.backend_tokenizer
    wanted = set(codes)
    holding: dict[str, Counter] = {}  # code -> how many of its notes hold each word
    carrying: Counter = Counter()  # code -> its notes
    document_frequency, notes = Counter(), 0
    for batch in train.batches("text", "codes"):
        for text, note_codes in zip(batch["text"], batch["codes"]):
            text = backend.normalizer.normalize_str(text) if backend.normalizer else text
            pieces = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else []
            note_words = {word for word in pieces or text.split() if any(character.isalpha() for character in word)}
            document_frequency.update(note_words)
            notes += 1
            for code in wanted.intersection(note_codes):
                holding.setdefault(code, Counter()).update(note_words)
                carrying[code] += 1
    keywords = {}
    for code, counts in holding.items():
        if carrying[code] < min_notes:
            continue
        weight = {word: count / carrying[code] * math.log((1 + notes) / (1 + document_frequency[word]))
                  for word, count in counts.items()}  # fmt: skip
        keywords[code] = " ".join(sorted(weight, key=lambda word: (-weight[word], word))[:words])
    return keywords


def smoothed_idf(token_lists: Iterable[Sequence[int]], vocab_size: int, special_ids: Iterable[int]) -> torch.Tensor:
    """(vocab_size,) inverse document frequency over `token_lists` (one per note), smoothed as scikit-learn's
    `TfidfVectorizer` smooths it, log((1 + n) / (1 + df)) + 1; special tokens get 0 (they name no code)."""
    document_frequency, notes = np.zeros(vocab_size), 0
    for ids in token_lists:
        document_frequency[np.unique(np.asarray(ids, dtype=np.int64))] += 1
        notes += 1
    idf = np.log((1 + notes) / (1 + document_frequency)) + 1
    idf[list(special_ids)] = 0
    return torch.tensor(idf, dtype=torch.float32)


def description_terms(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], idf: torch.Tensor, terms: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text's `terms` heaviest tokens by TF-IDF (sublinear counts times `idf`, as the match weighs notes) and
    their weights, at unit norm over the kept terms; zero-padded, (len(texts), terms) each. A text of only
    special or unknown-to-the-notes tokens matches nothing (all zero)."""
    term_ids = torch.zeros(len(texts), terms, dtype=torch.int32)
    term_weights = torch.zeros(len(texts), terms)
    idf = idf.numpy()
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    for row, ids in enumerate(encoded):
        tokens, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        weights = (1 + np.log(counts)) * idf[tokens]
        heaviest = np.argsort(-weights, kind="stable")[:terms]
        heaviest = heaviest[weights[heaviest] > 0]
        if len(heaviest):
            term_ids[row, : len(heaviest)] = torch.from_numpy(tokens[heaviest])
            term_weights[row, : len(heaviest)] = torch.from_numpy(weights[heaviest] / np.linalg.norm(weights[heaviest]))
    return term_ids, term_weights


def add_description_match(
    model: BertXMLForMultiLabelCoding,
    tokenizer: PreTrainedTokenizerBase,
    train: Notes,
    extra_codes: list[str],
    label_frequencies: dict[str, float],
    code_system: str,
    terms: int,
    max_length: int,
    code_texts: dict[str, list[str]] | None = None,
) -> None:
    """Give `model` the description match over its codes and `extra_codes` (codes without attention rows, after
    them): idf from the training notes (tokenised as training reads them, up to `max_length` tokens), each code's
    terms from its official texts (or `code_texts`, a user's), and each extra code's bias at its prior
    (`label_frequencies`, smoothed: a code no note carries still gets a finite one)."""
    token_lists = (
        ids
        for batch in tqdm(train.batches("text"), desc="Token document frequencies", leave=False)
        for ids in tokenizer(batch["text"], truncation=True, max_length=max_length)["input_ids"]
    )
    idf = smoothed_idf(token_lists, len(tokenizer), tokenizer.all_special_ids)
    codes = [model.config.id2label[i] for i in range(model.config.num_labels)] + list(extra_codes)
    texts = code_descriptions(codes, code_system=code_system, own=code_texts)
    joined = [" ; ".join(texts.get(code, [])) for code in codes]
    term_ids, term_weights = description_terms(tokenizer, joined, idf, terms)
    bias = torch.logit(torch.tensor([label_frequencies[code] for code in extra_codes], dtype=torch.float32))
    model.add_description_match(extra_codes, idf, term_ids, term_weights, bias)
    matched = int((term_weights[:, 0] > 0).sum())
    logger.info(
        f"Description match: {matched:,} of {len(codes):,} codes have terms ({len(extra_codes):,} of them scored by "
        f"it alone), up to {terms} terms each"
    )
