"""What the scripts read: notes files (`readers`), notes with codes and their label space (`notes`), code systems and
their official texts (`code_systems`, `icd10`), length-grouped batches (`sampling`) and the synthetic corpus of the
demo and the tests (`synthetic`). No model code: nothing here travels with a saved model."""
