"""Loading, overriding and validating ml_collections configs.

A config file is a Python file with `get_config(arg=None) -> ConfigDict`, built on the defaults
below so that every key exists before the file runs. Configs are locked: a typo in a config file
or in a `--config.a.b=v` override is a `UserError` naming the key and listing the valid ones.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from gfm_jax.errors import UserError

ConfigDict = ml_collections.ConfigDict

# Logical axis name -> mesh axes. Parameters and activations are annotated with the names on the
# left (see gfm_jax/models); these rules decide how they are laid out on the mesh.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("classes", None),
    ("layers", None),  # the stacked-layer axis of model.scan_layers
)


def mesh_defaults() -> ConfigDict:
    c = ConfigDict()
    # Sizes of the ("data", "fsdp", "tensor") axes; one -1 takes the remaining devices.
    c.shape = (-1, 1, 1)
    c.rules = DEFAULT_RULES
    return c


def optim_defaults() -> ConfigDict:
    """AdamW with linear warm-up and a decay schedule (see gfm_jax/train/optim.py)."""
    o = ConfigDict()
    o.learning_rate = 1e-3
    o.warmup_steps = 100
    o.schedule = "cosine"  # cosine | constant | inv_sqrt
    o.end_lr_fraction = 0.1
    o.b1 = 0.9
    o.b2 = 0.98
    o.eps = 1e-8
    o.weight_decay = 0.01
    o.grad_clip = 1.0
    o.z_loss = 0.0  # coefficient of logsumexp(logits)^2 in the training loss (0: off)
    return o


def pretrain_defaults() -> ConfigDict:
    """Every key a pretraining config may set, with its default."""
    from gfm_jax.models import presets  # local: keeps `import gfm_jax.config` light

    c = ConfigDict()
    c.seed = 0
    c.model = presets.get("tiny")

    c.data = d = ConfigDict()
    d.genomes = ("builtin",)  # FASTA(.gz) paths; "builtin" = the genomes shipped in the package
    # Mixture over files: explicit weights (one per file, in order), or () for weights
    # proportional to size ** (1 / size_temperature); temperature > 1 upsamples small genomes.
    d.weights = ()
    d.size_temperature = 1.0
    # Encoded-genome cache (uint8, memory-mapped; see data/genome_cache.py): "auto" is
    # $GFM_JAX_CACHE or ~/.cache/gfm_jax, "" turns it off, anything else is a directory.
    d.cache_dir = "auto"
    d.iupac = "n"  # IUPAC ambiguity letters: "n" reads them as N, "error" rejects the file
    # char | char_rna | nt6 | kmer3..kmer6 (overlapping) | bpe (trained on the corpus)
    d.tokenizer = "char"
    d.window_len = 512  # bases per window
    # If > 0, windows are sized in tokens instead: each holds this many tokens (after CLS),
    # cut from a window of enough bases for the tokenizer; window_len is then ignored.
    d.window_tokens = 0
    d.bpe_vocab_size = 4096  # tokenizer="bpe": vocabulary trained on the training segments
    d.bpe_train_bases = 50_000_000  # at most this many bases, spread evenly, train the BPE
    d.max_n_fraction = 0.1  # windows with more N are redrawn (up to 16 tries; see windows.py)
    d.val_fraction = 0.1  # of each record, held out for validation
    # Where the held-out range starts, as a fraction of each record. 0.3 keeps it away from the
    # ends (telomeres) and, in the built-in chloroplast, from the inverted repeats.
    d.val_start = 0.3
    # Or hold out named records ("file/record" or "record") and ranges ("record:start-end",
    # 0-based, end exclusive); when either is given, val_fraction / val_start are not used.
    d.val_records = ()
    d.val_ranges = ()
    d.reverse_complement = True  # augment: each window is reverse-complemented with p=0.5
    d.mask_rate = 0.15
    d.mask_token_fraction = 0.8  # of masked positions replaced by <mask>
    d.random_token_fraction = 0.1  # ... by a random base; the rest keep their token
    d.mask_span = 0  # tokens per masked span; 0 = the tokenizer's (k for kmer<k>, else 1)
    # Loss weight of a soft-masked (lowercase, repeat) token relative to 1.0 for the rest;
    # a token partly soft-masked is weighted in proportion.
    d.repeat_weight = 1.0
    d.prefetch = 2

    c.train = t = ConfigDict()
    # mlm: masked-LM with bidirectional attention; causal: next-token prediction with causal
    # attention (same backbone and head; the masks the pipeline draws are then unused).
    t.objective = "mlm"
    t.global_batch_size = 16
    # Gradient accumulation: the global batch is processed in this many slices (same update).
    t.micro_batches = 1
    # MLM head positions per window: 0 = a 6-sigma bound on the masked tokens (see
    # masking_spec.target_capacity; about 25% of the window at 15% masking), -1 = every position,
    # N = N positions. Targets beyond it are dropped and logged (never happens at 6 sigma).
    t.target_capacity = 0
    t.num_steps = 1000
    t.log_every = 50
    t.eval_every = 500
    t.eval_batches = 8  # held-out windows per evaluation = eval_batches * global_batch_size
    t.checkpoint_every = 500
    t.keep_checkpoints = 3  # the last N steps are kept ...
    t.best_metric = "loss"  # ... plus the best by this held-out metric ("" = off)
    t.best_mode = "min"  # min (loss, bits_per_base, perplexity) | max (accuracy)
    # Resume order: the workdir's latest checkpoint, else this workdir's parameters (params
    # only: fine-tuning or imported weights; optimizer and step start afresh), else scratch.
    t.init_from = ""
    # A latest checkpoint that cannot be read is an error; True resumes from the one before.
    t.fallback_on_corrupt = False
    # Stop (with a checkpoint) after this step, leaving the schedule of num_steps unchanged:
    # for time-sliced jobs and resume tests. 0 runs to num_steps.
    t.stop_at_step = 0
    t.tensorboard = True  # also write TensorBoard events to <workdir>/tensorboard/
    # Peak TFLOP/s per device for MFU; 0 looks the device up in gfm_jax/train/flops.py.
    t.peak_tflops = 0.0

    c.optim = optim_defaults()

    c.mesh = mesh_defaults()
    c.lock()  # config files may change values, never add keys
    return c


# Dotted overrides shrinking the tiny preset until a step takes milliseconds: for tests and
# scripts/fault_drill.py, which need many short runs, not for learning anything.
MICRO_OVERRIDES: dict[str, object] = {
    "model.num_layers": 2,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.mlp_dim": 64,
    "data.window_len": 64,
    "train.global_batch_size": 16,
    "train.eval_batches": 2,
    "train.log_every": 5,
    "optim.warmup_steps": 2,
}


def apply_smoke_mode(c: ConfigDict) -> ConfigDict:
    """Shrinks a pretraining config to a 10-step check of a set-up (the `:smoke` argument)."""
    c.train.num_steps = 10
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 5
    c.train.eval_batches = 1
    c.train.global_batch_size = 16
    return c


def finetune_defaults() -> ConfigDict:
    """Every key a downstream (fine-tuning) task config may set, with its default."""
    c = ConfigDict()
    c.seeds = (0, 1, 2)  # one run per seed; reports give mean +- sd over them
    c.task = t = ConfigDict()
    t.name = ""  # for reports; "" = the file or directory name
    t.format = "csv"  # csv | csv_dir | fasta_dir | class_dirs | tfds (see data/tasks.py)
    t.path = "builtin:splice.csv"  # a path, builtin:<name>, or a TFDS name for format=tfds
    t.tfds_data_dir = ""  # format=tfds: TFDS's data_dir ("" = its default)
    t.kind = "classification"  # classification | regression | token_classification
    t.sequence_column = "sequence"
    t.label_column = "label"
    # format=csv: row ranges [start, end) of the file (0-based, header excluded), e.g. (0, 2000)
    # and (2000, 3186) for splice. Empty (the default): the file's `split` column (train / val /
    # dev / test) decides. Ranges, when given, win over a split column.
    t.train_rows = ()
    t.test_rows = ()
    # Without a validation split: this fraction of the training rows, chosen by split_seed (not
    # by the training seed, so every seed and model is selected on the same rows).
    t.val_fraction = 0.1
    t.split_seed = 0
    t.drop_test_duplicates = True  # drop test / val rows whose sequence occurs in train

    c.finetune = f = ConfigDict()
    f.epochs = 10
    f.batch_size = 64
    f.pooling = "cls"  # cls (the first token) | mean (over non-padding tokens)
    f.freeze_backbone = False  # True: train the head only (the encoder gets no update)
    # The validation metric that picks the best epoch ("" = accuracy for classification,
    # spearman for regression); the test split is evaluated once, with that epoch.
    f.select_metric = ""
    c.optim = optim_defaults()
    c.optim.learning_rate = 5e-4
    c.optim.warmup_steps = 50

    # The non-pretrained CNN baseline (model=cnn): one-hot-like embeddings of single bases.
    c.cnn = n = ConfigDict()
    n.embed_dim = 64
    n.channels = 128
    n.kernel_size = 9
    n.layers = 3
    n.pooling = "meanmax"  # meanmax (any length) | flatten (position-aware; see models/cnn.py)
    n.pool = 3  # flatten: max-pool width before flattening

    # Linear probe (mode probe): L2 strengths tried, the best on validation kept.
    c.probe = p = ConfigDict()
    p.l2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    p.max_iterations = 200

    c.mesh = mesh_defaults()
    c.lock()
    return c


def _load_module(path: pathlib.Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"gfm_config_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads `path[:arg]`, applies `key=value` overrides, and returns the locked config."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise UserError(f"config file {path_str!r} not found; pass e.g. configs/pretrain/tiny.py")
    try:
        module = _load_module(path)
    except (AttributeError, KeyError) as e:
        raise UserError(f"config file {path_str}: {e}; only keys of the defaults exist") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path_str} has no get_config(); see configs/ for examples")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (AttributeError, KeyError) as e:
        msg = str(e).strip("'\"")
        raise UserError(f"config file {path_str}: {msg}; only keys of the defaults exist") from None
    if not isinstance(config, ConfigDict):
        raise UserError(f"config file {path_str}: get_config() must return a ConfigDict")
    for item in overrides:
        apply_override(config, item)
    config.lock()
    return config


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parses `text` to the type of the value it replaces."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise UserError(f"config key {key!r} is a bool; got {text!r} (use true or false)")
    if isinstance(current, int | float):
        try:
            return type(current)(text) if isinstance(current, float) else int(text)
        except ValueError:
            kind = type(current).__name__
            raise UserError(f"config key {key!r} is a {kind}; got {text!r}") from None
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise UserError(f"config key {key!r}: cannot parse {text!r} as a Python literal") from None
    if isinstance(current, tuple) and isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(current, tuple) and not isinstance(value, tuple):
        return (value,)
    return value


def apply_override(config: ConfigDict, item: str) -> None:
    """Applies one `a.b.c=value` (a leading `--config.` is accepted) to `config` in place."""
    text = item.removeprefix("--").removeprefix("config.")
    key, sep, value_text = text.partition("=")
    if not sep or not key:
        raise UserError(f"bad override {item!r}: write --config.<key>=<value>")
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "<top>"
            valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none"
            raise UserError(f"unknown config key {key!r} (under {where} the keys are: {valid})")
        if i < len(parts) - 1:
            node = node[part]
    last = parts[-1]
    node[last] = _parse_value(key, value_text, node[last])


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.k=v` overrides from the other command-line arguments."""
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    return overrides, rest


def to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=list)


def from_json(text: str) -> ConfigDict:
    return ConfigDict(json.loads(text))
