"""The input canvas contract shared by the tf.data pipeline and the TF-free Predictor.

Images are floats in [0, 1], resized so the longest side fits the square canvas and
padded bottom/right with PAD_VALUE (the official code's 0.3).
"""

PAD_VALUE = 0.3
