"""Grammar vs official decoding on a trained workdir: AP, AR100 and seconds per image.

  python benchmarks/decode_modes.py --workdir=workdirs/shapes [--max_images=0]

Runs the workdir's latest checkpoint through the Predictor on its val split once per
decoding setting (after a warm-up that compiles it), and prints one line per setting and
a markdown table:
  grammar, greedy                 the default (decode.mode=grammar, temperature 0)
  official, greedy                decode.mode=official, temperature 0
  official, t 1, top_p 0.4        the official COCO evaluation's sampling
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pix2seq_jax.data import sources  # noqa: E402
from pix2seq_jax.evaluation import coco_metrics, predict_split  # noqa: E402
from pix2seq_jax.inference import predictor as predictor_lib  # noqa: E402
from pix2seq_jax.runtime import cpu as cpu_runtime  # noqa: E402

SETTINGS = {
    'grammar, greedy': {'mode': 'grammar', 'temperature': 0.0, 'top_p': 1.0},
    'official, greedy': {'mode': 'official', 'temperature': 0.0, 'top_p': 1.0},
    'official, t 1, top_p 0.4': {'mode': 'official', 'temperature': 1.0, 'top_p': 0.4},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--max_images', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=40)
  args = parser.parse_args()
  rows = []
  for name, decode in SETTINGS.items():
    predictor = predictor_lib.Predictor(args.workdir, batch_size=args.batch_size,
                                        decode=decode)
    images_dir, annotations = sources.split_paths(predictor.config.data)['val']
    predict_split.predict_coco_split(predictor, annotations, images_dir,
                                     max_images=args.batch_size)  # compiles
    start = time.perf_counter()
    results, image_ids = predict_split.predict_coco_split(predictor, annotations, images_dir,
                                                          max_images=args.max_images)
    seconds = (time.perf_counter() - start) / len(image_ids)
    coco_eval = coco_metrics.run_cocoeval(coco_metrics.load_ground_truth(annotations),
                                          results, image_ids)
    metrics = dict(zip(coco_metrics.METRIC_KEYS, coco_eval.stats))
    row = {'decoding': name, 'images': len(image_ids), 'AP': metrics['AP'],
           'AP50': metrics['AP50'], 'AR100': metrics['AR100'],
           'detections_per_image': len(results) / len(image_ids),
           'seconds_per_image': seconds}
    print(json.dumps(row), flush=True)
    rows.append(row)
  print('\n| decoding | AP | AP50 | AR100 | detections per image | s per image |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['decoding']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR100']:.3f} | "
          f"{r['detections_per_image']:.1f} | {r['seconds_per_image']:.4f} |")


if __name__ == '__main__':
  cpu_runtime.configure()  # as main.py runs: XLA:CPU flags, huge pages behind malloc
  main()
