"""Shortening long lists in user-facing messages."""

from __future__ import annotations

from typing import Sequence


def first_of(items: Sequence[str], limit: int, separator: str = ', ',
             rest: str = ' (and {n} more)') -> str:
  """The first `limit` items joined by `separator`, then `rest` counting the others."""
  shown = separator.join(items[:limit])
  more = len(items) - limit
  return shown + (rest.format(n=more) if more > 0 else '')
