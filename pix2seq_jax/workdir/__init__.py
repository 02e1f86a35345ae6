"""A run's workdir: what a run writes where (`files.py`) and its orbax checkpoints
(`checkpoints.py`: save, restore, and the check that a checkpoint fits the configured
model). Below both train/ and inference/, so that a shipped predictor needs no training
code."""
