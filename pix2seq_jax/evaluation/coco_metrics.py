"""COCO metrics with pycocotools (boxes, masks or keypoints), and a standalone scorer.

  python -m pix2seq_jax.evaluation.coco_metrics --annotations GT.json --detections DT.json \
      [--iou_type=bbox|segm|keypoints] [--output M.json]

prints the standard numbers of the chosen COCO result type (`bbox`, the default, and
`segm`: the 12 of METRIC_KEYS; `keypoints`: the 10 of KEYPOINT_METRIC_KEYS, in
pycocotools' order) and writes them under those names. Every image of the ground truth
is evaluated (or of `image_ids`), also those without detections, and an empty detection
list scores 0 rather than failing.

Results are in COCO results format: {"image_id", "category_id", "score"} and
  bbox:      "bbox" [x, y, w, h];
  segm:      "segmentation", a COCO RLE {"size": [h, w], "counts": str or bytes (or the
             uncompressed list)} or polygons [[x1, y1, x2, y2, ...], ...]; its area is
             the mask's (pycocotools.mask.area), also where a record carries a box
             (pycocotools' loadRes would take the box's area then);
  keypoints: "keypoints" [x1, y1, v1, ..., x17, y17, v17]; its area and box are the
             keypoints' extent, as loadRes computes them; only the ground truth's
             categories with "keypoints" (COCO's person) are scored.
Records lacking what their type needs are refused (BadResultsError) with the file, the
first bad record and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import numbers
import sys
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

IOU_TYPES = ('bbox', 'segm', 'keypoints')
METRIC_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
               'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
KEYPOINT_METRIC_KEYS = ('AP', 'AP50', 'AP75', 'APm', 'APl',
                        'AR', 'AR50', 'AR75', 'ARm', 'ARl')
NUM_KEYPOINTS = len(Params(iouType='keypoints').kpt_oks_sigmas)  # COCO's 17 person points

# What each result type needs beyond image_id, category_id and score, for the messages.
_FIELD = {'bbox': 'bbox', 'segm': 'segmentation', 'keypoints': 'keypoints'}
_FORMAT = {
    'bbox': '"bbox": [x, y, w, h]',
    'segm': '"segmentation": a COCO RLE {"size": [h, w], "counts": ...} or polygons '
            '[[x1, y1, x2, y2, ...], ...]',
    'keypoints': f'"keypoints": {NUM_KEYPOINTS} [x, y, v] triples ({3 * NUM_KEYPOINTS} '
                 'numbers)',
}


class BadResultsError(ValueError):
  """A results or ground-truth file that cannot be scored as asked; says why and the fix."""


def metric_keys(iou_type: str = 'bbox') -> tuple[str, ...]:
  """The names of the numbers `coco_metrics` returns for `iou_type`, in pycocotools' order."""
  _check_iou_type(iou_type)
  return KEYPOINT_METRIC_KEYS if iou_type == 'keypoints' else METRIC_KEYS


def _check_iou_type(iou_type: str) -> None:
  if iou_type not in IOU_TYPES:
    raise ValueError(f'iou_type={iou_type!r}: expected one of {", ".join(IOU_TYPES)}.')


def _complete_annotations(annotations: list[dict],
                          box_areas: set[int] | None = None) -> list[dict]:
  """Fills what pycocotools needs and some COCO-format exporters leave out.

  A missing `id` gets the next free number, `area` the box's w * h (the ids whose area
  came from the box are added to `box_areas`: masks and keypoints use the mask's area
  there instead, see `_ground_truth_for`), `iscrowd` 0, `num_keypoints` (where
  `keypoints` are given) the count of labelled points; annotations whose box is not four
  finite numbers cannot be scored and are left out. Files that have all of these come
  back unchanged.
  """
  used = {a['id'] for a in annotations if 'id' in a}
  next_id = max(used, default=0) + 1
  completed = []
  for ann in annotations:
    box = ann.get('bbox')
    if not (isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and np.isfinite(v) for v in box)):
      continue
    if 'id' not in ann:
      ann = dict(ann, id=next_id)
      next_id += 1
    if 'area' not in ann and box_areas is not None:
      box_areas.add(ann['id'])
    if 'num_keypoints' not in ann and isinstance(ann.get('keypoints'), list):
      ann = dict(ann, num_keypoints=int(sum(v > 0 for v in ann['keypoints'][2::3])))
    completed.append(dict({'area': float(box[2] * box[3]), 'iscrowd': 0}, **ann))
  return completed


