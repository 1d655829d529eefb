"""Remote code: travels with every saved model; imports only torch, transformers and its siblings.

The `icd-coding` pipeline: the codes of a clinical note, each with its description, score and evidence.

A coder does not trust a bare list of codes, so every predicted code comes with its official description and the
spans of the note its label attention rests on (for a code scored by the description match alone, the words it
shares with the code's texts), as exact character offsets into the original text:

    [{"code": "E11.9", "description": "Type 2 diabetes mellitus without complications", "score": 0.97,
      "evidence": [{"start": 18, "end": 42, "text": "type 2 diabetes mellitus", "attention": 0.81}]}]

It is saved next to the model with `custom_pipelines` in config.json, so
`pipeline("icd-coding", model=repo, trust_remote_code=True)` works for a user who never installed bert-xml. The model
must be a `BertXMLForMultiLabelCoding` (it reads `model.bert`, `model.code_logits` and `model.code_evidence`, so that
attention is computed only for the predicted codes, never for the whole code set).

`backend="onnx-fp32"` or `"onnx-int8"` scores notes with ONNX Runtime instead (on 2 CPU cores, int8 scored a
BERT-base-sized model's 4,096-token note 2.3x as fast as PyTorch fp32, and a small model's notes 1.2-1.5x), from the
files `python -m modeling_bertxml.release.onnx_export FOLDER` writes into the folder's `onnx/` (`onnx_dir` names
another folder); onnxruntime is imported only then. The graph is the model's own encoder and scores (`SCORER_OUTPUTS`);
evidence is still computed by the model, for the predicted codes only.
"""

import hashlib
import os
from array import array
from contextlib import contextmanager, nullcontext
from itertools import chain

import torch
from transformers import Pipeline
from transformers.utils import logging

from .configuration_bertxml import vocab_fingerprint

logger = logging.get_logger(__name__)

# A word is part of the evidence when it gets at least this share of the most-attended word's attention.
EVIDENCE_RATIO = 0.1
REQUEST_PARAMETERS = {"threshold", "top_k", "num_evidence_spans", "batch_size"}
# The ONNX Runtime backends and their file in a model folder's `ONNX_DIR`; "pytorch" runs the model itself.
ONNX_DIR = "onnx"
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model_int8.onnx"}
BACKENDS = ("pytorch", *ONNX_FILES)
SCORER_INPUTS, SCORER_OUTPUTS = ("input_ids", "attention_mask"), ("logits", "last_hidden_state")
WEIGHTS_DIGEST_KEY = "bertxml_weights_sha256"  # an ONNX export's metadata: `weights_digest` of what it was made from


