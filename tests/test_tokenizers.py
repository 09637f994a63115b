import numpy as np
import pytest
import tensorflow as tf

from gfm_jax.data import builtin, fasta
from gfm_jax.data.tokenizers import CharTokenizer, get_tokenizer
from gfm_jax.data.windows import reverse_complement_codes
from gfm_jax.errors import UserError


@pytest.mark.parametrize("name", builtin.GENOMES)
def test_char_round_trips_real_genomes(name):
    tok = get_tokenizer("char")
    for rec in fasta.read_fasta(builtin.resolve(f"builtin:{name}")[0]):
        text = rec.sequence()
        ids = tok.encode(text)
        assert ids.shape == (len(text),)
        assert tok.decode(ids) == text.upper()  # case is folded (soft-masking is not a token)
        # The tf.data path (codes -> ids) gives the same ids as encoding text.
        np.testing.assert_array_equal(tok.ids_from_codes(tf.constant(rec.codes)).numpy(), ids)


def test_char_layout_matches_hyenadna():
    tok = CharTokenizer()
    assert tok.vocab[:7] == ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
    assert list(tok.encode("ACGTN")) == [7, 8, 9, 10, 11]
    assert (tok.pad_id, tok.mask_id, tok.vocab_size) == (4, 3, 12)
    assert tok.decode(np.array([0, 7, 4, 10])) == "AT"  # specials are dropped


def test_rna_tokenizer():
    tok = get_tokenizer("char_rna")
    assert tok.decode(tok.encode("ACGU")) == "ACGU"
    np.testing.assert_array_equal(tok.encode("ACGU"), tok.encode("ACGT"))


def test_unknown_letters_and_tokenizer_names():
    with pytest.raises(UserError, match="'X'"):
        get_tokenizer("char").encode("ACGX")
    with pytest.raises(UserError, match="data.tokenizer"):
        get_tokenizer("bpe9")
    with pytest.raises(UserError, match="'X'"):
        get_tokenizer("nt6").encode("ACGX")


def test_reverse_complement_is_an_involution_on_real_dna():
    (rec,) = fasta.read_fasta(builtin.resolve("builtin:human_hg19_chr17_1-40000.fa.gz")[0])
    codes = tf.constant(rec.codes[None, :5000])
    rc = reverse_complement_codes(codes)
    np.testing.assert_array_equal(reverse_complement_codes(rc).numpy(), codes.numpy())
    assert (
        fasta.decode_codes(
            reverse_complement_codes(tf.constant([fasta.encode_text("AACGtn")])).numpy()[0]
        )
        == "naCGTT"
    )


def nt_kmer_id(kmer: str) -> int:
    """Hand rule: 6 + base-4 value of the 6-mer with digits A0 T1 C2 G3."""
    return 6 + sum("ATCG".index(b) * 4 ** (5 - i) for i, b in enumerate(kmer))


def test_nt6_layout():
    tok = get_tokenizer("nt6")
    assert tok.vocab_size == 4107
    assert tok.vocab[:6] == ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")
    assert tok.vocab[6] == "AAAAAA" and tok.vocab[7] == "AAAAAT" and tok.vocab[4101] == "GGGGGG"
    assert tok.vocab[4102:] == ("A", "T", "C", "G", "N")
    assert (tok.pad_id, tok.mask_id, tok.cls_id) == (1, 2, 3)
    assert nt_kmer_id("ATCGAT") == 439  # 0*1024 + 1*256 + 2*64 + 3*16 + 0*4 + 1 + 6


@pytest.mark.parametrize(
    "sequence, expected",
    [
        ("ATCGAT", [439]),
        ("ATCGATCC", [439, 4104, 4104]),  # remainder as single bases
        ("AAAAAATTTTTTG", [6, nt_kmer_id("TTTTTT"), 4105]),
        ("ACGTNNACGTAC", [4102, 4104, 4105, 4103, 4106, 4106, nt_kmer_id("ACGTAC")]),  # split on N
        ("NACGTACGNN", [4106, nt_kmer_id("ACGTAC"), 4105, 4106, 4106]),
        ("acgtacGG", [nt_kmer_id("ACGTAC"), 4105, 4105]),  # soft-masked = same tokens
        ("", []),
    ],
)
def test_nt6_hand_checked_ids(sequence, expected):
    tok = get_tokenizer("nt6")
    assert list(tok.encode(sequence)) == expected
    assert tok.decode(np.array(expected, np.int32)) == sequence.upper()


