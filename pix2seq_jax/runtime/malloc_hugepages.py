"""Transparent huge pages behind glibc's malloc, which XLA:CPU allocates its buffers with,
and freed memory kept for the next step.

XLA:CPU allocates the temporary buffers of a program with malloc each time it runs it.
glibc serves an allocation above its mmap threshold (32 MiB at most) with a fresh mmap
that it unmaps on free, so every train step faults its working memory back in, one 4 KiB
page at a time, and the kernel's time in those faults is a large share of a CPU step
(BENCHMARKS.md, "Huge pages behind malloc": the train step measured both ways). Three
glibc tunables (from glibc 2.35) change that:
  glibc.malloc.hugetlb=1          malloc asks for transparent huge pages (madvise) on the
                                  memory it maps, which then faults in 2 MiB at a time;
  glibc.malloc.mmap_max=0         no allocation gets a mapping of its own: large blocks
  glibc.malloc.trim_threshold=2^36  come from the heap, and freed memory stays there for
                                  the next step instead of being unmapped and faulted in
                                  again (BENCHMARKS.md, "Freed memory kept").

glibc reads GLIBC_TUNABLES once, when the process starts, so `enable()` re-executes the
running command (same interpreter, same arguments, same process id) with the tunables
added; main.py and the benchmarks call it first thing, through `cpu_runtime.configure`
(only where the backend will be the CPU). It does nothing, and says why,
where it cannot help: not Linux with glibc 2.35+, transparent huge pages set to `never`,
GLIBC_TUNABLES already naming `glibc.malloc.hugetlb` (the user's settings are kept), or
PIX2SEQ_HUGEPAGE_MALLOC=0 (the opt-out). A tunable the user set is never replaced. A
library user (a notebook) sets them before Python starts (one line):
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:`
`glibc.malloc.trim_threshold=68719476736 jupyter lab`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
KEEP_FREED = {'glibc.malloc.mmap_max': '0', 'glibc.malloc.trim_threshold': str(1 << 36)}
OPT_OUT = 'PIX2SEQ_HUGEPAGE_MALLOC'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
MIN_GLIBC = (2, 35)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None where the C library is not glibc."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  major, minor = version.split('.')[:2]
  return int(major), int(minor)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode (`always`, `madvise`, `never`), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def tunables_with_hugepages(environ: Mapping[str, str], glibc: tuple[int, int] | None,
                            thp: str | None) -> tuple[str | None, str]:
  """(the GLIBC_TUNABLES value to restart with, or None to leave the process as it is;
  the reason, for the log)."""
  current = environ.get('GLIBC_TUNABLES', '')
  if environ.get(OPT_OUT, '1') == '0':
    return None, f'{OPT_OUT}=0'
  if TUNABLE in current:
    return None, f'GLIBC_TUNABLES already sets {TUNABLE} ({current})'
  if glibc is None or glibc < MIN_GLIBC:
    return None, f'needs glibc {MIN_GLIBC[0]}.{MIN_GLIBC[1]}+ (this C library: {glibc})'
  if thp in (None, 'never'):
    return None, f'transparent huge pages are off ({THP_MODE_FILE}: {thp})'
  named = {item.partition('=')[0] for item in current.split(':') if item}
  added = [f'{TUNABLE}=1'] + [f'{name}={value}' for name, value in KEEP_FREED.items()
                              if name not in named]
  return ':'.join(filter(None, [current, *added])), f"{', '.join(added)} added"


def active(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether this process's malloc was started with huge pages (for benchmark records)."""
  settings = dict(item.partition('=')[::2]
                  for item in environ.get('GLIBC_TUNABLES', '').split(':') if item)
  return settings.get(TUNABLE, '0') not in ('', '0')


def enable() -> str:
  """Re-executes this process with the tunables where they help (module docstring);
  otherwise returns the reason it did not. Call it before starting work:
  nothing that ran before it survives the restart."""
  tunables, reason = tunables_with_hugepages(os.environ, glibc_version(), thp_mode())
  if tunables is None:
    return reason
  os.environ['GLIBC_TUNABLES'] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # does not return
