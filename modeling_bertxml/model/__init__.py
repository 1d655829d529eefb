"""The files that travel: every saved model folder gets a copy of them, so that a user without bert-xml runs the model.

- `configuration_bertxml.py`, `modeling_bertxml.py`: the model (`trust_remote_code=True`); their names are in every
  saved config's `auto_map`, so they never change.
- `pipeline_bertxml.py`: the `icd-coding` pipeline that a coding folder's `custom_pipelines` names.
- `handler.py`: the Inference Endpoint handler of a coding folder.
- `app.py`: the coder's web app, a coding folder's Hugging Face Space.

They import only torch, transformers (gradio for the app) and each other, by single-dot relative imports. This file
itself does not travel: it is how the rest of the package finds them (`source_file`), and imports nothing heavy.
"""

from pathlib import Path

MODEL_FILES = ("configuration_bertxml.py", "modeling_bertxml.py")  # what `trust_remote_code` loads a model from
TRAVELLING_FILES = (*MODEL_FILES, "pipeline_bertxml.py", "handler.py", "app.py")


def source_file(name: str) -> Path:
    """The package's copy of travelling file `name` (e.g. "handler.py"), to copy into a model folder as it is."""
    if name not in TRAVELLING_FILES:
        raise ValueError(f"{name} is not a file that travels with a model ({', '.join(TRAVELLING_FILES)})")
    return Path(__file__).with_name(name)


__all__ = ["MODEL_FILES", "TRAVELLING_FILES", "source_file"]
