"""Deploy: the whole detector (canvas -> encode -> cached decode -> detections) as one
JAX function (`detector.py`), exported with jax.export and as a TensorFlow SavedModel
(`export.py`, `saved_model.py`). `pix2seq_jax/serving.py` runs an export with JAX alone.
"""
