"""Data: sources (COCO-format files, synthetic shapes, TFDS) -> tf.data transforms ->
token sequences.

Only `transforms.py`, `geometry.py`, `sequences.py`, `instance_sequences.py` and
`pipeline.py` import TensorFlow. The canvas contract (`canvas.py`), the annotation
readers, the image-file check and the synthetic batches work without it, so inference
can use them.
"""
