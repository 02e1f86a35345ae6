"""benchmarks/gpu_check.py: its CPU mode runs every stage without TensorFlow, its FLOP count
is XLA:CPU's full count (convolutions included), and a stage that aborts inside XLA is
retried once with the Triton workaround."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pix2seq_jax.models import backbones
from tests import tiny

_SCRIPT = os.path.join(tiny.ROOT, 'benchmarks', 'gpu_check.py')
_spec = importlib.util.spec_from_file_location('gpu_check', _SCRIPT)
gpu_check = sys.modules['gpu_check'] = importlib.util.module_from_spec(_spec)  # dataclasses
_spec.loader.exec_module(gpu_check)

# Put first on the path of every process of the --cpu run: TensorFlow is absent there, as
# on the GPU image (imports of it fail; importlib.util.find_spec, which etils asks before
# the persistent compilation cache reads a file, says it is not installed).
_NO_TENSORFLOW = "import sys\nsys.modules['tensorflow'] = None\n"


@pytest.fixture(scope='module')
def cpu_run(tmp_path_factory):
  """The lines of `gpu_check.py --cpu`, every process of it (the parent and each stage)
  started without TensorFlow by a sitecustomize module."""
  folder = tmp_path_factory.mktemp('gpu_check')
  (folder / 'sitecustomize.py').write_text(_NO_TENSORFLOW)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(folder), tiny.ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
  out = folder / 'lines.jsonl'
  # The script's own budget ends every stage well before this test's limit.
  command = [sys.executable, _SCRIPT, '--cpu', '--budget_s=200', f'--out={out}']
  with tiny.killed_at_exit([]) as processes:
    processes.append(subprocess.Popen(command, cwd=tiny.ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    stdout, stderr = processes[0].communicate(timeout=280)
  printed = [json.loads(line) for line in stdout.splitlines()]
  assert [json.loads(line) for line in out.read_text().splitlines()] == printed
  return {line['stage']: line for line in printed}, processes[0].returncode, stderr


def test_cpu_mode_runs_every_stage_without_tensorflow(cpu_run):
  lines, returncode, stderr = cpu_run
  names = gpu_check.stage_names(gpu_check.CPU_SIZES)
  assert list(lines) == names + ['summary']
  failed = {name: line for name, line in lines.items() if 'error' in line or 'skipped' in line}
  assert not failed and returncode == 0, json.dumps(failed, indent=1)[-4000:] + stderr[-2000:]
  assert lines['summary']['failed_or_skipped'] == []
  for name in names:
    assert lines[name]['returncode'] == 0 and lines[name]['tensorflow_imported'] is False
  header = lines['header']
  assert header['backend'] == 'cpu' and header['device_count'] >= 1
  assert header['jax'] == jax.__version__ and header['python'].count('.') == 2
  assert header['peak_bf16_flops_per_device'] is None and 'cpu' in header['peak_reason']


def test_cpu_mode_train_lines(cpu_run):
  """Both batch sizes ran the production step: finite loss, loop and device times,
  a FLOP count that doubles with the batch, and no MFU without a known peak."""
  lines, _, _ = cpu_run
  small, large = lines['train_small'], lines['train_large']
  assert (small['batch_size'], large['batch_size']) == gpu_check.CPU_SIZES.per_device_batches
  for line in (small, large):
    assert line['compute_dtype'] == 'bfloat16' and 0 < line['loss'] < 10
    assert line['loop_seconds_per_step'] > 0 and line['device_seconds_per_step'] > 0
    assert line['host_stall_seconds_per_step'] == pytest.approx(
        line['loop_seconds_per_step'] - line['device_seconds_per_step'])
    assert line['images_per_second'] == pytest.approx(
        line['batch_size'] / line['loop_seconds_per_step'])
    assert line['mfu'] is None and 'cpu' in line['mfu_reason']
  # The per-image work dominates: twice the images, twice the FLOPs (the optimizer's
  # per-parameter work, the same at both sizes, is the rest).
  assert large['flops_per_step'] / small['flops_per_step'] == pytest.approx(2, rel=0.03)


def test_cpu_mode_decode_agreement_and_memory_lines(cpu_run):
  lines, _, _ = cpu_run
  decode = lines['decode']
  tokens = decode['tokens_per_image']
  assert tokens == 5 * gpu_check.CPU_SIZES.decode_objects + 1
  assert [b['batch_size'] for b in decode['batches']] == list(gpu_check.CPU_SIZES.decode_batches)
  for batch in decode['batches']:
    assert batch['output_shape'] == [batch['batch_size'], tokens]
    assert batch['tokens_per_second'] == pytest.approx(
        batch['images_per_second'] * tokens)
  agreement = lines['bf16_vs_f32']
  assert len(agreement['float32_losses']) == len(agreement['bfloat16_losses']) == 5
  assert agreement['float32_losses'] != agreement['bfloat16_losses']  # two dtypes ran
  assert 0 < agreement['max_relative_difference'] < 0.02
  compared = lines['gpu_vs_cpu']
  assert len(compared['device_losses']) == gpu_check.COMPARED_STEPS
  assert compared['max_relative_difference'] == 0  # the CPU against itself
  for variant in gpu_check.CPU_SIZES.memory_variants:
    memory = lines[f'memory:{variant}']
    assert memory['parameters'] > 0 and memory['temp_size_in_bytes'] > 0
    assert memory['total_bytes'] == (memory['argument_size_in_bytes']
                                     + memory['output_size_in_bytes']
                                     - memory['alias_size_in_bytes']
                                     + memory['temp_size_in_bytes'])
    assert memory['argument_size_in_bytes'] > 4 * memory['parameters']  # state and batch


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_lowered_flops_count_convolutions_and_matmuls_exactly():
  """XLA:CPU's count of one convolution is 2*N*Ho*Wo*K*K*Cin*Cout, of a matmul 2*M*K*N,
  and of their gradient (input and kernel) twice the convolution's."""
  n, h, k, cin, cout = 2, 12, 3, 5, 7
  x = jax.ShapeDtypeStruct((n, h, h, cin), jnp.float32)
  w = jax.ShapeDtypeStruct((k, k, cin, cout), jnp.float32)
  out = h - k + 1
  conv_flops = 2 * n * out * out * k * k * cin * cout
  assert gpu_check.lowered_flops(jax.jit(_conv), x, w) == conv_flops
  grad = jax.jit(jax.grad(lambda x, w: _conv(x, w).sum(), argnums=(0, 1)))
  assert gpu_check.lowered_flops(grad, x, w) == 2 * conv_flops
  a = jax.ShapeDtypeStruct((24, 40), jnp.bfloat16)
  b = jax.ShapeDtypeStruct((40, 56), jnp.bfloat16)
  assert gpu_check.lowered_flops(jax.jit(jnp.matmul), a, b) == 2 * 24 * 40 * 56


