"""Importing the package is cheap (no torch for numpy-only modules), and it registers with transformers in any order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SUBPROCESS_TIMEOUT_S, run_in_fresh_interpreter

ROOT = Path(__file__).resolve().parents[1]  # the working directory comes first on `python -c`'s path: this checkout

NO_TORCH = "import json, sys; {imports}; print(json.dumps('torch' not in sys.modules))"
REGISTERED = """import json; {imports}
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY
models = MODEL_MAPPING[CONFIG_MAPPING["bertxml"]]  # not through the package: its attributes register on access
print(json.dumps([[model.__name__ for model in models], "icd-coding" in PIPELINE_REGISTRY.get_supported_tasks()]))
"""


@pytest.mark.parametrize(
    "imports",
    ["import modeling_bertxml.evaluation.metrics", "import modeling_bertxml, tokenizer_training.train_tokenizer"],
)
def test_modules_without_the_model_do_not_import_torch(imports: str) -> None:
    assert run_in_fresh_interpreter(NO_TORCH.format(imports=imports), cwd=ROOT) is True


@pytest.mark.parametrize(
    "imports",
    [
        "import modeling_bertxml; from transformers import AutoModel",
        "from transformers import AutoModel; import modeling_bertxml",
        "import modeling_bertxml; from transformers import BertModel",  # BERT's modeling loads the Auto classes midway
        "from modeling_bertxml.model.modeling_bertxml import BertXMLModel",  # ours too: registering waits for the file
    ],
)
def test_importing_the_package_registers_in_any_order(imports: str) -> None:
    result = run_in_fresh_interpreter(REGISTERED.format(imports=imports), cwd=ROOT)
    # AutoModel picks by the folder's architectures: the encoder by default, the coding model for a coding folder.
    assert result == [["BertXMLModel", "BertXMLForMultiLabelCoding"], True]


def test_the_app_without_gradio_says_how_to_install_it_in_one_line() -> None:
    """`bert-xml-app` from a wheel installed without the `app` extra: what to install, not a traceback."""
    script = "import sys; sys.modules['gradio'] = None; from modeling_bertxml.model.app import main; main()"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script, "--model", "runs/demo/model"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr == "error: the coder's web app needs gradio: pip install 'bert-xml[app]' (or gradio)\n"
