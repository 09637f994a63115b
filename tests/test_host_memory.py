"""The glibc settings that keep freed host memory in the process (gfm_jax/host_memory.py)."""

import subprocess
import sys

CHECK = "from gfm_jax import host_memory; print(host_memory.retain_freed_memory())"


def run(env_value):
    env = {"PATH": "/usr/bin:/bin"}
    if env_value is not None:
        env["GFM_JAX_MALLOC_DEFAULTS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_applied_on_glibc_and_skipped_when_asked():
    assert run(None) == "True"  # this test machine is Linux with glibc
    assert run("1") == "False"


REUSE = """
import ctypes, resource, sys, threading
from gfm_jax import host_memory
host_memory.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 2**20  # beyond a thread arena's 64 MB heaps, like XLA's step temporaries
faults = []

def step():  # what an XLA worker thread does each step: allocate, write, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

for _ in range(3):
    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
print(faults[-1])
"""


def test_a_worker_threads_large_block_is_reused_without_page_faults():
    """The second and later steps write into memory the process already holds; with glibc's
    defaults each one maps 256 MB afresh: about 65,000 page faults."""
    out = subprocess.run(
        [sys.executable, "-c", REUSE], capture_output=True, text=True, check=True
    ).stdout
    assert int(out) < 1000, out
    defaults = subprocess.run(
        [sys.executable, "-c", REUSE],
        env={"PATH": "/usr/bin:/bin", "GFM_JAX_MALLOC_DEFAULTS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(defaults) > 30_000, defaults  # the check above can fail: defaults do fault
