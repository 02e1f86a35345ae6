"""Scalars to TensorBoard (clu) and to `<workdir>/metrics.jsonl`, and images to
TensorBoard, from process 0 only."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from clu import metric_writers

from pix2seq_jax.workdir import files as workdir_lib


class MetricsLog:
  """Writes scalars to TensorBoard and one JSON object per call to metrics.jsonl."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.enabled, asynchronous=False)
    self.path = os.path.join(workdir, workdir_lib.METRICS)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': int(step), **scalars}) + '\n')

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """uint8 [N, H, W, 3] images per tag, to TensorBoard (process 0)."""
    if self.enabled:
      self.writer.write_images(step, images)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