def test_nt6_round_trips_real_genomes_and_the_batched_path_agrees():
    tok = get_tokenizer("nt6")
    for name in builtin.GENOMES:
        (rec,) = fasta.read_fasta(builtin.resolve(f"builtin:{name}")[0])
        assert tok.decode(tok.encode(rec.sequence())) == rec.sequence().upper()
    # Windows with N runs: the tf.data path equals encode(), padded / cut to ceil(L / 6) tokens.
    rng = np.random.default_rng(0)
    codes = rec.codes[: 8 * 60].reshape(8, 60).copy()
    codes[1, 10:13] = fasta.N
    codes[2, :] = fasta.N  # all N: 60 tokens, cut to 10
    codes[3, 59] = fasta.N
    codes[4, rng.integers(0, 60, 7)] = fasta.N
    got = tok.ids_from_codes(tf.constant(codes)).numpy()
    assert got.shape == (8, 10)
    for row, ids in zip(codes, got, strict=True):
        expect = tok.encode(fasta.decode_codes(row))[:10]
        np.testing.assert_array_equal(ids[: len(expect)], expect)
        assert (ids[len(expect) :] == tok.pad_id).all()


def test_tokens_of_reverse_complemented_windows_equal_encoding_the_reverse_complement():
    (rec,) = fasta.read_fasta(builtin.resolve("builtin:lambda_phage_NC_001416.fa.gz")[0])
    codes = rec.codes[:600].reshape(5, 120)
    rc = reverse_complement_codes(tf.constant(codes)).numpy()
    pairs = str.maketrans("ACGTN", "TGCAN")
    for name in ("char", "nt6", "kmer4"):
        tok = get_tokenizer(name)
        got = tok.ids_from_codes(tf.constant(rc)).numpy()
        for row, ids in zip(codes, got, strict=True):
            text = fasta.decode_codes(row).upper().translate(pairs)[::-1]
            np.testing.assert_array_equal(ids, tok.encode(text))


def kmer_id(kmer: str) -> int:
    """Hand rule: 5 + base-4 value with digits A0 C1 G2 T3."""
    return 5 + sum("ACGT".index(b) * 4 ** (len(kmer) - 1 - i) for i, b in enumerate(kmer))


@pytest.mark.parametrize(
    "sequence, expected, decoded",
    [
        ("ACGTA", [kmer_id("ACG"), kmer_id("CGT"), kmer_id("GTA")], "ACGTA"),
        # A and C sit only in k-mers that hold the N, so they decode as N (documented).
        ("ACNGTAC", [1, 1, 1, kmer_id("GTA"), kmer_id("TAC")], "NNNGTAC"),
        # Here an earlier k-mer without N covers them, so they come back.
        ("GGACNGTA", [kmer_id("GGA"), kmer_id("GAC"), 1, 1, 1, kmer_id("GTA")], "GGACNGTA"),
        ("ANA", [1], "NNN"),  # every k-mer covering the A's holds the N: documented loss
        ("acgT", [kmer_id("ACG"), kmer_id("CGT")], "ACGT"),
        ("AC", [], ""),  # shorter than k: no token
    ],
)
def test_kmer3_hand_checked_ids(sequence, expected, decoded):
    tok = get_tokenizer("kmer3")
    assert tok.vocab[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert tok.vocab_size == 5 + 64 and tok.default_mask_span == 3
    assert list(tok.encode(sequence)) == expected
    assert tok.decode(np.array(expected, np.int32)) == decoded


@pytest.mark.parametrize("name", ["kmer3", "kmer6"])
def test_kmer_round_trips_real_genomes_and_the_batched_path_agrees(name):
    tok = get_tokenizer(name)
    for genome in builtin.GENOMES:
        (rec,) = fasta.read_fasta(builtin.resolve(f"builtin:{genome}")[0])
        text = rec.sequence()[:20_000]
        assert tok.decode(tok.encode(text)) == text.upper()  # the built-in genomes have no N
    codes = rec.codes[:600].reshape(6, 100).copy()
    codes[1, 50] = fasta.N
    got = tok.ids_from_codes(tf.constant(codes)).numpy()
    assert got.shape == (6, tok.num_tokens(100))
    for row, ids in zip(codes, got, strict=True):
        np.testing.assert_array_equal(ids, tok.encode(fasta.decode_codes(row)))


@pytest.mark.parametrize("name", ["char", "nt6", "kmer3"])
def test_repeat_fraction_of_each_token(name):
    tok = get_tokenizer(name)
    text = "ACGTACgtacgtNNacgtACGTAC"
    codes = fasta.encode_text(text)[None, :]
    frac = tok.repeat_fraction(tf.constant(codes)).numpy()[0]
    assert frac.shape == (tok.num_tokens(len(text)),)
    if name == "char":
        np.testing.assert_array_equal(frac, [c.islower() for c in text])
    elif name == "nt6":  # ACGTAC | gtacgt | N | N | acgtAC | G | T | A | C
        np.testing.assert_allclose(frac, [0, 1, 0, 0])  # the N tokens push the rest out
        whole = tok._batch_repeat_fraction(codes, 9)[0]
        np.testing.assert_allclose(whole, [0, 1, 0, 0, 4 / 6, 0, 0, 0, 0], rtol=1e-6)
    else:
        expect = [sum(c.islower() for c in text[i : i + 3]) / 3 for i in range(len(text) - 2)]
        np.testing.assert_allclose(frac, expect, rtol=1e-6)
