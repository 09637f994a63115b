"""The device mesh, logical-axis rules, and the shardings of parameters, state and batches.

Mesh axes are ("data", "fsdp", "tensor", "sequence"); `sequence` shards the window's length
(context parallelism, ops/context_parallel.py). Parameters carry logical names (see gfm_jax/models);
`config.mesh.rules` maps each logical name to mesh axes. A mesh axis that does not divide a
dimension is dropped for that dimension (the dimension is replicated over it), so small models
run on any mesh; `describe` prints what each parameter really got.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gfm_jax.errors import UserError

AXES = ("data", "fsdp", "tensor", "sequence")
Rules = Sequence[tuple[str, Any]]


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor", "sequence") mesh; one -1 in `shape` takes the remaining
    devices. Three sizes leave `sequence` at 1 (configs written before it existed)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [int(s) for s in shape]
    given = tuple(shape)  # as the user wrote it, for the messages
    if len(shape) == len(AXES) - 1:
        shape.append(1)
    if len(shape) != len(AXES) or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise UserError(
            f"mesh.shape={given}: give 4 sizes for {AXES}, positive or one -1 "
            "(-1 takes the remaining devices)"
        )
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise UserError(
                f"mesh.shape={given} does not divide the {len(devices)} devices; "
                f"make the fixed sizes multiply to a divisor of {len(devices)}"
            )
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise UserError(
            f"mesh.shape={given} needs {math.prod(shape)} devices but {len(devices)} are "
            f"available; set --config.mesh.shape so the sizes multiply to {len(devices)}"
        )
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    try:
        return jax.make_mesh(tuple(shape), AXES, axis_types=auto, devices=devices)
    except NotImplementedError:
        # A TPU torus (4x8x8, say) takes only sizes that are products of its physical axes
        # unchanged; other divisors (16) split a physical axis between two mesh axes.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, AXES, axis_types=auto)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops, per dimension, the mesh axes that do not divide it."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axes in zip(shape, entries, strict=True):
        if axes is None:
            fitted.append(None)
            continue
        kept, size = [], 1
        for axis in (axes,) if isinstance(axes, str) else axes:
            if dim % (size * mesh.shape[axis]) == 0:
                kept.append(axis)
                size *= mesh.shape[axis]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def tree_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a (boxed, abstract) pytree; the result matches the unboxed tree.

    Leaves without logical names (step counters, optimizer counts) are replicated.
    """

    def one(x: Any) -> Any:
        if _is_boxed(x) and not hasattr(x.value, "shape"):
            return x.value  # optax's MaskedNode (a frozen or masked subtree): no array, no leaf
        if _is_boxed(x):
            spec, shape = nn.logical_to_mesh_axes(x.names, rules), x.value.shape
        else:
            spec, shape = PartitionSpec(), np.shape(x)
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh))

    return jax.tree.map(one, abstract_boxed, is_leaf=_is_boxed)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Batches are split along their leading axis over the mesh axes of logical `batch`."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def check_batch_divides(global_batch: int, micro_batches: int, sharding: NamedSharding) -> None:
    """Each micro-batch must split evenly over the mesh axes of the batch (else XLA refuses the
    step at compile time)."""
    axes = sharding.spec[0] if sharding.spec else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    shards = math.prod(sharding.mesh.shape[a] for a in axes)
    if global_batch % (micro_batches * shards):
        raise UserError(
            f"train.global_batch_size={global_batch} does not split into "
            f"train.micro_batches={micro_batches} x {shards} batch shards (mesh axes "
            f"{axes or '()'}); make it a multiple of {micro_batches * shards}"
        )


def describe(tree: Any, shardings: Any) -> str:
    """One line per array: path, shape, dtype and PartitionSpec."""
    lines, total = [], 0
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings), strict=True):
        total += int(np.prod(leaf.shape))
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        lines.append(f"  {name:60s} {str(tuple(leaf.shape)):18s} {leaf.dtype!s:9s} {sharding.spec}")
    lines.append(f"  total: {total:,} values")
    return "\n".join(lines)


def spec_table(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> str:
    """One line per parameter, "path shape PartitionSpec", for golden-file comparison."""
    shardings = tree_shardings(abstract_boxed, mesh, rules)
    unboxed = nn.meta.unbox(abstract_boxed)
    flat = jax.tree_util.tree_flatten_with_path(unboxed)[0]
    lines = []
    for (path, leaf), sh in zip(flat, jax.tree.leaves(shardings), strict=True):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        lines.append(f"{name} {tuple(leaf.shape)} {sh.spec}")
    return "\n".join(lines) + "\n"
