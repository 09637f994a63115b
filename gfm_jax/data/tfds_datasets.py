"""TensorFlow Datasets builders: evaluation data that is versioned, cached and loaded by name.

Two builders, registered with TFDS when this module is imported:

- `gfm_task/<name>`: a downstream CSV task (`splice`), with the train / validation /
  test split exactly as `tasks.load_task` makes it (StatLog row ranges, duplicates and leakage
  dropped, validation rows fixed by split_seed 0). Features: `sequence` (text), `label` (class),
  `row` (the CSV line the example starts on, the header being line 1).
- `gfm_eval_windows/<name>`: fixed held-out MLM windows of a genome set, exactly the batches
  `WindowPipeline("val")` gives (they depend only on the data config, never on a training seed),
  so a tokenizer or model can be scored on the same windows by name: `inputs`, `targets`,
  `weights`, `index`.

Both read only files shipped in the package: `download_and_prepare` never downloads. The data
directory is TFDS's (`data_dir=`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`); a
second `load_*` call reads the prepared TFRecords instead of rebuilding. A change to what a
builder produces must raise its VERSION. `read_task` reads the rows of any TFDS task
(`task.format=tfds`, these builders included) for `tasks.load_task`.

    from gfm_jax.data import tfds_datasets
    ds = tfds_datasets.load_task("splice", split="test")
    windows = tfds_datasets.load_eval_windows("builtin_char_128")
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from gfm_jax import config as config_lib
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.pipeline import EVAL_SEED, WindowPipeline
from gfm_jax.data.task_readers import Raw, read_csv
from gfm_jax.data.task_splits import Split, Task, make_task
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError


@dataclasses.dataclass
class TaskConfig(tfds.core.BuilderConfig):
    """A CSV task: `task` holds overrides of `config.finetune_defaults().task`."""

    task: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class WindowsConfig(tfds.core.BuilderConfig):
    """Held-out windows: the genomes, tokenizer and window length, and how many windows."""

    genomes: tuple[str, ...] = ("builtin",)
    tokenizer: str = "char"
    window_len: int = 128
    num_windows: int = 2048


class GfmTask(tfds.core.GeneratorBasedBuilder):
    """Downstream sequence-classification tasks shipped with gfm_jax."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "StatLog split, test rows seen in training dropped, 10% val.",
        "1.1.0": "Duplicate training rows kept once before the validation rows are drawn.",
        "1.2.0": "`row` is the CSV line a row starts on (the header is line 1).",
    }
    BUILDER_CONFIGS = [
        TaskConfig(
            name="splice",
            description="Primate splice junctions (EI / IE / N), 60 bases; see PROVENANCE.md.",
            task={"path": "builtin:splice.csv", "train_rows": (0, 2000), "test_rows": (2000, 3186)},
        ),
    ]

    def _task(self) -> Task:
        task = config_lib.finetune_defaults().task
        for key, value in self.builder_config.task.items():
            task[key] = value
        return make_task(task, *read_csv(task))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "sequence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(self._task().label_names)),
                    "row": tf.int64,
                }
            ),
            supervised_keys=("sequence", "label"),
            disable_shuffling=True,  # keep the CSV's row order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # everything is in the package
        task = self._task()
        return {
            "train": self._generate_examples(task.train),
            "validation": self._generate_examples(task.val),
            "test": self._generate_examples(task.test),
        }

    def _generate_examples(self, split: Split):
        for sequence, label, row in zip(split.sequences, split.labels, split.rows, strict=True):
            number = int(row.rpartition(":")[2])  # "splice.csv:17" -> line 17
            yield number, {"sequence": sequence, "label": int(label), "row": number}


