"""Tasks: what the token sequences are made of and what they mean. `vocab.py` is the one
token vocabulary (the compact and official layouts), used by data/ to build sequences, by
models/ for the embedding size and by inference/ to read the tokens back; it imports no
TensorFlow and no JAX. `task.py` is the interface a task gives the decoding loop, and
`detection.py` object detection on it (JAX and numpy, no TensorFlow); `segmentation.py`
and `keypoints.py` are the instance tasks on it, with their host-side reading of
the tokens into masks and keypoints (numpy, pycocotools). This file imports
nothing, so that data/ reads the vocabulary without JAX."""
