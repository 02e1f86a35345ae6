"""Each task's evaluator, and `--mode=eval`: a checkpoint evaluated on every task it was
trained for.

  object_detection        evaluator.Evaluator: COCO bbox metrics of decoded boxes
  instance_segmentation,  instance_evaluator.InstanceEvaluator: every val object decoded
  keypoint_detection      from its ground-truth box, segm / keypoint metrics
  captioning              caption_evaluator.CaptionEvaluator: BLEU, METEOR, ROUGE-L, CIDEr
each beside the teacher-forced validation loss. A multi-task run's tasks are evaluated one
after the other, each on its own config (`config/multitask.task_config`), their files
under `<workdir>/<task>/eval/step_<N>/` and their metrics named `<task>/<metric>`.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from pix2seq_jax.config import checks, multitask, resolve
from pix2seq_jax.data import pipeline, report, sources
from pix2seq_jax.evaluation import caption_evaluator, evaluator, instance_evaluator
from pix2seq_jax.models import build
from pix2seq_jax.parallel import mesh as mesh_lib
from pix2seq_jax.tasks import vocab as vocab_lib
from pix2seq_jax.workdir import checkpoints, tokenizer_file


def evaluator_for(config: ml_collections.FrozenConfigDict, splits: sources.Splits,
                  vocab: vocab_lib.Vocabulary, graphdef: nnx.GraphDef, mesh: Mesh) -> Any:
  """The evaluator of a single-task config's `config.task` on `splits.val`."""
  if config.task == 'object_detection':
    return evaluator.Evaluator(config, splits.val, vocab, graphdef, mesh)
  if config.task == 'captioning':
    return caption_evaluator.CaptionEvaluator(config, splits.val, splits.captions['val'],
                                              vocab, graphdef, mesh)
  return instance_evaluator.InstanceEvaluator(config, splits.val, splits.instances['val'],
                                              vocab, graphdef, mesh)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        step: int | None = None, overrides: Iterable[str] = (),
                        mesh: Mesh | None = None) -> dict[str, float]:
  """Evaluates the checkpoint of `step` (default: the latest) in `workdir` on the val split
  of every task of `config` (a multi-task config's metrics as <task>/<metric>).

  Reads only the parameters and batch statistics; `config` must describe the same model
  (a mismatch raises checkpoints.CheckpointMismatchError naming the arrays).
  """
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  checks.validate(config, mode='eval', overrides=overrides, devices=mesh.size)
  views = multitask.task_configs(config)
  if 'captioning' in views:  # the tokenizer the checkpoint was trained with, or a refusal
    tokenizer_file.check_same(workdir, views['captioning'].data.tokenizer)
  splits = {}
  for name, view in views.items():
    splits[name] = sources.load_splits(view.data, name)
    report.log_data_report(splits[name])
  config = resolve.resolve(config, pipeline.num_train_examples(splits[config.task].train,
                                                               config.task))
  categories = sources.model_categories(splits)
  vocab = vocab_lib.for_categories(config.model.vocabulary, categories.category_ids,
                                   config.data.num_bins)
  manager = checkpoints.make_manager(workdir)
  restored = checkpoints.restore_model(manager, checkpoints.model_template(config, vocab, mesh),
                                       step)
  manager.close()
  if restored is None:
    raise FileNotFoundError(f'No checkpoint under {checkpoints.checkpoint_dir(workdir)}; '
                            'train first (--mode=train) or point --workdir at a trained run.')
  graphdef = build.model_graphdef(config, vocab)
  params, batch_stats, at = restored['params'], restored['batch_stats'], int(restored['step'])
  if not multitask.is_multitask(config):
    return evaluator_for(config, splits[config.task], vocab, graphdef, mesh)(
        params, batch_stats, at, workdir)
  metrics = {}
  for name in views:
    view = multitask.task_config(config, name)
    task_vocab = vocab_lib.for_categories(config.model.vocabulary,
                                          splits[name].categories.category_ids,
                                          config.data.num_bins)
    result = evaluator_for(view, splits[name], task_vocab, graphdef, mesh)(
        params, batch_stats, at, os.path.join(workdir, name))
    metrics.update({f'{name}/{k}': v for k, v in result.items()})
  return metrics
