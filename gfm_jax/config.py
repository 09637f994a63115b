"""Config defaults and the checks of their values (ml_collections configs).

A config file is a Python file with `get_config(arg=None) -> ConfigDict`, built on the defaults
below so that every key exists before the file runs; configs are locked, so a file cannot add a
key. gfm_jax/command_line.py loads them from a command line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import ml_collections

from gfm_jax.errors import UserError

ConfigDict = ml_collections.ConfigDict

# Logical axis name -> mesh axes. Parameters and activations are annotated with the names on the
# left (see gfm_jax/models); these rules decide how they are laid out on the mesh.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),  # context parallelism; a no-op while mesh.shape's sequence is 1
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
    # Sizes of the ("data", "fsdp", "tensor", "sequence") axes; one -1 takes the remaining
    # devices. `sequence` > 1 shards each window's length (ring attention; docs/long_context.md).
    c.shape = (-1, 1, 1, 1)
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


def _data_defaults() -> ConfigDict:
    """The `data` block of a pretraining config: genomes, tokenizer, windows, masking."""
    d = ConfigDict()
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
    # Sequence-length warm-up: ((last_step, length), ...) trains on windows of `length` (the
    # unit of the window above: tokens if window_tokens > 0, else bases) up to `last_step`,
    # then the next stage's, then the window above. () = off.
    d.length_warmup = ()
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
    return d


def _train_defaults() -> ConfigDict:
    """The `train` block of a pretraining config: objective, batch, steps, checkpoints."""
    t = ConfigDict()
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
    return t


def pretrain_defaults() -> ConfigDict:
    """Every key a pretraining config may set, with its default."""
    from gfm_jax.models import presets  # local: keeps `import gfm_jax.config` light

    c = ConfigDict()
    c.seed = 0
    c.model = presets.get("tiny")
    c.data = _data_defaults()
    c.train = _train_defaults()
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


def check_kind(c: ConfigDict, block: str, kind: str, example: str) -> None:
    """Refuses a config of another kind (a task config given to pretraining, ...) by name."""
    if block not in c:
        raise UserError(f"--config is not {kind} config (it has no '{block}'); pass e.g. {example}")


def _optim_checks(o: ConfigDict) -> list[tuple[bool, str]]:
    return [
        (o.learning_rate > 0, f"optim.learning_rate={o.learning_rate} must be positive"),
        (o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be 0 or more"),
    ]


def _refuse(checks: list[tuple[bool, str]]) -> None:
    """The message of the first failed (ok, message) check, as a UserError."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def check_pretrain(c: ConfigDict) -> None:
    """Values no pretraining run can use, refused before anything is compiled or written."""
    check_kind(c, "train", "a pretraining", "--config=configs/pretrain/tiny.py")
    t = c.train
    checks = [
        *_optim_checks(c.optim),
        (t.num_steps >= 1, f"train.num_steps={t.num_steps} must be at least 1"),
        (t.stop_at_step >= 0, f"train.stop_at_step={t.stop_at_step} must be 0 (off) or a step"),
        (t.global_batch_size >= 1, f"train.global_batch_size={t.global_batch_size} must be >= 1"),
        (t.micro_batches >= 1, f"train.micro_batches={t.micro_batches} must be at least 1"),
    ]
    checks += [
        (t[key] >= 1, f"train.{key}={t[key]} must be at least 1")
        for key in ("log_every", "eval_every", "checkpoint_every", "eval_batches")
    ]
    _refuse(checks)


POOLINGS = ("cls", "mean", "max", "flatten")
STRANDS = ("forward", "both")
ADAPTERS = ("none", "lora", "ia3")
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")


def lora_targets(f: ConfigDict) -> tuple[str, ...]:
    """finetune.lora_targets as names: a tuple, or one comma-separated string."""
    targets = f.lora_targets
    if isinstance(targets, str):
        targets = (targets,)
    return tuple(t.strip() for item in targets for t in str(item).split(",") if t.strip())


