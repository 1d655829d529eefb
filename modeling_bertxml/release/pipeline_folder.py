"""Make a saved coding model answer `pipeline("icd-coding", model=folder, trust_remote_code=True)` on its own."""

import os
import shutil
from pathlib import Path

from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from ..data.code_systems import code_descriptions
from ..model import source_file
from ..model.configuration_bertxml import BertXMLConfig

logger = logging.get_logger(__name__)

TASK = "icd-coding"


def custom_pipelines_entry() -> dict:
    """The `custom_pipelines` value of config.json, written from the registry as `Pipeline.save_pretrained` does."""
    registered = PIPELINE_REGISTRY.supported_tasks[TASK]
    impl = registered["impl"]
    entry = {
        "impl": f"{impl.__module__.split('.')[-1]}.{impl.__name__}",
        "pt": [model_class.__name__ for model_class in registered["pt"]],
        "type": registered["type"],
    }
    return {TASK: entry}


def add_pipeline_to_config(
    config: BertXMLConfig, descriptions: dict[str, str] | None = None, code_texts: dict[str, list[str]] | None = None
) -> None:
    """Set `custom_pipelines` (the `icd-coding` pipeline) and `label_descriptions` on a coding model's config, to be
    saved with its weights, so users without bert-xml (or the code lists it reads) get codes with descriptions.

    `descriptions` maps codes to text; by default the official descriptions of the codes in the config's
    `code_system` (`code_systems`), for every code that its list has, or the first of a user's `code_texts`.
    """
    codes = [config.id2label[i] for i in range(config.num_labels)]
    if descriptions is None:
        official = code_descriptions(codes, inclusion_terms=False, code_system=config.code_system, own=code_texts)
        descriptions = {code: texts[0] for code, texts in official.items()}
    config.label_descriptions = {code: descriptions[code] for code in codes if code in descriptions}
    if len(config.label_descriptions) < len(codes):
        logger.warning(f"{len(codes) - len(config.label_descriptions)} of {len(codes)} codes have no description")
    config.custom_pipelines = custom_pipelines_entry()


def save_pipeline_code(folder: str | os.PathLike) -> None:
    """Copy `pipeline_bertxml.py` next to the weights: the code that `custom_pipelines` names."""
    shutil.copyfile(source_file("pipeline_bertxml.py"), Path(folder) / "pipeline_bertxml.py")


def make_pipeline_ready(folder: str | os.PathLike, descriptions: dict[str, str] | None = None) -> None:
    """Both of the above for a folder already saved with `save_pretrained` (its config.json is rewritten)."""
    config = BertXMLConfig.from_pretrained(folder)
    add_pipeline_to_config(config, descriptions)
    config.save_pretrained(folder)
    save_pipeline_code(folder)
