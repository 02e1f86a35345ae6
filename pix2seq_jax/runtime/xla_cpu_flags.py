"""The XLA:CPU settings this project runs with where the backend is the CPU.

`--xla_cpu_multi_thread_eigen=false`: XLA:CPU does not hand dots and convolutions to
Eigen's own intra-op thread pool. The small matrix-vector products of cached decoding
then skip a thread hand-off per product, and the train step runs faster too
(BENCHMARKS.md, "XLA:CPU without Eigen's thread pool": measured side by side).

XLA reads XLA_FLAGS once, when JAX starts its CPU backend, so the flag is added to the
environment before any backend starts, by the run's entry point (`cpu_runtime.configure`,
only when the backend will be the CPU); a process that started one earlier keeps its
settings. A value the user set in XLA_FLAGS is kept as it is. Child processes inherit
them (TensorFlow's XLA knows them).

Inference programs (decoding, teacher-forced logits, exported detectors run by
`serving.load`) are compiled on CPU with INFERENCE_OPTIONS as well:
`xla_cpu_experimental_ynn_fusion_type` empty leaves their dots to XLA's own emitters
instead of YNNPACK fusions, which run the decoder's small per-token matrix products
(a handful of rows) and the encoder slower on this project's CPU, while they speed up the
train step's large ones, which keeps XLA's default (BENCHMARKS.md, "XLA:CPU inference
options"). An option set in XLA_FLAGS is left to XLA_FLAGS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

DEFAULTS = {'--xla_cpu_multi_thread_eigen': 'false'}
INFERENCE_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Adds each of DEFAULTS that XLA_FLAGS does not set already; returns the added flags."""
  flags = environ.get('XLA_FLAGS', '')
  added = [f'{name}={value}' for name, value in DEFAULTS.items() if name not in flags]
  if added:
    environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
  return added


def inference_compiler_options(platform: str,
                               environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """`compiler_options` for an inference program on `platform` (a device's platform)."""
  if platform != 'cpu':
    return {}
  flags = environ.get('XLA_FLAGS', '')
  return {name: value for name, value in INFERENCE_OPTIONS.items()
          if f'--{name}' not in flags}
