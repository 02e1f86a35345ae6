"""Deploy: the whole detector (canvas -> encode -> cached decode -> detections) as one
JAX function (`detector.py`), exported with jax.export and as a TensorFlow SavedModel
(`export.py`, `saved_model.py`), and an export run with JAX alone (`serving.py`); the
other tasks' decoding (segmentation, keypoints, captioning) exported as jax.export
programs whose outputs are read on the host.
"""
