"""benchmarks/peers.py --rounds: the median and range of each ratio over the rounds."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peers():
  spec = importlib.util.spec_from_file_location('peers', os.path.join(ROOT, 'benchmarks',
                                                                      'peers.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _round(official_b1: float, ours_b1: float, loop_ratio: float, pipeline: float | None):
  rows = [{'work': 'infer b1', 'official': official_b1, 'replica': None, 'ours': ours_b1,
           'ratio': official_b1 / ours_b1},
          {'work': 'replica step', 'official': None, 'replica': None, 'ours': 1.0, 'ratio': None}]
  return {'rows': rows, 'decode_640': {'decode_loop_bN_over_b1': loop_ratio},
          'train': {'flop_utilization': 0.4},
          'pipeline': None if pipeline is None else {'pipeline_over_decode': pipeline}}


def test_summary_gives_median_and_range_of_each_measured_ratio():
  rounds = [_round(6.0, 1.0, 0.5, 0.28), _round(6.0, 0.75, 0.3, 0.30),
            _round(5.0, 1.0, 0.4, 0.26)]
  lines = _peers().summary_lines(rounds)
  assert lines == ['infer b1: 6x (5x-8x)',
                   'decode loop at batch 8 over batch 1, per image: 0.4 (0.3-0.5)',
                   'train step, share of the matmul peak: 0.4 (0.4-0.4)',
                   'input pipeline over bare JPEG decoding: 0.28 (0.26-0.3)']


def test_summary_leaves_out_rows_a_round_did_not_measure():
  rounds = [_round(6.0, 1.0, 0.5, 0.28), _round(6.0, 1.0, 0.5, None)]
  lines = _peers().summary_lines(rounds)
  assert not any(line.startswith('input pipeline') for line in lines)
  assert not any(line.startswith('replica step') for line in lines)
