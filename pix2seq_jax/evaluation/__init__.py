"""Evaluation: COCO box metrics with pycocotools (`coco_metrics.py`, also a CLI), the
teacher-forced validation loss (`val_loss.py`), evaluating a train state on a val
split (`evaluator.py`, which reads the split with the tf.data pipeline; for an instance
task the validation loss only, `instance_evaluator.py`), and a
Predictor's results on any COCO-format split (`predict_split.py`)."""
