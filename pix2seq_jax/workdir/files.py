"""What a run writes into its workdir, and where (only process 0 writes files; orbax
checkpoints are written by all processes together).

  <workdir>/config.json            the resolved config
  <workdir>/categories.json        the label map: [{"id", "name"}] in label order
  <workdir>/data_report.json       per split: what the data checks left out, fixed, skipped
  <workdir>/checkpoints/<step>/    orbax checkpoints (workdir/checkpoints.py)
  <workdir>/metrics.jsonl          one JSON object per logged step (train/metrics_log.py)
  <workdir>/events.out.tfevents.*  TensorBoard scalars
  <workdir>/eval/step_<N>/         metrics.json and detections.json (COCO results format;
                                   the other tasks' results: segmentations.json,
                                   keypoints.json, captions.json)
  <workdir>/<task>/eval/step_<N>/  the same per task of a multi-task run (config.tasks)
  <workdir>/tokenizer.model        captioning: the SentencePiece model it was trained with,
  <workdir>/tokenizer.json         and its sha256 and source (workdir/tokenizer_file.py)
"""

from __future__ import annotations

import json
import os

import jax

CONFIG = 'config.json'
CATEGORIES = 'categories.json'
DATA_REPORT = 'data_report.json'
METRICS = 'metrics.jsonl'
TOKENIZER = 'tokenizer.model'
TOKENIZER_INFO = 'tokenizer.json'


def eval_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, 'eval', f'step_{step}')


def write_json(path: str, content) -> None:
  """Writes `content` as indented JSON from process 0 (other processes write nothing)."""
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
      json.dump(content, f, indent=1)
