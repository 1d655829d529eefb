"""bert-xml: BERT-XML (Zhang, Liu, Razavian, ClinicalNLP 2020) for ICD-10 coding of long clinical notes."""

from setuptools import find_packages, setup

setup(
    name="bert-xml",
    version="0.1.0",
    description="Train an ICD-10 coding model (BERT-XML) on a hospital's own clinical notes, Hugging Face-native.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_bertxml", "modeling_bertxml.*", "tokenizer_training"]),
    package_data={"modeling_bertxml": ["templates/*.md"]},  # train.py's model card, found without the repository
    py_modules=["pretrain", "train"],
    python_requires=">=3.11",
    install_requires=[
        "transformers>=5",
        "tokenizers",
        "datasets",
        "accelerate",
        "evaluate",
        "huggingface-hub>=2.4",  # httpx2-based client (modeling_bertxml.hub catches its errors)
        "jinja2",  # huggingface_hub.ModelCard.from_template renders train.py's model card
        "safetensors",
        "peft",
        "torch>=2.4",
        "simple-icd-10-cm",
        "numpy",
        "pandas",  # data/prepare_mimic.py reads the MIMIC tables (pyarrow, via datasets, reads split .feather files)
        "scikit-learn",
        "pyyaml",
        "matplotlib",  # train.py's figures for the model card (Agg backend, no display needed)
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "tensorboard", "parameterized", "hypothesis", "playwright"],
        "app": ["gradio>=6"],  # bert-xml-app; the browser test drives Debian's chromium through playwright
    },
    entry_points={"console_scripts": ["bert-xml-app = modeling_bertxml.app:main"]},
)