def _resnet50_conv_flops(size: int) -> int:
  """2 * multiply-adds of ResNet-50 v1.5's convolutions (no classifier) on one size x size
  image, counting only kernel taps that fall inside the image (XLA leaves out the zero
  padding): 7x7/2 stem, SAME 3x3/2 max-pool, bottlenecks with the stride on the 3x3."""
  def conv(n, k, s, cin, cout):
    pad = (k - 1) // 2
    out = (n + 2 * pad - k) // s + 1
    taps = sum(1 for o in range(out) for j in range(k) if 0 <= o * s - pad + j < n)
    return 2 * taps * taps * cin * cout, out

  total, n = conv(size, 7, 2, 3, 64)
  n, cin = -(-n // 2), 64
  for blocks, width, stride in zip((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2)):
    for i in range(blocks):
      s = stride if i == 0 else 1
      reduce, _ = conv(n, 1, 1, cin, width)
      spatial, out = conv(n, 3, s, width, width)
      expand, _ = conv(out, 1, 1, width, 4 * width)
      total += reduce + spatial + expand
      if s != 1 or cin != 4 * width:
        total += conv(n, 1, s, cin, 4 * width)[0]
      n, cin = out, 4 * width
  return total


def test_lowered_flops_of_resnet50_match_the_analytic_count():
  """The project's ResNet-50 forward pass at 224 px: XLA:CPU's count is the analytic
  count of its convolutions plus a little elementwise work (batch norm, ReLU, pooling)."""
  graphdef, params, stats = nnx.split(backbones.abstract_backbone('resnet50'), nnx.Param,
                                      nnx.BatchStat)

  def forward(params, stats, images):
    return nnx.merge(graphdef, params, stats, copy=True)(images, train=False)

  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  counted = gpu_check.lowered_flops(jax.jit(forward), params, stats, images)
  analytic = _resnet50_conv_flops(224)
  assert analytic == pytest.approx(7.89e9, rel=0.01)  # 4.09 GMACs with the padding counted
  assert 1.0 <= counted / analytic <= 1.02


def test_peak_table():
  assert gpu_check.peak_bf16_flops('NVIDIA H100 80GB HBM3') == 989.4e12
  assert gpu_check.peak_bf16_flops('NVIDIA H200') == 989.4e12
  assert gpu_check.peak_bf16_flops('NVIDIA H100 PCIe') == 756e12
  assert gpu_check.peak_bf16_flops('NVIDIA H200 NVL') == 835e12
  assert gpu_check.peak_bf16_flops('cpu') is None
  assert gpu_check.peak_bf16_flops('TPU v5 lite') is None


# A stage that aborts (SIGABRT, as a failed XLA check) unless the workaround is set.
_ABORTS_WITHOUT_WORKAROUND = textwrap.dedent(f'''
    import json, os, sys
    if {gpu_check.TRITON_WORKAROUND!r} not in os.environ.get('XLA_FLAGS', ''):
      print('triton_tiling_propagation.cc:703 Check failed: 6400 vs. 160', file=sys.stderr)
      sys.stderr.flush()
      os.abort()
    print({gpu_check.RESULT_PREFIX!r} + json.dumps({{'value': 1}}))
''')


def test_an_xla_abort_is_retried_once_with_the_workaround():
  env = dict(os.environ, XLA_FLAGS='--xla_dump_to=/dev/null')
  command = [sys.executable, '-c', _ABORTS_WITHOUT_WORKAROUND]
  deadline = gpu_check.time.perf_counter() + 60
  line = gpu_check.run_with_retry('probe', command, env, 30, deadline)
  assert line['value'] == 1 and line['returncode'] == 0 and 'error' not in line
  assert line['retried_with'] == gpu_check.TRITON_WORKAROUND
  assert line['first_error'] == 'killed by signal 6'
  assert 'Check failed' in line['first_stderr_tail']
  # With the workaround already set, a stage that still aborts is not run again.
  env['XLA_FLAGS'] += ' ' + gpu_check.TRITON_WORKAROUND
  aborting = [sys.executable, '-c', 'import os; os.abort()']
  line = gpu_check.run_with_retry('probe', aborting, env, 30, deadline)
  assert line['error'] == 'killed by signal 6' and 'retried_with' not in line


def test_other_failures_are_reported_not_retried():
  deadline = gpu_check.time.perf_counter() + 60
  failing = [sys.executable, '-c', 'raise ValueError("a bug in the stage")']
  line = gpu_check.run_with_retry('probe', failing, dict(os.environ), 30, deadline)
  assert line['error'] == 'exited with 1' and 'retried_with' not in line
  assert 'a bug in the stage' in line['stderr_tail']
  sleeping = [sys.executable, '-c', 'import time; time.sleep(60)']
  line = gpu_check.run_with_retry('probe', sleeping, dict(os.environ), 1, deadline)
  assert line['returncode'] is None and line['error'].startswith('timed out after 1 s')
  assert line['seconds'] < 10