def load_ground_truth(annotations_path: str) -> COCO:
  """The instances (or person keypoints) file as pycocotools' COCO, completed where
  fields are missing (see `_complete_annotations`); one object serves every iou_type."""
  with open(annotations_path) as f:
    dataset = json.load(f)
  box_areas: set[int] = set()
  dataset['annotations'] = _complete_annotations(dataset['annotations'], box_areas)
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  coco.pix2seq_box_areas = frozenset(box_areas)  # read by _ground_truth_for
  return coco


def _index(coco: COCO, dataset: dict) -> COCO:
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _ground_truth_for(coco_gt: COCO, iou_type: str, image_ids: list[int] | None,
                      source: str) -> COCO:
  """`coco_gt` checked for what `iou_type` needs; for masks and keypoints, the
  annotations whose area `load_ground_truth` took from the box get their mask's area
  (COCO's definition of `area`) in a copy."""
  images = set(coco_gt.getImgIds() if image_ids is None else image_ids)
  for index, ann in enumerate(coco_gt.dataset['annotations']):
    if ann['image_id'] not in images:
      continue
    if iou_type == 'segm' and not ann.get('segmentation'):
      raise BadResultsError(
          f'{source}: annotation {index} (id {ann["id"]}) has no "segmentation", which '
          '--iou_type=segm needs for every object: give the ground truth its masks '
          '(polygons or RLE), or score boxes with --iou_type=bbox.')
    if iou_type == 'keypoints' and _has_keypoints(coco_gt, ann) and not (
        _numbers(ann.get('keypoints'), 3 * NUM_KEYPOINTS) and 'num_keypoints' in ann):
      raise BadResultsError(
          f'{source}: annotation {index} (id {ann["id"]}) of a category with keypoints has '
          f'no "keypoints" of {3 * NUM_KEYPOINTS} numbers and "num_keypoints", which '
          '--iou_type=keypoints needs: use a person_keypoints file (a [0, 0, 0] triple '
          'marks an unlabelled point).')
  if iou_type == 'keypoints' and not _keypoint_categories(coco_gt):
    raise BadResultsError(
        f'{source}: no category has "keypoints" (their names), which --iou_type=keypoints '
        'needs: use a person_keypoints file.')
  box_areas = getattr(coco_gt, 'pix2seq_box_areas', frozenset())
  if iou_type == 'bbox' or not box_areas:
    return coco_gt
  annotations = []
  for ann in coco_gt.dataset['annotations']:
    if ann['id'] in box_areas and ann.get('segmentation'):
      ann = dict(ann, area=float(mask_utils.area(coco_gt.annToRLE(ann))))
    annotations.append(ann)
  return _index(COCO(), dict(coco_gt.dataset, annotations=annotations))


def _keypoint_categories(coco_gt: COCO) -> list[int]:
  return [c['id'] for c in coco_gt.dataset['categories'] if c.get('keypoints')]


def _has_keypoints(coco_gt: COCO, ann: dict) -> bool:
  category = coco_gt.cats.get(ann.get('category_id'))
  return bool(category and category.get('keypoints'))


def _is_number(value: object) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _numbers(value: object, length: int | None = None) -> bool:
  if isinstance(value, np.ndarray):
    value = value.tolist()
  return (isinstance(value, (list, tuple)) and (length is None or len(value) == length)
          and all(_is_number(v) for v in value))


def _segmentation_problem(segmentation: object, height: int, width: int) -> str | None:
  """Why `segmentation` is no mask of a height x width image, or None."""
  if isinstance(segmentation, dict):
    size, counts = segmentation.get('size'), segmentation.get('counts')
    if not (_numbers(size, 2) and isinstance(counts, (str, bytes, list))):
      return 'an RLE needs "size" [h, w] and "counts"'
    if [int(v) for v in size] != [height, width]:
      return f'its RLE size {list(size)} is not the image\'s [h, w] [{height}, {width}]'
    return None
  if isinstance(segmentation, list) and all(
      _numbers(p) and len(p) % 2 == 0 for p in segmentation):
    return None
  return 'it is neither an RLE dict nor a list of polygons [x1, y1, x2, y2, ...]'


