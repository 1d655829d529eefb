"""`evaluate` metric scripts of bert-xml: `evaluate.load(MULTILABEL_ICD_SCRIPT)` works offline."""

import os


MULTILABEL_ICD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multilabel_icd.py")
