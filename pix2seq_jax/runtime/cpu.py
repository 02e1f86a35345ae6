"""The CPU tuning of a run, applied by its entry point, and only where XLA:CPU will run it.

Two process-wide settings make XLA:CPU faster on this project's programs: the XLA:CPU
flags of `xla_cpu_flags.py` (read from XLA_FLAGS when JAX starts its CPU backend) and
transparent huge pages behind glibc's malloc (`malloc_hugepages.py`: glibc reads its
tunables when the process starts, so the process restarts itself once). Neither helps a
GPU or TPU run, and a library must not change its user's process on import, so nothing
here runs unless an entry point calls `configure()` first thing: main.py, the
benchmarks, the evaluation notebook and the tests' conftest.py do.

Whether the run's backend will be the CPU is decided from the environment alone, before
JAX starts any backend (that would be too late for both settings):
  PIX2SEQ_CPU_TUNING=1 / 0   always / never (1 also under a launcher or with a GPU plugin);
  a cluster launcher started this process (SLURM_*, OMPI_COMM_WORLD_*, PMI_RANK,
      PMIX_RANK; see LAUNCHER_VARIABLES): no, unless PIX2SEQ_CPU_TUNING=1;
  JAX_PLATFORMS set: yes when it names only `cpu`;
  otherwise: yes unless an accelerator plugin is installed (a `jax_plugins` module or
      entry point, as jax-cuda12-plugin, jax-cuda13-plugin and ROCm's install; or
      libtpu), which JAX would pick over the CPU. A machine with a CUDA plugin but no GPU
      runs untuned unless JAX_PLATFORMS=cpu or PIX2SEQ_CPU_TUNING=1 says so.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping

from pix2seq_jax.runtime import malloc_hugepages, xla_cpu_flags

SWITCH = 'PIX2SEQ_CPU_TUNING'
# Set by the launchers whose processes run on cluster nodes (SLURM's srun and sbatch,
# Open MPI's mpirun, MPICH / PMIx launchers).
LAUNCHER_VARIABLES = ('SLURM_JOB_ID', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK',
                      'OMPI_COMM_WORLD_SIZE', 'PMI_RANK', 'PMIX_RANK')
# Modules whose presence makes JAX prefer an accelerator backend over the CPU.
ACCELERATOR_MODULES = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin')


def installed_plugins(find_spec: Callable[[str], object] = importlib.util.find_spec,
                      entry_points: Iterable[str] | None = None) -> list[str]:
  """The accelerator plugins JAX would load, found without importing them or JAX."""
  found = [name for name in ACCELERATOR_MODULES if find_spec(name) is not None]
  namespace = find_spec('jax_plugins')
  if namespace is not None:  # a namespace package: its folders, no code run
    import pkgutil
    found += [f'jax_plugins.{module.name}'
              for module in pkgutil.iter_modules(namespace.submodule_search_locations or [])]
  if entry_points is None:
    from importlib.metadata import entry_points as _entry_points
    entry_points = [entry.value for entry in _entry_points(group='jax_plugins')]
  return sorted(set(found) | set(entry_points))


def decide(environ: Mapping[str, str], plugins: Iterable[str]) -> tuple[bool, str]:
  """(whether to apply the CPU tuning, why) for a process with `environ` and the
  accelerator `plugins` installed (module docstring)."""
  switch = environ.get(SWITCH, '')
  if switch not in ('', '0', '1'):
    raise ValueError(f'{SWITCH}={switch!r}: use 1 (always tune for XLA:CPU), 0 (never) or '
                     'leave it unset (tune when the backend will be the CPU).')
  if switch:
    return switch == '1', f'{SWITCH}={switch}'
  launcher = [name for name in LAUNCHER_VARIABLES if name in environ]
  if launcher:
    return False, (f'started by a launcher ({launcher[0]} is set); {SWITCH}=1 tunes for '
                   'XLA:CPU anyway')
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms:
    on_cpu = set(platforms) == {'cpu'}
    return on_cpu, f'JAX_PLATFORMS={environ["JAX_PLATFORMS"]}'
  plugins = list(plugins)
  if plugins:
    return False, (f'accelerator plugins installed ({", ".join(plugins)}); JAX_PLATFORMS=cpu '
                   f'or {SWITCH}=1 tunes for XLA:CPU')
  return True, 'no accelerator plugin installed: the backend will be the CPU'


def configure(*, restart: bool = True) -> str:
  """Applies the CPU tuning where `decide` says so; returns what it did, for a log line.

  Call it before anything starts a JAX backend. Adds the XLA:CPU flags to XLA_FLAGS
  (keeping the user's), then, with `restart`, re-executes the process with huge pages
  behind malloc (malloc_hugepages.enable: nothing that ran before survives it). A
  notebook or a test session passes restart=False.
  """
  apply, reason = decide(os.environ, installed_plugins())
  if not apply:
    return f'no CPU tuning: {reason}'
  added = xla_cpu_flags.apply_defaults()
  done = f'CPU tuning ({reason}): XLA_FLAGS {" ".join(added) or "already set"}'
  if restart:
    done += f'; huge pages behind malloc: {malloc_hugepages.enable()}'
  return done
