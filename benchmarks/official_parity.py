"""Full-size parity with the official Pix2Seq: R50, R50-C4, ViT-B and ViT-L.

  python benchmarks/official_parity.py --src=PIX2SEQ_CHECKOUT --oracle_python=VENV/bin/python \
      [--archs=resnet,resnet-c,vit-b,vit-l] [--size=640] [--max_seq_len=501] [--scratch=DIR]

For each architecture, the official code (in its own environment, --oracle_python:
tensorflow-cpu, tf-keras; see ../shared/tools/official_fixture.py) builds the model with
random weights at full size, saves it as the official trainer does and records its
logits (official_fixture.py), then decodes greedily with its post-processing
(benchmarks/official_oracle.py). This project converts the checkpoint
(pix2seq_jax.official.convert), computes `Predictor.logits` on the same inputs and
decodes greedily in the official mode. Prints one JSON line per architecture and a
markdown table: max |logit error| / max |logit|, argmax agreement, greedy token equality
and the detections' agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pix2seq_jax.inference import decoding  # noqa: E402
from pix2seq_jax.inference.predictor import Predictor  # noqa: E402
from pix2seq_jax.models import build  # noqa: E402
from pix2seq_jax.official import convert as convert_official  # noqa: E402
from pix2seq_jax.runtime import cpu as cpu_runtime

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_TOOL = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'shared', 'tools',
                            'official_fixture.py')


def _run(cmd: list[str]) -> str:
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-3000:]}')
  return done.stdout.strip().splitlines()[-1]


def parity(arch: str, args) -> dict:
  folder = os.path.join(args.scratch, f'{arch}_{args.size}')
  start = time.time()
  if not os.path.exists(os.path.join(folder, 'oracle.npz')):
    _run([args.oracle_python, args.fixture_tool, args.src, folder, arch, str(args.size), '0'])
  if not os.path.exists(os.path.join(folder, 'oracle_greedy.npz')):
    _run([args.oracle_python, os.path.join(HERE, 'official_oracle.py'), args.src, folder,
          str(args.max_seq_len)])
  oracle_s = time.time() - start
  workdir = folder + '_converted'
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    convert_official.convert(folder, workdir)
  predictor = Predictor(workdir, batch_size=2)
  oracle = np.load(os.path.join(folder, 'oracle.npz'))
  ours = predictor.logits(oracle['images'], oracle['seq'])
  ref = oracle['logits']
  greedy = np.load(os.path.join(folder, 'oracle_greedy.npz'))
  graphdef = build.model_graphdef(predictor.config, predictor.vocab)

  @jax.jit
  def run(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    state = decoding.decode(model, images, predictor.vocab, length=args.max_seq_len,
                            temperature=0.0, mode='official')
    return state.tokens, decoding.detection_outputs(state, predictor.vocab, 'class',
                                                    'official')[1]

  tokens, scores = jax.device_get(run(predictor.params, predictor.batch_stats,
                                      oracle['images']))
  tokens = tokens[:, :args.max_seq_len - 1]
  equal_rows = int((tokens == greedy['tokens']).all(axis=1).sum())
  first_diff = [int(np.argmax(t != g)) if (t != g).any() else None
                for t, g in zip(tokens, greedy['tokens'])]
  ours_scores = scores[:, 4::5][:, :greedy['scores'].shape[1]]
  return {
      'arch': arch, 'variant': predictor.config.model.variant, 'size': args.size,
      'max_rel_logit_error': float(np.abs(ours - ref).max() / np.abs(ref).max()),
      'argmax_agreement': float((ours.argmax(-1) == ref.argmax(-1)).mean()),
      'greedy_rows_equal': f'{equal_rows}/{len(tokens)}', 'first_differing_token': first_diff,
      'greedy_tokens': int(tokens.shape[1]),
      'max_score_error': float(np.abs(ours_scores - greedy['scores']).max()),
      'oracle_seconds': round(oracle_s, 1),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--src', required=True, help='google-research/pix2seq checkout')
  parser.add_argument('--oracle_python', required=True)
  parser.add_argument('--fixture_tool', default=FIXTURE_TOOL)
  parser.add_argument('--archs', default='resnet,resnet-c,vit-b,vit-l')
  parser.add_argument('--size', type=int, default=640)
  parser.add_argument('--max_seq_len', type=int, default=501)
  parser.add_argument('--scratch', default='/tmp/pix2seq_official_parity')
  args = parser.parse_args()
  os.makedirs(args.scratch, exist_ok=True)
  rows = []
  for arch in args.archs.split(','):
    row = parity(arch, args)
    print(json.dumps(row), flush=True)
    rows.append(row)
  print('\n| official | variant | size | max rel. logit error | argmax agreement | greedy '
        'sequences equal | greedy tokens | max score error |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['arch']} | {r['variant']} | {r['size']} | {r['max_rel_logit_error']:.2e} | "
          f"{r['argmax_agreement']:.4f} | {r['greedy_rows_equal']} | {r['greedy_tokens']} | "
          f"{r['max_score_error']:.1e} |")


if __name__ == '__main__':
  cpu_runtime.configure(restart=False)  # the XLA:CPU flags, as when it was measured
  main()
