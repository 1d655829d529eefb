"""What publishes a trained model: the model card (`model_card`, `templates/`), the pipeline-ready folder
(`pipeline_folder`), the Space files (`space`), the private-by-default Hub push (`hub`) and batch coding of a notes
file (`predict`)."""
