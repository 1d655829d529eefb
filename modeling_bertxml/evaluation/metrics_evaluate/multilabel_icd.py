"""Multi-label ICD coding metrics as an `evaluate` module, a thin wrapper around `modeling_bertxml.evaluation.metrics`.

Load it by path (no Hub access):
    metric = evaluate.load(modeling_bertxml.evaluation.metrics_evaluate.MULTILABEL_ICD_SCRIPT)
    metric.compute(predictions=probs, references=multi_hot, threshold=0.42)
"""

import datasets
import evaluate
import numpy as np

# "From:" names the pip package for evaluate's missing-dependency error (the import name differs from it).
from modeling_bertxml.evaluation.metrics import compute_metrics  # From: bert-xml


_DESCRIPTION = (
    "Micro/macro precision, recall and F1, micro/macro ROC AUC, precision@5/8/15, recall@8, R-precision and mean "
    "average precision for multi-label ICD coding, as defined in Edin et al. 2023 (see "
    "modeling_bertxml/evaluation/metrics.py)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: (num_notes, num_codes) probabilities in [0, 1].
    references: (num_notes, num_codes) multi-hot gold codes over the same label space.
    threshold: a code is predicted when its probability is strictly above it (default 0.5).
    num_unseen_positives: gold codes outside the label space, counted as false negatives (default 0).
Returns:
    dict with the keys of modeling_bertxml.evaluation.metrics.METRIC_KEYS.
"""
_CITATION = """\
@inproceedings{edin2023automated,
  title={Automated Medical Coding on MIMIC-III and MIMIC-IV: A Critical Review and Replicability Study},
  author={Edin, Joakim and Junge, Alexander and Havtorn, Jakob D. and Borgholt, Lasse and Maistro, Maria and
          Ruotsalo, Tuukka and Maal{\\o}e, Lars},
  booktitle={SIGIR},
  year={2023}
}
"""


class MultilabelIcd(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 so the stored probabilities, hence thresholds and ties, are exactly the caller's
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
        )

    def _compute(self, predictions, references, threshold: float = 0.5, num_unseen_positives: int = 0) -> dict:
        return compute_metrics(np.asarray(predictions), np.asarray(references), threshold, num_unseen_positives)
