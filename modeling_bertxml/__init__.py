"""bert-xml: BERT-XML for ICD-10 coding of long clinical notes, registered with transformers' Auto classes.

This module is the only place that registers: with the package imported, `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification` and `AutoModelForMaskedLM` resolve `model_type="bertxml"` without
`trust_remote_code`, `save_pretrained` copies the remote-code files next to the weights, and
`pipeline("icd-coding", model=...)` builds an `ICDCodingPipeline`.

Importing the package is cheap: `modeling_bertxml.evaluation.metrics` and the tokenizer trainer load neither torch nor
the model.
The classes below load on first access, and registration happens as soon as transformers' Auto classes are loaded,
whichever is imported first: `import modeling_bertxml` then `AutoModel.from_pretrained(folder)` works.
"""

import importlib
import sys
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

_EXPORTS = {
    "BertXMLConfig": "model.configuration_bertxml",
    "BertXMLDescriptionMatch": "model.modeling_bertxml",
    "BertXMLForMaskedLM": "model.modeling_bertxml",
    "BertXMLForMultiLabelCoding": "model.modeling_bertxml",
    "BertXMLLabelWiseHead": "model.modeling_bertxml",
    "BertXMLModel": "model.modeling_bertxml",
    "BertXMLPreTrainedModel": "model.modeling_bertxml",
    "ICDCodingPipeline": "model.pipeline_bertxml",
    "MultiLabelCodingOutput": "model.modeling_bertxml",
}
_AUTO = "transformers.models.auto"
_REGISTERED_MODULES = {f"{__name__}.{module}" for module in _EXPORTS.values()}
_registered = False

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register()
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def register() -> None:
    """Make transformers' Auto classes and `pipeline("icd-coding")` know BERT-XML (once; later calls do nothing)."""
    global _registered
    if _registered:
        return
    _registered = True
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    from .model.configuration_bertxml import BertXMLConfig
    from .model.modeling_bertxml import BertXMLForMaskedLM, BertXMLForMultiLabelCoding, BertXMLModel
    from .model.pipeline_bertxml import ICDCodingPipeline

    AutoConfig.register(BertXMLConfig.model_type, BertXMLConfig)
    # `AutoModel` follows the folder's `architectures`, as its saved auto_map does: a coding folder gives the coding
    # model (the product's entry point is AutoModel.from_pretrained("org/bert-xml-icd10")), any other the encoder.
    AutoModel.register(BertXMLConfig, (BertXMLModel, BertXMLForMultiLabelCoding))
    AutoModelForSequenceClassification.register(BertXMLConfig, BertXMLForMultiLabelCoding)
    AutoModelForMaskedLM.register(BertXMLConfig, BertXMLForMaskedLM)

    # register_for_auto_class keeps one auto class per model class; it is what makes save_pretrained copy the code
    # files. The full auto_map (every Auto class) is written by BertXMLConfig itself.
    BertXMLConfig.register_for_auto_class()
    BertXMLForMultiLabelCoding.register_for_auto_class("AutoModel")
    BertXMLModel.register_for_auto_class("AutoModel")
    BertXMLForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")

    # The model loads through AutoModelForSequenceClassification, which a saved folder's `custom_pipelines` names.
    PIPELINE_REGISTRY.register_pipeline(
        "icd-coding", pipeline_class=ICDCodingPipeline, pt_model=AutoModelForSequenceClassification, type="text"
    )


class _RegisterOnLoad:
    """Registers when transformers' Auto classes are loaded and no transformers or bert-xml module is mid-import.

    Python has no post-import hook, so this finder wraps the loaders of transformers' modules and of ours (found the
    ordinary way, by `PathFinder`) and checks each time one finishes. Mid-import, the modules that registering
    imports may be half-defined: importing BERT's modeling, or our own files, loads the Auto classes on the way.
    The tokenizer trainer imports transformers but never its Auto classes, so it never pays for torch.
    """

    def __init__(self) -> None:
        self.loading: set[str] = set()

    def find_spec(self, fullname: str, path: list[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        watched = fullname.partition(".")[0] == "transformers" or fullname in _REGISTERED_MODULES
        if _registered or not watched:
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            self.loading.add(fullname)
            try:
                exec_module(module)
            finally:
                self.loading.discard(fullname)
            if not self.loading and _AUTO in sys.modules:
                register()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance: nothing shared is patched
        return spec


_finder = _RegisterOnLoad()
if _AUTO in sys.modules:
    register()  # transformers' Auto classes, and torch with them, are loaded already: registering costs no import
else:
    sys.meta_path.insert(0, _finder)
