"""One module per DVC stage, each runnable as ``python -m pipeline.stages.<name>``."""
