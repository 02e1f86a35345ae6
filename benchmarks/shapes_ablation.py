"""Shapes recipe comparisons: the augmentation ablation, or any list of config overrides.

Trains configs/shapes.py once per setting with the same seed, then prints a Markdown
table of the final COCO metrics on the 200 val images with each run's wall time and, last,
one JSON object with all of them. By default the settings are sequence augmentation
(`data.noise_objects` + `data.corrupt_classes`) x `data.scale_jitter`; `--run` replaces
them by named lists of `--config.*` overrides (a run's own `train.steps` wins over
`--steps`):

  python benchmarks/shapes_ablation.py --workdir=/tmp/ablation [--steps=5400]
  python benchmarks/shapes_ablation.py --workdir=/tmp/recipes --steps=8000 \
      --run='default' --run='lr 2e-3=--config.train.learning_rate=2e-3'

Runs go one after another (they would share the CPU otherwise) and each evaluates once,
at its last step.
"""

import argparse
import glob
import json
import os
import re
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


def parse_run(text: str) -> tuple[str, list[str]]:
  """'NAME=--config.a=1 --config.b=2' -> (NAME, ['--config.a=1', '--config.b=2'])."""
  name, _, overrides = text.partition('=')
  flags = overrides.split()
  bad = [flag for flag in flags if not flag.startswith('--config.')]
  if not name.strip() or bad:
    raise SystemExit(f'--run={text!r}: expected NAME or NAME=--config.KEY=VALUE ...; '
                     f'not a config override: {bad}')
  return name.strip(), flags


def final_metrics(workdir: str) -> tuple[int, dict]:
  """The metrics of the last evaluation written under workdir/eval/step_N/."""
  steps = [int(re.search(r'step_(\d+)$', path).group(1))
           for path in glob.glob(os.path.join(workdir, 'eval', 'step_*'))]
  if not steps:
    raise SystemExit(f'{workdir}: no evaluation was written (eval/step_N/metrics.json); '
                     'rerun its main.py command to see its output.')
  with open(os.path.join(workdir, 'eval', f'step_{max(steps)}', 'metrics.json')) as f:
    return max(steps), json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=5400)
  parser.add_argument('--only', default='', help='comma-separated subset of settings')
  parser.add_argument('--run', action='append', default=[],
                      help="'NAME=--config.KEY=VALUE ...' (repeat); replaces the ablation")
  args = parser.parse_args()
  if args.run:
    runs = dict(parse_run(text) for text in args.run)
  else:
    runs = {name: [f'--config.data.{k}={v}' for k, v in flags.items()]
            for name, flags in SETTINGS.items()}
  rows = {}
  for i, (name, overrides) in enumerate(runs.items()):
    if args.only and name not in args.only.split(','):
      continue
    workdir = os.path.join(args.workdir, f'run{i}')
    steps = next((int(flag.split('=', 1)[1]) for flag in overrides
                  if flag.startswith('--config.train.steps=')), args.steps)
    overrides = [flag for flag in overrides if not flag.startswith('--config.train.steps=')]
    command = [sys.executable, 'main.py', '--config=configs/shapes.py', f'--workdir={workdir}',
               f'--config.train.steps={steps}', '--config.train.eval_every=0',
               f'--config.train.checkpoint_every={steps}', *overrides]
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    step, metrics = final_metrics(workdir)
    rows[name] = {'steps': step, 'AP': metrics['AP'], 'AP50': metrics['AP50'],
                  'AR100': metrics['AR100'], 'minutes': (time.time() - start) / 60}
    print(f'{name}: {rows[name]}', flush=True)
  print('| setting | steps | AP | AP50 | AR100 | wall (min) |\n|---|---|---|---|---|---|')
  for name, r in rows.items():
    print(f"| {name} | {r['steps']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR100']:.3f} "
          f"| {r['minutes']:.1f} |")
  print(json.dumps({'results': rows}))


if __name__ == '__main__':
  main()
