"""How a model is trained: the two scripts (`pretrain`, `train`) and what they share, written once: flags
(`arguments`), the Accelerate loop's parts (`loop`), what a run writes to disk (`checkpointing`, through `atomic`'s
writes, which the tokenizer trainer uses too), the models built from a checkpoint (`models`), description-initialised
label queries (`label_init`) and throughput (`throughput`)."""
