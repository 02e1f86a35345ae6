"""This project against its peers, on this machine, in one run: the table of BENCHMARKS.md.

  python benchmarks/peers.py \
      --official_src=OFFICIAL --official_python=ORACLE_VENV/bin/python \
      --replica_src=REPLICA --replica_python=TORCH_VENV/bin/python \
      [--coco_dir=../shared/data/coco_tiny] [--repeats=3] [--rounds=3]

OFFICIAL is a checkout of google-research/pix2seq (its *.py files), run by
../shared/tools/official_speed.py in a scratch environment with tensorflow-cpu and
tf-keras; REPLICA a checkout of the PyTorch replica (gaopengcuhk/Unofficial-Pix2Seq), run by
../shared/tools/seed_infer.py and benchmarks/pytorch_replica_step.py with torch and
torchvision. Neither is a dependency of this project: without --official_python /
--replica_python the peers' rows print the commands to run instead of their times.

Every measurement is a separate process, run one after the other (peers first, then
this project, row by row), all with random weights:
  infer 640 b1/b8  R50 at 640 px decoding 501 tokens, per image, batch 1 and 8
  infer 512 b1     R50 at 512 px decoding 101 tokens, batch 1 (the PyTorch replica's sizes)
  train 512 b2     one R50 train step, 512 px, batch 2, 101 tokens, float32
  train parts      where that step's time goes, the same sizes: the gradients of the
                   backbone alone, of the encoding (backbone, encoder, memory) and of the
                   whole model, without the optimizer (benchmarks/official_train_parts.py
                   for the official model, train_step.py --parts for this project's)
  train replica-work the same with the stem, stage 1 and batch norms frozen (the PyTorch replica's
                   DETR fine-tuning), against an equivalent PyTorch step
  input 640        the training input pipeline over bare JPEG decoding (this project only)
With --rounds=N the whole sequence runs N times over, so that each ratio is measured N
times with the peer and this project alternating; this machine's speed drifts within
minutes, and a drift that lands between a peer's process and ours moves one round's ratio
but not the others'. Prints one line per measurement, each round's markdown table, the
median and range of every ratio over the rounds, and last one JSON object (with
--rounds above 1, {'rounds': [one object per round]}).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(os.path.dirname(ROOT), 'shared', 'tools')


# The parts of the train step timed alone (key in the parts' JSON, row of the table).
PARTS = (('backbone', '  its backbone forward + backward (train-mode batch norm), s'),
         ('encode', '  backbone, encoder and memory forward + backward, s'),
         ('full', '  the whole model forward + backward, no optimizer, s'))


def _last_json(command: list[str]) -> dict:
  """Runs `command` and returns the JSON object on its last line of output."""
  print('$', ' '.join(command), flush=True)
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  lines = [line for line in out.stdout.splitlines() if line.startswith('{')]
  if out.returncode or not lines:
    raise SystemExit(f'{command[:3]} failed (exit {out.returncode}):\n{out.stderr[-3000:]}')
  result = json.loads(lines[-1])
  print('  ', lines[-1], flush=True)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_src', default='')
  parser.add_argument('--official_python', default='')
  parser.add_argument('--replica_src', default='')
  parser.add_argument('--replica_python', default='')
  parser.add_argument('--coco_dir', default=None,
                      help='COCO-layout folder for the pipeline row (default ../shared/data/'
                           'coco_tiny, skipped with a note when absent)')
  parser.add_argument('--tools', default=TOOLS, help='folder of official_speed.py, seed_infer.py')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=1,
                      help='run every row this many times over, alternating with the peers')
  args = parser.parse_args()
  for peer_name in ('official', 'replica'):
    src, python = getattr(args, f'{peer_name}_src'), getattr(args, f'{peer_name}_python')
    if bool(src) != bool(python):
      parser.error(f'--{peer_name}_src and --{peer_name}_python go together: give both to '
                   f'time that peer, neither to print its commands.')
  if args.rounds < 1:
    parser.error(f'--rounds={args.rounds}: give 1 or more.')
  coco_dir = args.coco_dir or os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'coco_tiny')
  if args.coco_dir and not os.path.isdir(coco_dir):
    parser.error(f'--coco_dir={coco_dir} is not a folder.')
  me = sys.executable
  repeats = str(args.repeats)
  official = lambda *a: [args.official_python, os.path.join(args.tools, 'official_speed.py'),
                         args.official_src, *a]
  replica_infer = [args.replica_python, os.path.join(args.tools, 'seed_infer.py'), args.replica_src,
                '512', repeats]
  replica_step = [args.replica_python, 'benchmarks/pytorch_replica_step.py']
  official_parts_command = [args.official_python, 'benchmarks/official_train_parts.py',
                            args.official_src, '512', '20', '2', '5']
  have_official = bool(args.official_python and args.official_src)
  have_replica = bool(args.replica_python and args.replica_src)

  def peer(enabled: bool, command: list[str], key: str):
    if not enabled:
      print('  (not run) peer command:', ' '.join(c or '...' for c in command))
      return None
    return _last_json(command)[key]

  def one_round() -> dict:
    """Every row once, each peer's process just before this project's."""
    rows = []  # (work, official s, PyTorch replica s, this project's s)
    o1 = peer(have_official, official('640', '100', '1', repeats), 'official_infer_s_per_image')
    o8 = peer(have_official, official('640', '100', '8', repeats), 'official_infer_s_per_image')
    ours640 = _last_json([me, 'benchmarks/decode.py', '--image_size=640', '--objects=100',
                          '--batch_size=8', '--skip_recompute', f'--repeats={repeats}'])
    rows.append(('inference, R50 640 px, 501 tokens, batch 1, s per image', o1, None,
                 ours640['seconds_per_image_b1']))
    rows.append(('the same at batch 8, s per image', o8, None, ours640['seconds_per_image_bN']))
    s1 = peer(have_replica, replica_infer, 'seed_infer_s_per_image')
    ours512 = _last_json([me, 'benchmarks/decode.py', '--skip_recompute',
                          f'--repeats={repeats}'])
    rows.append(('inference, R50 512 px, 101 tokens, batch 1, s per image', None, s1,
                 ours512['seconds_per_image_b1']))
    ot = peer(have_official, official('512', '20', '2', repeats, 'train'),
              'official_train_step_s')
    official_parts = peer(have_official, official_parts_command, 'official_part_seconds')
    ours_train = _last_json([me, 'benchmarks/train_step.py', '--parts'])
    rows.append(('train step, R50 512 px, batch 2, 101 tokens, f32, s', ot, None,
                 ours_train['seconds_per_step']))
    for part, work in PARTS:
      rows.append((work, official_parts and official_parts[part], None,
                   ours_train['part_seconds'][part]))
    st = peer(have_replica, replica_step, 'step_seconds')
    ours_frozen = _last_json([me, 'benchmarks/train_step.py', '--frozen_backbone_stages=2',
                              '--frozen_batch_norm'])
    rows.append(("train step, the PyTorch replica's work (stem + stage 1 and BN frozen), s",
                 None, st, ours_frozen['seconds_per_step']))
    pipeline = None
    if os.path.isdir(coco_dir):
      pipeline = _last_json([me, 'benchmarks/input_pipeline.py', f'--coco_dir={coco_dir}'])
    else:
      print(f'  (not run) input pipeline: {coco_dir} is absent; give --coco_dir.')
    table = []
    for work, off, replica, ours in rows:
      peer_time = off if off is not None else replica
      ratio = None if peer_time is None else peer_time / ours
      table.append({'work': work, 'official': off, 'replica': replica, 'ours': ours,
                    'ratio': ratio})
    return {'rows': table, 'decode_640': ours640, 'decode_512': ours512, 'train': ours_train,
            'train_frozen': ours_frozen, 'pipeline': pipeline}

  rounds = []
  for index in range(args.rounds):
    if args.rounds > 1:
      print(f'\n# round {index + 1} of {args.rounds}', flush=True)
    rounds.append(one_round())
    _print_round(rounds[-1])
  if args.rounds > 1:
    print(f'\nOver {args.rounds} rounds: median (min-max)')
    for line in summary_lines(rounds):
      print(line)
  print(json.dumps(rounds[0] if args.rounds == 1 else {'rounds': rounds}))


def _print_round(result: dict) -> None:
  fmt = lambda v: '-' if v is None else f'{v:.3g}'
  print('\n| work | official TF | PyTorch replica | this project | ratio |\n|---|---|---|---|---|')
  for row in result['rows']:
    ratio = row['ratio']
    ratio_text = '-' if ratio is None else f'{ratio:.2f}x {"faster" if ratio >= 1 else "(slower)"}'
    print(f"| {row['work']} | {fmt(row['official'])} | {fmt(row['replica'])} | {fmt(row['ours'])} "
          f"| {ratio_text} |")
  pipeline, ours640, ours_train = result['pipeline'], result['decode_640'], result['train']
  if pipeline:
    print(f"| input pipeline at 640, full augmentation / bare JPEG decode, images/s | - | - | "
          f"{pipeline['images_per_second']:.0f} / {pipeline['decode_only_images_per_second']:.0f}"
          f" | {pipeline['pipeline_over_decode']:.2f} |")
  print(f"\nbatch 8 over batch 1, per image: whole inference "
        f"{ours640['seconds_per_image_bN'] / ours640['seconds_per_image_b1']:.2f}, decode loop "
        f"{ours640['decode_loop_bN_over_b1']:.2f}; train step "
        f"{ours_train['flop_utilization']:.1%} of the "
        f"{ours_train['matmul_peak_flops_per_second'] / 1e9:.0f} GFLOP/s matmul peak")
  if pipeline:
    print(f"the augmentation's resampling, moved from tf.data into the train step: "
          f"{pipeline['device_resample_ms_per_image']:.1f} ms per image on the device "
          f"({pipeline['device']})")


def _spread(values: list[float], unit: str = '') -> str:
  """'median (min-max)' of `values`, 3 significant digits, each followed by `unit`."""
  return (f'{statistics.median(values):.3g}{unit} '
          f'({min(values):.3g}{unit}-{max(values):.3g}{unit})')


def summary_lines(rounds: list[dict]) -> list[str]:
  """One line per ratio measured in every round: its median and range over the rounds."""
  lines = []
  for index, row in enumerate(rounds[0]['rows']):
    ratios = [r['rows'][index]['ratio'] for r in rounds]
    if all(ratio is not None for ratio in ratios):
      lines.append(f"{row['work']}: {_spread(ratios, 'x')}")
  loop = [r['decode_640']['decode_loop_bN_over_b1'] for r in rounds]
  lines.append(f'decode loop at batch 8 over batch 1, per image: {_spread(loop)}')
  utilization = [r['train']['flop_utilization'] for r in rounds]
  lines.append(f'train step, share of the matmul peak: {_spread(utilization)}')
  pipelines = [r['pipeline']['pipeline_over_decode'] for r in rounds if r['pipeline']]
  if len(pipelines) == len(rounds):
    lines.append(f'input pipeline over bare JPEG decoding: {_spread(pipelines)}')
  return lines


if __name__ == '__main__':
  main()
