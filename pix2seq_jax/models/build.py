"""A Pix2Seq model from a config: its modules, or just its structure (no parameters)."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from pix2seq_jax.config import default
from pix2seq_jax.models import counted_rngs, pix2seq, resnet, variants
from pix2seq_jax.runtime import jit_cache
from pix2seq_jax.tasks import vocab as vocab_lib


def build_model(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary,
                rngs: nnx.Rngs | counted_rngs.CountedRngs) -> pix2seq.Pix2Seq:
  """The model of `config.model` for `vocab`, with positions for the sequences of
  `config.task` (`default.sequence_length`: `data.max_instances` objects in detection);
  `rngs` gives the parameters' keys (CountedRngs when building inside a trace); its
  convolutions compute as `model.conv_impl` means on JAX's default backend."""
  model = config.model
  built = pix2seq.Pix2Seq(
      variants.get_spec(model.variant), vocab.size,
      model.max_seq_len or default.sequence_length(config),
      dropout=model.dropout, drop_path=model.drop_path,
      image_normalization=model.image_normalization,
      frozen_backbone_stages=model.frozen_backbone_stages,
      frozen_batch_norm=model.frozen_batch_norm, rngs=rngs)
  resnet.use_conv_impl(built.backbone, model.conv_impl, jax.default_backend())
  return built


def _key(config: ml_collections.ConfigDict, vocab: vocab_lib.Vocabulary) -> tuple:
  return tuple(sorted(config.model.items())), default.sequence_length(config), vocab


def abstract_model(config: ml_collections.ConfigDict,
                   vocab: vocab_lib.Vocabulary) -> pix2seq.Pix2Seq:
  """The model as shapes only (nnx.eval_shape): its structure, no parameters allocated.

  Made once per model config in a process (tracing a large model's initialisers takes
  seconds); read it, do not modify it.
  """
  return jit_cache.cached(('abstract_model', *_key(config, vocab)),
                          lambda: nnx.eval_shape(lambda: build_model(
                              config, vocab, counted_rngs.CountedRngs(0))))


def model_graphdef(config: ml_collections.ConfigDict,
                   vocab: vocab_lib.Vocabulary) -> nnx.GraphDef:
  """The static structure that `nnx.merge` joins with parameters and batch statistics."""
  return nnx.split(abstract_model(config, vocab), nnx.Param, nnx.BatchStat)[0]
