"""Folders saved before the package moved into folders by role (written by bert-xml at 7e5bc7a, fixtures/.../make.py)
still load: with the package imported (its registered classes) and without it (the folder's own remote code, as a
Hub user has it), giving the logits they were saved with, and the `icd-coding` pipeline codes with the old coder."""

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForMaskedLM, PreTrainedTokenizerFast, pipeline

from modeling_bertxml import BertXMLForMaskedLM, BertXMLForMultiLabelCoding, ICDCodingPipeline
from tests.conftest import assert_close_scaled, run_in_fresh_interpreter

FIXTURE = Path(__file__).parent / "fixtures" / "saved_before_layout"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())

WITHOUT_THE_PACKAGE = """
import json, sys
sys.modules["modeling_bertxml"] = None  # the package must not be importable: what a Hub user has
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline
fixture, note = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(f"{fixture}/coder", trust_remote_code=True)
inputs = tokenizer(note, return_tensors="pt")
coder = AutoModel.from_pretrained(f"{fixture}/coder", trust_remote_code=True).eval()
mlm = AutoModelForMaskedLM.from_pretrained(f"{fixture}/mlm", trust_remote_code=True).eval()
with torch.no_grad():
    coder_logits, mlm_logits = coder(**inputs).logits[0], mlm(**inputs).logits[0, 1, :8]
codes = pipeline("icd-coding", model=f"{fixture}/coder", trust_remote_code=True)(note, top_k=6)
print(json.dumps({"classes": [type(coder).__name__, type(mlm).__name__], "coder_logits": coder_logits.tolist(),
                  "mlm_logits_first_token": mlm_logits.tolist(), "codes": codes}))
"""


def note_inputs() -> dict[str, torch.Tensor]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(FIXTURE / "coder")
    return dict(tokenizer(EXPECTED["note"], return_tensors="pt"))


def test_old_folders_load_with_the_package_and_give_their_saved_logits() -> None:
    coder = AutoModel.from_pretrained(FIXTURE / "coder").eval()
    mlm = AutoModelForMaskedLM.from_pretrained(FIXTURE / "mlm").eval()
    assert isinstance(coder, BertXMLForMultiLabelCoding) and isinstance(mlm, BertXMLForMaskedLM)
    with torch.no_grad():
        assert_close_scaled(coder(**note_inputs()).logits[0], torch.tensor(EXPECTED["coder_logits"]))
        assert_close_scaled(mlm(**note_inputs()).logits[0, 1, :8], torch.tensor(EXPECTED["mlm_logits_first_token"]))


def test_old_folders_load_without_the_package_and_give_their_saved_logits(tmp_path: Path) -> None:
    result = run_in_fresh_interpreter(WITHOUT_THE_PACKAGE, str(FIXTURE), EXPECTED["note"], cwd=tmp_path)
    assert result["classes"] == ["BertXMLForMultiLabelCoding", "BertXMLForMaskedLM"]
    assert_close_scaled(torch.tensor(result["coder_logits"]), torch.tensor(EXPECTED["coder_logits"]))
    mlm_logits = torch.tensor(result["mlm_logits_first_token"])
    assert_close_scaled(mlm_logits, torch.tensor(EXPECTED["mlm_logits_first_token"]))
    scores = {item["code"]: item["score"] for item in result["codes"]}
    expected = dict(zip(json.loads((FIXTURE / "coder" / "config.json").read_text())["id2label"].values(),
                        torch.sigmoid(torch.tensor(EXPECTED["coder_logits"])).tolist()))  # fmt: skip
    assert scores.keys() == expected.keys()
    assert_close_scaled(torch.tensor([scores[code] for code in expected]), torch.tensor(list(expected.values())))


def test_the_packages_pipeline_codes_a_note_with_an_old_coder() -> None:
    coder = pipeline("icd-coding", model=str(FIXTURE / "coder"), pipeline_class=ICDCodingPipeline)  # the package's
    codes = coder(EXPECTED["note"], top_k=6)
    assert {item["description"] for item in codes} == {f"description of {item['code']}" for item in codes}
    scores = torch.tensor([item["score"] for item in sorted(codes, key=lambda item: item["code"])])
    assert_close_scaled(scores, torch.sigmoid(torch.tensor(EXPECTED["coder_logits"])))
