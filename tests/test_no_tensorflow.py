"""The model, train step, decoding, evaluation scorer and Predictor import without TensorFlow."""

import subprocess
import sys

from tests.tiny import ROOT

_SCRIPT = '''
import sys
class BlockTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ImportError('TensorFlow is blocked in this test: ' + name)
sys.meta_path.insert(0, BlockTensorFlow())
import pix2seq_jax.inference.decoding, pix2seq_jax.inference.predictor, pix2seq_jax.serving
import pix2seq_jax.deploy.export, pix2seq_jax.deploy.detector
import pix2seq_jax.evaluation.coco_metrics, pix2seq_jax.evaluation.val_loss
import pix2seq_jax.train.step, pix2seq_jax.train.state, pix2seq_jax.train.checkpoints
import pix2seq_jax.models.summary, pix2seq_jax.config.checks
assert 'tensorflow' not in sys.modules
'''


def test_runtime_modules_do_not_import_tensorflow():
  run = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
