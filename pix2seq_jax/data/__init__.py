"""Data: sources (COCO-format files, synthetic shapes, TFDS) -> tf.data transforms ->
token sequences.

Only `transforms.py`, `sequences.py` and `pipeline.py` import TensorFlow. The canvas
contract (`canvas.py`), the annotation reader, the image-file check and the synthetic
batches work without it, so inference can use them.
"""
