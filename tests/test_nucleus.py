"""The nucleus (top-p) threshold's shortcuts against their reference: the most likely
`NUCLEUS_CANDIDATES` tokens (`lax.top_k`) decide it when they hold more than top_p,
else the whole vocabulary is ordered (`lax.top_k` of all of it); both give the
threshold of the vocabulary sorted by `jnp.sort`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_jax.inference import decoding

TOP_PS = (0.05, 0.4, 0.8, 0.95)


def _logits(peak: float, vocab: int = 5000, rows: int = 4) -> jax.Array:
  """Random logits, one token per row lifted by `peak` (large: a peaked distribution),
  with masked tokens (as a grammar leaves them) and a tie with the peak in row 1."""
  logits = jax.random.normal(jax.random.key(0), (rows, vocab))
  logits = logits.at[jnp.arange(rows), jnp.arange(rows) * 7].add(peak)
  return logits.at[:, 100:200].set(decoding.NEG_INF).at[:, 300].set(logits[:, 7])


@pytest.mark.parametrize('nucleus', ['reach', 'official'])
def test_the_threshold_of_the_candidates_is_the_full_sorts(nucleus):
  @jax.jit
  def thresholds(logits):
    by_sort = jnp.sort(logits, axis=-1)[:, ::-1]
    log_total = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    return [(decoding.nucleus_threshold(logits, p, nucleus),
             decoding.nucleus_threshold(logits, p, nucleus, candidates=0),
             decoding._nucleus_threshold(by_sort, log_total, p, nucleus)[0]) for p in TOP_PS]

  for peak in (0.0, 16.0):  # flat rows take the sort, peaked ones the candidates
    logits = _logits(peak)
    top = jax.lax.top_k(jax.nn.softmax(logits), decoding.NUCLEUS_CANDIDATES)[0].sum(-1)
    assert bool(jnp.all(top > 0.95)) if peak else bool(jnp.all(top < 0.4))
    for fast, ordered, reference in thresholds(logits):
      np.testing.assert_array_equal(np.asarray(fast), np.asarray(reference))
      np.testing.assert_array_equal(np.asarray(ordered), np.asarray(reference))


def test_a_vocabulary_smaller_than_the_candidates_is_sorted():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  assert float(decoding.nucleus_threshold(logits, 0.7)[0, 0]) == pytest.approx(np.log(0.3))
