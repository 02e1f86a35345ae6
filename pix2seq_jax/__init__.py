"""Pix2Seq object detection in JAX: boxes and classes as a token sequence."""
