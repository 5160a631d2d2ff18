"""Input pipelines: grain over tfds sources, local folders, the bundled digits; tokenizers."""
