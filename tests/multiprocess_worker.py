"""One process of a 2-process run on 127.0.0.1 (started by test_multiprocess.py).

Each process builds only its slice of every global batch, assembles global arrays with
`jax.make_array_from_process_local_data` on a mesh spanning both processes, gathers them back,
and process 0 writes them to OUT/global_batches.npz.
"""

import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.pop("XLA_FLAGS", None)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main() -> None:
    process_id, num_processes, port, out = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        sys.argv[4],
    )
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
    )

    import numpy as np
    from jax.experimental import multihost_utils

    from gfm_jax import command_line, sharding
    from gfm_jax.data.corpus import load_corpus
    from gfm_jax.data.pipeline import WindowPipeline, to_global
    from gfm_jax.data.tokenizers import get_tokenizer

    assert jax.process_count() == num_processes and jax.device_count() == 4 * num_processes
    # The training loop's stop check goes through JAX's preemption sync point here: no
    # preemption notice, so every process answers "go on" for the step.
    from gfm_jax.train.preemption import StopRequests

    stop = StopRequests()
    assert stop.multiprocess and stop.stop_after(1) is None
    stop.close()
    config = command_line.load_config("configs/pretrain/tiny.py", ["--config.data.window_len=64"])
    pipe = WindowPipeline(load_corpus(["builtin"]), get_tokenizer("char"), config.data, seed=0)
    mesh = sharding.make_mesh((2, -1, 1))
    batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
    ds = pipe.dataset(
        "train",
        global_batch=16,
        first_step=3,
        last_step=8,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    gathered: dict[str, list] = {}
    for host in ds.as_numpy_iterator():
        host["index"] = host["index"].astype(np.int32)
        batch = to_global(host, batch_sharding)
        assert batch["inputs"].shape == (16, 65)
        for key, array in batch.items():
            gathered.setdefault(key, []).append(
                multihost_utils.process_allgather(array, tiled=True)
            )
    if jax.process_index() == 0:
        np.savez(
            os.path.join(out, "global_batches.npz"), **{k: np.stack(v) for k, v in gathered.items()}
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
