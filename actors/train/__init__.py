"""Ray Train: the trainer, stages `pretrain`, `midtrain`, `sft`, `dpo` and DPO's reference pass."""
