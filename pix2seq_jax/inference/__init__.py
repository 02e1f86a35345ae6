"""Inference: cached autoregressive decoding under a token grammar (`decoding.py`), its
jitted and sharded form (`sharded_decode.py`), tokens -> detections (`detections.py`),
image files read as training reads them (`images.py`) and the Predictor for any image.

Nothing here imports TensorFlow.
"""
