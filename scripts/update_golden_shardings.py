"""Rewrites tests/golden/shardings/<preset>.txt: every parameter's PartitionSpec per preset.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/update_golden_shardings.py

Run it after a deliberate change to parameter names, shapes or the default logical rules, and
review the diff: `tests/test_sharding.py` fails whenever the layout differs from these files.
The layout is taken on a (2, 2, 2) mesh of 8 devices with `config.DEFAULT_RULES`.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax import sharding  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.models.heads import MaskedLM  # noqa: E402

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "tests" / "golden" / "shardings"
MESH_SHAPE = (2, 2, 2)


def preset_table(name: str) -> str:
    """The spec table of preset `name` with its published vocabulary (12 for tiny)."""
    vocab = presets.PUBLISHED.get(name, {}).get("vocab", 12)
    cfg = EncoderConfig.from_config(presets.get(name), vocab, mask_id=0)  # shapes only
    boxed = jax.eval_shape(
        lambda r: MaskedLM(cfg).init(r, jnp.zeros((1, 8), jnp.int32))["params"],
        jax.random.key(0),
    )
    mesh = sharding.make_mesh(MESH_SHAPE)
    return sharding.spec_table(boxed, mesh, config_lib.DEFAULT_RULES)


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in sorted(presets.PRESETS):
        (GOLDEN / f"{name}.txt").write_text(preset_table(name))
        print(f"wrote {GOLDEN.name}/{name}.txt")


if __name__ == "__main__":
    main()
