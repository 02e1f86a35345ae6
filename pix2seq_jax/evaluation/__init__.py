"""Evaluation: COCO metrics of boxes, masks and keypoints with pycocotools
(`coco_metrics.py`, also a CLI), the teacher-forced validation loss (`val_loss.py`),
evaluating a train state on a val split with the tf.data pipeline (`evaluator.py` for
detection; `instance_evaluator.py` for segmentation and keypoints, decoded from the
ground-truth boxes), and a Predictor's results on any COCO-format split, an instance
task's from its ground-truth boxes (`predict_split.py`)."""
