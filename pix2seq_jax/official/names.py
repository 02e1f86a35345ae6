"""Where each array of this project's model lives in an official Pix2Seq TF checkpoint.

The official trainer saves `tf.train.Checkpoint(model=..., global_step=..., optimizer=...)`;
its object-based names follow the Keras layers' attributes, e.g.
  model/encoder/transformer_encoder/enc_layers/3/mha/_query_dense/kernel   [D, H, K]
which is this project's params/encoder/3/attn/query/kernel [D, H*K]. `official_name`
maps one of our array paths to (checkpoint name, layout); the layout says how the
official array becomes ours:
  'same'          identical shape
  'heads_in'      [D, H, K] -> [D, H*K] (attention query/key/value kernels), [H, K] -> [H*K]
  'heads_out'     [H, K, D] -> [H*K, D] (attention output kernel)
  'patches'       [p, p, 3, D] -> [p*p*3, D] (the ViT's patch convolution, row-major
                  within a patch as vit.Patchify)
Names a checkpoint holds besides the model's (optimizer slots, counters) are listed by
`is_bookkeeping`.
"""

from __future__ import annotations

from typing import Sequence

SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_LN = {'scale': 'gamma', 'bias': 'beta'}
_BN = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
_ATTN = {'query': '_query_dense', 'key': '_key_dense', 'value': '_value_dense',
         'out': '_output_dense'}
# Our ResNet bottleneck's modules -> index in the official block's conv_relu_dropblock_layers.
_BOTTLENECK = {'conv1': 0, 'norm1': 1, 'conv2': 3, 'norm2': 4, 'conv3': 6, 'norm3': 7}


def is_bookkeeping(name: str) -> bool:
  """Checkpoint entries that are not model weights: optimizer slots and step counters."""
  return (name.startswith('optimizer/') or name.startswith('global_step/')
          or name.startswith('save_counter/') or name == '_CHECKPOINTABLE_OBJECT_GRAPH')


def _var(name: str) -> str:
  return name + SUFFIX


def _norm(prefix: str, leaf: str, table: dict[str, str]) -> tuple[str, str]:
  return _var(f'{prefix}/{table[leaf]}'), 'same'


def _dense(prefix: str, leaf: str) -> tuple[str, str]:
  return _var(f'{prefix}/{leaf}'), 'same'


def _attention(prefix: str, path: Sequence) -> tuple[str, str]:
  proj, leaf = path
  layout = 'same' if (proj, leaf) == ('out', 'bias') else (
      'heads_out' if proj == 'out' else 'heads_in')
  return _var(f'{prefix}/{_ATTN[proj]}/{leaf}'), layout


def _mlp(prefix: str, path: Sequence) -> tuple[str, str]:
  """Our MLP (fc1, fc2) -> the official MLP's single feed-forward layer."""
  dense = {'fc1': 'dense1', 'fc2': 'dense2'}[path[0]]
  return _dense(f'{prefix}/mlp_layers/0/{dense}', path[1])


def _transformer_layer(prefix: str, path: Sequence) -> tuple[str, str]:
  """Encoder/decoder layer modules -> official names under `prefix` (the layer)."""
  head, rest = path[0], path[1:]
  if head in ('attn_norm', 'self_norm', 'cross_norm'):
    name = {'attn_norm': 'mha_ln', 'self_norm': 'self_ln', 'cross_norm': 'cross_ln'}[head]
    return _norm(f'{prefix}/{name}', rest[0], _LN)
  if head in ('attn', 'self_attn', 'cross_attn'):
    name = {'attn': 'mha', 'self_attn': 'self_mha', 'cross_attn': 'cross_mha'}[head]
    return _attention(f'{prefix}/{name}', rest)
  if head == 'mlp_norm':
    return _norm(f'{prefix}/mlp/layernorms/0', rest[0], _LN)
  if head == 'mlp':
    return _mlp(f'{prefix}/mlp', rest)
  raise KeyError(head)


