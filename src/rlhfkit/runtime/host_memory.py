"""The process's C allocator set to keep freed memory for reuse (glibc on Linux).

glibc's malloc serves every block above its mmap threshold (128 KiB at first; it rises to the
largest block freed so far) with fresh pages from the kernel, and gives them back on free; and it
returns the free top of its heap to the kernel once that exceeds its trim threshold. A tensor
allocated after such a free starts on untouched pages, and the kernel zeroes each 4 KiB page at
its first write. An RL step allocates and frees tensors of such sizes many times over: the
sampling loop's caches and logits, the training pass's activations. Here the mmap threshold is
set to glibc's largest (32 MiB on 64-bit; larger blocks still get their own pages) and the heap
is never trimmed, so freed blocks are reused as they are.

Measured on the benchmark's GRPO workload (an AMD EPYC, Zen 4, 2 threads, 2026-12-07): 3-7% less
time per step (four alternating pairs of runs: 0.732 -> 0.678 s, 0.797 -> 0.743, 0.684 -> 0.664,
0.718 -> 0.699), the same peak memory; SFT and DPO steps unchanged. The price: memory the
process freed stays counted in its resident size until it exits (its peak, not more). Nothing
computed changes.
"""

import ctypes
import functools
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and glibc's ceiling on the mmap threshold on 64-bit systems
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_NEVER = 2**31 - 1  # mallopt takes an int: about 2 GiB of free heap top before a trim


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (see the module's docstring), once per process;
    True where it took effect, False elsewhere (another C library, another system)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    done = libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER) == 1 and done
    if not done:
        log.debug("glibc's mallopt refused the allocator settings")
    return done
