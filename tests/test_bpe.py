"""BPE trained on the built-in genomes: id layout, round trips, the batched path, saving."""

import json

import numpy as np
import pytest
import tensorflow as tf

from gfm_jax import config as config_lib
from gfm_jax.data import bpe, builtin, fasta
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.tokenizer_choice import from_spec, tokenizer_for_run
from gfm_jax.data.windows import reverse_complement_codes
from gfm_jax.errors import UserError

VOCAB = 512


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(["builtin"])


@pytest.fixture(scope="module")
def data_config():
    c = config_lib.pretrain_defaults()
    c.data.tokenizer, c.data.bpe_vocab_size = "bpe", VOCAB
    return c.data


@pytest.fixture(scope="module")
def tok(corpus, data_config):
    return tokenizer_for_run(data_config, corpus, None)


def test_layout_and_merges(tok):
    assert tok.vocab[:6] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "N")
    assert tok.vocab_size == VOCAB
    assert tok.maskable == (6, VOCAB)  # everything but specials and N
    assert 3.0 < tok.bases_per_token < 12.0  # merges found real structure
    assert max(len(t) for t in tok.vocab[6:]) > 6


def test_round_trips_real_genomes_and_n(tok):
    for name in builtin.GENOMES:
        (rec,) = fasta.read_fasta(builtin.resolve(f"builtin:{name}")[0])
        text = rec.sequence()
        ids = tok.encode(text)
        assert tok.decode(ids) == text.upper()
        assert len(ids) < len(text) / 3
    ids = tok.encode("ACGTNNNacgtRA")  # IUPAC R reads as N; each N is its own token
    assert tok.decode(ids) == "ACGTNNNACGTNA"
    assert list(ids).count(tok.vocab.index("N")) == 4


def test_batched_path_equals_encode_padded_and_cut(tok):
    (rec,) = fasta.read_fasta(builtin.resolve("builtin:yeast_chrI.fa.gz")[0])
    codes = rec.codes[: 8 * 400].reshape(8, 400).copy()
    codes[2, 100:160] = fasta.N  # many tokens: cut at num_tokens
    got = tok.ids_from_codes(tf.constant(codes)).numpy()
    width = tok.num_tokens(400)
    assert got.shape == (8, width)
    for row, ids in zip(codes, got, strict=True):
        expect = tok.encode(fasta.decode_codes(row))[:width]
        np.testing.assert_array_equal(ids[: len(expect)], expect)
        assert (ids[len(expect) :] == tok.pad_id).all()
    # Reverse complement happens on codes, so tokens of an RC window encode the RC text.
    rc = reverse_complement_codes(tf.constant(codes[:1])).numpy()
    text = fasta.decode_codes(rc[0]).upper()
    expect = tok.encode(text)[:width]
    np.testing.assert_array_equal(
        tok.ids_from_codes(tf.constant(rc)).numpy()[0, : len(expect)], expect
    )


def test_repeat_fraction_uses_token_offsets(tok):
    text = "ACGTACGTAAcgtacgtacgTTGACCA"
    codes = fasta.encode_text(text)[None, :]
    frac = tok.repeat_fraction(tf.constant(codes)).numpy()[0]
    pieces = [tok.vocab[i] for i in tok.encode(text)]
    start = 0
    for piece, f in zip(pieces, frac, strict=False):
        segment = text[start : start + len(piece)]
        assert f == pytest.approx(sum(c.islower() for c in segment) / len(segment))
        start += len(piece)


def test_training_is_deterministic_saved_with_the_run_and_reloaded(
    tmp_path, corpus, data_config, tok
):
    first = tokenizer_for_run(data_config, corpus, tmp_path)
    path = tmp_path / "tokenizer.json"
    assert path.exists() and first.vocab == tok.vocab  # same text -> same merges
    stamp = path.stat().st_mtime_ns
    again = tokenizer_for_run(data_config, corpus, tmp_path)  # resume: read, not retrained
    assert path.stat().st_mtime_ns == stamp and again.vocab == first.vocab
    # What a checkpoint records rebuilds the same tokenizer.
    rebuilt = from_spec(json.loads(json.dumps(first.spec())))
    text = fasta.decode_codes(corpus.codes[:5000])
    np.testing.assert_array_equal(rebuilt.encode(text), first.encode(text))
    assert rebuilt.bases_per_token == first.bases_per_token


def test_bpe_never_sees_held_out_bases(corpus, data_config):
    segments = corpus.config_split("train", data_config)
    words = list(bpe.training_texts(corpus, segments, max_bases=10**9))
    assert sum(map(len, words)) == int((segments.ends - segments.starts).sum())
    few = list(bpe.training_texts(corpus, segments, max_bases=50_000))
    assert 40_000 <= sum(map(len, few)) <= 60_000


def test_a_corrupt_tokenizer_file_is_a_clear_error(tmp_path, corpus, data_config):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="tokenizer.json: not a gfm_jax BPE tokenizer"):
        tokenizer_for_run(data_config, corpus, tmp_path)
