"""Captions as training targets: each image's captions as SentencePiece pieces, aligned with
the records of its split (pure Python and numpy; the tf.data side is `pipeline.py`).

`caption_targets(split, captions, tokenizer, ...)` keeps the records that have a caption
(a record without one is left out and counted, `captions_image_without_caption`), and for
each kept record its captions in file order: the texts (the references of evaluation) and
their pieces, each ending with EOS (the official tokenizer's add_eos). A caption longer
than `max_text_len` tokens is cut to its first `max_text_len - 1` pieces and EOS, counted
in `fixed` (`captions_cut`); the official code has no rule for them (its padding fails).
What the captions file itself lacked (`data/captions.py`) is counted in `dropped` under
`captions_<reason>`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Protocol, Sequence

import numpy as np

from pix2seq_jax.data import coco_json


class Encoder(Protocol):
  """What the targets need of a tokenizer (`tasks/tokenizer.TextTokenizer`)."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


@dataclasses.dataclass
class CaptionTargets:
  """Per-record captions, aligned with the records of the split they were made for."""

  texts: list[tuple[str, ...]]  # per record: its captions
  pieces: list[list[np.ndarray]]  # per record, per caption: int32 [t] piece ids, EOS last

  def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pieces int32 [total], pieces per caption int64 [C], captions per record int64 [R]):
    the ragged layout the tf.data tables are made from."""
    captions = [p for record in self.pieces for p in record]
    values = np.concatenate(captions).astype(np.int32) if captions else np.zeros([0], np.int32)
    return (values, np.array([len(p) for p in captions], np.int64),
            np.array([len(record) for record in self.pieces], np.int64))


def caption_targets(split: coco_json.CocoSplit, by_image: dict[int, Sequence[str]],
                    tokenizer: Encoder, max_text_len: int,
                    skipped: dict[str, int] | None = None
                    ) -> tuple[coco_json.CocoSplit, CaptionTargets]:
  """(`split` with only the records that have a caption, their `CaptionTargets`); the
  counts of what the captions file lacked (`skipped`) and of what this leaves out and cuts
  are added to the split's `dropped` and `fixed` under `captions_<reason>`."""
  if max_text_len < 2:
    raise ValueError(f'max_text_len={max_text_len}: a caption needs at least one piece and '
                     'its EOS.')
  dropped = collections.Counter(split.dropped)
  fixed = collections.Counter(split.fixed)
  for reason, count in (skipped or {}).items():
    dropped[f'captions_{reason.replace(" ", "_")}'] += count
  records, texts = [], []
  for record in split.records:
    captions = tuple(by_image.get(record.image_id, ()))
    if not captions:
      dropped['captions_image_without_caption'] += 1
      continue
    records.append(record)
    texts.append(captions)
  encoded = tokenizer.encode_batch([c for record in texts for c in record])
  pieces, position = [], 0
  for record in texts:
    rows = []
    for ids in encoded[position:position + len(record)]:
      if len(ids) > max_text_len:
        fixed['captions_cut'] += 1
        ids = list(ids[:max_text_len - 1]) + [ids[-1]]  # keep EOS
      rows.append(np.asarray(ids, np.int32))
    pieces.append(rows)
    position += len(record)
  kept = dataclasses.replace(split, records=records, dropped=dict(dropped),
                             fixed={k: v for k, v in fixed.items() if v})
  return kept, CaptionTargets(texts, pieces)
