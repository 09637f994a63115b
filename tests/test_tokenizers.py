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
