"""The model card (`README.md`) of a `train.py` output folder (not remote code).

Hub metadata (`library_name`, `pipeline_tag`, tags, `model-index` with every metric of the validation and test splits,
widget examples) plus the template's prose: results, how to use, intended use, limitations, PHI warning. The widget
examples are written here, by hand: a card must never quote a training note.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .metrics import METRIC_KEYS, format_table

# Package data (pyproject.toml), so that an installed bert-xml finds it without the repository.
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TAGS = ["bert-xml", "icd-10", "icd-10-cm", "medical-coding", "clinical-notes", "multi-label-classification"]
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


def render_model_card(
    repo_id: str,
    results: dict[str, dict],
    dataset_name: str = "clinical notes (private)",
    template_path: str | Path = TEMPLATE,
    **facts,
) -> ModelCard:
    """Fill `template_path`, a Jinja template (by default bert-xml's card, shipped inside the package).

    `facts` are the template's variables about the run (num_labels, threshold, max_note_length, num_train_notes,
    code_system_title, ...).
    """
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag="text-classification",
        language="en",
        tags=TAGS,
        eval_results=eval_results(results, dataset_name, facts.get("code_system_title", "ICD-10-CM")),
        widget=[{"text": text} for text in WIDGET_EXAMPLES],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        results_table=format_table(results),
        **facts,
    )


__all__ = ["TAGS", "TEMPLATE", "WIDGET_EXAMPLES", "eval_results", "render_model_card"]
