"""How a model is trained: the two scripts (`pretrain`, `train`) and what they share, written once: flags
(`arguments`), the Accelerate loop's parts (`loop`), what a run writes to disk (`checkpointing`), the models built from
a checkpoint (`models`), description-initialised label queries (`label_init`) and throughput (`throughput`)."""
