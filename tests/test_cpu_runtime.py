"""cpu_runtime: the CPU tuning applies where the backend will be the CPU and no launcher
started the process (decided from environments and installed plugins), and a real
process that calls `configure` starts XLA with the flags and the user's."""

import os
import subprocess
import sys

import pytest

from pix2seq_jax.runtime import cpu as cpu_runtime
from tests.tiny import ROOT

CUDA = ['jax_plugins.xla_cuda12', 'jax_cuda12_plugin']


@pytest.mark.parametrize('environ, plugins, apply', [
    ({}, [], True),  # a CPU-only install
    ({}, CUDA, False),  # JAX would pick the GPU
    ({}, ['libtpu'], False),
    ({'JAX_PLATFORMS': 'cpu'}, CUDA, True),  # the user picked the CPU
    ({'JAX_PLATFORMS': 'cuda'}, [], False),
    ({'JAX_PLATFORMS': 'cpu,cuda'}, [], False),  # the GPU wins when it starts
    ({'SLURM_JOB_ID': '7', 'SLURM_PROCID': '0'}, [], False),  # a launcher started it
    ({'OMPI_COMM_WORLD_RANK': '1', 'JAX_PLATFORMS': 'cpu'}, [], False),
    ({'PMIX_RANK': '0'}, [], False),
    ({'SLURM_JOB_ID': '7', cpu_runtime.SWITCH: '1'}, CUDA, True),  # asked for
    ({cpu_runtime.SWITCH: '0'}, [], False),
])
def test_tunes_only_where_the_backend_will_be_the_cpu(environ, plugins, apply):
  assert cpu_runtime.decide(environ, plugins)[0] is apply


def test_a_bad_switch_is_refused_naming_it():
  with pytest.raises(ValueError, match='PIX2SEQ_CPU_TUNING=.yes.'):
    cpu_runtime.decide({cpu_runtime.SWITCH: 'yes'}, [])


def test_plugins_are_found_without_importing_them(tmp_path):
  (tmp_path / 'jax_plugins' / 'xla_cuda12').mkdir(parents=True)
  (tmp_path / 'jax_plugins' / 'xla_cuda12' / '__init__.py').write_text('raise SystemExit(1)')
  import importlib.machinery

  def find_spec(name):
    return importlib.machinery.PathFinder.find_spec(name, [str(tmp_path)])

  assert cpu_runtime.installed_plugins(find_spec, []) == ['jax_plugins.xla_cuda12']
  assert cpu_runtime.installed_plugins(find_spec, ['my_plugin']) == [
      'jax_plugins.xla_cuda12', 'my_plugin']
  assert cpu_runtime.installed_plugins(lambda name: None, []) == []


def test_a_process_that_configures_starts_xla_with_its_flags_and_the_users():
  script = ('from pix2seq_jax.runtime import cpu as cpu_runtime; '
            'print(cpu_runtime.configure(restart=False)); '
            'import os, jax; print(os.environ["XLA_FLAGS"]); print(jax.device_count())')
  env = {k: v for k, v in os.environ.items()
         if k not in cpu_runtime.LAUNCHER_VARIABLES + (cpu_runtime.SWITCH,)}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=3')
  run = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]  # XLA accepted the flags it was given
  done, flags, devices = run.stdout.split('\n')[:3]
  assert done.startswith('CPU tuning (JAX_PLATFORMS=cpu)')
  assert flags == ('--xla_force_host_platform_device_count=3 '
                   '--xla_cpu_multi_thread_eigen=false')
  assert devices == '3'  # the user's flag still applies
