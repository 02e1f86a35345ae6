"""Model sizes by variant name (`config.model.variant`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  backbone: str  # a key of resnet.BACKBONES
  encoder_layers: int
  encoder_dim: int
  encoder_mlp_dim: int
  encoder_heads: int
  decoder_layers: int
  decoder_dim: int
  decoder_mlp_dim: int
  decoder_heads: int


VARIANTS = {
    # Fast on two CPU cores: stride-16 ResNet of basic blocks, 2+2 layers of width 128.
    'tiny': ModelSpec('resnet_tiny', 2, 128, 512, 4, 2, 128, 512, 4),
    # The official `resnet` variant: R50 C5 features, 6x256 encoder, 6x256 decoder.
    'r50': ModelSpec('resnet50', 6, 256, 1024, 8, 6, 256, 1024, 8),
}


def get_spec(variant: str) -> ModelSpec:
  if variant not in VARIANTS:
    raise ValueError(f'config.model.variant={variant!r} is unknown; choose one of '
                     f'{sorted(VARIANTS)}.')
  return VARIANTS[variant]
