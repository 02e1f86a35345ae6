"""Bad decode settings are refused before any work, naming the field."""

import pytest

from pix2seq_jax import config_checks
from tests.conftest import tiny_config


@pytest.mark.parametrize('field, value', [
    ('max_objects', 9),  # tiny_config has data.max_instances = 8
    ('max_objects', -1),
    ('temperature', -0.5),
    ('top_k', -1),
    ('top_p', 1.5),
    ('score', 'class_times_area'),
    ('canvas_buckets', 0),
])
def test_bad_decode_settings_are_refused(shapes_dir, field, value):
  config = tiny_config(shapes_dir)
  config.decode[field] = value
  with pytest.raises(config_checks.ConfigError, match=f'config.decode.{field}='):
    config_checks.validate(config, mode='predict')


def test_default_decode_settings_pass(shapes_dir):
  config_checks.validate(tiny_config(shapes_dir), mode='predict')
