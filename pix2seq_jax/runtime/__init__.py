"""Runtime: settings of the process a run lives in, applied by the entry points and
never on import. The CPU tuning (`cpu.py`: XLA:CPU flags from `xla_cpu_flags.py`, huge
pages behind malloc from `malloc_hugepages.py`), the persistent compilation cache
(`compilation_cache.py`), jitted functions kept per process (`jit_cache.py`) and the
float32 matmul precision of a traced function (`precision.py`)."""