def check_finetune(c: ConfigDict) -> None:
    """Values no fine-tuning or probe run can use, refused before a checkpoint is read."""
    check_kind(c, "finetune", "a task", "--config=configs/tasks/splice.py")
    f = c.finetune
    checks = [
        *_optim_checks(c.optim),
        (f.epochs >= 1, f"finetune.epochs={f.epochs} must be at least 1"),
        (f.batch_size >= 1, f"finetune.batch_size={f.batch_size} must be at least 1"),
        (0 < f.layer_decay <= 1, f"finetune.layer_decay={f.layer_decay}: give (0, 1]; 1 = off"),
        (f.patience >= 0, f"finetune.patience={f.patience}: give 0 (off) or a number of epochs"),
        (
            0 <= f.input_mask_rate < 1,
            f"finetune.input_mask_rate={f.input_mask_rate}: give a fraction in [0, 1)",
        ),
        (0 <= c.task.val_fraction < 1, f"task.val_fraction={c.task.val_fraction}: give [0, 1)"),
        (c.probe.max_iterations >= 1, f"probe.max_iterations={c.probe.max_iterations}: give 1+"),
        (
            re.fullmatch(r"all|-?\d+(,-?\d+)*", str(c.probe.layers).replace(" ", "")),
            f"probe.layers={c.probe.layers!r}: give 'all' or layer numbers such as -1, 0 or 0,-1",
        ),
        (f.pooling in POOLINGS, f"finetune.pooling={f.pooling!r}: choose {', '.join(POOLINGS)}"),
        (f.strand in STRANDS, f"finetune.strand={f.strand!r}: choose forward or both"),
        (
            f.strand == "forward" or not c.task.stranded,
            f"--strand both averages the two strands' predictions, but the labels of task "
            f"{c.task.name or c.task.path!r} depend on the strand (task.stranded=True); use "
            "--strand forward (or --config.task.stranded=False for a task whose labels do not)",
        ),
        (
            f.strand == "forward" or c.task.kind != "token_classification",
            "--strand both averages per-sequence predictions; token_classification has one "
            "label per base: use --strand forward",
        ),
        (
            f.adapter in ADAPTERS,
            f"finetune.adapter={f.adapter!r}: choose one of {', '.join(ADAPTERS)}",
        ),
        (
            f.adapter != "lora" or (lora_targets(f) and set(lora_targets(f)) <= set(LORA_TARGETS)),
            f"finetune.lora_targets={f.lora_targets}: choose from {', '.join(LORA_TARGETS)}",
        ),
        (
            f.adapter != "lora" or (f.lora_rank >= 1 and f.lora_alpha > 0),
            f"finetune.lora_rank={f.lora_rank}, lora_alpha={f.lora_alpha}: give a rank of 1 or "
            "more and a positive alpha",
        ),
        (
            f.adapter == "none" or not f.freeze_backbone,
            "finetune.adapter trains the adapters and the head on a frozen backbone already; "
            "drop finetune.freeze_backbone=True",
        ),
        (
            c.cnn.pooling in ("meanmax", "flatten"),
            f"cnn.pooling={c.cnn.pooling!r}: choose meanmax or flatten",
        ),
    ]
    _refuse(checks)


def check_mode(mode: str, modes: Sequence[str] = ("default", "smoke")) -> str:
    """A config file's `:mode` argument, refused by name when the file has no such mode."""
    if mode not in modes:
        choices = ", ".join(modes)
        raise UserError(f"unknown config mode {mode!r} (after ':' in --config); choose {choices}")
    return mode


def apply_smoke_mode(c: ConfigDict) -> ConfigDict:
    """Shrinks a pretraining config to a 10-step check of a set-up (the `:smoke` argument)."""
    c.train.num_steps = 10
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 5
    c.train.eval_batches = 1
    c.train.global_batch_size = 16
    return c


def _task_defaults() -> ConfigDict:
    """The `task` block of a downstream config: where the data is and how it splits."""
    t = ConfigDict()
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
    t.stranded = True  # labels depend on the strand: --strand both is refused
    return t


def finetune_defaults() -> ConfigDict:
    """Every key a downstream (fine-tuning) task config may set, with its default."""
    c = ConfigDict()
    c.seeds = (0, 1, 2)  # one run per seed; reports give mean +- sd over them
    c.task = _task_defaults()

    c.finetune = f = ConfigDict()
    f.epochs = 10
    f.batch_size = 64
    f.pooling = "cls"  # cls (the first token) | mean | max (over the sequence's tokens)
    f.freeze_backbone = False  # True: train the head only (the encoder gets no update)
    # Layer-wise learning-rate decay: block i of L trains at lr * layer_decay ** (L - i), the
    # embeddings at lr * layer_decay ** (L + 1); 1.0 = off (train/optim.py:scale_by_depth).
    f.layer_decay = 1.0
    f.patience = 0  # early stopping: stop after this many epochs without a better val; 0 = off
    # Augmentation: this fraction of each training sequence's tokens is replaced by the mask
    # token, drawn afresh every epoch (a pretrained masked LM has seen such inputs); 0 = off.
    f.input_mask_rate = 0.0
    # Parameter-efficient fine-tuning (models/adapters.py): none | lora | ia3. The backbone is
    # frozen; the adapters and the head train.
    f.adapter = "none"
    f.lora_rank = 8
    f.lora_alpha = 16.0
    f.lora_targets = LORA_TARGETS  # those the model lacks (gate with GELU) are skipped
    # forward | both: average the predictions (probe, embed: the pooled embeddings) of each
    # sequence and its reverse complement; refused for tasks with task.stranded=True.
    f.strand = "forward"
    f.save = True  # keep the best epoch's trained parameters beside the run JSON
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
    # Encoder states the probe reads, concatenated: "-1" the output, "0" the embeddings (each
    # base without context), "all" every layer, or a list such as "0,-1".
    p.layers = "-1"

    c.mesh = mesh_defaults()
    c.lock()
    return c


def to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=list)


def from_json(text: str) -> ConfigDict:
    return ConfigDict(json.loads(text))
