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
