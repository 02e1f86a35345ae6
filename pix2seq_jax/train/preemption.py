"""Stopping a run cleanly on SIGTERM/SIGINT: a checkpoint of the current step, then an exit.

The loop asks `StopOnSignal` after every step. One process stops at the step it sees the
signal. Several processes must take the same branch of a collective save, so they agree
on the signal first (`agreed_signal`, a collective that waits for the device), not at
every step but every `train.preemption_check_every` steps and at the steps that save
anyway (`SignalAgreement`): a signal stops all of them at the next such step.

JAX's own `multihost_utils.reached_preemption_sync_point` agrees without a collective,
but it hears SIGTERM through a C++ handler that `StopOnSignal`'s Python handler replaces
(the sync point then never comes), and it knows nothing of SIGINT.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint; `exit_code` 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopOnSignal:
  """Turns SIGTERM and SIGINT into a request (`signum`) the loop honours between steps.

  A second SIGINT interrupts at once (KeyboardInterrupt). Handlers are installed only in
  the main thread and restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum, self._previous = None, {}

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> 'StopOnSignal':
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def agreed_signal(signum: int | None) -> int | None:
  """The signal any process received, so that all save and stop at the same step.

  A scheduler's SIGTERM reaches hosts at slightly different times; a collective
  checkpoint needs every process to take the same branch.
  """
  if jax.process_count() == 1:
    return signum
  received = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(received.max()) or None


class SignalAgreement:
  """Decides, after each step, whether the run stops on a signal, and counts the
  collectives it spends on that (`collectives`).

  `every`: on several processes, agree every this many steps; steps that save anyway
  (`saving`: checkpoint steps, the last) always agree, so a signal there stops the run
  without a second save. One process decides alone, at every step, with no collective.
  """

  def __init__(self, every: int, process_count: int):
    self.every, self.process_count, self.collectives = every, process_count, 0

  def due(self, step: int, saving: bool) -> bool:
    """Whether the processes agree after `step` (1-based)."""
    return self.process_count > 1 and (saving or step % self.every == 0)

  def __call__(self, signum: int | None, step: int, saving: bool) -> int | None:
    """The signal the run stops on after `step`, the same on every process; None: go on."""
    if self.process_count == 1:
      return signum
    if not self.due(step, saving):
      return None
    self.collectives += 1
    return agreed_signal(signum)
