"""Configs: every field with its default (`default.py`), the checks that refuse a bad or
self-contradicting config before any work (`checks.py`), and the frozen config a run
reads once its training length is known (`resolve.py`); `workdir_config.py` reads the
config a workdir was trained with, `config_file.py` a config file given on the command
line."""
