"""The exported detector as a TensorFlow SavedModel for TensorFlow Serving (jax2tf).

The serving signature `serving_default`:

  images  uint8 [b, H, W, C]  C = 1 or 2 (grey, grey + alpha), 3 (RGB) or 4 (RGBA);
                              images of other sizes padded bottom/right to a common H, W
  sizes   int32 [b, 2]        each image's own (height, width) inside that batch

  boxes           float32 [b, K, 4]  COCO (x, y, width, height) in the image's pixels
  classes         int32 [b, K]       category ids, -1 past num_detections
  scores          float32 [b, K]
  num_detections  int32 [b]

Each image is cut to its size, converted to floats and resized (longest side S) by the
evaluation pipeline's own TensorFlow transforms, padded onto the S x S canvas, and
decoded by the jax2tf-converted `detector.detector_fn` (weights as variables). TensorFlow
is imported only inside `save`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def save(run: Callable, weights: list[np.ndarray], size: int, mode: str, path: str,
         platforms: tuple[str, ...]) -> None:
  """Writes the SavedModel of `run(weights, canvases [b, S, S, 3])` (export.py) to `path`."""
  import tensorflow as tf  # noqa: PLC0415 (only writing a SavedModel needs TensorFlow)
  from jax.experimental import jax2tf  # noqa: PLC0415 (imports TensorFlow)

  from pix2seq_jax.data import transforms  # noqa: PLC0415 (TensorFlow)

  def canvas(args):  # one image, cut to its size -> (the evaluation canvas, scale)
    image, hw = args
    image = image[:hw[0], :hw[1]]
    image = tf.cond(tf.shape(image)[2] <= 2, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                    lambda: image[..., :3])  # grey repeated, alpha dropped
    image = tf.image.convert_image_dtype(image, tf.float32)  # as the pipeline decodes
    resized, scale = transforms.resize_longest_side(image, size)
    padded, _ = transforms.pad_to_canvas(resized, tf.zeros([0, 4]), size)
    return tf.ensure_shape(padded, [size, size, 3]), scale

  try:  # TensorFlow only traces and writes here: keep it off any GPU
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # its devices were set up already
    pass
  converted = jax2tf.convert(run, polymorphic_shapes=[None, f'(b, {size}, {size}, 3)'],
                             with_gradient=False, native_serialization_platforms=platforms)
  module = tf.Module()
  module.weights = [tf.Variable(w, trainable=False) for w in weights]
  clip = mode != 'official'  # the official post-processing keeps boxes past the image

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, None, None, None], tf.uint8, name='images'),
      tf.TensorSpec([None, 2], tf.int32, name='sizes')])
  def serve(images, sizes):
    canvases, scales = tf.map_fn(
        canvas, (images, sizes),
        fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                             tf.TensorSpec([], tf.float32)))
    out = converted(module.weights, canvases)
    pixels = out['boxes'] * size / scales[:, None, None]  # [b, K, 4] (ymin, xmin, ymax, xmax)
    if clip:
      hw = tf.cast(sizes, tf.float32)[:, None, :]  # [b, 1, 2]
      pixels = tf.clip_by_value(pixels, 0.0, tf.tile(hw, [1, 1, 2]))
    ymin, xmin, ymax, xmax = tf.unstack(pixels, axis=-1)
    boxes = tf.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)
    valid = out['classes'] >= 0
    return {'boxes': tf.where(valid[..., None], boxes, 0.0), 'classes': out['classes'],
            'scores': out['scores'], 'num_detections': out['num_detections']}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={'serving_default': serve})
