"""Training: the plain-torch step (step), parallelism in a fixed order (parallelize), sharded loading,
the stages' jobs and metrics, and the SFT and DPO library halves."""
