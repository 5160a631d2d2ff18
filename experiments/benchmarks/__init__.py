"""One module per benchmark of ``python -m experiments.bench <name>`` (``experiments/bench.py``
is the CLI): ``ssd`` (the SSD implementations against attention, and the mamba_ssm peer of
``peer``), ``model`` (MDM against a Transformer backbone), ``mfu``, ``sampler``,
``input_pipeline`` (the ``data`` bench); ``common`` has the timing, the machine line and the
JSON writer they share."""
