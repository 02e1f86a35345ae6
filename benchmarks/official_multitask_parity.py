"""Full-size parity with the official Pix2Seq-v2 multi-task model (ViT-B, every task prompt).

  python benchmarks/official_multitask_parity.py --src=PIX2SEQ_CHECKOUT \
      --oracle_python=VENV/bin/python [--variant=vit-b] [--size=640] [--scratch=DIR]

The official code (in its own environment, --oracle_python: tensorflow-cpu, tf-keras; see
benchmarks/official_multitask_oracle.py) builds the `configs/config_multi_task.py` model
at full size with random weights (35000-token vocabulary, 512 learned decoder positions),
saves it as the official trainer does, records its logits for one sequence per task prompt
(10 detection, 11 segmentation, 12 keypoints, 13 captioning) and each task's greedy
decoding by the official task's `infer`. This project converts the checkpoint
(pix2seq_jax.official.convert), computes `Predictor.logits` on the same inputs and
decodes each task greedily (temperature 0, decode.mode 'official') with its task object.
Prints one JSON line and a markdown table, one row per prompt: max |logit error| /
max |logit|, argmax agreement, greedy rows equal token for token.

Keypoints: where greedy draws the invisible token, the official eval redraws it with
filters meant for one position applied across the sequence (official_multitask_oracle.py);
ours is compared with the redraw it means (`kp_intended`: the most likely other token).
Segmentation: a row ends at its first padding token (the official samples on): compared
up to there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pix2seq_jax.inference import decoding  # noqa: E402
from pix2seq_jax.inference.predictor import Predictor  # noqa: E402
from pix2seq_jax.models import build  # noqa: E402
from pix2seq_jax.official import convert as convert_official  # noqa: E402
from pix2seq_jax.runtime import cpu as cpu_runtime  # noqa: E402
from pix2seq_jax.tasks import detection, keypoints, segmentation  # noqa: E402
from pix2seq_jax.tasks import vocab as vocab_lib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = {10: 'detection', 11: 'segmentation', 12: 'keypoints', 13: 'captioning'}


@dataclasses.dataclass(frozen=True)
class CaptionTask:
  """Captioning's decoding hooks: prompt 13, no constraint, no stop, tokens out."""

  vocab: vocab_lib.Vocabulary
  stop_tokens: ClassVar[tuple[int, ...]] = ()

  @property
  def prompt(self) -> int:
    return self.vocab.prompt('captioning')

  def init_state(self, batch, length):
    return ()

  def allowed(self, position, tokens, state):
    return None

  def update(self, state, position, logits, probs, token, done):
    return state

  def outputs(self, tokens, token_probs, state):
    return tokens


def _run(cmd: list[str]) -> str:
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-3000:]}')
  return done.stdout.strip().splitlines()[-1]


def greedy(predictor: Predictor, oracle: dict) -> dict:
  """Each task's greedy tokens (temperature 0, decode.mode 'official')."""
  vocab = vocab_lib.for_categories('official_multitask', range(1, 900), 1000)
  graphdef = build.model_graphdef(predictor.config, vocab)
  points = oracle['seg_tokens'].shape[1] // 2
  samples = oracle['seg_tokens'].shape[0] // oracle['seg_label'].size
  tasks = {
      10: (detection.DetectionTask(vocab, 'official'), oracle['det_tokens'].shape[1], None),
      11: (segmentation.SegmentationTask(vocab, max_points=points, num_samples=samples),
           2 * points, (oracle['seg_box'], oracle['seg_label'])),
      12: (keypoints.KeypointTask(vocab), 2 * keypoints.NUM_KEYPOINTS,
           (oracle['kp_box'], oracle['kp_label'])),
      13: (CaptionTask(vocab), oracle['cap_tokens'].shape[1], None),
  }
  out = {}
  for prompt_token, (task, length, boxes) in tasks.items():

    @jax.jit
    def run(params, batch_stats, images, task=task, length=length, boxes=boxes):
      model = nnx.merge(graphdef, params, batch_stats)
      prompt = None if boxes is None else task.prompts(jnp.asarray(boxes[0]),
                                                       jnp.asarray(boxes[1]))
      return decoding.decode(model, images, task, length=length, temperature=0.0,
                             mode='official', prompt=prompt).tokens

    start = time.time()
    out[prompt_token] = np.asarray(jax.device_get(
        run(predictor.params, predictor.batch_stats, oracle['images'])))
    out[f'{prompt_token}_seconds'] = time.time() - start
  return out


