import numpy as np
import pytest
import tensorflow as tf

from gfm_jax import config as config_lib
from gfm_jax.data import fasta, windows
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.pipeline import WindowPipeline, host_batch_size
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(["builtin"])


def make_pipeline(corpus, seed=7, **data_overrides):
    config = config_lib.pretrain_defaults()
    for k, v in data_overrides.items():
        config.data[k] = v
    return WindowPipeline(corpus, get_tokenizer(config.data.tokenizer), config.data, seed=seed)


def collect(ds):
    return list(ds.as_numpy_iterator())


def test_window_is_pure_function_of_seed_and_index(corpus):
    p = make_pipeline(corpus, window_len=64)
    a = p.windows_for_indices("train", tf.constant([5, 6, 7, 1000], tf.int64))
    b = p.windows_for_indices("train", tf.constant([1000, 3, 7], tf.int64))
    np.testing.assert_array_equal(a["inputs"][3], b["inputs"][0])
    np.testing.assert_array_equal(a["inputs"][2], b["inputs"][2])
    np.testing.assert_array_equal(a["weights"][2], b["weights"][2])
    other_seed = make_pipeline(corpus, seed=8, window_len=64)
    c = other_seed.windows_for_indices("train", tf.constant([5], tf.int64))
    assert not np.array_equal(c["targets"][0], a["targets"][0])


def test_windows_come_from_their_split_and_strands_are_reverse_complements(corpus):
    L = 100
    config = config_lib.pretrain_defaults().data
    for split in ("train", "val"):
        segs = corpus.split(split, config.val_fraction, config.val_start)
        sampler = windows.WindowSampler(segs, L, reverse_complement=True)
        keys = windows.window_keys(3, tf.range(4000, dtype=tf.int64))
        starts, strands = (t.numpy() for t in sampler.starts_and_strands(keys))
        inside = [
            (starts >= s) & (starts + L <= e) for s, e in zip(segs.starts, segs.ends, strict=True)
        ]
        assert np.logical_or.reduce(inside).all()
        assert 0.45 < strands.mean() < 0.55
        genome = tf.Variable(corpus.codes)
        got = windows.gather_windows(genome, tf.constant(starts), tf.constant(strands), L).numpy()
        for i in range(20):
            forward = corpus.codes[starts[i] : starts[i] + L]
            expect = windows.COMPLEMENT[forward][::-1] if strands[i] else forward
            np.testing.assert_array_equal(got[i], expect)


