import gzip

import numpy as np
import pytest

from gfm_jax.data import builtin, fasta
from gfm_jax.data.corpus import load_corpus
from gfm_jax.errors import UserError


def test_builtin_genomes_have_published_lengths():
    lengths = {p.name: [len(r) for r in fasta.read_fasta(p)] for p in builtin.resolve("builtin")}
    assert lengths == {
        "lambda_phage_NC_001416.fa.gz": [48502],
        "yeast_chrI.fa.gz": [230208],
        "arabidopsis_thaliana_chloroplast_NC_000932.fa.gz": [154478],
        "human_hg19_chr17_1-40000.fa.gz": [40000],
    }


def test_soft_mask_is_kept_as_a_bit():
    (rec,) = fasta.read_fasta(builtin.resolve("builtin:human_hg19_chr17_1-40000.fa.gz")[0])
    soft = np.mean(rec.codes >= fasta.SOFT_MASK_BIT)
    assert 0.42 < soft < 0.45  # the data kit documents 43% lowercase
    # Text round trip keeps case exactly.
    with gzip.open(builtin.resolve("builtin:human_hg19_chr17_1-40000.fa.gz")[0], "rt") as f:
        text = "".join(line.strip() for line in f if not line.startswith(">"))
    assert rec.sequence() == text


def test_multi_record_crlf_iupac_and_plain_equals_gzip(tmp_path):
    content = ">one first record\r\nACGTN\r\nacgtR\r\n\r\n>two\r\nuuGG\r\n"
    plain, gz = tmp_path / "x.fa", tmp_path / "x.fa.gz"
    plain.write_bytes(content.encode())
    gz.write_bytes(gzip.compress(content.encode()))
    recs = fasta.read_fasta(plain)
    assert [r.name for r in recs] == ["one", "two"]
    assert recs[0].description == "one first record"
    assert recs[0].sequence() == "ACGTNacgtN"  # IUPAC R (A or G) becomes N
    assert recs[1].sequence() == "ttGG"  # RNA U is read as T
    for a, b in zip(recs, fasta.read_fasta(gz), strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)


@pytest.mark.parametrize(
    "content, message",
    [
        ("sequence,label\nACGT,EI\n", "x.fa:1: expected a FASTA header"),
        (">a\nACGT\n>a\nACGT\n", "x.fa:3: duplicate record name 'a'"),
        (">a\n>b\nACGT\n", "x.fa:1: record 'a' has no sequence"),
        (">a\nACGT\nAC*T\n", "x.fa:3: '*' is not a nucleotide"),
        ("", "no FASTA records"),
    ],
)
def test_malformed_fasta_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.fa"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        fasta.read_fasta(path)
    assert message in str(e.value)


def test_iupac_policy(tmp_path):
    path = tmp_path / "amb.fa"
    path.write_text(">a\nACGT\nACYT\n")
    assert fasta.read_fasta(path)[0].sequence() == "ACGTACNT"
    with pytest.raises(UserError, match=r"amb.fa:3: IUPAC ambiguity code 'Y'"):
        fasta.read_fasta(path, iupac="error")
    with pytest.raises(UserError, match="data.iupac"):
        fasta.read_fasta(path, iupac="drop")


def test_binary_and_missing_files(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="model.bin"):
        fasta.read_fasta(binary)
    with pytest.raises(UserError, match="not found"):
        fasta.read_fasta(tmp_path / "absent.fa")
    with pytest.raises(UserError, match="is a directory; name the FASTA files in it"):
        fasta.read_fasta(tmp_path)


def test_a_utf8_byte_order_mark_before_the_first_header_is_read_past(tmp_path):
    path = tmp_path / "bom.fa"
    path.write_bytes(b"\xef\xbb\xbf>chr1 from an editor\nACGT\n>chr2\nGG\n")
    records = fasta.read_fasta(path)
    assert [(r.name, r.sequence()) for r in records] == [("chr1", "ACGT"), ("chr2", "GG")]
    # Only at the start of the file: elsewhere the mark is not a base.
    path.write_bytes(b">chr1\nAC\xef\xbb\xbfGT\n")
    with pytest.raises(UserError, match="bom.fa:2"):
        fasta.read_fasta(path)


def test_corpus_splits_are_disjoint_and_cover_records():
    corpus = load_corpus(["builtin"])
    train, val = corpus.split("train", 0.1, 0.3), corpus.split("val", 0.1, 0.3)
    covered = np.zeros(corpus.codes.size, np.int32)
    for seg in (train, val):
        for s, e in zip(seg.starts, seg.ends, strict=True):
            covered[s:e] += 1
    assert covered.min() == 1 and covered.max() == 1  # every base in exactly one split
    assert (val.ends - val.starts).sum() == pytest.approx(0.1 * corpus.codes.size, rel=1e-3)


def test_a_truncated_gzip_file_is_a_clear_error(tmp_path):
    whole = gzip.compress(b">a\n" + b"ACGT" * 50_000 + b"\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"cut.fa.gz: cannot read .*is the gzip file complete"):
        fasta.read_fasta(path)


def test_a_bad_letter_is_reported_with_how_many_more_lines_have_one(tmp_path):
    path = tmp_path / "protein.fa"
    path.write_text(">p1\nACGT\nMKVLE\n>p2\nQQQQ\n>p3\nACGT\nLLLL\n")
    with pytest.raises(UserError) as e:
        fasta.read_fasta(path)
    assert str(e.value).startswith(
        f"{path}:3: 'L' is not a nucleotide or IUPAC code"
    )  # M, K, V: IUPAC
    assert "(and 2 more lines like it)" in str(e.value)
