"""Parallelism: the 1-D 'data' device mesh and its shardings (`mesh.py`), and joining the
processes of a multi-host run (`distributed.py`)."""
