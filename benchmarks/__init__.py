"""Speed and memory benchmarks for BERT-XML; run them from the repository root as `python -m benchmarks.X`."""
