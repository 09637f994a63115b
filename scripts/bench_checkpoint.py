"""How long a checkpoint save blocks the training loop, beside how long the save takes.

    python scripts/bench_checkpoint.py [--preset nt_v2_50m] [--repeats 3]
        [--write docs/benchmarks.md]

Builds the preset's full train state (parameters + AdamW moments, float32) on this host's
devices and saves it with gfm_jax's Checkpointer (Orbax, async) `--repeats` times. "Blocked" is
the time `save()` takes to return (the loop waits for it: the arrays are copied off the device
buffers); "total" runs until `wait()` returns (the files are written and the step renamed into
place). Medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import checkpoint, sharding  # noqa: E402
from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.models.heads import MaskedLM  # noqa: E402
from gfm_jax.train import optim  # noqa: E402
from gfm_jax.train import state as state_lib  # noqa: E402

MARK = "<!-- bench_checkpoint -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="nt_v2_50m")
    parser.add_argument("--vocab", type=int, default=4107)  # the NT 6-mer vocabulary
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", default=None)
    args = parser.parse_args()

    model_cfg = EncoderConfig.from_config(presets.get(args.preset), args.vocab, mask_id=0)
    mesh = sharding.make_mesh((-1, 1, 1))
    rules = config_lib.DEFAULT_RULES
    model = MaskedLM(model_cfg, mesh, rules)
    tx = optim.make_optimizer(config_lib.optim_defaults(), 1000)
    init = lambda rng: model.init(rng, np.zeros((1, 16), np.int32))["params"]  # noqa: E731
    state, _ = state_lib.create_sharded_state(init, tx, jax.random.key(0), mesh, rules)
    leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)
    size = sum(x.size * x.dtype.itemsize for x in leaves)

    blocked, total = [], []
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = checkpoint.Checkpointer(workdir, keep=args.repeats)  # no deletions timed
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()
            ckpt.save(step, state.params, state.opt_state, {"step": step})
            blocked.append(time.perf_counter() - start)
            ckpt.wait()
            total.append(time.perf_counter() - start)
        ckpt.close()
    b, t = statistics.median(blocked), statistics.median(total)
    lines = [
        "## Checkpoint save time (`scripts/bench_checkpoint.py`)",
        "",
        f"`python scripts/bench_checkpoint.py --preset {args.preset} --repeats {args.repeats}`: "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, jax {jax.__version__}. State: {args.preset} parameters + "
        f"AdamW moments, {size / 1e6:,.0f} MB float32. Medians of {args.repeats} saves.",
        "",
        "| save of the train state | seconds |",
        "| --- | --- |",
        f"| training loop blocked (`save()` returns) | {b:.2f} |",
        f"| whole save (`wait()` returns: files written, step renamed into place) | {t:.2f} |",
        "",
        f"- The loop is blocked for {b / t:.0%} of the save; the rest overlaps training. Each "
        f"save: blocked {', '.join(f'{x:.2f}' for x in blocked)} s, total "
        f"{', '.join(f'{x:.2f}' for x in total)} s.",
    ]
    table = "\n".join(lines)
    publish(table, args.write, MARK)


if __name__ == "__main__":
    main()