def check_results(coco_gt: COCO, detections: object, iou_type: str = 'bbox',
                  source: str = 'detections') -> None:
  """Raises BadResultsError (naming `source`, the first bad record and the fix) unless
  `detections` is a list of COCO results that `iou_type` can score against `coco_gt`."""
  _check_iou_type(iou_type)
  field = _FIELD[iou_type]
  expected = ('expected a JSON list of detections in COCO results format '
              f'({{"image_id", "category_id", {_FORMAT[iou_type]}, "score"}})')
  if not isinstance(detections, list):
    raise BadResultsError(f'{source}: {expected}.')
  for index, record in enumerate(detections):
    where = f'{source}: record {index}'
    if not isinstance(record, dict):
      raise BadResultsError(f'{where} is a {type(record).__name__}: {expected}.')
    missing = [k for k in ('image_id', 'category_id', 'score', field) if k not in record]
    if missing:
      fix = 'give every record these fields'
      if field in missing:
        fix = f'give every record {_FORMAT[iou_type]}'
        others = [t for t in IOU_TYPES if t != iou_type and _FIELD[t] in record]
        if others:
          fix += f', or score its {_FIELD[others[0]]!r} with --iou_type={others[0]}'
      raise BadResultsError(
          f'{where} has no {", ".join(map(repr, missing))} (it has '
          f'{", ".join(map(repr, record)) or "nothing"}), which --iou_type={iou_type} '
          f'needs: {fix}.')
    image = coco_gt.imgs.get(record['image_id'])
    if image is None:
      raise BadResultsError(
          f'{where}: image_id {record["image_id"]!r} is no image of the ground truth: '
          'score results against the annotations file of the images they were made on.')
    value = record[field]
    if iou_type == 'segm' and not all(
        isinstance(image.get(k), numbers.Integral) for k in ('height', 'width')):
      raise BadResultsError(
          f'{where}: image {record["image_id"]!r} of the ground truth has no "height" and '
          '"width", which masks need: give its images their sizes.')
    if iou_type == 'bbox':
      problem = None if _numbers(value, 4) else 'it is not four numbers'
    elif iou_type == 'keypoints':
      problem = None if _numbers(value, 3 * NUM_KEYPOINTS) else (
          f'it is not {3 * NUM_KEYPOINTS} numbers')
    else:
      problem = _segmentation_problem(value, image.get('height'), image.get('width'))
    if problem:
      raise BadResultsError(f'{where}: its {field!r} cannot be scored ({problem}): '
                            f'expected {_FORMAT[iou_type]}.')


def _mask_rle(segmentation: dict | list, height: int, width: int) -> dict:
  """Any COCO segmentation as a compressed RLE with `counts` a str."""
  if isinstance(segmentation, list):  # polygons: one mask of all parts
    # Parts of under 3 points cover nothing (and pycocotools would read 4 numbers as a box).
    parts = [[float(v) for v in p] for p in segmentation if len(p) >= 6]
    rle = (mask_utils.merge(mask_utils.frPyObjects(parts, height, width)) if parts else
           mask_utils.encode(np.zeros((height, width), np.uint8, order='F')))
  elif isinstance(segmentation['counts'], list):  # uncompressed RLE
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:
    rle = segmentation
  counts = rle['counts']
  return {'size': [int(v) for v in rle['size']],
          'counts': counts.decode('ascii') if isinstance(counts, bytes) else counts}


def _result_annotations(coco_gt: COCO, detections: list[dict], iou_type: str) -> list[dict]:
  """The records as pycocotools' loadRes makes them for a file of `iou_type`'s fields
  alone (whatever other fields they carry), without changing `detections`."""
  annotations = []
  for index, record in enumerate(detections):
    ann = dict(record, id=index + 1, iscrowd=0)
    if iou_type == 'segm':
      image = coco_gt.imgs[record['image_id']]
      rle = _mask_rle(record['segmentation'], image['height'], image['width'])
      ann.update(segmentation=rle, area=float(mask_utils.area(rle)))
      ann.setdefault('bbox', mask_utils.toBbox(rle).tolist())
    else:  # keypoints: the extent of all points, as loadRes
      points = np.asarray(record['keypoints'], dtype=np.float64)
      x, y = points[0::3], points[1::3]
      x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
      ann.update(keypoints=points.tolist(), area=float((x1 - x0) * (y1 - y0)),
                 bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)])
    annotations.append(ann)
  return annotations


def _results(coco_gt: COCO, detections: list[dict], iou_type: str = 'bbox') -> COCO:
  if detections and iou_type == 'bbox':
    with contextlib.redirect_stdout(io.StringIO()):
      return coco_gt.loadRes(copy.deepcopy(detections))  # loadRes adds keys to its input
  annotations = _result_annotations(coco_gt, detections, iou_type) if detections else []
  return _index(COCO(), {'images': coco_gt.dataset['images'],
                         'categories': copy.deepcopy(coco_gt.dataset['categories']),
                         'annotations': annotations})


