"""absl entry points: train, sample, evaluate, bench."""
