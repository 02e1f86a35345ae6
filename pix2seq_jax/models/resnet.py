"""ResNet backbones in Flax NNX: ResNet-50 v1.5 (stride on the 3x3 conv), its C4 trunk, tiny.

Convolutions pad (k-1)/2 on every side (3 for the 7x7 stem, 1 for 3x3s, strided or not),
as the official Pix2Seq ResNet and torchvision; the stem's 3x3/2 max-pool pads as the
official one, TensorFlow's SAME (nothing before, one row/column after on even sizes),
where torchvision pads one on each side.

Batch norm is trained (statistics of the global batch when run under `jax.jit` over a
mesh); `train=False` uses the running averages; frozen (`ResNet.frozen_norm`), it is a
fixed per-channel affine map in training and evaluation alike.

How the convolutions are computed is `conv_impl` (config `model.conv_impl`, set on a
built ResNet by `use_conv_impl`); the parameters and results are the same either way:
  'xla'          plain XLA convolutions, forward and backward (GPU and TPU run them with
                 their vendors' convolution libraries);
  'matmul_grad'  1x1 convolutions as matmuls over pixels (`PointwiseConv`) and k x k
                 kernel gradients as matmuls (`MatmulGradConv`): what XLA:CPU runs fastest;
  'auto'         'matmul_grad' where the backend is the CPU, 'xla' elsewhere.
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_CONV_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
CONV_IMPLS = ('auto', 'xla', 'matmul_grad')
ConvImpl = Literal['xla', 'matmul_grad']


def resolve_conv_impl(conv_impl: str, platform: str) -> ConvImpl:
  """The convolution code `conv_impl` (one of CONV_IMPLS) means on `platform` ('cpu',
  'gpu', 'tpu', ...): 'auto' picks 'matmul_grad' on the CPU and 'xla' elsewhere."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r}: use one of {CONV_IMPLS}.')
  if conv_impl == 'auto':
    return 'matmul_grad' if platform == 'cpu' else 'xla'
  return conv_impl


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [B, H, W, Cin] @ kernel [Cin, Cout] over every pixel -> [B, H, W, Cout]."""
  return jnp.einsum('bhwc,cd->bhwd', x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
  """The kernel's gradient as (dy^T x)^T: contracting the pixels with dy on the left makes
  XLA's CPU backend transpose dy (Cout wide) and the small [Cout, Cin] result instead of
  the input, which it otherwise copies transposed together with its producers (a large
  share of the R50 train step: BENCHMARKS.md)."""
  x, kernel = residuals
  dx = jnp.einsum('bhwd,cd->bhwc', dy, kernel)
  dkernel = jax.lax.dot_general(dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1]),
                                (((0,), (0,)), ((), ()))).T  # [Cin, Cout]
  return dx, dkernel.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class PointwiseConv(nnx.Module):
  """A bias-free 1x1 convolution computed as a matmul over pixels.

  Same parameter (`kernel` [1, 1, cin, cout]) and result as `nnx.Conv` with a 1x1
  kernel and SAME padding, but XLA's CPU backend runs it as a dot about twice as fast
  as its convolution (benchmarks/decode.py, BENCHMARKS.md), and `pointwise`'s backward
  pass avoids a slow transposed copy. With impl='xla' it is XLA's 1x1 convolution.
  """

  impl: ConvImpl = 'matmul_grad'

  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.stride = stride
    self.kernel = nnx.Param(_CONV_INIT(rngs.params(), (1, 1, cin, cout)))

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(x.dtype)  # [1, 1, Cin, Cout]
    if self.impl == 'xla':
      return _conv_nhwc(x, kernel, self.stride, 0)
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride]  # [B, ceil(H/s), ceil(W/s), Cin], as SAME
    return pointwise(x, kernel[0, 0])


def _conv_nhwc(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _windows(padded: jax.Array, size: int, stride: int, out_h: int, out_w: int) -> list:
  """The size * size strided views [B, out_h, out_w, C] of a padded input [B, H, W, C]
  that a size x size window with `stride` sees, in (row, column) order."""
  return [padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(size) for j in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def matmul_grad_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int,
                     method: str) -> jax.Array:
  """x [B, H, W, Cin] conv kernel [k, k, Cin, Cout] (stride, `pad` on every side).

  The forward pass and the input gradient are XLA's; the kernel gradient is computed
  with matmuls, because XLA's CPU backend computes it as a convolution whose window is
  the whole image, up to several times slower than the forward pass
  (benchmarks/conv_grads.py, BENCHMARKS.md):
    'patches'  one matmul of the input's patches [B*Ho*Wo, k*k*Cin] with dy: strided
               convolutions and small windows (the stems: 3 input channels);
    'offsets'  one [Cout, Cin] matmul of dy with the shifted input per kernel offset:
               stride-1 convolutions, without materialising the k*k larger patches.
  """
  return _conv_nhwc(x, kernel, stride, pad)


def _matmul_grad_conv_fwd(x, kernel, stride, pad, method):
  return _conv_nhwc(x, kernel, stride, pad), (x, kernel)


def _matmul_grad_conv_bwd(stride, pad, method, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _conv_nhwc(x, kernel, stride, pad), x)[1](dy)[0]
  size, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  windows = _windows(padded, size, stride, *dy.shape[1:3])  # k*k x [B, Ho, Wo, Cin]
  pixels_dy = dy.reshape(-1, cout)  # [B*Ho*Wo, Cout]
  contract_pixels = (((0,), (0,)), ((), ()))
  if method == 'patches':  # [B*Ho*Wo, k*k*Cin], ordered as the kernel's [k, k, Cin]
    patches = jnp.concatenate(windows, axis=-1).reshape(-1, size * size * cin)
    dkernel = jax.lax.dot_general(patches, pixels_dy, contract_pixels).reshape(kernel.shape)
  else:
    per_offset = [  # [Cout, Cin] each: dy on the left, as `pointwise`'s backward
        jax.lax.dot_general(pixels_dy, window.reshape(-1, cin), contract_pixels)
        for window in windows]
    dkernel = jnp.stack(per_offset).reshape(size, size, cout, cin).transpose(0, 1, 3, 2)
  return dx, dkernel.astype(kernel.dtype)


matmul_grad_conv.defvjp(_matmul_grad_conv_fwd, _matmul_grad_conv_bwd)

# Stride-1 convolutions whose input window (k * k * Cin values) is at most this many
# take their kernel gradient from patches too: the stems, whose input has 3 channels.
PATCHES_MAX_WINDOW = 256


class MatmulGradConv(nnx.Module):
  """A bias-free k x k convolution (pad (k-1)/2) with `matmul_grad_conv`'s kernel gradient.

  Same parameter (`kernel` [k, k, cin, cout], same initialisation) and result as
  `nnx.Conv` with explicit symmetric padding. With impl='xla' (the default off the CPU)
  the kernel gradient is XLA's, which GPUs and TPUs take from their convolution libraries.
  """

  impl: ConvImpl = 'matmul_grad'

  def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
    self.stride, self.pad = stride, (kernel - 1) // 2
    small = kernel * kernel * cin <= PATCHES_MAX_WINDOW
    self.method = 'patches' if stride > 1 or small else 'offsets'
    self.kernel = nnx.Param(_CONV_INIT(rngs.params(), (kernel, kernel, cin, cout)))

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(x.dtype)
    if self.impl == 'xla':
      return _conv_nhwc(x, kernel, self.stride, self.pad)
    return matmul_grad_conv(x, kernel, self.stride, self.pad, self.method)


def _conv(cin: int, cout: int, kernel: int, stride: int,
          rngs: nnx.Rngs) -> PointwiseConv | MatmulGradConv:
  if kernel == 1:
    return PointwiseConv(cin, cout, stride, rngs=rngs)
  # Padded (k-1)/2 on every side, as the official and torchvision ResNets.
  return MatmulGradConv(cin, cout, kernel, stride, rngs=rngs)


def use_conv_impl(backbone: nnx.Module, conv_impl: str, platform: str) -> None:
  """Makes every convolution of a ResNet `backbone` compute as `conv_impl` means on
  `platform` (resolve_conv_impl); any other backbone has no convolutions to set."""
  impl = resolve_conv_impl(conv_impl, platform)
  for _, module in nnx.iter_graph(backbone):
    if isinstance(module, (PointwiseConv, MatmulGradConv)):
      module.impl = impl


def max_pool_same(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """`nnx.max_pool(x, (window, window), (stride, stride), 'SAME')` as a maximum of strided
  slices of the padded input [B, H, W, C].

  The same values; XLA's CPU backend runs reduce_window's backward (select-and-scatter
  with index bookkeeping) far slower than the slices' selects (BENCHMARKS.md).
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    pads.append((total // 2, total - total // 2, out))
  padded = jnp.pad(x, ((0, 0), pads[0][:2], pads[1][:2], (0, 0)), constant_values=-jnp.inf)
  (_, _, out_h), (_, _, out_w) = pads
  return functools.reduce(jnp.maximum, _windows(padded, window, stride, out_h, out_w))


def _norm(channels: int, rngs: nnx.Rngs, zero_init: bool = False) -> nnx.BatchNorm:
  scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, scale_init=scale_init,
                       rngs=rngs)


# How a block's batch norms act: 'batch' normalises with the batch's statistics and
# updates the running ones (training), 'running' uses the running statistics (evaluation),
# 'frozen' is DETR's FrozenBatchNorm2d: a fixed per-channel affine map (`frozen_affine`).
NormMode = Literal['batch', 'running', 'frozen']


def frozen_affine(norm: nnx.BatchNorm) -> tuple[jax.Array, jax.Array]:
  """(multiplier [C], offset [C]) of a frozen batch norm: scale / sqrt(var + eps) and
  bias - mean * multiplier, with no gradient to any of the four."""
  multiplier = norm.scale[...] * jax.lax.rsqrt(norm.var[...] + norm.epsilon)
  offset = norm.bias[...] - norm.mean[...] * multiplier
  return jax.lax.stop_gradient(multiplier), jax.lax.stop_gradient(offset)


def _normed(norm: nnx.BatchNorm, x: jax.Array, mode: NormMode) -> jax.Array:
  """Batch norm in `mode` that keeps the input's dtype (statistics are float32 either way)."""
  if mode == 'frozen':
    multiplier, offset = frozen_affine(norm)
    return x * multiplier.astype(x.dtype) + offset.astype(x.dtype)
  return norm(x, use_running_average=mode == 'running').astype(x.dtype)


class Projection(nnx.Module):
  """The 1x1 (strided) conv + norm on a residual branch whose shape changes."""

  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.conv, self.norm = _conv(cin, cout, 1, stride, rngs), _norm(cout, rngs)

  def __call__(self, x: jax.Array, mode: NormMode) -> jax.Array:
    return _normed(self.norm, self.conv(x), mode)


def _shortcut(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> Projection | None:
  return Projection(cin, cout, stride, rngs=rngs) if stride != 1 or cin != cout else None


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a residual connection."""

  expansion = 1

  def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1, self.norm1 = _conv(cin, width, 3, stride, rngs), _norm(width, rngs)
    self.conv2, self.norm2 = _conv(width, width, 3, 1, rngs), _norm(width, rngs, zero_init=True)
    self.shortcut = nnx.data(_shortcut(cin, width, stride, rngs))

  def __call__(self, x: jax.Array, mode: NormMode) -> jax.Array:
    y = jax.nn.relu(_normed(self.norm1, self.conv1(x), mode))
    y = _normed(self.norm2, self.conv2(y), mode)
    if self.shortcut is not None:
      x = self.shortcut(x, mode)
    return jax.nn.relu(x + y)


class BottleneckBlock(nnx.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 with 4x expansion."""

  expansion = 4

  def __init__(self, cin: int, width: int, stride: int, *, rngs: nnx.Rngs):
    cout = width * self.expansion
    self.conv1, self.norm1 = _conv(cin, width, 1, 1, rngs), _norm(width, rngs)
    self.conv2, self.norm2 = _conv(width, width, 3, stride, rngs), _norm(width, rngs)
    self.conv3, self.norm3 = _conv(width, cout, 1, 1, rngs), _norm(cout, rngs, zero_init=True)
    self.shortcut = nnx.data(_shortcut(cin, cout, stride, rngs))

  def __call__(self, x: jax.Array, mode: NormMode) -> jax.Array:
    y = jax.nn.relu(_normed(self.norm1, self.conv1(x), mode))
    y = jax.nn.relu(_normed(self.norm2, self.conv2(y), mode))
    y = _normed(self.norm3, self.conv3(y), mode)
    if self.shortcut is not None:
      x = self.shortcut(x, mode)
    return jax.nn.relu(x + y)


class ResNet(nnx.Module):
  """A ResNet trunk without the classifier: images [B, H, W, 3] -> features [B, H/s, W/s, C].

  Both stems reduce by 4: stem='imagenet' is the 7x7/2 conv + 3x3/2 max-pool of
  ResNet-50; stem='small' is two cheap 3x3/2 convs.

  Fine-tuning as DETR (and the seed) does: `frozen_stages` = 1 stops gradients after the
  stem, 2 after stage 1, ... (the optimizer leaves their parameters alone, see
  `frozen_paths`); `frozen_norm` makes every batch norm a fixed affine map of its running
  statistics and parameters, as DETR's FrozenBatchNorm2d: no gradient, no update, no decay.
  """

  frozen_stages: int = 0
  frozen_norm: bool = False

  def __init__(self, block: type[nnx.Module], stage_sizes: Sequence[int],
               widths: Sequence[int], stage_strides: Sequence[int], *, stem: str,
               stem_width: int, rngs: nnx.Rngs):
    if stem not in ('imagenet', 'small'):
      raise ValueError(f'Unknown ResNet stem {stem!r}.')
    self.stem_kind = stem
    self.stage_sizes = tuple(stage_sizes)
    if stem == 'imagenet':
      self.stem = _conv(3, stem_width, 7, 2, rngs)
    else:
      self.stem_pre = _conv(3, stem_width // 2, 3, 2, rngs)
      self.stem_pre_norm = _norm(stem_width // 2, rngs)
      self.stem = _conv(stem_width // 2, stem_width, 3, 2, rngs)
    self.stem_norm = _norm(stem_width, rngs)
    blocks, cin = [], stem_width
    for size, width, stride in zip(stage_sizes, widths, stage_strides):
      for i in range(size):
        blocks.append(block(cin, width, stride if i == 0 else 1, rngs=rngs))
        cin = width * block.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = cin
    self.stride = 4
    for s in stage_strides:
      self.stride *= s

  feature_dropout = True  # Pix2Seq applies dropout to these features

  def _frozen_blocks(self) -> int:
    """How many blocks the frozen stages hold; -1 when not even the stem is frozen."""
    return sum(self.stage_sizes[:self.frozen_stages - 1]) if self.frozen_stages > 0 else -1

  def norm_paths(self) -> tuple[tuple[str, ...], ...]:
    """Path prefixes (within the ResNet) of every batch norm."""
    return tuple(tuple(str(name) for name in path)
                 for path, module in nnx.iter_graph(self)
                 if isinstance(module, nnx.BatchNorm))

  def frozen_paths(self) -> tuple[tuple[str, ...], ...]:
    """Parameter path prefixes (within the ResNet) of the frozen stem and stages, and of
    every batch norm when they are frozen."""
    paths = ()
    if self.frozen_stages > 0:
      stem = ('stem', 'stem_norm') + (('stem_pre', 'stem_pre_norm')
                                      if self.stem_kind == 'small' else ())
      paths = tuple((name,) for name in stem) + tuple(('blocks', str(i))
                                                      for i in range(self._frozen_blocks()))
    if self.frozen_norm:
      paths += tuple(path for path in self.norm_paths()
                     if not any(path[:len(p)] == p for p in paths))
    return paths

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    mode: NormMode = 'frozen' if self.frozen_norm else 'batch' if train else 'running'
    x = images
    if self.stem_kind == 'small':
      x = jax.nn.relu(_normed(self.stem_pre_norm, self.stem_pre(x), mode))
    x = jax.nn.relu(_normed(self.stem_norm, self.stem(x), mode))
    if self.stem_kind == 'imagenet':
      x = max_pool_same(x)
    frozen_blocks = self._frozen_blocks()  # gradients stop after the last frozen block
    for index, block in enumerate(self.blocks):
      if index == frozen_blocks:
        x = jax.lax.stop_gradient(x)
      x = block(x, mode)
    if frozen_blocks == len(self.blocks):
      x = jax.lax.stop_gradient(x)
    return x


def _resnet50(stages: int, divisor: int, rngs: nnx.Rngs) -> ResNet:
  """ResNet-50's first `stages` stages with every width divided by `divisor`."""
  return ResNet(BottleneckBlock, (3, 4, 6, 3)[:stages],
                tuple(w // divisor for w in (64, 128, 256, 512)[:stages]),
                (1, 2, 2, 2)[:stages], stem='imagenet', stem_width=64 // divisor, rngs=rngs)


def resnet50(*, rngs: nnx.Rngs) -> ResNet:
  return _resnet50(4, 1, rngs)


def resnet50_c4(*, rngs: nnx.Rngs) -> ResNet:
  """ResNet-50 stages 1-4 (conv1 .. conv4_x): stride 16, 1024 features."""
  return _resnet50(3, 1, rngs)


# The official-parity test fixtures' sizes (tests/fixtures/official_resnet_nano and
# official_resnet_c_nano): the official ResNet-50 with width multiplier 1/32, i.e. a
# 2-channel stem and stage widths 2, 4, 8, 16 (64 features at C5, 32 at C4).
NANO_DIVISOR = 32


def resnet50_nano(*, rngs: nnx.Rngs) -> ResNet:
  return _resnet50(4, NANO_DIVISOR, rngs)


def resnet50_c4_nano(*, rngs: nnx.Rngs) -> ResNet:
  return _resnet50(3, NANO_DIVISOR, rngs)


def resnet_tiny(*, rngs: nnx.Rngs) -> ResNet:
  """~0.9M parameters, stride 16 (the last stage keeps its input size): fast on 2 CPU cores."""
  return ResNet(BasicBlock, (1, 1, 1, 1), (32, 64, 128, 192), (1, 2, 2, 1),
                stem='small', stem_width=32, rngs=rngs)
