"""The coder's web app (`app.py`) as a Hugging Face Space inside every model folder that `train.py` writes.

The model repo then holds a Space's two files: `app.py` (a copy of `modeling_bertxml/app.py`, which imports only
gradio and transformers) and `requirements.txt`. Uploaded to a Space with the variable `MODEL_ID` and, for a private
model, the secret `HF_TOKEN`, they serve the model; "Duplicate this Space" asks the next user for their own token.
"""

import shutil
from pathlib import Path

import transformers

APP_SOURCE = Path(__file__).with_name("app.py")  # not imported here: writing a model folder must not need gradio
SPACE_FILES = ("app.py", "requirements.txt")


def space_requirements() -> str:
    """What a Space installs: gradio, and a transformers at least as new as the one the model's code was saved with."""
    return f"gradio>=6\ntransformers>={transformers.__version__}\ntorch\n"


def save_space_app(folder: str | Path) -> None:
    """Write `app.py` and `requirements.txt` into a model folder (run there, `python app.py` serves that folder)."""
    folder = Path(folder)
    shutil.copyfile(APP_SOURCE, folder / "app.py")
    (folder / "requirements.txt").write_text(space_requirements())


__all__ = ["APP_SOURCE", "SPACE_FILES", "save_space_app", "space_requirements"]
