"""Zero-shot variant-effect scores from a masked-LM: masked-marginal LLR and embedding distance.

    python -m gfm_jax.evaluate vep --workdir runs/tiny --vcf variants.vcf.gz \
        --fasta reference.fa.gz --out scores.tsv [--window BASES]

For each variant a window of `--window` bases (default: the pretraining window) is cut from the
reference around it; the ALT window is the same with the allele swapped in.

The LLR rule, the same for every tokenizer: tokenize the REF and the ALT window; if they give the
same number of tokens, the tokens that differ are the variant's. All of them are masked at once in
the REF window, and

    LLR = sum over differing tokens d of [log p(alt_d) - log p(ref_d)] / c

where c is how many tokens cover one base: 1 for single-nucleotide, 6-mer and BPE tokens, k
for overlapping k-mers (a SNV changes the k tokens that cover it; dividing by k keeps one base
change on the scale of the other tokenizers). For the Nucleotide Transformer 6-mers an SNV sits
inside one 6-mer token, so the LLR compares the two 6-mers, REF's and ALT's, given the masked
context. Positive = the model prefers ALT. The score is the mean of the forward strand and the
reverse complement (both windows complemented and reversed, the same rule applied).

Indels (an indel shifts every later base: with 6-mers or BPE it can keep the token count yet
change every later token) and substitutions whose windows tokenize to different lengths (BPE
merges that change around the variant) have no tokens that pair up: their LLR is left empty
(nan) with a note, and only the embedding distance is given:
the L2 and cosine distances between the mean-pooled encoder outputs of the unmasked REF and ALT
windows, averaged over both strands.

Checks: a CHROM missing from the FASTA and a REF that does not match it are errors listing the
variants; alleles longer than the window are skipped, listed on stdout and in `<out>.skipped.tsv`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gfm_jax.data import builtin, fasta
from gfm_jax.data.tokenizers import OverlappingKmerTokenizer, Tokenizer
from gfm_jax.data.vcf import Variant, read_vcf
from gfm_jax.errors import UserError
from gfm_jax.evaluate import embed, pretrained
from gfm_jax.models.heads import MaskedLM

COLUMNS = (
    "chrom", "pos", "id", "ref", "alt", "kind", "llr_forward", "llr_reverse", "llr",
    "embed_l2", "embed_cosine", "note",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MaskedItem:
    """One strand of one variant, ready for the model."""

    ids: np.ndarray  # int32 [L]: CLS + the REF window's tokens, the differing ones masked
    positions: np.ndarray  # int32 [K]: the masked token positions (CLS counted)
    ref_tokens: np.ndarray  # int32 [K]
    alt_tokens: np.ndarray  # int32 [K]
    coverage: int  # tokens covering one base


def masked_item(tokenizer: Tokenizer, ref_window: str, alt_window: str) -> MaskedItem | None:
    """The masked-marginal input of one strand, or None when REF and ALT do not pair up.

    Only substitutions pair up: an indel shifts every later base, and with 6-mers or BPE it can
    keep the token count while changing the tokens after it, so indels get no LLR at all."""
    if len(ref_window) != len(alt_window):
        return None
    ref_ids = np.concatenate([[tokenizer.cls_id], tokenizer.encode(ref_window)]).astype(np.int32)
    alt_ids = np.concatenate([[tokenizer.cls_id], tokenizer.encode(alt_window)]).astype(np.int32)
    if len(ref_ids) != len(alt_ids):
        return None
    positions = np.flatnonzero(ref_ids != alt_ids).astype(np.int32)
    masked = ref_ids.copy()
    masked[positions] = tokenizer.mask_id
    coverage = tokenizer.k if isinstance(tokenizer, OverlappingKmerTokenizer) else 1
    return MaskedItem(masked, positions, ref_ids[positions], alt_ids[positions], coverage)


def llr(item: MaskedItem, logp_KxV: np.ndarray) -> float:
    """The LLR of one strand from the log-probabilities at the masked positions."""
    k = np.arange(len(item.positions))
    return float(
        np.sum(logp_KxV[k, item.alt_tokens] - logp_KxV[k, item.ref_tokens]) / item.coverage
    )


LogProbFn = Callable[[Sequence[MaskedItem]], list[np.ndarray]]


def strand_items(tokenizer: Tokenizer, ref_window: str, alt_window: str) -> list[MaskedItem | None]:
    """[forward, reverse-complement] masked items of one variant (None: no LLR on that strand)."""
    return [
        masked_item(tokenizer, ref_window, alt_window),
        masked_item(
            tokenizer, fasta.reverse_complement(ref_window), fasta.reverse_complement(alt_window)
        ),
    ]


def strand_llrs(
    tokenizer: Tokenizer, logprobs: LogProbFn, ref_window: str, alt_window: str
) -> tuple[float, float, float]:
    """(forward, reverse, mean) LLR of one variant; nan where REF and ALT do not pair up."""
    items = strand_items(tokenizer, ref_window, alt_window)
    scored = iter(logprobs([it for it in items if it is not None]))
    fwd, rev = (llr(it, next(scored)) if it is not None else float("nan") for it in items)
    return fwd, rev, (fwd + rev) / 2.0


def make_logprobs(loaded: pretrained.Loaded, batch_size: int = 64) -> LogProbFn:
    """Log-probabilities [K_i, V] at each item's masked positions, from the masked-LM."""
    mlm = MaskedLM(loaded.pretrained.model_config, loaded.mesh, loaded.rules)

    @jax.jit
    def apply(params, batch):
        logits = mlm.apply({"params": params}, batch["ids"], batch["mask"], batch["positions"])
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    def logprobs(items: Sequence[MaskedItem]) -> list[np.ndarray]:
        if not items:
            return []
        k_max = max(len(it.positions) for it in items)
        length = max(len(it.ids) for it in items)
        ids = np.full((len(items), length), loaded.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(items), length), bool)
        pos = np.zeros((len(items), max(k_max, 1)), np.int32)
        for i, it in enumerate(items):
            ids[i, : len(it.ids)], mask[i, : len(it.ids)] = it.ids, True
            pos[i, : len(it.positions)] = it.positions
        batch = {"ids": ids, "mask": mask, "positions": pos}
        out = pretrained.run_batched(apply, loaded, batch, batch_size)
        return [out[i, : len(it.positions)] for i, it in enumerate(items)]

    return logprobs


