"""The Pix2Seq model: image -> backbone -> encoder -> memory; tokens -> decoder -> logits.

  features [B, h, w, C] -> (dropout) -> Dense(D_enc) -> LN -> + 2D sin-cos -> encoder -> LN
  memory = Dense(D_dec) -> LN -> + 2D sin-cos -> residual pre-LN MLP        [B, h*w, D_dec]
  decoder: token embedding + learned positions -> layers -> LN -> h . E^T + b   [B, T, V]
This is the official Pix2Seq's function (`ar_model.Model` with `dec_proj_mode='mlp'`,
sin-cos encoder positions, learned decoder positions, shared embedding, output bias):
converted official checkpoints give its logits (tests/test_official_parity.py).
Regularisation as the official: `dropout` on ResNet features and inside every MLP,
DropPath (`drop_path`) on every residual branch, the memory MLP's included.
The token embedding is shared by the decoder's input and output. With a ViT variant the
features are raw patches and Dense(D_enc) is the patch embedding (see vit.py).
Computation follows the parameters' dtype: casting them to bfloat16 (train_step's
`compute_dtype`) runs matmuls and activations in bfloat16, with softmaxes, norms'
statistics and the loss in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pix2seq_jax.models import backbones, transformer
from pix2seq_jax.models.variants import ModelSpec

Cache = list[dict[str, jax.Array]]  # per decoder layer {'k', 'v'}: [B*H, L, K]


@struct.dataclass
class StepWeights:
  """What every cached decoding step reads, computed once per image batch
  (`Decoder.step_weights`), outside the decoding loop."""
  memory_kv: list[transformer.KeyValue]  # per layer: cross-attention ([B*H, S, K],) * 2
  self_qkv: list[tuple[jax.Array, jax.Array]]  # per layer: ([D, 3D], [3D]), `fused_qkv`
  output_kernel: jax.Array  # [D, V]: the shared token embedding, transposed


def _sincos(coords: np.ndarray, dim: int, temperature: float) -> np.ndarray:
  """[N] coordinates -> [N, dim]: sin then cos of coords * temperature^(-2k/dim), k < dim/2."""
  freqs = np.float32(1.0) / np.power(np.float32(temperature),
                                     (2 * np.arange(dim // 2)).astype(np.float32) / dim)
  angles = coords.astype(np.float32)[:, None] * freqs[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _normalised(n: int) -> np.ndarray:
  """Grid coordinates 0..n-1 scaled to [0, 2*pi], as the official code's 6.2831852."""
  return np.arange(n, dtype=np.float32) / np.float32(n - 1) * np.float32(6.2831852)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """Fixed 2D sin-cos position embedding, [height * width, dim] (dim % 4 == 0).

  The official Pix2Seq's: rows and columns are scaled to [0, 2*pi]; the first half of
  the channels encodes the row, [sin, cos] over dim/4 frequencies, the second half the
  column. A single row or column gets 1D codes over its length with all dim channels.
  """
  if dim % 4:
    raise ValueError(f'2D sin-cos positions need a dim divisible by 4, got {dim}.')
  if height * width < 2:
    raise ValueError(f'A {height}x{width} feature map has no positions to encode: use a '
                     'larger image_size.')
  if height == 1 or width == 1:
    return _sincos(_normalised(height * width), dim, temperature)
  rows = np.repeat(_sincos(_normalised(height), dim // 2, temperature), width, axis=0)
  cols = np.tile(_sincos(_normalised(width), dim // 2, temperature), (height, 1))
  return np.concatenate([rows, cols], axis=1)  # [height * width, dim], row-major


class Decoder(nnx.Module):
  """Autoregressive token decoder with a shared input/output embedding."""

  def __init__(self, spec: ModelSpec, vocab_size: int, max_seq_len: int, dropout: float,
               drop_path: float = 0.0, *, rngs: nnx.Rngs):
    # No dropout on the token embeddings (as the official decoder): `dropout` acts inside
    # each MLP, `drop_path` on every residual branch.
    dim = spec.decoder_dim
    self.max_seq_len, self.heads = max_seq_len, spec.decoder_heads
    self.embed = nnx.Embed(vocab_size, dim, embedding_init=nnx.initializers.normal(0.02),
                           rngs=rngs)
    self.positions = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (max_seq_len, dim)))
    self.layers = nnx.List([
        transformer.DecoderLayer(dim, spec.decoder_heads, spec.decoder_mlp_dim, dropout,
                                 drop_path, rngs=rngs) for _ in range(spec.decoder_layers)])
    self.norm = transformer._layer_norm(dim, rngs)
    self.output_bias = nnx.Param(jnp.zeros((vocab_size,)))

  def _embed(self, tokens: jax.Array) -> jax.Array:
    """Token embeddings in the parameters' dtype (nnx.Embed returns float32)."""
    return self.embed(tokens).astype(self.positions[...].dtype)

  def _logits(self, x: jax.Array, output_kernel: jax.Array | None = None) -> jax.Array:
    """Hidden states [..., D] -> float32 logits [..., V] (matmul in the states' dtype).

    `output_kernel`: the embedding transposed, [D, V] (`StepWeights`); a few rows of
    states multiply it faster than the [V, D] embedding itself.
    """
    h = self.norm(x)
    if output_kernel is None:
      logits = jnp.einsum('...d,vd->...v', h, self.embed.embedding[...].astype(h.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum('...d,dv->...v', h, output_kernel.astype(h.dtype),
                          preferred_element_type=jnp.float32)
    return logits + self.output_bias[...].astype(jnp.float32)

  def memory_kv(self, memory: jax.Array) -> list[transformer.KeyValue]:
    """Cross-attention keys/values of every layer, computed once per image."""
    return [layer.cross_attn.project_kv(memory) for layer in self.layers]

  def _repeated(self, kv: transformer.KeyValue, repeats: int) -> transformer.KeyValue:
    """Keys/values ([B*H, S, K],) * 2 of B images -> ([B*repeats*H, S, K],) * 2: each
    image's `repeats` times in a row (the official `utils.tile_along_batch`)."""
    def repeat(x: jax.Array) -> jax.Array:
      per_image = x.reshape(-1, self.heads, *x.shape[1:])  # [B, H, S, K]
      return jnp.repeat(per_image, repeats, axis=0).reshape(-1, *x.shape[1:])
    return repeat(kv[0]), repeat(kv[1])

  def __call__(self, tokens: jax.Array, memory: jax.Array,
               rngs: nnx.Rngs | None = None, repeats: int = 1) -> jax.Array:
    """tokens [B*repeats, T] (T <= max_seq_len), memory [B, S, D] -> logits
    [B*repeats, T, V]; token rows [b*repeats, (b+1)*repeats) attend to image b.

    Each image's cross-attention keys/values are projected once and then repeated: the
    same values as the official, which repeats the memory before projecting it.
    """
    x = self._embed(tokens) + self.positions[:tokens.shape[1]]
    for layer, kv in zip(self.layers, self.memory_kv(memory)):
      if repeats > 1:
        kv = self._repeated(kv, repeats)
      x = layer(x, kv, rngs)
    return self._logits(x)

  def step_weights(self, memory: jax.Array) -> StepWeights:
    """The `StepWeights` of memory [B, S, D]: what `step` reads at every position."""
    return StepWeights(memory_kv=self.memory_kv(memory),
                       self_qkv=[layer.self_attn.fused_qkv() for layer in self.layers],
                       output_kernel=self.embed.embedding[...].T)

  def init_cache(self, batch_size: int, length: int, dtype=jnp.float32) -> Cache:
    head_dim = self.embed.features // self.heads
    shape = (batch_size * self.heads, length, head_dim)
    return [{'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)} for _ in self.layers]

  def grow_cache(self, cache: Cache, length: int) -> Cache:
    """The cache with room for `length` positions (zeros appended to each layer's)."""
    grow = lambda x: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))
    return [{name: grow(x) for name, x in layer.items()} for layer in cache]

  def step(self, tokens: jax.Array, position: jax.Array, cache: Cache,
           weights: StepWeights) -> tuple[jax.Array, Cache]:
    """tokens [B] at `position` -> logits [B, V] and the updated cache."""
    x = self._embed(tokens)[:, None] + jax.lax.dynamic_slice_in_dim(
        self.positions[...], position, 1)[None]
    new_cache = []
    for layer, layer_cache, kv, qkv in zip(self.layers, cache, weights.memory_kv,
                                           weights.self_qkv):
      x, layer_cache = layer.step(x, position, layer_cache, kv, qkv)
      new_cache.append(layer_cache)
    return self._logits(x, weights.output_kernel)[:, 0], new_cache


# ImageNet channel statistics of [0, 1] RGB images (torchvision's and timm's ResNets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_NORMALIZATIONS = ('none', 'imagenet')


class Pix2Seq(nnx.Module):
  """Images [B, S, S, 3] in [0, 1] and input tokens [B, T] -> next-token logits [B, T, V];
  or input tokens [B, n, T], n sequences per image (Pix2Seq-v2's instance tasks: one per
  object) -> logits [B, n, T, V], each image encoded once for its n sequences.

  `image_normalization='imagenet'` standardises the images with ImageNet's channel mean
  and std before the backbone (what ImageNet-pretrained ResNets expect); 'none' feeds
  [0, 1] pixels, as the official Pix2Seq.
  """

  def __init__(self, spec: ModelSpec, vocab_size: int, max_seq_len: int, *,
               dropout: float = 0.0, drop_path: float = 0.0,
               image_normalization: str = 'none', frozen_backbone_stages: int = 0,
               frozen_batch_norm: bool = False, rngs: nnx.Rngs):
    if image_normalization not in IMAGE_NORMALIZATIONS:
      raise ValueError(f'image_normalization={image_normalization!r}: use one of '
                       f'{IMAGE_NORMALIZATIONS}.')
    self.spec = spec
    self.image_normalization = image_normalization
    self.backbone = backbones.BACKBONES[spec.backbone](rngs=rngs)
    if frozen_backbone_stages or frozen_batch_norm:
      backbones.freeze(self.backbone, frozen_backbone_stages, frozen_batch_norm)
    enc, dec = spec.encoder_dim, spec.decoder_dim
    self.input_proj = transformer._dense(self.backbone.num_features, enc, rngs)
    self.input_norm = transformer._layer_norm(enc, rngs)
    self.encoder = nnx.List([
        transformer.EncoderLayer(enc, spec.encoder_heads, spec.encoder_mlp_dim, dropout,
                                 drop_path, rngs=rngs) for _ in range(spec.encoder_layers)])
    self.encoder_norm = transformer._layer_norm(enc, rngs)
    self.memory_proj = transformer._dense(enc, dec, rngs)
    self.memory_norm = transformer._layer_norm(dec, rngs)
    self.memory_mlp_norm = transformer._layer_norm(dec, rngs)
    self.memory_mlp = transformer.MLP(dec, spec.decoder_mlp_dim, dropout, rngs=rngs)
    self.memory_drop_path = transformer.DropPath(drop_path)
    self.decoder = Decoder(spec, vocab_size, max_seq_len, dropout, drop_path, rngs=rngs)
    self.dropout = transformer.Dropout(dropout)

  def encode(self, images: jax.Array, *, train: bool,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """images [B, S, S, 3] -> decoder memory [B, (S/stride)^2, D_dec]."""
    if self.image_normalization == 'imagenet':
      images = (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD,
                                                                             np.float32)
    images = images.astype(self.input_proj.kernel.dtype)
    features = self.backbone(images, train=train)  # [B, h, w, C]
    batch, height, width, channels = features.shape
    x = features.reshape(batch, height * width, channels)
    if self.backbone.feature_dropout:
      x = self.dropout(x, rngs)
    x = self.input_norm(self.input_proj(x))
    x = x + sincos_2d(height, width, self.spec.encoder_dim).astype(x.dtype)
    for layer in self.encoder:
      x = layer(x, rngs)
    x = self.memory_norm(self.memory_proj(self.encoder_norm(x)))
    x = x + sincos_2d(height, width, self.spec.decoder_dim).astype(x.dtype)
    return x + self.memory_drop_path(self.memory_mlp(self.memory_mlp_norm(x), rngs), rngs)

  def __call__(self, images: jax.Array, input_tokens: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """images [B, S, S, 3], input_tokens [B, T] or [B, n, T] -> logits [B, T, V] or
    [B, n, T, V] (the official `ar_model.Model.call` with its `_tile_vis_output`)."""
    memory = self.encode(images, train=train, rngs=rngs)  # [B, S', D]
    if input_tokens.ndim == 2:
      return self.decoder(input_tokens, memory, rngs)
    batch, instances, length = input_tokens.shape
    logits = self.decoder(input_tokens.reshape(batch * instances, length), memory, rngs,
                          repeats=instances)  # [B*n, T, V]
    return logits.reshape(batch, instances, length, logits.shape[-1])