@pytest.mark.parametrize("tokenizer, window_len", [("char", 1024), ("nt6", 6144), ("kmer6", 1029)])
def test_mask_rates_over_a_million_tokens(corpus, tokenizer, window_len):
    p = make_pipeline(corpus, window_len=window_len, tokenizer=tokenizer)
    ds = p.dataset("train", global_batch=128, first_step=0, last_step=8)
    inputs, targets, weights = (
        np.concatenate([b[k] for b in collect(ds)]) for k in ("inputs", "targets", "weights")
    )
    tok = get_tokenizer(tokenizer)
    assert targets.size >= 1_000_000
    assert (inputs[:, 0] == tok.cls_id).all()  # every window starts with CLS
    selected = weights > 0
    maskable = (targets >= tok.maskable[0]) & (targets < tok.maskable[1])
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
    sel_in, sel_tg = inputs[selected], targets[selected]
    masked = np.mean(sel_in == tok.mask_id)
    kept = np.mean(sel_in == sel_tg)
    random_changed = np.mean((sel_in != tok.mask_id) & (sel_in != sel_tg))
    assert abs(masked - 0.8) < 0.01
    # A random token equals the original 1/n of the time (n = 4 bases, or 4100 6-mers + bases).
    n = tok.maskable[1] - tok.maskable[0]
    assert abs(random_changed - 0.1 * (1 - 1 / n)) < 0.01
    assert abs(kept - (0.1 + 0.1 / n)) < 0.01
    assert np.all(inputs[~selected] == targets[~selected])
    assert set(np.unique(sel_tg)) <= set(range(*tok.maskable))
    if tok.default_mask_span > 1:
        # Overlapping k-mers are masked in spans of k whole tokens: every run of selected
        # tokens not cut by CLS, an N k-mer or the window's end is at least k long, so no
        # masked base can be read off its neighbours.
        edges = np.diff(np.pad(selected.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        rows, starts = np.nonzero(edges == 1)
        _, ends = np.nonzero(edges == -1)
        padded = np.pad(maskable, ((0, 0), (0, 1)))  # beyond the end counts as a cut
        whole = padded[rows, starts - 1] & padded[rows, ends]
        assert whole.mean() > 0.9
        assert (ends - starts)[whole].min() >= tok.default_mask_span


def test_host_slices_make_the_global_batch_and_resume_needs_only_the_step(corpus):
    p = make_pipeline(corpus, window_len=64)
    full = collect(p.dataset("train", global_batch=8, first_step=0, last_step=12))
    halves = [
        collect(
            p.dataset(
                "train",
                global_batch=8,
                first_step=0,
                last_step=12,
                process_index=h,
                process_count=2,
            )
        )
        for h in (0, 1)
    ]
    for step, batch in enumerate(full):
        for key in ("inputs", "targets", "weights", "index"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key]
            )
        assert len(np.unique(batch["index"])) == 8
        np.testing.assert_array_equal(batch["index"], np.arange(step * 8, step * 8 + 8))
    # Restarting at step k = 7 gives batches k..k+50 equal to the uninterrupted stream.
    stream = collect(p.dataset("train", global_batch=8, first_step=0, last_step=58))
    resumed = collect(p.dataset("train", global_batch=8, first_step=7, last_step=58))
    assert len(resumed) == 51
    for a, b in zip(stream[7:], resumed, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["weights"], b["weights"])


def test_val_windows_do_not_depend_on_the_training_seed(corpus):
    cfg = config_lib.pretrain_defaults().data
    a = WindowPipeline(corpus, get_tokenizer("char"), cfg, seed=1).windows_for_indices(
        "val", tf.range(4, dtype=tf.int64)
    )
    b = WindowPipeline(corpus, get_tokenizer("char"), cfg, seed=2).windows_for_indices(
        "val", tf.range(4, dtype=tf.int64)
    )
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert fasta.N not in np.unique(a["targets"])  # built-in genomes have no N


def test_corpus_summary_lists_the_longest_records_only(tmp_path):
    (rec,) = fasta.read_fasta(builtin_path("lambda_phage_NC_001416.fa.gz"))
    text = rec.sequence()
    path = tmp_path / "pieces.fa"  # 1,000 real pieces of lambda, lengths 100 .. 1,099
    path.write_text("".join(f">piece{i}\n{text[i : i + 100 + i]}\n" for i in range(1000)))
    lines = load_corpus([str(path)]).summary().splitlines()
    assert lines[0].startswith("corpus: 1 files, 1000 records")
    listed = [line.split(":")[0].strip() for line in lines[1:-1]]
    assert listed == [f"pieces.fa/piece{i}" for i in range(980, 1000)]  # the 20 longest, in order
    assert lines[-1] == "  ... and 980 shorter records (the 20 longest are listed)"


def test_a_genome_file_of_n_only_is_refused_by_name(tmp_path):
    path = tmp_path / "gap.fa"
    path.write_text(">gap1\n" + "N" * 5000 + "\n>gap2\n" + "n" * 300 + "\n")
    with pytest.raises(UserError, match="gap.fa: every base is N .* remove it from data.genomes"):
        load_corpus(["builtin", str(path)])


def test_half_n_genome_windows_respect_the_n_threshold(tmp_path):
    # Real lambda sequence with its second half replaced by N.
    (rec,) = fasta.read_fasta(builtin_path("lambda_phage_NC_001416.fa.gz"))
    text = rec.sequence()
    half = len(text) // 2
    path = tmp_path / "half_n.fa"
    path.write_text(">half_n\n" + text[:half] + "N" * (len(text) - half) + "\n")
    corpus = load_corpus([str(path)])
    assert corpus.summary().count("N 50.00%") == 1
    n_runs = corpus.n_runs()
    assert n_runs[0].tolist() == [half] and n_runs[1].tolist() == [len(text)]
    counts = []
    for max_n in (0.1, 1.0):
        p = make_pipeline(corpus, window_len=200, max_n_fraction=max_n)
        b = p.windows_for_indices("train", tf.range(2000, dtype=tf.int64))
        n_id = get_tokenizer("char").encode("N")[0]
        counts.append((b["targets"][:, 1:].numpy() == n_id).mean(axis=1))
    assert counts[0].max() <= 0.1
    assert (counts[1] > 0.9).mean() > 0.3  # without the threshold, about half the windows are N
    # N positions are never masked, so the loss never asks for an N.
    assert not np.any((b["weights"].numpy() > 0) & (b["targets"].numpy() == n_id))


def builtin_path(name):
    from gfm_jax.data import builtin

    return builtin.resolve(f"builtin:{name}")[0]


def test_n_counter_matches_brute_force():
    rng = np.random.default_rng(1)
    is_n = rng.random(5000) < 0.02
    is_n[100:400] = True
    codes = np.where(is_n, fasta.N, fasta.A).astype(np.uint8)
    from gfm_jax.data.corpus import Corpus

    corpus = Corpus(codes, ("x",), np.array([0]), np.array([codes.size]), np.array([0]), ("x",))
    counter = windows.NCounter(*corpus.n_runs())
    starts = rng.integers(0, 4900, 500)
    got = counter.count(tf.constant(starts[:, None].repeat(2, 1)), 100).numpy()
    expect = np.array([is_n[s : s + 100].sum() for s in starts])
    np.testing.assert_array_equal(got, np.stack([expect, expect], 1))


def file_of(corpus, starts):
    record = np.searchsorted(corpus.offsets, starts, side="right") - 1
    return corpus.groups[record]


@pytest.mark.parametrize(
    "weights, temperature, expect",
    [
        ((1.0, 0.0, 0.0, 1.0), 1.0, [0.5, 0.0, 0.0, 0.5]),
        ((), 1.0, None),  # proportional to size
        ((), 1000.0, [0.25, 0.25, 0.25, 0.25]),  # high temperature: nearly uniform over files
    ],
)
def test_mixture_weights_over_files(corpus, weights, temperature, expect):
    p = make_pipeline(corpus, window_len=100, weights=weights, size_temperature=temperature)
    keys = windows.window_keys(0, tf.range(20000, dtype=tf.int64))
    starts, _ = p.samplers["train"].starts_and_strands(keys)
    share = np.bincount(file_of(corpus, starts.numpy()), minlength=4) / 20000
    if expect is None:
        sizes = np.bincount(corpus.groups, corpus.lengths, minlength=4)
        expect = sizes / sizes.sum()
    np.testing.assert_allclose(share, expect, atol=0.015)
    assert "training mixture: lambda_phage_NC_001416.fa.gz" in p.describe_mixture()


def test_wrong_number_of_weights_names_the_files(corpus):
    with pytest.raises(UserError, match="4 files"):
        make_pipeline(corpus, weights=(1.0, 2.0))


def test_span_masking_decides_once_per_span(corpus):
    p = make_pipeline(corpus, window_len=512, mask_span=4)
    (batch,) = collect(p.dataset("train", global_batch=64, first_step=0, last_step=1))
    inputs, selected = batch["inputs"], batch["weights"] > 0
    masked = selected & (inputs == p.tokenizer.mask_id)
    assert abs(selected.mean() - 0.15) < 0.02
    # Within a run of 4 selected tokens starting a span, either all are <mask> or none is
    # (two spans can abut, so check runs of exactly the span length).
    edges = np.diff(np.pad(selected.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    exact = (ends - starts) == 4
    assert exact.sum() > 100
    for r, a in zip(rows[exact], starts[exact], strict=True):
        assert masked[r, a : a + 4].all() or not masked[r, a : a + 4].any()


def test_repeat_weight_scales_the_loss_weight_of_soft_masked_tokens():
    human = load_corpus(["builtin:human_hg19_chr17_1-40000.fa.gz"])  # soft-masked
    soft_fraction = np.mean(human.codes >= fasta.SOFT_MASK_BIT)
    assert 0.2 < soft_fraction < 0.8

    def batches(**overrides):
        p = make_pipeline(human, window_len=256, **overrides)
        return collect(p.dataset("train", global_batch=64, first_step=0, last_step=4))

    ratios = []
    for a, b in zip(batches(), batches(repeat_weight=0.25), strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])  # only the weights change
        selected = a["weights"] > 0
        np.testing.assert_array_equal(selected, b["weights"] > 0)
        ratios.append(b["weights"][selected] / a["weights"][selected])
    ratios = np.concatenate(ratios)
    assert set(np.unique(ratios)) == {0.25, 1.0}  # char tokens: one base, soft or not
    # Soft-masked targets are down-weighted about as often as the genome is soft-masked.
    assert abs(np.mean(ratios == 0.25) - soft_fraction) < 0.05


def test_windows_sized_in_tokens(corpus):
    for tokenizer, bases in (("char", 100), ("nt6", 600), ("kmer4", 103)):
        p = make_pipeline(corpus, tokenizer=tokenizer, window_tokens=100, max_n_fraction=1.0)
        assert (p.window_len, p.num_tokens) == (bases, 100)
        (batch,) = collect(p.dataset("train", global_batch=4, first_step=0, last_step=1))
        assert batch["inputs"].shape == (4, 101)


def test_named_held_out_records_and_ranges(corpus):
    lam = next(n for n in corpus.names if n.startswith("lambda"))  # by its full name
    yeast = next(n for n in corpus.names if n.startswith("yeast"))  # by its record name
    r_lam, r_yeast = corpus.names.index(lam), corpus.names.index(yeast)
    yeast_record = yeast.split("/", 1)[1]
    args = (0.1, 0.3, [lam], [f"{yeast_record}:1000-5000", f"{yeast_record}:4000-9000"])
    val, train = corpus.split("val", *args), corpus.split("train", *args)
    off = corpus.offsets
    held = sorted(zip(val.starts.tolist(), val.ends.tolist(), strict=True))
    assert held == sorted(
        [
            (off[r_lam], off[r_lam] + corpus.lengths[r_lam]),
            (off[r_yeast] + 1000, off[r_yeast] + 9000),
        ]
    )
    # Training covers every base not held out, exactly once.
    covered = np.zeros(corpus.codes.size, np.int8)
    for segs in (val, train):
        for a, b in zip(segs.starts, segs.ends, strict=True):
            covered[a:b] += 1
    assert (covered == 1).all()
    # Without names, the default split is unchanged in content.
    default = corpus.split("train", 0.1, 0.3)
    assert (default.ends - default.starts).sum() == corpus.codes.size - (
        np.floor(corpus.lengths * 0.1).sum()
    )


@pytest.mark.parametrize(
    "records, ranges, message",
    [
        (["chrX"], [], "'chrX' is not a record"),
        ([], ["NC_000932.1:10-5"], "outside"),
        ([], ["NC_000932.1:ten-20"], "record:start-end"),
    ],
)
def test_bad_held_out_names_are_clear_errors(corpus, records, ranges, message):
    with pytest.raises(UserError, match=message):
        corpus.split("val", 0.1, 0.3, records, ranges)


def test_host_batch_size_names_the_config_key_to_change():
    assert host_batch_size(16, 4) == 4
    with pytest.raises(UserError, match="train.global_batch_size=10 does not divide over 4"):
        host_batch_size(10, 4)
    with pytest.raises(UserError, match="make finetune.batch_size a multiple"):
        host_batch_size(6, 4, "finetune.batch_size")