def _windows(sequence: str, v: Variant, window: int) -> tuple[str, str]:
    # An insertion makes the ALT window longer: shrink both so neither exceeds the window the
    # model was trained on (learned position tables end there).
    window = max(window - max(len(v.alt) - len(v.ref), 0), len(v.ref))
    start = v.pos - 1 - (window - len(v.ref)) // 2
    start = min(max(start, 0), max(len(sequence) - window, 0))
    ref_window = sequence[start : start + window]
    offset = v.pos - 1 - start
    alt_window = ref_window[:offset] + v.alt + ref_window[offset + len(v.ref) :]
    return ref_window, alt_window


def check_against_reference(
    variants: Sequence[Variant], genome: dict[str, str], vcf: str, ref: str
):
    missing = sorted({v.chrom for v in variants} - set(genome))
    if missing:
        raise UserError(
            f"{vcf}: CHROM {missing} not in {ref} (its records: {sorted(genome)[:10]}); "
            "use the reference the VCF was called against"
        )

    def at(v: Variant) -> str:
        return genome[v.chrom][v.pos - 1 : v.pos - 1 + len(v.ref)]

    name = pathlib.Path(vcf).name
    bad = [
        f"{name}:{v.line} {v.label()} (reference has {at(v)[:12] or 'nothing: past its end'})"
        for v in variants
        if at(v) != v.ref
    ]
    if bad:
        raise UserError(
            f"{vcf}: {len(bad)} REF alleles do not match {ref}: "
            + "; ".join(bad[:20])
            + ("; ..." if len(bad) > 20 else "")
            + "; use the reference the VCF was called against"
        )


