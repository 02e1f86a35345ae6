"""Tasks: what the token sequences are made of. `vocab.py` is the one token vocabulary
(the compact and official layouts), used by data/ to build sequences, by models/ for the
embedding size and by inference/ to read the tokens back; it imports no TensorFlow and
no JAX."""
