"""Model sizes by variant name (`config.model.variant`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  backbone: str  # a key of backbones.BACKBONES
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
    # A tiny ViT (8 px patches, 2+2 layers of width 128): a backbone without batch norm,
    # for tests whose exact equalities batch statistics would break.
    'vit_tiny': ModelSpec('vit_patch8', 2, 128, 512, 4, 2, 128, 512, 4),
    # The sizes of the official-parity test fixture (tests/fixtures/official_vit_nano):
    # 8 px patches, one encoder and one decoder layer of width 32.
    'vit_nano': ModelSpec('vit_patch8', 1, 32, 64, 2, 1, 32, 64, 2),
    # The sizes of the multi-task official-parity fixture (tests/fixtures/official_multitask):
    # 8 px patches, one encoder layer of width 16, one decoder layer of width 4 (its
    # 35000-token embedding is most of the checkpoint).
    'vit_multitask_nano': ModelSpec('vit_patch8', 1, 16, 32, 2, 1, 4, 8, 2),
    # The sizes of the ResNet official-parity fixtures (tests/fixtures/official_resnet_nano,
    # official_resnet_c_nano): ResNet-50 at 1/32 width (C5 / C4 features), one encoder
    # layer of width 16, one decoder layer of width 8.
    'r50_nano': ModelSpec('resnet50_nano', 1, 16, 32, 2, 1, 8, 16, 2),
    'r50_c4_nano': ModelSpec('resnet50_c4_nano', 1, 16, 32, 2, 1, 8, 16, 2),
    # The official `resnet` variant: R50 C5 features, 6x256 encoder, 6x256 decoder (36.6M).
    'r50': ModelSpec('resnet50', 6, 256, 1024, 8, 6, 256, 1024, 8),
    # The official `resnet-c` variant: R50 C4 features (stride 16), 12x512 encoder,
    # 8x512 decoder (84.7M).
    'r50_c4': ModelSpec('resnet50_c4', 12, 512, 2048, 16, 8, 512, 2048, 16),
    # The official `vit-b` variant: ViT-B/16 encoder (12x768), 6x512 decoder (115.2M).
    'vit_b': ModelSpec('vit_patch16', 12, 768, 3072, 12, 6, 512, 2048, 16),
    # The official `vit-l` variant: ViT-L/16 encoder (24x1024), 8x512 decoder.
    'vit_l': ModelSpec('vit_patch16', 24, 1024, 4096, 16, 8, 512, 2048, 16),
}


def get_spec(variant: str) -> ModelSpec:
  if variant not in VARIANTS:
    raise ValueError(f'config.model.variant={variant!r} is unknown; choose one of '
                     f'{sorted(VARIANTS)}.')
  return VARIANTS[variant]