def rows_equal(prompt: int, ours: np.ndarray, oracle: dict) -> tuple[int, int]:
  """(rows equal token for token, rows) of one task's greedy decoding."""
  if prompt == 11:  # up to and including the first padding token
    official, equal = oracle['seg_tokens'], 0
    for row in range(len(official)):
      ends = np.flatnonzero(official[row] == vocab_lib.PADDING)
      stop = ends[0] + 1 if ends.size else official.shape[1]
      equal += bool((ours[row, :stop] == official[row, :stop]).all()
                    and (ours[row, stop:] == vocab_lib.PADDING).all())
    return equal, len(official)
  official = {10: oracle['det_tokens'], 12: oracle['kp_intended'],
              13: oracle['cap_tokens']}[prompt]
  return int((ours == official).all(axis=1).sum()), len(official)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--src', required=True, help='google-research/pix2seq checkout')
  parser.add_argument('--oracle_python', required=True)
  parser.add_argument('--variant', default='vit-b')
  parser.add_argument('--size', type=int, default=640)
  parser.add_argument('--scratch', default='/tmp/pix2seq_official_multitask_parity')
  args = parser.parse_args()
  folder = os.path.join(args.scratch, f'{args.variant}_{args.size}')
  start = time.time()
  if not os.path.exists(os.path.join(folder, 'oracle.npz')):
    # Smaller than the official eval's (10 objects, 2 samples of 16 points, 32 caption
    # tokens): the official decoder re-projects every cached key and value each step.
    _run([args.oracle_python, os.path.join(HERE, 'official_multitask_oracle.py'), args.src,
          folder, '--variant', args.variant, '--size', str(args.size), '--instances', '1',
          '--samples', '2', '--caption-tokens', '32', '--embedding-std', '0.1'])
  oracle_s = time.time() - start
  workdir = folder + '_converted'
  start = time.time()
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    convert_official.convert(folder, workdir)
  convert_s = time.time() - start
  predictor = Predictor(workdir, batch_size=4)
  oracle = dict(np.load(os.path.join(folder, 'oracle.npz')))
  oracle['images'] = oracle['pixels'].astype(np.float32) / np.float32(255)
  ours = predictor.logits(oracle['images'], oracle['seq'])
  decoded = greedy(predictor, oracle)
  rows = []
  for row, prompt in enumerate(oracle['seq'][:, 0].tolist()):
    ref = oracle['logits'][row]
    equal, total = rows_equal(prompt, decoded[prompt], oracle)
    rows.append({
        'prompt': prompt, 'task': PROMPTS[prompt],
        'max_rel_logit_error': float(np.abs(ours[row] - ref).max() / np.abs(ref).max()),
        'argmax_agreement': float((ours[row].argmax(-1) == ref.argmax(-1)).mean()),
        'greedy_rows_equal': f'{equal}/{total}',
        'greedy_tokens': int(decoded[prompt].shape[1]),
        'decode_seconds': round(decoded[f'{prompt}_seconds'], 1)})
  print(json.dumps({'variant': predictor.config.model.variant, 'size': args.size,
                    'vocabulary': predictor.config.model.vocabulary,
                    'oracle_seconds': round(oracle_s, 1), 'convert_seconds': round(convert_s, 1),
                    'rows': rows}), flush=True)
  print(f'\n{args.variant} ({predictor.config.model.variant}) at {args.size} px, '
        f'{predictor.config.model.vocabulary} vocabulary, random weights')
  print('| prompt | task | max rel. logit error | argmax agreement | greedy rows equal '
        '| greedy tokens |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['prompt']} | {r['task']} | {r['max_rel_logit_error']:.2e} | "
          f"{r['argmax_agreement']:.4f} | {r['greedy_rows_equal']} | {r['greedy_tokens']} |")


if __name__ == '__main__':
  cpu_runtime.configure(restart=False)  # the XLA:CPU flags, as when it was measured
  main()
