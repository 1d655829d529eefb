"""Shared fixtures: tiny BERT-XML configs (built-in BERT or another encoder as backbone) and a tiny WordPiece
tokenizer, built offline in each test session."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForMaskedLM,
    ModernBertConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    pipeline,
)

from modeling_bertxml import BertXMLConfig, BertXMLForMultiLabelCoding, ICDCodingPipeline
from modeling_bertxml.release.pipeline_folder import make_pipeline_ready

# What any subprocess of a test may take: a guard against hangs, not a speed limit. The longest one takes about a
# minute on 2 cores beside two busy loops; a CPU 3-4x slower beside another job (CI) needs several. pytest.ini's
# --timeout bounds a whole test.
SUBPROCESS_TIMEOUT_S = 600

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "patient denies chest pain history of type 2 diabetes mellitus without complications hypertension essential "
    "no evidence of pneumonia ruled out acute kidney injury family history heart failure admitted discharged "
    "with stable vitals blood pressure glucose insulin metformin lisinopril the a and of to in on for was is"
).split()


TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(set(WORDS)) + 10


def free_port() -> int:
    """A loopback port nothing listens on now: for a 2-rank group of our own, or a closed endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """`assert_close` with a tolerance relative to the largest |expected|: another CPU (summation order, FMA, SIMD
    width) rounds float sums differently by an amount proportional to the values, so a fixed atol is not portable."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.detach().abs().max().item())


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (hidden ones too) with its bytes and modification time: equal states mean that nothing
    was written there."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def tiny_config(**overrides) -> BertXMLConfig:
    """A 2-layer, 32-wide BERT-XML with 16-token chunks: fast enough for every test, small enough to chunk often."""
    values = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        max_chunks=4,
        num_labels=6,
        label_block_size=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    values.setdefault("id2label", {i: f"C{i:02d}.{i}" for i in range(values["num_labels"])})
    return BertXMLConfig(**values)


# Other encoders as backbones, as tiny as tiny_config and with its 16-token chunks. RoBERTa's positions start after
# the padding id (1 in RoBERTa's vocabulary): 16 + 2 rows. ModernBERT: rotary positions, local attention (8-token
# windows) between global layers, and an embedding table padded past the vocabulary, as ModernBERT-base's.
BACKBONES = {
    "roberta": lambda vocab_size, pad_token_id: RobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16 + pad_token_id + 1, pad_token_id=pad_token_id, bos_token_id=2, eos_token_id=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ),
    "modernbert": lambda vocab_size, pad_token_id: ModernBertConfig(
        vocab_size=vocab_size + 6, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, pad_token_id=pad_token_id, bos_token_id=2, eos_token_id=3, cls_token_id=2,
        sep_token_id=3, local_attention=8, global_attn_every_n_layers=2,
    ),
}  # fmt: skip


def tiny_backbone(model_type: str, vocab_size: int = TINY_VOCAB_SIZE, pad_token_id: int = 1) -> PretrainedConfig:
    """A tiny `model_type` encoder (`BACKBONES`): pass it as `tiny_config(backbone_config=...)`, or save its masked-LM
    model as a checkpoint for train.py."""
    return BACKBONES[model_type](vocab_size, pad_token_id)


def save_backbone_checkpoint(model_type: str, folder: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    """A tiny masked-LM checkpoint of another encoder and its tokenizer, as `save_pretrained` writes them: what
    train.py's --model_name_or_path gets for a RoBERTa or ModernBERT model."""
    backbone = tiny_backbone(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    AutoModelForMaskedLM.from_config(backbone).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over a fixed word list, with BERT's normaliser and [CLS] ... [SEP] template."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def shuffled_tokenizer(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedTokenizerFast:
    """Another run's tokenizer of the same size: the same special tokens first, then the other tokens at other ids."""
    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    special, words = vocab[: len(SPECIAL_TOKENS)], vocab[len(SPECIAL_TOKENS) :]
    random.Random(seed).shuffle(words)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.model = models.WordPiece({token: i for i, token in enumerate(special + words)}, unk_token="[UNK]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer.special_tokens_map,
                                   model_max_length=tokenizer.model_max_length)


# What both scripts log every training step (modeling_bertxml.training.loop.log_training); evaluations are validation/*.
TRAIN_TAGS = {"train/loss", "train/learning_rate", "train/epoch", "train/tokens", "train/tokens_per_second", "train/mfu"}


def tracked_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The (step, value) pairs of every scalar tag that --with_tracking wrote to TensorBoard under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return scalars


def run_in_fresh_interpreter(script: str, *args: str, cwd: Path) -> Any:
    """Run `script` in a new Python, offline and without this checkout on the path; return its last stdout line as JSON.

    The script itself sets `sys.modules["modeling_bertxml"] = None` when the package must not be importable.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_valid_model_card(path: Path) -> ModelCard:
    """The checks huggingface_hub makes offline (YAML, model-index into EvalResults, ModelCardData round trip), plus
    the metadata bert-xml promises on every card: license, Hub ids (never paths), metrics, `inference: false` with
    the way to serve instead."""
    card = ModelCard.load(path, ignore_metadata_errors=False)
    metadata = card.data.to_dict()
    assert ModelCardData(**metadata).to_dict() == metadata
    for key in ("license", "library_name", "pipeline_tag", "language", "metrics", "tags"):
        assert metadata.get(key), key
    assert metadata["inference"] is False and "Inference Endpoint" in card.text
    for repo_id in [metadata.get("base_model"), *(metadata.get("datasets") or [])]:
        if repo_id is not None:
            validate_repo_id(repo_id)
            assert not os.path.isabs(repo_id), repo_id
    return card


@pytest.fixture(params=["absolute", "rotary", *BACKBONES])
def config(request) -> BertXMLConfig:
    """Both position schemes of the built-in BERT: its learned table (loaded checkpoints) and rotary (what the scripts
    build); and each other encoder as the backbone, under the same chunking and head."""
    if request.param in BACKBONES:
        return tiny_config(backbone_config=tiny_backbone(request.param))
    return tiny_config(position_embedding_type=request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def untrained_coder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained coder, saved as train.py saves one (its scores are arbitrary but fixed)."""
    folder = tmp_path_factory.mktemp("coder")
    tokenizer = tiny_tokenizer(model_max_length=64)
    BertXMLForMultiLabelCoding(tiny_config(vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    make_pipeline_ready(folder)
    return folder


@pytest.fixture(scope="module")
def untrained_coder(untrained_coder_folder: Path) -> ICDCodingPipeline:
    return pipeline("icd-coding", model=str(untrained_coder_folder), pipeline_class=ICDCodingPipeline, device=-1)
