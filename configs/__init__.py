"""Run configs: each `get_config()` starts from pix2seq_jax/config/default.py and overrides it.

Pass one to main.py as `--config=configs/NAME.py`; a config may build on a sibling
(`from configs import coco`), which main.py's folder on sys.path makes importable.
"""
