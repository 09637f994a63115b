"""Memory traffic of a compiled XLA program, kernel by kernel, from its optimized HLO text.

Each instruction of the entry computation is one kernel launch (a fusion, a library call, a
copy), and each of a while loop's body (a scan over layers) one per trip. A kernel's bytes are
the operands it reads and the results it writes; a fused kernel that only slices an operand
reads just the slices, and one that updates a slice of a buffer in place (a scan stacking its
per-layer values) writes just the update. Used by `scripts/step_traffic.py` (bytes of the
train step, also for a GPU target without a GPU) and `scripts/bench_mfu.py --profile` (the
achieved bandwidth of the kernels that are neither matmuls nor attention).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

BYTES_PER_ELEMENT = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
SHAPE = re.compile(r"\b(pred|[su](?:8|16|32|64)|bf16|f(?:16|32|64))\[([\d,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
# Instructions that move no data of their own.
FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all"}
SLICES = {"slice", "dynamic-slice"}
UPDATE_SLICE = "dynamic-update-slice"
# Collectives are their own kind (bytes = what they produce); async ones count at "-start".
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def shape_bytes(text: str) -> int:
    """Bytes of every array shape in `text` (a tuple's elements summed)."""
    return sum(
        BYTES_PER_ELEMENT[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in SHAPE.findall(text)
    )


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel of the program (an instruction of the entry computation or of a loop body)
    and the bytes it moves over all its launches."""

    name: str
    kind: str  # matmul | attention | copy | other
    bytes_read: int
    bytes_written: int
    op_name: str  # the jax operation it comes from (metadata), "" when the program has none
    launches: int = 1  # a kernel inside a while loop runs once per trip; bytes count them all


def _operands(rest: str) -> list[str]:
    """Operand names of an instruction: the %names inside its top-level parentheses."""
    depth = 1
    for end, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[:end])
    return re.findall(r"%([\w.\-]+)", rest)


def _computations(hlo: str) -> dict[str, list[re.Match]]:
    blocks, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            current = blocks.setdefault(header.group(1) + ("#entry" * line.startswith("ENTRY")), [])
        elif current is not None and (m := INSTRUCTION.match(line)):
            current.append(m)
    return blocks


def _root(body: list[re.Match]) -> re.Match:
    """The instruction marked ROOT (XLA prints it last, but nothing promises that)."""
    return next((m for m in body if m.group(0).lstrip().startswith("ROOT ")), body[-1])


def _trips(blocks: dict, rest: str) -> int:
    """A while loop's trip count: XLA:GPU's `known_trip_count`, else the bound of a condition
    `counter < constant` (a scan or fori loop counting from 0, as XLA:TPU prints it), else 1."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
    if known:
        return int(known.group(1))
    condition = re.search(r"condition=%([\w.\-]+)", rest)
    body = blocks.get(condition.group(1), []) if condition else []
    if not body or "direction=LT" not in _root(body).group(4):
        return 1
    constants = {m.group(1): m.group(4) for m in body if m.group(3) == "constant"}
    bound = [constants[o] for o in _operands(_root(body).group(4)) if o in constants]
    found = re.match(r"(\d+)\)", bound[0]) if bound else None
    return int(found.group(1)) if found else 1


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims in SHAPE.findall(shape))


def _param_reads(body: list[re.Match]) -> dict[int, float]:
    """The share of each parameter of a fused computation that the kernel reads: a kernel that
    slices its result, or an operand, computes and reads only what the slice keeps.

    Walks from the outputs to the parameters (HLO lists operands before their users): an
    instruction as large as its operand (elementwise, convert, transpose, bitcast) needs the
    same share of it, a slice its share times the slice's size; anything else (reductions,
    broadcasts, concatenations) all of it."""
    whole: dict[str, float] = {_root(body).group(1): 1.0} if body else {}
    sliced: dict[str, float] = collections.defaultdict(float)  # different slices add up

    def need(name: str) -> float:
        return min(1.0, max(whole.get(name, 0.0), sliced[name]))

    by_name = {m.group(1): m for m in body}
    for m in reversed(body):
        name, shape, op, rest = m.groups()
        share = need(name)
        for operand in _operands(rest):
            source = by_name.get(operand)
            if source is None:
                continue
            ratio = _elements(shape) / max(_elements(source.group(2)), 1)
            if op in SLICES:
                sliced[operand] += share * ratio
            elif op == UPDATE_SLICE and operand == _operands(rest)[0]:
                continue  # the buffer is updated in place: only the update is read
            else:
                wanted = share if ratio == 1.0 and op != "tuple" else float(share > 0)
                whole[operand] = max(whole.get(operand, 0.0), wanted)
    return {
        int(re.match(r"(\d+)", m.group(4)).group(1)): need(m.group(1))
        for m in body
        if m.group(3) == "parameter"
    }


def _kind(name: str, op: str, rest: str, body: list[re.Match]) -> str:
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = target.group(1).lower() if target else ""
    backend = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', rest)
    if "fmha" in target or "attention" in target:
        return "attention"
    if (
        op in ("dot", "convolution")
        or any(m.group(3) in ("dot", "convolution") for m in body)  # a fused matmul
        or name.startswith(("gemm_fusion", "cublas"))
        or "gemm" in target
        or "matmul" in target
        or (backend and "gemm" in backend.group(1))
    ):
        return "matmul"
    if op in ("copy", "copy-start", "copy-done"):
        return "copy"
    collective = op.removesuffix("-start")
    if collective in COLLECTIVES:
        return collective
    return "other"


def _written(body: list[re.Match], result_bytes: int) -> int:
    """Bytes a fused kernel writes: an output made by a dynamic-update-slice (a scan stacking
    its per-layer values) writes only its update, in place."""
    if not body:
        return result_bytes
    by_name = {m.group(1): m for m in body}
    root = _root(body)
    outputs = [by_name[o] for o in _operands(root.group(4))] if root.group(3) == "tuple" else [root]
    total = 0
    for out in outputs:
        if out.group(3) == UPDATE_SLICE:
            update = by_name.get(_operands(out.group(4))[1])
            total += shape_bytes(update.group(2)) if update else 0
        else:
            total += shape_bytes(out.group(2))
    return total


def _walk(blocks: dict, computation: str, launches: int, found: list[Kernel]) -> None:
    sizes: dict[str, int] = {}
    for m in blocks[computation]:
        name, shape, op, rest = m.groups()
        sizes[name] = shape_bytes(shape)
        if op in FREE:
            continue
        operands = _operands(rest)
        if op == "while":  # a scan over layers: its body runs once per trip
            body = re.search(r"body=%([\w.\-]+)", rest).group(1)
            _walk(blocks, body, launches * _trips(blocks, rest), found)
            continue
        if op == "call":
            _walk(blocks, re.search(r"to_apply=%([\w.\-]+)", rest).group(1), launches, found)
            continue
        if op == "conditional":  # one branch runs: count the one that moves the most
            branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
            names = (
                re.findall(r"%([\w.\-]+)", branches.group(1))
                if branches
                else re.findall(r"(?:true|false)_computation=%([\w.\-]+)", rest)
            )
            taken: list[list[Kernel]] = []
            for branch in names:
                taken.append([])
                _walk(blocks, branch, launches, taken[-1])
            found.extend(max(taken, key=lambda ks: sum(k.bytes_read + k.bytes_written for k in ks)))
            continue
        if op.endswith("-done") or op.endswith("-update"):  # the -start half counts the work
            continue
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        body = blocks[calls.group(1)] if op.startswith("fusion") and calls else []
        share = _param_reads(body)
        read = sum(sizes.get(o, 0) * share.get(i, 1.0) for i, o in enumerate(operands))
        written = _written(body, sizes[name])
        if op == "custom-call":  # a library call's byte-typed result is its scratch space
            written = shape_bytes(re.sub(r"\b[su]8\[[\d,]*\]", "", shape))
        if op in SLICES:
            read = sizes[name]
        elif op == UPDATE_SLICE:
            read = written = sizes.get(operands[1], 0)
        op_name = re.search(r'op_name="([^"]+)"', rest)
        found.append(
            Kernel(
                name,
                _kind(name, op, rest, body),
                round(read) * launches,
                written * launches,
                op_name.group(1) if op_name else "",
                launches,
            )
        )


def kernels(hlo: str) -> list[Kernel]:
    """The kernels an optimized HLO module launches, with their memory traffic: those of its
    entry computation, and those of while-loop bodies (scans) times the trip count."""
    blocks = _computations(hlo)
    (entry,) = (k for k in blocks if k.endswith("#entry"))
    found: list[Kernel] = []
    _walk(blocks, entry, 1, found)
    return found


def operation(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(MaskedLM))/encoder/layer_7/mlp/mul' ->
    'backward: encoder/layer_N/mlp/mul': the same operation of every layer in one row."""
    path = re.sub(r"layer_\d+", "layer_N", op_name.split("/", 1)[-1])
    path = re.sub(r"\w+\._\w+/", "", path)  # Flax's scopes of helper methods (encoder._stream)
    direction = "backward: " if path.startswith("transpose(") else "forward: "
    path = re.sub(r"^(transpose\()?jvp\([^)]*\)\)?/", "", path)
    if "MaskedLM" not in op_name:
        return "outside the model (loss, optimizer): " + path.rsplit("/", 1)[-1]
    return direction + path


def bytes_by_kind(found: list[Kernel]) -> dict[str, int]:
    """Bytes read and written per kernel kind (matmul, attention, copy, other)."""
    total: collections.Counter[str] = collections.Counter()
    for k in found:
        total[k.kind] += k.bytes_read + k.bytes_written
    return dict(total)
