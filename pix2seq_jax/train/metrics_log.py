"""Scalars to TensorBoard (clu) and to `<workdir>/metrics.jsonl`, from process 0 only."""

from __future__ import annotations

import json
import os

import jax
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

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