class GfmEvalWindows(tfds.core.GeneratorBasedBuilder):
    """Fixed held-out MLM windows of a genome set, as the training loop evaluates them."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Held-out ranges at 30-40% of each record, CLS first, 15% masked."}
    BUILDER_CONFIGS = [
        WindowsConfig(
            name="builtin_char_128",
            description="The quickstart's held-out windows: built-in genomes, char, 128 bases.",
        ),
        WindowsConfig(
            name="builtin_nt6_768",
            description="Built-in genomes, NT 6-mers, 768-base windows (CLS + 128 tokens).",
            tokenizer="nt6",
            window_len=768,
            num_windows=1024,
        ),
    ]

    def _pipeline(self) -> WindowPipeline:
        cfg = self.builder_config
        data = config_lib.pretrain_defaults().data
        data.genomes, data.tokenizer, data.window_len = cfg.genomes, cfg.tokenizer, cfg.window_len
        corpus = load_corpus(data.genomes, data.iupac)
        return WindowPipeline(corpus, get_tokenizer(cfg.tokenizer), data, seed=EVAL_SEED)

    def _info(self) -> tfds.core.DatasetInfo:
        tokens = 1 + get_tokenizer(self.builder_config.tokenizer).num_tokens(
            self.builder_config.window_len
        )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(tokens,), dtype=tf.int32),
                    "targets": tfds.features.Tensor(shape=(tokens,), dtype=tf.int32),
                    "weights": tfds.features.Tensor(shape=(tokens,), dtype=tf.float32),
                    "index": tf.int64,
                }
            ),
            disable_shuffling=True,  # keep window-index order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        batch = 64
        steps = -(-self.builder_config.num_windows // batch)
        ds = self._pipeline().dataset("val", global_batch=batch, first_step=0, last_step=steps)
        for host_batch in ds.as_numpy_iterator():
            for i, index in enumerate(host_batch["index"]):
                if index >= self.builder_config.num_windows:
                    return
                yield (
                    int(index),
                    {k: host_batch[k][i] for k in ("inputs", "targets", "weights", "index")},
                )


def _builder(cls: type, name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if name not in names:
        raise UserError(f"no {cls.name} dataset {name!r}; choose one of {names}")
    return cls(config=name, data_dir=data_dir)


def prepared(make_builder: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
    """A builder from `make_builder` whose dataset is built, safe when several processes of a
    job ask at once.

    TFDS builds into a temporary folder and renames it into place, so two processes building
    one dataset collide, and a builder made before another process finished reads no splits.
    Processes on one host take turns through a file lock and make their builder inside it;
    across hosts, process 0 builds first while the others wait at a barrier, then find the
    dataset built (shared storage) or build their own copy (local storage)."""
    data_dir = str(make_builder().data_dir)
    lock_path = pathlib.Path(tempfile.gettempdir()) / (
        f"gfm_jax_tfds_{hashlib.sha256(data_dir.encode()).hexdigest()[:16]}.lock"
    )

    def build() -> tfds.core.DatasetBuilder:
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            builder = make_builder()  # now: it sees what another process finished
            builder.download_and_prepare()
            return builder

    if jax.process_count() == 1:
        return build()
    if jax.process_index() == 0:
        builder = build()
    multihost_utils.sync_global_devices(f"tfds prepared {data_dir}")
    if jax.process_index() != 0:
        builder = build()
    return builder


def load_task(name: str, split: str = "test", data_dir: str | None = None) -> tf.data.Dataset:
    """A prepared (built on first use) task split: 'train', 'validation' or 'test'."""
    builder = prepared(lambda: _builder(GfmTask, name, data_dir))
    return builder.as_dataset(split=split, shuffle_files=False)


def load_eval_windows(name: str, data_dir: str | None = None) -> tf.data.Dataset:
    """The prepared held-out windows of a genome set (built on first use)."""
    builder = prepared(lambda: _builder(GfmEvalWindows, name, data_dir))
    return builder.as_dataset(split="validation", shuffle_files=False)


def read_task(task: ml_collections.ConfigDict) -> tuple[str, Raw]:
    """The rows of a TFDS task (`task.format=tfds`), e.g. `gfm_task/splice` registered here."""

    def make_builder() -> tfds.core.DatasetBuilder:
        return tfds.builder(task.path, data_dir=task.tfds_data_dir or None)

    try:
        make_builder()
    except Exception as e:  # TFDS raises several types for unknown names
        raise UserError(f"task.path={task.path!r} is not a TFDS dataset here: {e}") from None
    builder = prepared(make_builder)
    label_feature = builder.info.features[task.label_column]
    names = getattr(label_feature, "names", None)
    raw = Raw()
    for tfds_split, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        if tfds_split not in builder.info.splits:
            continue
        ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
        for i, ex in enumerate(ds.as_numpy_iterator()):
            label = ex[task.label_column]
            label = (
                names[int(label)]
                if names
                else (label.decode() if isinstance(label, bytes) else str(label))
            )
            raw.add(ex[task.sequence_column].decode(), label, split, f"{tfds_split}:{i}")
    return task.path, raw
