"""Pre-LN transformer layers with an explicit key/value cache for decoding.

Shapes: B batch, T query length, S key length, H heads, K head dim, D model dim.
Keys and values are kept with batch and heads merged, [B*H, S, K], so that attention is
a plain batched matmul whose operands XLA reads where they lie: laid out [B, S, H, K],
XLA transposed the whole cache and the image memory's keys/values at every decoding
step, and a reshape between the cache and the matmul made it copy the cache at every
step instead of updating it in place. The decoding cache is a plain pytree: one
{'k': [B*H, L, K], 'v': [B*H, L, K]} dict per decoder layer, passed in and returned by
`DecoderLayer.step`. Cross-attention keys/values of the image memory are computed once
per image (`project_kv`), and so are the step's concatenated self-attention projections
(`fused_qkv`): one [D, 3D] product per token reads the weights faster than three [D, D]
ones (BENCHMARKS.md, "Decoding step weights").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPSILON = 1e-6
_DENSE_INIT = nnx.initializers.xavier_uniform()

KeyValue = tuple[jax.Array, jax.Array]  # ([B*H, S, K], [B*H, S, K])


def _dense(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, kernel_init=_DENSE_INIT, rngs=rngs)


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=LN_EPSILON, rngs=rngs)


class Dropout(nnx.Module):
  """Dropout whose randomness comes from the caller's `rngs` (None: deterministic).

  `whole_examples=True` drops all of an example at once: DropPath (stochastic depth)
  when applied to a residual branch.
  """

  def __init__(self, rate: float, whole_examples: bool = False):
    self.rate, self.whole_examples = rate, whole_examples

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    if rngs is None or self.rate == 0.0:
      return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.whole_examples else x.shape
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.rate, shape)
    return jnp.where(keep, x / (1.0 - self.rate), 0.0)


def DropPath(rate: float) -> Dropout:  # noqa: N802 (reads as the layer it builds)
  """Stochastic depth: drops a residual branch for whole examples."""
  return Dropout(rate, whole_examples=True)


class Attention(nnx.Module):
  """Multi-head attention whose keys/values can be projected once and reused."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f'Model dim {dim} is not divisible by {heads} heads.')
    self.heads, self.head_dim = heads, dim // heads
    self.query = _dense(dim, dim, rngs)
    self.key = _dense(dim, dim, rngs)
    self.value = _dense(dim, dim, rngs)
    self.out = _dense(dim, dim, rngs)

  def _split(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B*H, T, K]."""
    batch, length = x.shape[:2]
    heads = jnp.swapaxes(x.reshape(batch, length, self.heads, self.head_dim), 1, 2)
    return heads.reshape(batch * self.heads, length, self.head_dim)

  def project_kv(self, source: jax.Array) -> KeyValue:
    return self._split(self.key(source)), self._split(self.value(source))

  def fused_qkv(self) -> tuple[jax.Array, jax.Array]:
    """(kernel [D, 3D], bias [3D]): the query, key and value projections side by side."""
    parts = (self.query, self.key, self.value)
    return (jnp.concatenate([part.kernel[...] for part in parts], axis=1),
            jnp.concatenate([part.bias[...] for part in parts]))

  def __call__(self, x: jax.Array, kv: KeyValue, mask: jax.Array | None = None) -> jax.Array:
    """x: [B, T, D]; kv from `project_kv`; mask: bool, broadcastable to [B*H, T, S]."""
    return self.attend(self.query(x), kv, mask)

  def attend(self, query: jax.Array, kv: KeyValue, mask: jax.Array | None = None) -> jax.Array:
    """`__call__` from the projected queries [B, T, D]."""
    batch, length, dim = query.shape
    q = self._split(query) / math.sqrt(self.head_dim)  # [B*H, T, K]
    logits = jnp.einsum('ntk,nsk->nts', q, kv[0])
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(kv[1].dtype)
    out = jnp.einsum('nts,nsk->ntk', weights, kv[1])  # [B*H, T, K]
    out = jnp.swapaxes(out.reshape(batch, self.heads, length, self.head_dim), 1, 2)
    return self.out(out.reshape(batch, length, dim))


class MLP(nnx.Module):
  def __init__(self, dim: int, hidden: int, dropout: float, *, rngs: nnx.Rngs):
    self.fc1, self.fc2 = _dense(dim, hidden, rngs), _dense(hidden, dim, rngs)
    self.dropout = Dropout(dropout)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    return self.fc2(self.dropout(jax.nn.gelu(self.fc1(x), approximate=False), rngs))


class EncoderLayer(nnx.Module):
  """x + SelfAttention(LN(x)); x + MLP(LN(x))."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float,
               drop_path: float = 0.0, *, rngs: nnx.Rngs):
    self.attn_norm, self.attn = _layer_norm(dim, rngs), Attention(dim, heads, rngs=rngs)
    self.mlp_norm, self.mlp = _layer_norm(dim, rngs), MLP(dim, mlp_dim, dropout, rngs=rngs)
    self.drop_path = DropPath(drop_path)  # dropout acts inside the MLP only

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    h = self.attn_norm(x)
    x = x + self.drop_path(self.attn(h, self.attn.project_kv(h)), rngs)
    return x + self.drop_path(self.mlp(self.mlp_norm(x), rngs), rngs)


class DecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention to the image memory, then an MLP (all pre-LN)."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float,
               drop_path: float = 0.0, *, rngs: nnx.Rngs):
    self.self_norm, self.self_attn = _layer_norm(dim, rngs), Attention(dim, heads, rngs=rngs)
    self.cross_norm, self.cross_attn = _layer_norm(dim, rngs), Attention(dim, heads, rngs=rngs)
    self.mlp_norm, self.mlp = _layer_norm(dim, rngs), MLP(dim, mlp_dim, dropout, rngs=rngs)
    self.drop_path = DropPath(drop_path)  # dropout acts inside the MLP only

  def _cross_and_mlp(self, x: jax.Array, memory_kv: KeyValue,
                     rngs: nnx.Rngs | None) -> jax.Array:
    x = x + self.drop_path(self.cross_attn(self.cross_norm(x), memory_kv), rngs)
    return x + self.drop_path(self.mlp(self.mlp_norm(x), rngs), rngs)

  def __call__(self, x: jax.Array, memory_kv: KeyValue, rngs: nnx.Rngs | None) -> jax.Array:
    """x: [B, T, D], all positions at once under a causal mask."""
    h = self.self_norm(x)
    causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
    x = x + self.drop_path(self.self_attn(h, self.self_attn.project_kv(h), causal), rngs)
    return self._cross_and_mlp(x, memory_kv, rngs)

  def step(self, x: jax.Array, position: jax.Array, cache: dict[str, jax.Array],
           memory_kv: KeyValue, self_qkv: tuple[jax.Array, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One position: x [B, 1, D] at `position`; cache {'k','v'}: [B*H, L, K];
    `self_qkv`: `self_attn.fused_qkv()`, made once outside the decoding loop."""
    h = self.self_norm(x)
    kernel, bias = self_qkv
    q, k, v = jnp.split(h @ kernel.astype(h.dtype) + bias.astype(h.dtype), 3, axis=-1)
    k, v = self.self_attn._split(k), self.self_attn._split(v)  # [B*H, 1, K]
    cache = {'k': jax.lax.dynamic_update_slice_in_dim(cache['k'], k, position, axis=1),
             'v': jax.lax.dynamic_update_slice_in_dim(cache['v'], v, position, axis=1)}
    visible = jnp.arange(cache['k'].shape[1]) <= position  # [L]
    x = x + self.self_attn.attend(q, (cache['k'], cache['v']), visible)
    return self._cross_and_mlp(x, memory_kv, None), cache