def score_variants(
    loaded: pretrained.Loaded, variants: Sequence[Variant], genome: dict[str, str], window: int
) -> tuple[list[dict], list[tuple[str, str]]]:
    """One row per scorable variant (COLUMNS), and the skipped ones with the reason."""
    rows, skipped, pairs = [], [], []
    for v in variants:
        if max(len(v.ref), len(v.alt)) > window:
            skipped.append((v.label(), f"allele longer than the {window}-base window"))
            continue
        pairs.append((v, *_windows(genome[v.chrom], v, window)))
    if not pairs:
        return rows, skipped
    # Every strand of every variant in one batched pass through the masked-LM.
    items = [
        (i, strand, it)
        for i, (_, r, a) in enumerate(pairs)
        for strand, it in enumerate(strand_items(loaded.tokenizer, r, a))
        if it is not None
    ]
    llr_Nx2 = np.full((len(pairs), 2), np.nan)
    logps = make_logprobs(loaded)([it for _, _, it in items])
    for (i, strand, it), logp in zip(items, logps, strict=True):
        llr_Nx2[i, strand] = llr(it, logp)
    texts = [
        w
        for _, r, a in pairs
        for w in (r, a, fasta.reverse_complement(r), fasta.reverse_complement(a))
    ]
    names = [f"{v.label()} window {i}" for v, _, _ in pairs for i in range(4)]
    emb = embed.embed_sequences(loaded, texts, names, "mean")
    emb = emb.reshape(len(pairs), 2, 2, -1)  # variant, strand, (ref, alt), D
    for (v, _, _), (fwd, rev), e in zip(pairs, llr_Nx2.tolist(), emb, strict=True):
        l2 = np.linalg.norm(e[:, 0] - e[:, 1], axis=-1).mean()
        cos = 1.0 - np.mean(
            np.sum(e[:, 0] * e[:, 1], axis=-1)
            / np.maximum(np.linalg.norm(e[:, 0], axis=-1) * np.linalg.norm(e[:, 1], axis=-1), 1e-12)
        )
        note = ""
        if not (np.isfinite(fwd) and np.isfinite(rev)):
            note = "indel: no LLR" if v.kind in ("ins", "del") else "tokens do not pair up: no LLR"
        rows.append(
            dict(
                chrom=v.chrom, pos=v.pos, id=v.id, ref=v.ref, alt=v.alt, kind=v.kind,
                llr_forward=fwd, llr_reverse=rev, llr=(fwd + rev) / 2.0,
                embed_l2=float(l2), embed_cosine=float(cos), note=note,
            )
        )  # fmt: skip
    return rows, skipped


def read_genome(path: str) -> dict[str, str]:
    """Record name -> uppercase sequence of a (gzip) FASTA."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise UserError(f"--fasta {path!r} not found")
    return {r.name: r.sequence().upper() for r in fasta.read_fasta(p)}


def read_inputs(vcf_path: str, fasta_path: str) -> tuple[list[Variant], list, dict[str, str]]:
    """(variants, unplaceable ones with the reason, genome) of a VCF and its reference (paths
    or builtin:<name>), every REF checked against the reference."""
    (vcf_file,) = builtin.resolve(vcf_path)
    (fasta_file,) = builtin.resolve(fasta_path)
    vcf_path, fasta_path = str(vcf_file), str(fasta_file)
    variants, unplaceable = read_vcf(vcf_path)
    genome = read_genome(fasta_path)
    check_against_reference(variants, genome, vcf_path, fasta_path)
    return variants, list(unplaceable), genome


def run(
    workdir: str, vcf_path: str, fasta_path: str, out: str, window: int = 0, **load_options: Any
) -> dict:
    """Scores a VCF (a path or builtin:<name>) against its reference; writes the TSVs.
    `load_options`: pretrained.load's mesh_shape and model_overrides."""
    variants, unplaceable, genome = read_inputs(vcf_path, fasta_path)
    loaded = pretrained.load(workdir, **load_options)
    if window <= 0:
        window, _ = pretrained.window(loaded)
    rows, skipped = score_variants(loaded, variants, genome, window)
    skipped = unplaceable + skipped
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(COLUMNS)]
    for r in rows:
        lines.append(
            "\t".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS)
        )
    out_path.write_text("\n".join(lines) + "\n")
    skipped_path = out_path.with_name(out_path.name + ".skipped.tsv")
    skipped_path.write_text("variant\treason\n" + "".join(f"{v}\t{why}\n" for v, why in skipped))
    for v, why in skipped:
        print(f"skipped {v}: {why}")
    n_llr = sum(np.isfinite(r["llr"]) for r in rows)
    print(
        f"scored {len(rows)} variants ({n_llr} with an LLR), skipped {len(skipped)}; "
        f"wrote {out_path}"
    )
    return {
        "scored": len(rows),
        "with_llr": int(n_llr),
        "skipped": len(skipped),
        "out": str(out_path),
        "window": window,
    }
