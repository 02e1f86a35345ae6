"""Flax NNX modules: ResNet backbone, transformer encoder/decoder, and the Pix2Seq model.

Nothing here imports TensorFlow.
"""