def _resnet(path: Sequence, stage_sizes: Sequence[int]) -> tuple[str, str]:
  root = 'model/encoder/resnet'
  head = path[0]
  if head == 'stem':
    return _var(f'{root}/initial_conv_relu_max_pool/0/conv2d/kernel'), 'same'
  if head == 'stem_norm':
    return _norm(f'{root}/initial_conv_relu_max_pool/2/bn', path[1], _BN)
  if head != 'blocks':
    raise KeyError(head)
  index, module, rest = int(path[1]), path[2], path[3:]
  group = 0
  while index >= stage_sizes[group]:
    index -= stage_sizes[group]
    group += 1
  block = f'{root}/block_groups/{group}/layers/{index}'
  if module == 'shortcut':
    if rest[0] == 'conv':
      return _var(f'{block}/projection_layers/0/conv2d/kernel'), 'same'
    return _norm(f'{block}/projection_layers/1/bn', rest[1], _BN)
  position = _BOTTLENECK[module]
  if module.startswith('conv'):
    return _var(f'{block}/conv_relu_dropblock_layers/{position}/conv2d/kernel'), 'same'
  return _norm(f'{block}/conv_relu_dropblock_layers/{position}/bn', rest[0], _BN)


def official_name(path: Sequence, stage_sizes: Sequence[int] | None) -> tuple[str, str]:
  """Our array path (under params or batch_stats, e.g. ('encoder', 3, 'attn', 'query',
  'kernel')) -> (official checkpoint name, layout). `stage_sizes`: the ResNet's blocks
  per stage, None for a ViT. Raises KeyError for a path with no official counterpart."""
  head, rest = path[0], tuple(path[1:])
  if head == 'backbone':
    if stage_sizes is None:
      raise KeyError(path)
    return _resnet(rest, stage_sizes)
  if head == 'input_proj':
    if stage_sizes is None:
      name, _ = _dense('model/encoder/stem_conv', rest[0])
      return name, 'patches' if rest[0] == 'kernel' else 'same'
    return _dense('model/encoder/stem_projection', rest[0])
  if head == 'input_norm':
    return _norm('model/encoder/stem_ln', rest[0], _LN)
  if head == 'encoder':
    return _transformer_layer(f'model/encoder/transformer_encoder/enc_layers/{rest[0]}',
                              rest[1:])
  if head == 'encoder_norm':
    return _norm('model/encoder/output_ln', rest[0], _LN)
  if head == 'memory_proj':
    return _dense('model/proj', rest[0])
  if head == 'memory_norm':
    return _norm('model/proj_ln', rest[0], _LN)
  if head == 'memory_mlp_norm':
    return _norm('model/proj_mlp/layernorms/0', rest[0], _LN)
  if head == 'memory_mlp':
    return _mlp('model/proj_mlp', rest)
  if head == 'decoder':
    sub = rest[0]
    if sub == 'embed':
      return _var('model/decoder/ar_decoder.Stoken_embedding'), 'same'
    if sub == 'positions':
      return _var('model/decoder/ar_decoder.Sseq_pos_embedding'), 'same'
    if sub == 'output_bias':
      return _var('model/decoder/ar_decoder.Soutp_bias'), 'same'
    if sub == 'norm':
      return _norm('model/decoder/output_ln', rest[1], _LN)
    if sub == 'layers':
      return _transformer_layer(f'model/decoder/decoder/dec_layers/{rest[1]}', rest[2:])
  raise KeyError(path)


def to_ours(value, layout: str, shape: tuple[int, ...]):
  """The official array `value` in our layout and `shape`; ValueError when it cannot be."""
  expected = {
      'same': lambda s: s,
      'heads_in': lambda s: (s[0], s[1] * s[2]) if len(s) == 3 else (s[0] * s[1],),
      'heads_out': lambda s: (s[0] * s[1], s[2]) if len(s) == 3 else None,
      'patches': lambda s: (s[0] * s[1] * s[2], s[3]) if len(s) == 4 else None,
  }[layout](tuple(value.shape))
  if expected != tuple(shape):
    raise ValueError(f'official {list(value.shape)} ({layout}) vs ours {list(shape)}')
  return value.reshape(shape)
