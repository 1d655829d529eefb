"""Speed, memory and quality benchmarks for BERT-XML, run as scripts (`python benchmarks/X.py`); a package so that
tests can import the naive reference head."""
