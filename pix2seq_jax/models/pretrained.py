"""ImageNet ResNet-50 weights from torchvision or timm files, into the model's backbone.

Accepted files (no torch needed): `.safetensors` (read with the safetensors package)
or `.npz` (`numpy.savez(path, **{k: v.numpy() for k, v in state_dict.items()})`),
holding a torchvision or timm ResNet-50 state dict. Both libraries name the weights
alike (`conv1.weight`, `bn1.running_mean`, `layer3.5.conv2.weight`,
`layer1.0.downsample.0.weight`, ...); a common prefix such as `module.` or DETR's
`backbone.0.body.` is recognised. Conv kernels [out, in, kh, kw] become [kh, kw, in,
out]; batch norm's weight/bias/running_mean/running_var become scale/bias/mean/var.

Every backbone tensor must be found with the right shape, and every tensor in the file
must be used, except the classifier (`fc.*`), `num_batches_tracked`, and stages the
backbone does not have (`layer4.*` for the C4 trunk); otherwise the load fails listing
the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from pix2seq_jax.models import tree_paths

_BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
_PREFIX_PROBE = 'layer1.0.conv1.weight'
_LIST_LIMIT = 12


class PretrainedWeightsError(ValueError):
  pass


def read_weights(path: str) -> dict[str, np.ndarray]:
  """{name: array} from a .safetensors or .npz file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.model.pretrained_backbone={path!r} does not exist.')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if path.endswith('.npz'):
    with np.load(path) as content:
      return {k: content[k] for k in content.files}
  raise PretrainedWeightsError(
      f'{path}: unsupported format; give a .safetensors or .npz file. From a PyTorch '
      'checkpoint: `safetensors.torch.save_file(model.state_dict(), "r50.safetensors")`.')


def _strip_prefix(weights: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  prefixes = [k[:-len(_PREFIX_PROBE)] for k in weights if k.endswith(_PREFIX_PROBE)]
  if not prefixes:
    raise PretrainedWeightsError(
        f'{path}: no ResNet weights found (no key ends with {_PREFIX_PROBE!r}); expected a '
        f'torchvision or timm ResNet-50 state dict. First keys: {sorted(weights)[:5]}.')
  prefix = min(prefixes, key=len)
  return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _torch_name(path: tuple, stage_sizes: tuple[int, ...]) -> str:
  """Our backbone path, e.g. ('blocks', 4, 'shortcut', 'conv', 'kernel') -> torch name."""
  *module, leaf = path
  if module[0] == 'blocks':
    index, first = module[1], 0
    for stage, size in enumerate(stage_sizes):  # noqa: B007 (stage is read after it)
      if index < first + size:
        break
      first += size
    prefix = f'layer{stage + 1}.{index - first}.'
    module = module[2:]
  else:
    prefix = ''
  name = {('stem',): 'conv1', ('stem_norm',): 'bn1', ('shortcut', 'conv'): 'downsample.0',
          ('shortcut', 'norm'): 'downsample.1'}.get(tuple(module))
  if name is None:
    match = re.fullmatch(r'(conv|norm)(\d)', '.'.join(map(str, module)))
    if match is None:
      raise PretrainedWeightsError(f'The backbone module {module} has no torchvision name.')
    name = ('conv' if match.group(1) == 'conv' else 'bn') + match.group(2)
  suffix = 'weight' if leaf == 'kernel' else _BN_NAMES[leaf]
  return prefix + name + '.' + suffix


def _listing(title: str, names: list[str]) -> str:
  return f'\n  {title} ({len(names)}): {tree_paths.first_of(names, _LIST_LIMIT)}'


def load_resnet(path: str, params: dict, batch_stats: dict, stage_sizes: tuple[int, ...],
                stem: str) -> tuple[dict, dict, list[str]]:
  """Fills the backbone's pure-dict `params` and `batch_stats` from `path`.

  Returns (params, batch_stats, ignored file keys); the inputs are not modified.
  """
  if stem != 'imagenet':
    raise PretrainedWeightsError(
        'config.model.pretrained_backbone needs a ResNet-50 variant (r50 or r50_c4); this '
        'backbone has no ImageNet counterpart.')
  weights = _strip_prefix(read_weights(path), path)
  flat = {'params': traverse_util.flatten_dict(params),
          'batch_stats': traverse_util.flatten_dict(batch_stats)}  # {path tuple: array}
  missing, misshaped, used = [], [], set()
  for arrays in flat.values():
    for module_path, current in arrays.items():
      name = _torch_name(module_path, stage_sizes)
      if name not in weights:
        missing.append(name)
        continue
      used.add(name)
      value = np.asarray(weights[name], np.float32)
      if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
      if value.shape != tuple(current.shape):
        misshaped.append(f'{name} {tuple(weights[name].shape)} (expected '
                         f'{tuple(current.shape)} after transposing)')
        continue
      arrays[module_path] = value
  stages = len(stage_sizes)
  ignored, unexpected = [], []
  for name in sorted(set(weights) - used):
    extra_stage = re.match(r'layer(\d+)\.', name)
    if (name.startswith('fc.') or name.endswith('num_batches_tracked')
        or (extra_stage and int(extra_stage.group(1)) > stages)):
      ignored.append(name)
    else:
      unexpected.append(name)
  if missing or misshaped or unexpected:
    raise PretrainedWeightsError(
        f'{path} does not fit the ResNet-50 backbone:'
        + (_listing('missing', missing) if missing else '')
        + (_listing('unexpected', unexpected) if unexpected else '')
        + (_listing('mis-shaped', misshaped) if misshaped else '')
        + '\nGive a torchvision or timm ResNet-50 state dict (.safetensors or .npz).')
  return (traverse_util.unflatten_dict(flat['params']),
          traverse_util.unflatten_dict(flat['batch_stats']), ignored)

