import platform
import subprocess
import sys

import pytest

from rlhfkit.runtime.host_memory import keep_freed_memory

on_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# In a fresh process: 20 MiB allocated, written, freed, then allocated and written again. Prints
# the page faults of the second write: glibc by default gives the first block back to the kernel
# (above its first mmap threshold) and serves the second from new pages, one fault per page.
SECOND_WRITE_FAULTS = """
import ctypes, resource, sys
from rlhfkit.runtime.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 20 * 1024 * 1024
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(ctypes.c_void_p(block))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 2, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_write_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SECOND_WRITE_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@on_glibc
def test_freed_blocks_are_reused_without_new_page_faults():
    pages = 20 * 1024 * 1024 // 4096
    assert _second_write_faults("default") > pages // 2  # new pages: one fault each
    assert _second_write_faults("keep") < pages // 20  # the freed block, its pages mapped


@on_glibc
def test_the_setting_is_made_once_per_process():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
