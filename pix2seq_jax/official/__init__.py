"""The official Pix2Seq checkpoints (google-research/pix2seq, TF2): their settings as a
config (`config.py`), the map from every official variable name to this project's
parameters (`names.py`), and the converter that writes a released checkpoint out as an
ordinary workdir (`convert.py`, `python -m pix2seq_jax.official.convert`)."""
