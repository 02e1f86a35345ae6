"""Inference: cached autoregressive decoding under a task's hooks (`decoding.py`), its
jitted and sharded form (`sharded_decode.py`), detections in pixels (`detections.py`),
image files read as training reads them (`images.py`) and the Predictor for any image.

Nothing here imports TensorFlow.
"""