class NoteScorer(torch.nn.Module):
    """(input_ids, attention_mask) -> (logits, last_hidden_state) of a coding model, as the pipeline scores a note:
    what the ONNX graph computes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model.code_logits(states, input_ids, attention_mask), states


def evidence_spans(
    text: str, offsets: torch.Tensor, word_ids: torch.Tensor, weights: torch.Tensor, num_spans: int
) -> list[dict]:
    """The `num_spans` phrases of `text` that hold most of one code's attention, heaviest first.

    Token weights are summed per word (the tokenizer's pre-tokenisation, so sub-words never split a span), words with
    at least `EVIDENCE_RATIO` of the heaviest word's weight are kept, and runs of consecutive kept words merge into one
    phrase. A span runs from its first word's first character to its last word's last character, so
    `text[start:end] == span["text"]` whatever the spacing, case or unicode of the note.

    Args:
        offsets: (tokens, 2) character offsets from the tokenizer; special tokens and padding have start == end.
        word_ids: (tokens,) word index of each token, -1 for special tokens.
        weights: (tokens,) the code's attention over the tokens.
    """
    return note_evidence(text, offsets, word_ids, weights[None], num_spans)[0]


def note_evidence(
    text: str, offsets: torch.Tensor, word_ids: torch.Tensor, weights: torch.Tensor, num_spans: int
) -> list[list[dict]]:
    """`evidence_spans` of several codes of one note, `weights` (codes, tokens): the note's words are found once, not
    once per code (a note's thousands of tokens, for each of its codes)."""
    # Per word, in tensors: first and last character, and each code's weight.
    kept = (word_ids >= 0) & (offsets[:, 1] > offsets[:, 0])
    words, token_word = torch.unique(word_ids[kept], return_inverse=True)  # sorted word indices
    if len(words) == 0:
        return [[] for _ in weights]
    starts = torch.zeros_like(words).scatter_reduce(0, token_word, offsets[kept, 0], "amin", include_self=False)
    ends = torch.zeros_like(words).scatter_reduce(0, token_word, offsets[kept, 1], "amax", include_self=False)
    totals = weights.new_zeros(len(weights), len(words), dtype=torch.float64)
    totals.index_add_(1, token_word, weights[:, kept].double())
    return [_phrases(text, words, starts, ends, code_totals, num_spans) for code_totals in totals]


def _phrases(
    text: str, words: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, totals: torch.Tensor, num_spans: int
) -> list[dict]:
    """One code's heaviest phrases from its per-word weights (`evidence_spans`)."""
    peak = totals.max().item()
    if peak <= 0:
        return []  # nothing of the note makes the case (a description-matched code that shares no word with it)
    heavy = (totals >= EVIDENCE_RATIO * peak).nonzero().flatten()
    phrases, previous = [], None
    for word, start, end, weight in zip(*(values[heavy].tolist() for values in (words, starts, ends, totals))):
        if previous is not None and word == previous + 1:
            phrases[-1][1] = end
            phrases[-1][2] += weight
        else:
            phrases.append([start, end, weight])
        previous = word
    phrases.sort(key=lambda phrase: -phrase[2])
    return [{"start": s, "end": e, "text": text[s:e], "attention": w} for s, e, w in phrases[:num_spans]]


def weights_digest(folder: str) -> str | None:
    """sha256 over a model folder's safetensors files, by name order (None without any): the weights an ONNX export
    was made from, recorded in it under `WEIGHTS_DIGEST_KEY`."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(folder, name), "rb") as file:
            while block := file.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _int64(values) -> torch.Tensor:
    """A 1-d int64 tensor of Python ints through a C array: `torch.tensor` converts a list element by element, a third
    of a note's tokenising time."""
    values = array("q", values)
    return torch.frombuffer(values, dtype=torch.int64) if values else torch.zeros(0, dtype=torch.int64)


def select_codes(
    scores: torch.Tensor, threshold: float | None, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, codes) scores -> (batch, k) code ids, best first, -1 where a note has fewer codes, and their scores.

    A code is kept when its score is above `threshold` (strictly, as the metrics count it) and among the `top_k` best;
    `None` switches either rule off.
    """
    above = scores > threshold if threshold is not None else torch.ones_like(scores, dtype=torch.bool)
    k = int(above.sum(-1).max())
    if top_k is not None:
        k = min(k, top_k)
    top_scores, top_codes = scores.topk(k, dim=-1)
    keep = top_scores > threshold if threshold is not None else torch.ones_like(top_scores, dtype=torch.bool)
    return top_codes.masked_fill(~keep, -1), top_scores


def onnx_cpu_session(path: str):
    """An ONNX Runtime session of a CPU on as many threads as PyTorch has: a process's share of the cores under
    `accelerate launch --num_processes N` (OMP_NUM_THREADS), where ONNX Runtime's default, a thread per core in every
    process, oversubscribes them."""
    import onnxruntime  # needed by the ONNX backends only

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_trained_coder(config, folder: str) -> None:
    """Refuse a folder saved as another model (a pretrained encoder, `BertXMLForMaskedLM`): loaded as a coder, its code
    head is randomly initialised, and it would code every note with LABEL_0, LABEL_1... (transformers only warns)."""
    saved_as = getattr(config, "architectures", None) or []
    if saved_as and "BertXMLForMultiLabelCoding" not in saved_as:
        raise ValueError(
            f"{folder or 'the model'} holds a {saved_as[0]}, not a coder: its code scores would come "
            "from a randomly initialised head. Fine-tune it into a coder with train.py (--model_name_or_path) first"
        )


@contextmanager
def one_torch_thread():
    """PyTorch on one thread inside the block: for an ONNX backend's own tensor work (the chosen codes' attention, a
    note's evidence), whose ops are too small to share. PyTorch's idle threads spin on the cores after each op, where
    ONNX Runtime's threads then run the next note: 10.5 against 6.2 ms a note on the demo model (2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torch_threads_for(backend: str):
    """PyTorch's own threads for the PyTorch backend; one thread beside ONNX Runtime (`one_torch_thread`)."""
    return nullcontext() if backend == "pytorch" else one_torch_thread()


class ICDCodingPipeline(Pipeline):
    """ICD-10 codes for clinical notes, with descriptions and evidence spans.

    Call it on a note or a list of notes (`batch_size=` batches them). Each note gives a list of codes, best first:
    `{"code", "description", "score", "evidence": [{"start", "end", "text", "attention"}, ...]}`.

    Parameters (at creation or per call):
        threshold (`float`, *optional*): keep codes scoring above this; defaults to the model's tuned
            `config.threshold`, or to no threshold when `top_k` is given.
        top_k (`int`, *optional*): keep at most the `top_k` best codes.
        num_evidence_spans (`int`, defaults to 3): evidence spans per code.
        bf16 (`bool`, *optional*): run the model under bf16 autocast (scores and attention stay float32). Defaults
            to on for a CUDA device that supports bf16, where it is several times faster, and off elsewhere.
        backend (`str`, defaults to "pytorch"): "onnx-fp32" or "onnx-int8" score with ONNX Runtime on the CPU (needs
            `onnxruntime` and the folder's exported `onnx/` files, or `onnx_dir`); the codes are PyTorch's within the
            score difference that `benchmarks/bench_serving.py` measures.
        onnx_dir (`str`, *optional*): the folder holding the ONNX files; defaults to the model folder's `onnx/`.

    Notes longer than the model reads (`config.max_note_length` tokens) are truncated, with a warning.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_trained_coder(self.model.config, self.model.config._name_or_path)
        # A token id past the embedding table would fail deep in torch as a bare IndexError, on the first note.
        if self.tokenizer is not None and len(self.tokenizer) > self.model.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer):,} tokens but the model only {self.model.config.vocab_size:,} "
                "(config.vocab_size): they were not trained together. Use the tokenizer saved with the model."
            )
        # Another run's tokenizer of the same size: ids that name other tokens (a model saved before it: unchecked).
        expected = getattr(self.model.config, "vocab_fingerprint", None)
        found = vocab_fingerprint(self.tokenizer.get_vocab()) if self.tokenizer is not None and expected else expected
        if found != expected:
            raise ValueError(
                f"This is not the tokenizer the model was trained with: its {len(self.tokenizer):,} tokens are another "
                f"vocabulary (fingerprint {found}, the model's {expected}). Use the tokenizer saved with the model."
            )

    def _sanitize_parameters(
        self,
        threshold: float | None = None,
        top_k: int | None = None,
        num_evidence_spans: int | None = None,
        bf16: bool | None = None,
        backend: str | None = None,
        onnx_dir: str | None = None,
    ) -> tuple[dict, dict, dict]:
        forward_params, postprocess_params = {}, {}
        if backend is not None:
            if backend not in BACKENDS:
                raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
            forward_params["backend"] = postprocess_params["backend"] = backend
        if onnx_dir is not None:
            forward_params["onnx_dir"] = str(onnx_dir)
        if bf16 is not None:
            forward_params["bf16"] = bool(bf16)
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
            forward_params["threshold"] = float(threshold)
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
            forward_params["top_k"] = top_k
        if num_evidence_spans is not None:
            if not isinstance(num_evidence_spans, int) or num_evidence_spans < 0:
                raise ValueError(f"num_evidence_spans must be a non-negative integer, got {num_evidence_spans!r}")
            postprocess_params["num_evidence_spans"] = num_evidence_spans
        return {}, forward_params, postprocess_params

    def preprocess(self, text: str) -> dict:
        if not isinstance(text, str):
            raise TypeError(f"icd-coding takes a note (str) or a list of notes, got {type(text).__name__}")
        encoded = self.tokenizer(
            text, truncation=True, max_length=self.model.config.max_note_length, return_offsets_mapping=True
        ).encodings[0]
        if encoded.overflowing:
            logger.warning(
                f"A note of {len(text)} characters is longer than the {self.model.config.max_note_length} tokens the "
                "model reads: only its beginning is coded."
            )
        input_ids = _int64(encoded.ids)[None]
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "offset_mapping": _int64(chain.from_iterable(encoded.offsets)).view(1, -1, 2),
            "word_ids": _int64(-1 if word is None else word for word in encoded.word_ids)[None],
            "text": text,
        }

    def _forward(
        self, model_inputs: dict, threshold: float | None = None, top_k: int | None = None, bf16: bool | None = None,
        backend: str = "pytorch", onnx_dir: str | None = None,
    ) -> dict:  # fmt: skip
        if threshold is None and top_k is None:
            threshold = self.model.config.threshold
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        bf16_autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.runs_bf16(bf16))
        with bf16_autocast:
            logits, states = self.score(input_ids, attention_mask, backend, onnx_dir)
            with torch_threads_for(backend):  # after scoring: a session made on first use takes PyTorch's threads
                codes, scores = select_codes(logits.float().sigmoid(), threshold, top_k)
                # -1 (no code in that slot) takes code 0's row, which postprocess never reads.
                attentions = self.model.code_evidence(states, input_ids, attention_mask, codes.clamp(min=0))
        return {
            "codes": codes,
            "scores": scores,
            "attentions": attentions,
            "offset_mapping": model_inputs["offset_mapping"],
            "word_ids": model_inputs["word_ids"],
            "text": model_inputs["text"],
        }

    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, backend: str = "pytorch",
        onnx_dir: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(logits of every code, token states) of a batch of tokenised notes, by the model or by ONNX Runtime."""
        if backend == "pytorch":
            return NoteScorer(self.model)(input_ids, attention_mask)
        session = self._onnx_session(os.path.join(onnx_dir or self._default_onnx_dir(), ONNX_FILES[backend]))
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        logits, states = (torch.from_numpy(output).to(self.device) for output in session.run(SCORER_OUTPUTS, feed))
        return logits, states

    def _default_onnx_dir(self) -> str:
        folder = self.model.config._name_or_path
        if not os.path.isdir(folder):
            raise ValueError(f"An ONNX backend needs onnx_dir= or a model loaded from a local folder, not {folder!r}")
        return os.path.join(folder, ONNX_DIR)

    def _onnx_session(self, path: str):
        """One ONNX Runtime session per file, made on first use (`onnx_cpu_session`)."""
        sessions = self.__dict__.setdefault("_onnx_sessions", {})
        if path not in sessions:
            if not os.path.isfile(path):
                raise ValueError(
                    f"{path}: no such ONNX file; write it with `python -m modeling_bertxml.release.onnx_export "
                    "MODEL_FOLDER` (bert-xml[serve])"
                )
            folder = self.model.config._name_or_path
            try:
                session = onnx_cpu_session(path)
            except ImportError:
                raise
            except Exception as error:  # onnxruntime's own types (InvalidProtobuf, Fail...): a traceback otherwise
                raise ValueError(
                    f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: a damaged or cut-short file?); "
                    f"export it again: python -m modeling_bertxml.release.onnx_export {folder}"
                ) from error
            # An export of other weights (the model trained again in its folder since) would code with those, silently.
            exported_from = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_DIGEST_KEY)
            if exported_from and os.path.isdir(folder) and weights_digest(folder) not in (None, exported_from):
                raise ValueError(
                    f"{path} was exported from other weights than the model's in {folder} (trained again since?); "
                    f"export it again: python -m modeling_bertxml.release.onnx_export {folder}"
                )
            sessions[path] = session
        return sessions[path]

    def runs_bf16(self, bf16: bool | None = None) -> bool:
        """Whether a call with this `bf16` parameter runs under bf16 autocast (None: the pipeline's setting, else the
        device's default: a CUDA device that supports bf16)."""
        if bf16 is None:
            bf16 = self._forward_params.get("bf16")
        if bf16 is None:
            return self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        return bf16

    def postprocess(self, model_outputs: dict, num_evidence_spans: int = 3, backend: str = "pytorch") -> list[dict]:
        if not model_outputs["text"].strip():
            return []  # an empty note is coded as "no codes", whatever the bias alone would score
        with torch_threads_for(backend):
            return self._codes(model_outputs, num_evidence_spans)

    def _codes(self, model_outputs: dict, num_evidence_spans: int) -> list[dict]:
        """The note's codes, best first, with descriptions, scores and evidence spans."""
        config = self.model.config
        descriptions = getattr(config, "label_descriptions", None) or {}
        # Codes come best first; -1 fills the slots after a note's last code (notes of a batch have different counts).
        codes = [code_id for code_id in model_outputs["codes"][0].tolist() if code_id >= 0]
        evidence = note_evidence(
            model_outputs["text"], model_outputs["offset_mapping"][0], model_outputs["word_ids"][0],
            model_outputs["attentions"][0, : len(codes)], num_evidence_spans,
        )  # fmt: skip
        return [
            {
                "code": config.id2label[code_id],
                "description": descriptions.get(config.id2label[code_id]),
                "score": float(model_outputs["scores"][0, slot]),
                "evidence": spans,
            }
            for slot, (code_id, spans) in enumerate(zip(codes, evidence))
        ]

    def handle_request(self, data: dict) -> list:
        """An Inference Endpoints request, `{"inputs": note or [notes], "parameters": {...}}` -> the pipeline output.

        An Inference Endpoints `handler.py` calls this, so the endpoint answers exactly as the pipeline does.
        """
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request needs "inputs": a note or a list of notes')
        parameters = data.get("parameters") or {}
        unknown = set(parameters) - REQUEST_PARAMETERS
        if unknown:
            raise ValueError(f"Unknown parameters {sorted(unknown)}; accepted: {sorted(REQUEST_PARAMETERS)}")
        return self(data["inputs"], **parameters)
