"""scripts/plan_scale.py: the training loop's train step compiled for TPU chips that are not
here (compile-only devices from libtpu), its memory read back, and a program too large for the
device reported with its bytes instead of crashing."""

import importlib
import importlib.util

import pytest
from conftest import ROOT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu for compile-only TPU devices (pip install -e '.[tpu]')",
)


@pytest.fixture
def plan_scale(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("plan_scale")


def small_slice(plan_scale):
    """A 2x2 TPU v5e slice: four compile-only chips of 16 GiB."""
    return plan_scale.Target("tpu", "v5e:2x2", 16 * plan_scale.GIB, 197.0, "TPU v5e, 4 chips", 4)


def test_the_tiny_train_step_compiles_for_a_tpu_slice_and_reports_its_memory(
    plan_scale, monkeypatch
):
    target = small_slice(plan_scale)
    config = plan_scale.base_config("tiny", tokens=128, batch=8, scan=True)
    config.mesh.shape = (1, -1, 1, 1)
    plan = plan_scale.compile_plan(config, target, plan_scale.devices_of(target), 128)
    assert plan.mesh == (1, 4, 1, 1)
    assert plan.fits
    assert all(plan.bytes[k] > 0 for k in ("args", "temp", "total"))
    assert plan.bytes["total"] < target.memory
    # FSDP over 4 chips: the gradients are reduced across them every step.
    assert plan.collectives and all(v > 0 for v in plan.collectives.values())
    line = plan_scale.row(plan, target, config, 128)
    assert line.startswith("| (1, 4, 1, 1) | none | 1 |") and "| yes |" in line
    # The plan row: one host of 4 chips, a positive projected step and token rate.
    monkeypatch.setitem(plan_scale.TARGETS, "small", target)
    summary = plan_scale.summary(config, ["small"], [plan], 128, 300e9)
    cells = [c.strip() for c in summary[2].split("|")[1:-1]]
    assert cells[:3] == ["small", "1", "(1, 4, 1, 1), none, 1"]
    assert float(cells[4]) >= 0 and float(cells[5].removesuffix("M")) > 0


def test_a_program_larger_than_the_chip_is_a_row_with_its_bytes(plan_scale):
    target = small_slice(plan_scale)
    config = plan_scale.base_config("tiny", tokens=2048, batch=4096, scan=True)
    config.mesh.shape = (1, -1, 1, 1)
    plan = plan_scale.compile_plan(config, target, plan_scale.devices_of(target), 2048)
    assert not plan.fits
    assert plan.bytes["total"] > target.memory  # what XLA said it needs
    assert "| **no** |" in plan_scale.row(plan, target, config, 2048)


def test_a_mesh_the_slice_cannot_take_is_skipped_by_name(plan_scale, capsys):
    target = small_slice(plan_scale)
    config = plan_scale.base_config("tiny", tokens=128, batch=6, scan=True)
    plans = plan_scale.search(config, target, [(3, -1, 1, 1), (1, -1, 1, 1)], ["none"], [1], 128)
    assert plans == []
    out = capsys.readouterr().out
    assert "mesh.shape=(3, -1, 1, 1) does not divide the 4 devices" in out
    assert "train.global_batch_size=6 does not split" in out


def test_a_mesh_size_no_product_of_torus_axes_splits_one(plan_scale):
    """On a 4x4x4 torus 8 is no product of physical axis sizes: the mesh splits an axis."""
    from gfm_jax import sharding

    chips = plan_scale.devices_of(plan_scale.TARGETS["v5p-64"])
    mesh = sharding.make_mesh((8, 8, 1, 1), chips)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 8, "tensor": 1, "sequence": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in chips)
