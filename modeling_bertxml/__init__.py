"""bert-xml: BERT-XML for ICD-10 coding of long clinical notes, registered with transformers' Auto classes.

This module is the only place that registers: importing the package makes `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification` and `AutoModelForMaskedLM` resolve `model_type="bertxml"` without
`trust_remote_code`, makes `save_pretrained` copy the remote-code files next to the weights, and makes
`pipeline("icd-coding", model=...)` build an `ICDCodingPipeline`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_bertxml import BertXMLConfig
from .modeling_bertxml import (
    BertXMLForMaskedLM,
    BertXMLForMultiLabelCoding,
    BertXMLLabelWiseHead,
    BertXMLModel,
    BertXMLPreTrainedModel,
    MultiLabelCodingOutput,
)
from .pipeline_bertxml import ICDCodingPipeline

AutoConfig.register(BertXMLConfig.model_type, BertXMLConfig)
# `AutoModel` is the coding model: the product's entry point is AutoModel.from_pretrained("org/bert-xml-icd10").
AutoModel.register(BertXMLConfig, BertXMLForMultiLabelCoding)
AutoModelForSequenceClassification.register(BertXMLConfig, BertXMLForMultiLabelCoding)
AutoModelForMaskedLM.register(BertXMLConfig, BertXMLForMaskedLM)

# register_for_auto_class keeps one auto class per model class; it is what makes save_pretrained copy the code
# files. The full auto_map (every Auto class) is written by BertXMLConfig itself.
BertXMLConfig.register_for_auto_class()
BertXMLForMultiLabelCoding.register_for_auto_class("AutoModel")
BertXMLForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")

# The model loads through AutoModelForSequenceClassification, which a saved folder's `custom_pipelines` names by string.
PIPELINE_REGISTRY.register_pipeline(
    "icd-coding", pipeline_class=ICDCodingPipeline, pt_model=AutoModelForSequenceClassification, type="text"
)

__all__ = [
    "BertXMLConfig",
    "BertXMLForMaskedLM",
    "BertXMLForMultiLabelCoding",
    "BertXMLLabelWiseHead",
    "BertXMLModel",
    "BertXMLPreTrainedModel",
    "ICDCodingPipeline",
    "MultiLabelCodingOutput",
]
