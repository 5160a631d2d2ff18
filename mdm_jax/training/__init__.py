"""Training utilities that need no data pipeline: sharding, checkpointing, optimisation."""
