"""Memory traffic of a compiled XLA program, kernel by kernel, from its optimized HLO text.

Each instruction of the entry computation is one kernel launch (a fusion, a library call, a
copy). Its bytes are the operands it reads and the results it writes, where a fused kernel that
only slices an operand reads just the slices. Used by `scripts/step_traffic.py` (bytes of the
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


def shape_bytes(text: str) -> int:
    """Bytes of every array shape in `text` (a tuple's elements summed)."""
    return sum(
        BYTES_PER_ELEMENT[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in SHAPE.findall(text)
    )


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One launched kernel (an instruction of the entry computation) and the bytes it moves."""

    name: str
    kind: str  # matmul | attention | copy | other
    bytes_read: int
    bytes_written: int
    op_name: str  # the jax operation it comes from (metadata), "" when the program has none


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


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims in SHAPE.findall(shape))


def _param_reads(body: list[re.Match]) -> dict[int, float]:
    """The share of each parameter of a fused computation that the kernel reads: a kernel that
    slices its result, or an operand, computes and reads only what the slice keeps.

    Walks from the outputs to the parameters (HLO lists operands before their users): an
    instruction as large as its operand (elementwise, convert, transpose, bitcast) needs the
    same share of it, a slice its share times the slice's size; anything else (reductions,
    broadcasts, concatenations) all of it."""
    whole: dict[str, float] = {body[-1].group(1): 1.0} if body else {}
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
    return "other"


def kernels(hlo: str) -> list[Kernel]:
    """The kernels of an optimized HLO module's entry computation with their memory traffic."""
    blocks = _computations(hlo)
    (entry,) = (v for k, v in blocks.items() if k.endswith("#entry"))
    sizes: dict[str, int] = {}
    found = []
    for m in entry:
        name, shape, op, rest = m.groups()
        sizes[name] = shape_bytes(shape)
        if op in FREE:
            continue
        operands = _operands(rest)
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        body = blocks[calls.group(1)] if op == "fusion" and calls else []
        share = _param_reads(body)
        read = round(sum(sizes.get(o, 0) * share.get(i, 1.0) for i, o in enumerate(operands)))
        op_name = re.search(r'op_name="([^"]+)"', rest)
        found.append(
            Kernel(
                name,
                _kind(name, op, rest, body),
                read,
                sizes[name],
                op_name.group(1) if op_name else "",
            )
        )
    return found


def operation(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(MaskedLM))/encoder/layer_7/mlp/mul' ->
    'backward: encoder/layer_N/mlp/mul': the same operation of every layer in one row."""
    path = re.sub(r"layer_\d+", "layer_N", op_name.split("/", 1)[-1])
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
