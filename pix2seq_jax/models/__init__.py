"""Flax NNX modules: ResNet and ViT-patch backbones, the transformer encoder/decoder and
the Pix2Seq model (`pix2seq.py`); sizes by variant (`variants.py`); building a model from
a config (`build.py`); ImageNet ResNet-50 weights (`pretrained.py`); the parameter
table of `--mode=summary` (`summary.py`); names of parameter paths (`tree_paths.py`).

Nothing here imports TensorFlow.
"""
