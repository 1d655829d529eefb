"""Speed and memory benchmarks for BERT-XML; run them as modules from the repository root (`python -m benchmarks.X`)."""
