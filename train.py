"""Fine-tune BERT-XML for multi-label ICD coding, evaluate it as Edin et al. (2023) do, and push it to the Hub.

    python train.py --model_name_or_path runs/pretrain --train_file train.jsonl --validation_file dev.jsonl \
        --test_file test.jsonl --output_dir runs/coder [--use_lora --merge_lora] [--push_to_hub --hub_model_id org/name]
    accelerate launch [--config_file configs/accelerate/multi_gpu.yaml] train.py ...   # the same on N processes

`python train.py --help` lists every flag. The script lives in the package (modeling_bertxml/training/train.py, also
installed as `bert-xml-train`); this file is what `accelerate launch` runs from a checkout.
"""

from modeling_bertxml.training.train import main

if __name__ == "__main__":
    main()
