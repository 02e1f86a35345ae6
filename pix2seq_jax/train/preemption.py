"""Stopping a run cleanly on SIGTERM/SIGINT: a checkpoint of the current step, then an exit.

The loop asks `StopOnSignal` after every step; on several hosts the processes agree on
the signal first (`agreed_signal`), so that all take the same branch of a collective save.
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
