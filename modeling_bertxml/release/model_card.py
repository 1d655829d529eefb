"""The model cards (`README.md`) of `train.py` and `pretrain.py` output folders.

Hub metadata (`library_name`, `pipeline_tag`, `license`, `base_model` so the Hub's model tree links the encoder,
`datasets`, `metrics`, tags, `model-index` with every metric of the validation and test splits, widget examples,
`inference: false` because the hosted widget cannot run custom code) plus the template's prose: results, how to use
(an Inference Endpoint or a Space instead of the widget), intended use, limitations, PHI warning. The widget examples
are written here, by hand: a card must never quote a training note.
"""

import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..evaluation.metrics import METRIC_KEYS, format_table

# Package data (pyproject.toml), so that an installed bert-xml finds them without the repository.
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
ENCODER_TEMPLATE = Path(__file__).parent / "templates" / "encoder_card.md"
TAGS = ["bert-xml", "icd-10", "icd-10-cm", "medical-coding", "clinical-notes", "multi-label-classification"]
ENCODER_TAGS = ["bert-xml", "clinical-notes", "fill-mask", "feature-extraction"]
# Hub metric ids (huggingface.co/metrics) of the scores the cards report.
METRICS = ["f1", "precision", "recall", "roc_auc"]
# No licence granted: the usual case for a model of an institution's notes (--license changes it).
DEFAULT_LICENSE = "other"
# Invented notes, no patient behind them: the only text a card may show.
WIDGET_EXAMPLES = [
    "Follow-up visit. Type 2 diabetes mellitus without complications, well controlled on metformin. Essential "
    "hypertension, continue lisinopril.",
    "Admitted with community-acquired pneumonia of the right lower lobe; acute kidney injury resolved with fluids. "
    "History of chronic heart failure.",
]
# Counts and settings are not scores: they stay out of model-index.
_NOT_SCORES = {"threshold", "num_notes", "num_codes"}


def eval_results(results: dict[str, dict], dataset_name: str, codes: str = "ICD-10-CM") -> list[EvalResult]:
    """One model-index entry per split and score (`results` maps split name to `compute_metrics` output)."""
    entries = []
    for split, metrics in results.items():
        for key in METRIC_KEYS:
            if key in _NOT_SCORES or key not in metrics:
                continue
            entries.append(
                EvalResult(
                    task_type="text-classification",
                    task_name=f"Multi-label {codes} coding",
                    dataset_type="private-clinical-notes",
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=key,
                    metric_name=f"{split} {key}",
                    metric_value=round(float(metrics[key]), 4),
                )
            )
    return entries


def hub_id(name: str | os.PathLike | None) -> str | None:
    """`name` when it is a Hub repo id, None for a local folder or nothing (a path must never reach a card)."""
    if name is None or os.path.exists(name):
        return None
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return None
    return str(name)


def card_data(
    repo_id: str,
    pipeline_tag: str,
    tags: list[str],
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    library_name: str = "transformers",
    **metadata,
) -> ModelCardData:
    """The metadata both cards share; `metadata` adds card-specific fields (eval_results, widget)."""
    return ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        language="en",
        license=license,
        base_model=base_model,
        datasets=datasets or None,
        metrics=METRICS,
        tags=tags,
        inference=False,  # the hosted widget runs no custom code: the card points to Endpoints and Spaces
        **metadata,
    )


def render_model_card(
    repo_id: str,
    results: dict[str, dict],
    dataset_name: str = "clinical notes (private)",
    template_path: str | Path = TEMPLATE,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    adapter: bool = False,
    **facts,
) -> ModelCard:
    """Fill `template_path`, a Jinja template (by default bert-xml's card, shipped inside the package).

    `base_model` is a Hub id (never a path); `adapter` says the folder is a LoRA adapter on it, which the card
    explains how to load. `facts` are the template's variables about the run (num_labels, threshold,
    max_note_length, num_train_notes, code_system_title, ...).
    """
    data = card_data(
        repo_id, "text-classification", TAGS + (["lora"] if adapter else []), license, base_model, datasets,
        library_name="peft" if adapter else "transformers",
        eval_results=eval_results(results, dataset_name, facts.get("code_system_title", "ICD-10-CM")),
        widget=[{"text": text} for text in WIDGET_EXAMPLES],
    )  # fmt: skip
    return ModelCard.from_template(
        data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        results_table=format_table(results),
        base_model=base_model,
        adapter=adapter,
        **facts,
    )


def render_encoder_card(
    repo_id: str,
    results: dict,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    template_path: str | Path = ENCODER_TEMPLATE,
    **facts,
) -> ModelCard:
    """The card of a `pretrain.py` folder: an MLM encoder to fine-tune with train.py (`results`: its
    train_results.json, with the validation perplexity beside the unigram baseline's when there was a split)."""
    data = card_data(repo_id, "fill-mask", ENCODER_TAGS, license, base_model, datasets)
    return ModelCard.from_template(
        data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        results=results,
        **facts,
    )


__all__ = [
    "ENCODER_TEMPLATE",
    "TAGS",
    "TEMPLATE",
    "WIDGET_EXAMPLES",
    "card_data",
    "eval_results",
    "hub_id",
    "render_encoder_card",
    "render_model_card",
]
