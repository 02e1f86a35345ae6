"""Data: sources (COCO-format files, synthetic shapes) -> tf.data transforms -> token sequences.

Only this subpackage imports TensorFlow; nothing it exports is needed to run the model.
"""
