"""The coder's web app (`app.py`) as a Hugging Face Space inside every model folder that `train.py` writes.

The model repo then holds a Space's two files: `app.py` (a copy of `modeling_bertxml/model/app.py`, which imports only
gradio and transformers) and `requirements.txt` (the remote code's requirements and gradio). Uploaded to a Space with
the variable `MODEL_ID` and, for a private model, the secret `HF_TOKEN`, they serve the model; "Duplicate this Space"
asks the next user for their own token.
"""

import shutil
from pathlib import Path

from ..model import source_file

SPACE_FILES = ("app.py", "requirements.txt")


def space_requirements(model_requirements: list[str]) -> str:
    """What a Space installs: the model code's own requirements (`checkpointing.REMOTE_CODE_REQUIREMENTS`, peft for an
    adapter) and gradio."""
    return "".join(f"{line}\n" for line in [*model_requirements, "gradio>=6"])


def save_space_app(folder: str | Path) -> None:
    """Write `app.py` into a model folder and add gradio to its `requirements.txt` (one file serves both the remote
    code and the Space; run there, `python app.py` serves that folder)."""
    folder = Path(folder)
    shutil.copyfile(source_file("app.py"), folder / "app.py")  # copied, not imported: no gradio needed
    requirements = folder / "requirements.txt"
    lines = requirements.read_text().split() if requirements.exists() else []
    requirements.write_text(space_requirements([line for line in lines if not line.startswith("gradio")]))


__all__ = ["SPACE_FILES", "save_space_app", "space_requirements"]
