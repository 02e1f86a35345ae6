"""Checks every image file once, before any batch is built, so bad files are skipped.

tf.data cannot catch a decode error without dropping the element, which would shift
every later batch and break exact resume (the order is a pure function of seed and
step over a fixed record list). So each record's file is opened here, in parallel
threads, reading only its header and its last bytes (PIL; no full decode):

  skipped (named in the log, counted)   missing, empty, not_an_image (a format TF
      cannot decode or no image at all), truncated (a JPEG without its end-of-image
      marker, a PNG without IEND), size_mismatch (neither the stored pixels nor their
      EXIF rotation have the annotated aspect)
  fixed (counted)   exif_rotated (the annotated height/width fit the EXIF-rotated image
      and not the stored one: the pipeline applies the orientation), resized (same
      aspect as annotated, other size: the pipeline resizes to the annotated size)

Where the stored pixels already have the annotated size, they are used as stored, as
COCO, the official code and pycocotools do; an EXIF orientation that keeps the size
(mirror, 180 degrees) cannot be told apart and is ignored.
The PNG-named-.jpg case needs nothing: the decoder reads the format from the bytes.

With several processes every process checks every file and they agree before use
(`agreed`): a file is kept only where every process found it usable, with the same EXIF
orientation. A read error on one host (a transient network-filesystem error, a
host-local copy with a cut file) thus leaves the file out on all of them, and every
process keeps the same record list, hence the same steps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats `tf.io.decode_image` reads (MPO: multi-picture JPEGs from some cameras).
DECODABLE_FORMATS = ('JPEG', 'MPO', 'PNG', 'GIF', 'BMP', 'WEBP')
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees
_TAIL_BYTES = 1024
_ASPECT_TOLERANCE = 0.02
# Every `FileCheck.problem`, '' (usable) first: a verdict's code is its index here.
PROBLEMS = ('', 'missing', 'empty', 'not_an_image', 'truncated', 'size_mismatch',
            'differs_between_processes')


class ImageFilesError(ValueError):
  """No image of a split can be read; the message names the annotation file and folder."""


@dataclasses.dataclass(frozen=True)
class FileCheck:
  """The verdict on one file: `problem` ('' when usable) or the fixes to apply."""

  problem: str = ''
  orientation: int = 1  # EXIF orientation the pipeline applies (1: none)
  resize: bool = False  # the pipeline resizes the decoded image to the annotated size
  detail: str = ''


def _complete(path: str, image_format: str) -> bool:
  """False when a JPEG or PNG stops before its end marker (a cut download or copy)."""
  marker = {'JPEG': b'\xff\xd9', 'MPO': b'\xff\xd9', 'PNG': b'IEND'}.get(image_format)
  if marker is None:
    return True
  with open(path, 'rb') as f:
    f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
    return marker in f.read()


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
  return abs(a[0] * b[1] - a[1] * b[0]) <= _ASPECT_TOLERANCE * a[1] * b[1]


def check_file(path: str, height: int, width: int) -> FileCheck:
  """Reads `path`'s header and tail and compares its size with the annotated (h, w)."""
  if not os.path.isfile(path):
    return FileCheck('missing')
  if os.path.getsize(path) == 0:
    return FileCheck('empty')
  try:
    with Image.open(path) as image:
      image_format, (w, h) = image.format, image.size
      orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    return FileCheck('not_an_image', detail=str(e))
  if image_format not in DECODABLE_FORMATS:
    return FileCheck('not_an_image', detail=f'{image_format} is not one of {DECODABLE_FORMATS}')
  if not _complete(path, image_format):
    return FileCheck('truncated', detail=f'{image_format} without its end marker')
  stored, annotated = (h, w), (height, width)
  if stored == annotated:
    return FileCheck()
  if orientation in _SWAPS_AXES and (w, h) == annotated:
    return FileCheck(orientation=orientation)
  if _same_aspect(stored, annotated):
    return FileCheck(resize=True, detail=f'stored {h}x{w}, annotated {height}x{width}')
  if orientation in _SWAPS_AXES and _same_aspect((w, h), annotated):
    return FileCheck(orientation=orientation, resize=True,
                     detail=f'stored {h}x{w} (EXIF {orientation}), annotated {height}x{width}')
  return FileCheck('size_mismatch', detail=f'stored {h}x{w}, annotated {height}x{width}')


@dataclasses.dataclass
class CheckReport:
  """What `check_files` found: a verdict per file, the skipped files and the fix counts."""

  checks: list[FileCheck]
  skipped: list[tuple[str, str, str]]  # (path, problem, detail)
  fixed: dict[str, int]

  @property
  def skipped_counts(self) -> dict[str, int]:
    return dict(collections.Counter(problem for _, problem, _ in self.skipped))


def _report(files: list[tuple[str, int, int]], checks: list[FileCheck]) -> CheckReport:
  skipped = [(path, c.problem, c.detail) for (path, _, _), c in zip(files, checks) if c.problem]
  fixed = collections.Counter()
  for c in checks:
    fixed['exif_rotated'] += not c.problem and c.orientation != 1
    fixed['resized'] += not c.problem and c.resize
  return CheckReport(checks, skipped, {k: v for k, v in fixed.items() if v})


def check_files(files: list[tuple[str, int, int]], num_threads: int = 32) -> CheckReport:
  """Checks (path, height, width) triples in parallel; the order of `checks` is the input's."""
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    checks = list(pool.map(lambda f: check_file(*f), files))
  return _report(files, checks)


def verdict_codes(report: CheckReport) -> np.ndarray:
  """[files, 2] int32: each file's problem (its index in PROBLEMS) and EXIF orientation,
  the fixed-size form in which processes exchange their verdicts."""
  return np.array([(PROBLEMS.index(c.problem), c.orientation) for c in report.checks],
                  np.int32).reshape(-1, 2)


def agreed(files: list[tuple[str, int, int]], report: CheckReport,
           codes: np.ndarray) -> CheckReport:
  """`report` (this process's) where every process's verdict counts: `codes`
  [processes, files, 2] stacks every process's `verdict_codes`, this process's among them.

  A file this process found bad keeps its verdict; a file another process found bad
  takes that process's problem (the lowest process index first); a file usable everywhere
  but with other EXIF orientations elsewhere is 'differs_between_processes'. Every
  process thus skips the same files and keeps the same orientations.
  """
  problems, orientations = codes[..., 0], codes[..., 1]  # [processes, files]
  checks = list(report.checks)
  for i, check in enumerate(checks):
    if check.problem:
      continue
    bad = np.flatnonzero(problems[:, i])
    if bad.size:
      checks[i] = FileCheck(PROBLEMS[problems[bad[0], i]],
                            detail=f'as read by process {bad[0]}')
    elif (orientations[:, i] != check.orientation).any():
      checks[i] = FileCheck('differs_between_processes',
                            detail=f'EXIF orientations {orientations[:, i].tolist()} by process')
  return _report(files, checks)
