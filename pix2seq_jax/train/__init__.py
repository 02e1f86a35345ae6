"""Training: the train state, the jitted data-parallel step, AdamW, starting from another
workdir's parameters, preemption handling, metric logs, and the loop that ties them to the
data and evaluation.

The step, state and optimizer import no TensorFlow; the loop reads tf.data batches.
"""
