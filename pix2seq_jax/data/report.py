"""What the data checks left out, fixed and skipped: logged, and written to data_report.json."""

from __future__ import annotations

from absl import logging

from pix2seq_jax.data import sources

_SKIPPED_NAMED_IN_LOG = 20


def data_report(splits: sources.Splits) -> dict:
  """Per split: images kept, records and objects left out or fixed, unreadable files."""
  return {name: {'annotations': split.annotations_path, 'images': len(split.records),
                 'left_out': split.dropped, 'fixed': split.fixed,
                 'skipped_images': [{'path': p, 'problem': q, 'detail': d}
                                    for p, q, d in split.skipped_images]}
          for name, split in (('train', splits.train), ('val', splits.val))}


def log_data_report(splits: sources.Splits) -> None:
  """Logs each split's counts and names its first unreadable files."""
  for name, split in (('train', splits.train), ('val', splits.val)):
    if split.dropped:
      logging.info('%s: left out %s', split.annotations_path, split.dropped)
    if split.fixed:
      logging.info('%s: fixed %s', split.annotations_path, split.fixed)
    if split.skipped_images:
      lines = [f'{p}: {q}{" (" + d + ")" if d else ""}' for p, q, d in split.skipped_images]
      named = '\n  '.join(lines[:_SKIPPED_NAMED_IN_LOG])
      if len(lines) > _SKIPPED_NAMED_IN_LOG:
        named += f'\n  ... and {len(lines) - _SKIPPED_NAMED_IN_LOG} more (all in data_report.json)'
      logging.warning('%s split: skipping %d unreadable image(s) of %s:\n  %s', name,
                      len(split.skipped_images), split.annotations_path, named)
