"""Remote code: travels with every saved model; imports only torch, transformers and its siblings.

Hugging Face Inference Endpoints handler for a BERT-XML ICD-10 coding model; `train.py` copies it into every coding
folder.

The Hub's hosted widget does not run custom-code models; an Inference Endpoint with this file does. It needs only
torch and transformers: the model folder carries its own code, including the `icd-coding` pipeline
(`trust_remote_code`), and this file imports nothing from the bert-xml package. The endpoint answers exactly as
`pipeline("icd-coding", ...)` does.

Request:  {"inputs": "note text" or ["note", ...], "parameters": {"threshold": 0.4, "top_k": 10}}  (parameters optional)
Response: for each note, the codes scored above the threshold (the model's tuned `config.threshold` by default), best
first: [{"code": "E11.9", "description": "...", "score": 0.93, "evidence": [{"start", "end", "text", "attention"}]}].
A single note gets a single list; an empty note gets no codes.

On a CPU endpoint, the environment variable `BERTXML_BACKEND=onnx-int8` (or `onnx-fp32`) scores with ONNX Runtime from
the folder's `onnx/` files (`python -m modeling_bertxml.release.onnx_export FOLDER`; add `onnxruntime` to
requirements.txt): on 2 cores int8 scored a BERT-base-sized model's long note 2.3x as fast as PyTorch, a small
model's notes 1.2-1.5x.
"""

import os
from typing import Any

import torch
from transformers import pipeline


class EndpointHandler:
    def __init__(self, path: str = ""):
        device = 0 if torch.cuda.is_available() else -1
        backend = os.environ.get("BERTXML_BACKEND", "pytorch")
        self.pipeline = pipeline("icd-coding", model=path, trust_remote_code=True, device=device, backend=backend)

    def __call__(self, data: dict[str, Any]) -> list:
        return self.pipeline.handle_request(data)
