"""Names of pytree paths (nnx.State, dicts, lists) as plain strings; nested dicts flattened
to {key path: leaf} and back; long lists of such names shortened for messages."""

from __future__ import annotations

from typing import Sequence


def path_names(path) -> tuple[str, ...]:
  """A `tree_flatten_with_path` key path as strings, e.g. ('backbone', 'blocks', '0')."""
  return tuple(str(next((getattr(key, a) for a in ('name', 'key', 'idx') if hasattr(key, a)),
                        key)) for key in path)


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
  """A nested dict (e.g. nnx.State.to_pure_dict()) -> {key path tuple: leaf}."""
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, prefix + (key,)) if isinstance(value, dict)
               else {prefix + (key,): value})
  return out


def unflatten(flat: dict[tuple, object]) -> dict:
  """`flatten`'s inverse: {key path tuple: leaf} -> a nested dict."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def first_of(items: Sequence[str], limit: int, separator: str = ', ',
             rest: str = ' (and {n} more)') -> str:
  """The first `limit` items joined by `separator`, then `rest` counting the others."""
  shown = separator.join(items[:limit])
  more = len(items) - limit
  return shown + (rest.format(n=more) if more > 0 else '')
