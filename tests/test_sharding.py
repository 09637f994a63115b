import importlib.util

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT
from jax.sharding import PartitionSpec as P

from gfm_jax import config as config_lib
from gfm_jax import sharding
from gfm_jax.errors import UserError
from gfm_jax.models import presets
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib


def test_conftest_gives_eight_devices():
    assert jax.device_count() == 8


def test_mesh_fills_the_minus_one():
    mesh = sharding.make_mesh((2, 1, 1, -1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1, "sequence": 4}
    assert dict(sharding.make_mesh((1, 1, 1), jax.devices()[:1]).shape) == {
        "data": 1,
        "fsdp": 1,
        "tensor": 1,
        "sequence": 1,
    }


@pytest.mark.parametrize(
    "shape", [(3, -1, 1), (2, 2, 1), (0, 1, 1), (-1, -1, 1), (8, 1), (1, 1, 1, 1, 8)]
)
def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(shape):
    with pytest.raises(UserError, match="mesh.shape"):
        sharding.make_mesh(shape)


def test_axes_that_do_not_divide_a_dimension_are_dropped():
    mesh = sharding.make_mesh((1, 4, 2))
    assert sharding._fit_spec(P("fsdp", "tensor"), (128, 12), mesh) == P("fsdp", "tensor")
    assert sharding._fit_spec(P("fsdp", "tensor"), (6, 3), mesh) == P(None, None)
    assert sharding._fit_spec(P(("data", "fsdp")), (8,), mesh) == P(("data", "fsdp"))


def load_golden_script():
    spec = importlib.util.spec_from_file_location(
        "update_golden_shardings", ROOT / "scripts" / "update_golden_shardings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_parameter_shardings_match_the_golden_files(name):
    golden = load_golden_script()
    expected = (golden.GOLDEN / f"{name}.txt").read_text()
    got = golden.preset_table(name)
    assert got == expected, (
        f"the layout of {name} changed; if intended, run scripts/update_golden_shardings.py "
        "and review the diff"
    )


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_fsdp_divides_parameter_and_optimizer_memory_by_the_devices():
    """nt_v2_50m's compiled train step: per-device argument bytes (parameters, Adam moments,
    batch) under FSDP over 8 devices are at most 1/8 of one device's plus 10%."""
    cfg = EncoderConfig.from_config(presets.get("nt_v2_50m"), 4107)
    rules = config_lib.DEFAULT_RULES

    def argument_bytes(mesh):
        model = MaskedLM(cfg, mesh, rules)
        tx = optim.make_optimizer(config_lib.optim_defaults(), 100)
        init = lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"]  # noqa: E731
        boxed = state_lib.abstract_state(init, tx, jax.random.key(0))
        shardings = sharding.tree_shardings(boxed, mesh, rules)
        batch_sharding = sharding.batch_sharding(mesh, rules)
        batch = {
            k: jax.ShapeDtypeStruct((8, 64), dtype, sharding=batch_sharding)
            for k, dtype in (
                ("inputs", jnp.int32),
                ("targets", jnp.int32),
                ("weights", jnp.float32),
            )
        }
        step = step_lib.compile_train_step(
            step_lib.make_train_step(step_lib.mlm_objective(model, 1), tx),
            shardings,
            batch_sharding,
        )
        compiled = step.lower(state_lib.abstract_arrays(boxed, shardings), batch).compile()
        return compiled.memory_analysis().argument_size_in_bytes

    one = argument_bytes(sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    fsdp = argument_bytes(sharding.make_mesh((1, 8, 1)))
    assert one > 600e6  # 55M parameters + two Adam moments in float32
    assert fsdp <= one / 8 * 1.1, f"FSDP keeps {fsdp / one:.3f} of the 1-device bytes per device"
