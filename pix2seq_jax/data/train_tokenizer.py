"""Trains the captioning task's SentencePiece tokenizer on a COCO captions file.

  python -m pix2seq_jax.data.train_tokenizer --captions CAPTIONS.json \
      --output DIR/tokenizer.model [--vocab_size 500]

writes the model (pad 0, EOS 1, unk 2, no BOS; tasks/tokenizer.py) and prints what it
read and wrote: the captions kept and skipped, the vocabulary size and the file's SHA-256.
The same captions give the same file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pix2seq_jax.data import captions as captions_lib
from pix2seq_jax.tasks import tokenizer as tokenizer_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--captions', required=True,
                      help='COCO captions JSON ({"images", "annotations"}) to train on')
  parser.add_argument('--output', required=True,
                      help='the SentencePiece model file to write, e.g. DIR/tokenizer.model')
  parser.add_argument('--vocab_size', type=int, default=500,
                      help='pieces in the model, pad / EOS / unk included (default 500, for a '
                      'few hundred captions; COCO-scale data wants 8000-32000; at most '
                      f'{tokenizer_lib.MAX_VOCAB_SIZE})')
  args = parser.parse_args(argv)
  try:
    captions = captions_lib.load_captions(args.captions)
    texts = captions.all_texts()
    tokenizer = tokenizer_lib.train_tokenizer(texts, args.output, args.vocab_size)
  except ValueError as e:
    parser.exit(1, f'{parser.prog}: error: {e}\n')
  print(captions.describe_skipped())
  print(f'wrote {tokenizer.path}: vocab_size={tokenizer.vocab_size} trained on '
        f'{len(texts)} captions, sha256={tokenizer.sha256}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