def run_cocoeval(coco_gt: COCO, detections: list[dict],
                 image_ids: list[int] | None = None, verbose: bool = False,
                 iou_type: str = 'bbox') -> COCOeval:
  """pycocotools' evaluation of `detections` (COCO results format), summarised.

  Args:
    image_ids: the images evaluated; default all images of the ground truth.
    verbose: print pycocotools' summary table.
    iou_type: 'bbox' (boxes), 'segm' (masks) or 'keypoints' (the categories with
      keypoints, COCO's person); see the module's docstring for what each result needs.
  Raises:
    BadResultsError: results or ground truth `iou_type` cannot score.
  """
  check_results(coco_gt, detections, iou_type)
  ground_truth = _ground_truth_for(coco_gt, iou_type, image_ids, 'ground truth')
  coco_eval = COCOeval(ground_truth, _results(ground_truth, detections, iou_type),
                       iouType=iou_type)
  if iou_type == 'keypoints':
    coco_eval.params.catIds = sorted(_keypoint_categories(ground_truth))
  if image_ids is not None:
    coco_eval.params.imgIds = sorted(image_ids)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  if verbose:
    print(out.getvalue(), end='')
  return coco_eval


def coco_metrics(coco_gt: COCO, detections: list[dict],
                 image_ids: list[int] | None = None, verbose: bool = False,
                 iou_type: str = 'bbox') -> dict:
  """The COCO metrics of `detections` against `coco_gt` under `metric_keys(iou_type)`:
  12 for 'bbox' and 'segm', 10 for 'keypoints' (see `run_cocoeval`)."""
  coco_eval = run_cocoeval(coco_gt, detections, image_ids, verbose, iou_type)
  # pycocotools reports -1 where no ground truth exists for a metric; keep its numbers.
  return {k: float(v) for k, v in zip(metric_keys(iou_type), np.asarray(coco_eval.stats))}


def _precision(coco_eval: COCOeval) -> np.ndarray:
  """[IoU thresholds, recall thresholds, categories]: all areas, the most detections."""
  if not coco_eval.eval:
    raise ValueError('Run evaluate() and accumulate() first (see run_cocoeval).')
  return np.asarray(coco_eval.eval['precision'])[:, :, :, 0, -1]


def per_category_ap(coco_eval: COCOeval) -> dict[int, float]:
  """{category id: AP over IoU 0.5:0.95}; nan for categories without ground truth."""
  precision = _precision(coco_eval)
  out = {}
  for k, category_id in enumerate(coco_eval.params.catIds):
    valid = precision[:, :, k][precision[:, :, k] > -1]
    out[int(category_id)] = float(valid.mean()) if valid.size else float('nan')
  return out


def precision_recall(coco_eval: COCOeval, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """(recall [101], precision [101]) at one IoU threshold, averaged over categories."""
  thresholds = np.asarray(coco_eval.params.iouThrs)
  index = int(np.argmin(np.abs(thresholds - iou)))
  if abs(thresholds[index] - iou) > 1e-6:
    raise ValueError(f'iou={iou} is not one of the thresholds {thresholds.tolist()}.')
  precision = _precision(coco_eval)[index]  # [recall thresholds, categories]
  with_gt = (precision > -1).any(axis=0)
  curve = np.where(precision[:, with_gt] > -1, precision[:, with_gt], 0.0).mean(axis=1)
  return np.asarray(coco_eval.params.recThrs), curve


def evaluate_files(annotations_path: str, detections_path: str,
                   iou_type: str = 'bbox') -> dict:
  """`coco_metrics` of a results file against an annotations file; a file that cannot be
  scored as `iou_type` raises BadResultsError naming it and its first bad record."""
  _check_iou_type(iou_type)
  with open(detections_path) as f:
    detections = json.load(f)
  coco_gt = load_ground_truth(annotations_path)
  check_results(coco_gt, detections, iou_type, source=detections_path)
  _ground_truth_for(coco_gt, iou_type, None, annotations_path)  # its checks, by file name
  return coco_metrics(coco_gt, detections, iou_type=iou_type)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--annotations', required=True,
                      help='COCO instances (or person keypoints) JSON: the ground truth')
  parser.add_argument('--detections', required=True, help='COCO results JSON (detections)')
  parser.add_argument('--iou_type', default='bbox', choices=IOU_TYPES,
                      help='what is scored: boxes (default), masks or keypoints')
  parser.add_argument('--output', help='where to write the metrics as JSON')
  args = parser.parse_args(argv)
  try:
    metrics = evaluate_files(args.annotations, args.detections, args.iou_type)
  except BadResultsError as e:
    parser.exit(1, f'{parser.prog}: error: {e}\n')
  for key in metric_keys(args.iou_type):
    print(f'{key:>6} {metrics[key]:.6f}')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(metrics, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
