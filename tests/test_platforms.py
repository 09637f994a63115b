"""Entry points start no TPU backend where libtpu is installed but no TPU is attached."""

import importlib.metadata
import importlib.util
import os

from gfm_jax import platforms


def test_an_absent_tpu_is_skipped_and_other_choices_kept(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # libtpu "installed"
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])  # no GPU plugin
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # no /dev/accel0
    for key in ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY"):
        monkeypatch.delenv(key, raising=False)
    platforms.skip_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "cpu" and os.environ["TPU_SKIP_MDS_QUERY"] == "1"

    monkeypatch.setenv("JAX_PLATFORMS", "tpu")  # the user's choice
    platforms.skip_absent_tpu()
    assert os.environ["JAX_PLATFORMS"] == "tpu"

    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: ["xla_cuda13"])
    platforms.skip_absent_tpu()  # a GPU plugin: JAX picks among the backends that start
    assert "JAX_PLATFORMS" not in os.environ

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/dev/accel0")  # a TPU VM
    platforms.skip_absent_tpu()
    assert "JAX_PLATFORMS" not in os.environ
