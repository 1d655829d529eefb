"""Masked-language-model pretraining of BERT-XML's encoder from scratch on clinical notes, with Accelerate.

    python pretrain.py --tokenizer_name tokenizer/ --train_file notes/*.txt --validation_file dev.txt \
        --config_overrides "hidden_size=256,num_hidden_layers=4" --output_dir runs/mlm --checkpointing_steps 1000
    accelerate launch [--config_file configs/accelerate/multi_gpu.yaml] pretrain.py ...   # the same on N processes

`python pretrain.py --help` lists every flag. The script lives in the package (modeling_bertxml/training/pretrain.py,
also installed as `bert-xml-pretrain`); this file is what `accelerate launch` runs from a checkout.
"""

from modeling_bertxml.training.pretrain import main

if __name__ == "__main__":
    main()
