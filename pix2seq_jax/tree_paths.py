"""Names of pytree paths (nnx.State, dicts, lists) as plain strings."""

from __future__ import annotations


def path_names(path) -> tuple[str, ...]:
  """A `tree_flatten_with_path` key path as strings, e.g. ('backbone', 'blocks', '0')."""
  return tuple(str(next((getattr(key, a) for a in ('name', 'key', 'idx') if hasattr(key, a)),
                        key)) for key in path)
