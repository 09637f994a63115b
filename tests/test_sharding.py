import jax
import pytest
from jax.sharding import PartitionSpec as P

from gfm_jax import sharding
from gfm_jax.errors import UserError


def test_conftest_gives_eight_devices():
    assert jax.device_count() == 8


def test_mesh_fills_the_minus_one():
    mesh = sharding.make_mesh((2, -1, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert dict(sharding.make_mesh((1, 1, 1), jax.devices()[:1]).shape) == {
        "data": 1,
        "fsdp": 1,
        "tensor": 1,
    }


@pytest.mark.parametrize("shape", [(3, -1, 1), (2, 2, 1), (0, 1, 1), (-1, -1, 1), (8, 1)])
def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(shape):
    with pytest.raises(UserError, match="mesh.shape"):
        sharding.make_mesh(shape)


def test_axes_that_do_not_divide_a_dimension_are_dropped():
    mesh = sharding.make_mesh((1, 4, 2))
    assert sharding._fit_spec(P("fsdp", "tensor"), (128, 12), mesh) == P("fsdp", "tensor")
    assert sharding._fit_spec(P("fsdp", "tensor"), (6, 3), mesh) == P(None, None)
    assert sharding._fit_spec(P(("data", "fsdp")), (8,), mesh) == P(("data", "fsdp"))
