"""malloc_hugepages: when it restarts a process with glibc.malloc.hugetlb=1 (and freed
memory kept), and that the restarted process's large mallocs do land on transparent huge
pages."""

import os
import subprocess
import sys

import pytest

from pix2seq_jax.runtime import malloc_hugepages as mh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = (2, 36)


KEEP = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736'


def test_adds_the_tunables_to_whatever_glibc_tunables_holds():
  assert (mh.tunables_with_hugepages({}, NEW, 'madvise')[0] ==
          f'glibc.malloc.hugetlb=1:{KEEP}')
  other = {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}
  assert (mh.tunables_with_hugepages(other, NEW, 'always')[0] ==
          f'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:{KEEP}')
  mine = {'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=4'}  # the user's value is kept
  assert (mh.tunables_with_hugepages(mine, NEW, 'madvise')[0] ==
          'glibc.malloc.mmap_max=4:glibc.malloc.hugetlb=1:'
          'glibc.malloc.trim_threshold=68719476736')


@pytest.mark.parametrize('environ, glibc, thp, reason', [
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, NEW, 'madvise', 'already sets'),
    ({mh.OPT_OUT: '0'}, NEW, 'madvise', f'{mh.OPT_OUT}=0'),
    ({}, (2, 31), 'madvise', 'needs glibc 2.35+'),
    ({}, None, 'madvise', 'needs glibc 2.35+'),  # musl, macOS
    ({}, NEW, 'never', 'transparent huge pages are off'),
    ({}, NEW, None, 'transparent huge pages are off'),
])
def test_leaves_the_process_alone(environ, glibc, thp, reason):
  tunables, why = mh.tunables_with_hugepages(environ, glibc, thp)
  assert tunables is None and reason in why


def test_active_reads_the_tunable():
  assert mh.active({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'})
  assert mh.active({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=2'})  # hugetlbfs pages
  assert not mh.active({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})
  assert not mh.active({})


def test_reads_the_kernel_mode(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert mh.thp_mode(str(path)) == 'madvise'
  assert mh.thp_mode(str(tmp_path / 'missing')) is None


# Prints its pid, restarts itself through enable(), then mallocs and touches 64 MiB and
# prints how much more of the process sits on transparent huge pages (kB); then frees the
# block, mallocs and touches it again, and prints the page faults that took.
_CHILD = '''
import ctypes, os, sys
print('pid', os.getpid(), flush=True)
from pix2seq_jax.runtime import malloc_hugepages
print('reason', malloc_hugepages.enable(), flush=True)

def anon_huge_kb():
  with open('/proc/self/smaps_rollup') as f:
    return sum(int(line.split()[1]) for line in f if line.startswith('AnonHugePages:'))

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
before = anon_huge_kb()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
print('huge_kb', anon_huge_kb() - before, os.environ.get('GLIBC_TUNABLES', ''), flush=True)

import resource
libc.free(ctypes.c_void_p(block))  # as a step ends; the next step mallocs it again
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 2, size)
print('refaults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, flush=True)
'''


def _run_child(**env) -> list[list[str]]:
  environ = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', mh.OPT_OUT)}
  out = subprocess.run([sys.executable, '-c', _CHILD], cwd=ROOT, env={**environ, **env},
                       capture_output=True, text=True, check=True).stdout
  return [line.split(' ', 1) for line in out.splitlines()]


def test_restarts_once_and_mallocs_land_on_huge_pages_and_are_kept():
  glibc, thp = mh.glibc_version(), mh.thp_mode()
  if mh.tunables_with_hugepages({}, glibc, thp)[0] is None:
    pytest.skip(f'enable() does nothing here: glibc {glibc}, transparent huge pages {thp}')
  lines = _run_child()
  pids = [value for key, value in lines if key == 'pid']
  assert len(pids) == 2 and pids[0] == pids[1]  # one restart, the same process
  assert [value for key, value in lines if key == 'reason'] == [
      f'GLIBC_TUNABLES already sets glibc.malloc.hugetlb (glibc.malloc.hugetlb=1:{KEEP})']
  huge_kb, tunables = dict(lines)['huge_kb'].split(' ')
  assert tunables == f'glibc.malloc.hugetlb=1:{KEEP}'
  assert int(huge_kb) >= 32 << 10  # most of the 64 MiB block
  assert int(dict(lines)['refaults']) < 8  # the freed block was kept, and reused
  lines = _run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=1')  # huge pages, nothing kept
  assert int(dict(lines)['refaults']) >= 16  # unmapped on free, faulted in again
  if thp == 'madvise':  # without the tunable nothing asks for huge pages
    lines = _run_child(**{mh.OPT_OUT: '0'})
    assert len([key for key, _ in lines if key == 'pid']) == 1
    assert dict(lines)['reason'] == f'{mh.OPT_OUT}=0'
    assert int(dict(lines)['huge_kb'].split(' ')[0]) == 0
