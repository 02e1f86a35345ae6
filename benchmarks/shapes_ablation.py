"""Shapes ablation of the training augmentations: sequence augmentation x scale jitter.

Trains configs/shapes.py four times with the same budget and seed, switching
`data.noise_objects` + `data.corrupt_classes` (sequence augmentation) and
`data.scale_jitter`, then prints a Markdown table of the final COCO metrics and, last,
one JSON object with all of them.

  python benchmarks/shapes_ablation.py --workdir=/tmp/ablation [--steps=5400]
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    'seq aug + scale jitter': dict(noise_objects=True, corrupt_classes=True, scale_jitter=True),
    'seq aug only': dict(noise_objects=True, corrupt_classes=True, scale_jitter=False),
    'scale jitter only': dict(noise_objects=False, corrupt_classes=False, scale_jitter=True),
    'neither': dict(noise_objects=False, corrupt_classes=False, scale_jitter=False),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=5400)
  parser.add_argument('--only', default='', help='comma-separated subset of settings')
  args = parser.parse_args()
  rows = {}
  for i, (name, flags) in enumerate(SETTINGS.items()):
    if args.only and name not in args.only.split(','):
      continue
    workdir = os.path.join(args.workdir, f'run{i}')
    overrides = [f'--config.data.{k}={v}' for k, v in flags.items()]
    command = [sys.executable, 'main.py', '--config=configs/shapes.py', f'--workdir={workdir}',
               f'--config.train.steps={args.steps}', '--config.train.eval_every=0',
               f'--config.train.checkpoint_every={args.steps}', *overrides]
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(os.path.join(workdir, 'eval', f'step_{args.steps}', 'metrics.json')) as f:
      metrics = json.load(f)
    rows[name] = {'AP': metrics['AP'], 'AP50': metrics['AP50'], 'AR100': metrics['AR100'],
                  'minutes': (time.time() - start) / 60}
    print(f'{name}: {rows[name]}', flush=True)
  print('| setting | AP | AP50 | AR100 | wall (min) |\n|---|---|---|---|---|')
  for name, r in rows.items():
    print(f"| {name} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR100']:.3f} | {r['minutes']:.1f} |")
  print(json.dumps({'steps': args.steps, 'results': rows}))


if __name__ == '__main__':
  main()
