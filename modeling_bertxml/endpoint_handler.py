"""Hugging Face Inference Endpoints handler for a BERT-XML ICD-10 coding model; `train.py` ships it as `handler.py`.

The Hub's hosted widget does not run custom-code models; an Inference Endpoint with this file does. It needs only
torch and transformers: the model's own code comes with the model folder (`trust_remote_code`), and this file imports
nothing from the bert-xml package.

Request:  {"inputs": "note text" or ["note", ...], "parameters": {"threshold": 0.4, "top_k": 10}}  (parameters optional)
Response: for each note, the codes scored above the threshold (the model's tuned `config.threshold` by default), best
first: [{"code": "E11.9", "description": "Type 2 diabetes mellitus without complications", "score": 0.93}, ...].
A single note gets a single list; an empty note gets no codes.
"""

import json
import os
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

DESCRIPTIONS_FILE = "code_descriptions.json"


class EndpointHandler:
    def __init__(self, path: str = "", batch_size: int = 8):
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        config = self.model.config
        self.threshold = float(config.threshold)
        self.max_length = config.max_chunks * config.max_position_embeddings
        self.batch_size = batch_size
        descriptions = os.path.join(path, DESCRIPTIONS_FILE)
        self.descriptions = json.load(open(descriptions, encoding="utf-8")) if os.path.isfile(descriptions) else {}

    def __call__(self, data: dict[str, Any]) -> list:
        inputs = data.get("inputs")
        single = isinstance(inputs, str)
        notes = [inputs] if single else inputs
        if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
            raise ValueError('"inputs" must be a note (a string) or a list of notes')
        parameters = data.get("parameters") or {}
        threshold = float(parameters.get("threshold", self.threshold))
        top_k = parameters.get("top_k")
        results: list[list[dict]] = [[] for _ in notes]
        to_code = [i for i, note in enumerate(notes) if note.strip()]  # an empty note gets no codes
        for start in range(0, len(to_code), self.batch_size):
            batch = to_code[start : start + self.batch_size]
            for i, scores in zip(batch, self._scores([notes[i] for i in batch])):
                results[i] = self._codes(scores, threshold, top_k)
        return results[0] if single else results

    @torch.no_grad()
    def _scores(self, notes: list[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            notes, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        encoded.pop("token_type_ids", None)
        return torch.sigmoid(self.model(**encoded).logits.float()).cpu()

    def _codes(self, scores: torch.Tensor, threshold: float, top_k: int | None) -> list[dict]:
        selected = (scores > threshold).nonzero().flatten()
        selected = selected[scores[selected].argsort(descending=True)][:top_k]
        codes = []
        for index in selected.tolist():
            code = self.model.config.id2label[index]
            entry = {"code": code, "score": round(scores[index].item(), 4)}
            if code in self.descriptions:
                entry["description"] = self.descriptions[code]
            codes.append(entry)
        return codes
