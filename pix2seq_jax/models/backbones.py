"""Backbones by name (`ModelSpec.backbone`) and their output strides."""

from __future__ import annotations

from flax import nnx

from pix2seq_jax.models import counted_rngs, resnet, vit

BACKBONES = {
    'resnet50': resnet.resnet50,
    'resnet50_c4': resnet.resnet50_c4,
    'resnet50_nano': resnet.resnet50_nano,  # the official-parity fixtures' ResNets
    'resnet50_c4_nano': resnet.resnet50_c4_nano,
    'resnet_tiny': resnet.resnet_tiny,
    'vit_patch16': lambda *, rngs: vit.Patchify(16),
    'vit_patch8': lambda *, rngs: vit.Patchify(8),
}
# Output stride of each backbone (checked against the modules in the tests), so configs
# can be validated without building a model.
STRIDES = {'resnet50': 32, 'resnet50_c4': 16, 'resnet50_nano': 32, 'resnet50_c4_nano': 16,
           'resnet_tiny': 16, 'vit_patch16': 16, 'vit_patch8': 8}


def abstract_backbone(name: str) -> nnx.Module:
  """The backbone `name` as shapes only (nnx.eval_shape): its structure, no parameters."""
  return nnx.eval_shape(lambda: BACKBONES[name](rngs=counted_rngs.CountedRngs(0)))


def freeze(backbone, stages: int, batch_norm: bool) -> None:
  """Freezes a ResNet's stem and first `stages - 1` stages, and/or its batch norms."""
  if not isinstance(backbone, resnet.ResNet):
    raise ValueError(f'Only ResNet backbones can be frozen, not {type(backbone).__name__}.')
  if not 0 <= stages <= len(backbone.stage_sizes) + 1:
    raise ValueError(f'frozen stages {stages} must be in [0, {len(backbone.stage_sizes) + 1}].')
  backbone.frozen_stages, backbone.frozen_norm = stages, batch_norm
