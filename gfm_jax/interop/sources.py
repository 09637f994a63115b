"""Where a checkpoint's files come from, and reading them.

A source is a local directory in Hugging Face layout, or `hf:<org>/<name>[@revision]`, which
`huggingface_hub` resolves: it downloads the files the import needs when the hub can be reached,
and otherwise (offline with `HF_HUB_OFFLINE=1`, or no network) takes them from the local cache
(`HF_HUB_CACHE`, by default `~/.cache/huggingface/hub`); files that are neither reachable nor
cached are named in the error. Weights are read from safetensors or PyTorch files, whole or
sharded (with their `.index.json`).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from gfm_jax.errors import UserError

# Weight files in the order they are preferred; the index files list sharded weights.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Tokenizer files: ESM-style checkpoints ship vocab.txt, BPE ones tokenizer.json.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
OPTIONAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_HF_ID = re.compile(r"^hf:([\w.-]+/[\w.-]+)(?:@([\w./-]+))?$")


def resolve(source: str) -> pathlib.Path:
    """The local directory holding the checkpoint `source` names."""
    if not source.startswith("hf:"):
        path = pathlib.Path(source)
        if not path.is_dir():
            raise UserError(
                f"{source}: no such directory; give a Hugging Face checkpoint directory or "
                "hf:<org>/<name>[@revision]"
            )
        return path
    match = _HF_ID.match(source)
    if not match:
        raise UserError(f"{source}: write a Hugging Face id as hf:<org>/<name>[@revision]")
    return _from_hub(source, match.group(1), match.group(2))


GROUPS = (("config.json",), WEIGHT_FILES, TOKENIZER_FILES)


def _from_hub(source: str, repo: str, revision: str | None) -> pathlib.Path:
    """Online: lists the repository once and downloads the files the import reads. Offline, or
    when the hub cannot be reached: the cached snapshot of the revision, checked for them."""
    try:
        import huggingface_hub as hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise UserError("hf: ids need huggingface_hub: pip install -e '.[interop]'") from None
    why = "offline (HF_HUB_OFFLINE)"
    if not constants.HF_HUB_OFFLINE and not _reachable(constants.ENDPOINT):
        why = f"the hub could not be reached ({constants.ENDPOINT})"
    elif not constants.HF_HUB_OFFLINE:
        try:
            listed = set(hub.list_repo_files(repo, revision=revision))
        except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
            raise UserError(
                f"{source}: {type(e).__name__}: check the id; a gated or private model needs "
                "`hf auth login` (or HF_TOKEN) with access granted on its page"
            ) from None
        except errors.RevisionNotFoundError:
            raise UserError(
                f"{source}: no such revision; check the branch, tag or commit"
            ) from None
        except Exception as e:  # no network, proxy, hub down: fall back to the cache
            why = f"the hub could not be reached ({type(e).__name__})"
        else:
            chosen = _choose(source, lambda name: name in listed)
            paths = [pathlib.Path(hub.hf_hub_download(repo, n, revision=revision)) for n in chosen]
            if chosen[1].endswith(".index.json"):
                for shard in sorted(set(_weight_map(paths[1]).values())):
                    hub.hf_hub_download(repo, shard, revision=revision)
            return paths[0].parent
    try:
        snapshot = pathlib.Path(
            hub.snapshot_download(repo, revision=revision, local_files_only=True)
        )
    except Exception:  # not cached at all
        raise UserError(
            f"{source}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
            "download it where the hub is reachable (the same command, or `hf download`), or "
            "import a local directory"
        ) from None
    _choose(source, lambda name: (snapshot / name).is_file(), snapshot, why)
    return snapshot


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the hub opens: without network the answer comes at once,
    where huggingface_hub would retry each request with back-off."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _choose(source: str, exists, snapshot: pathlib.Path | None = None, why: str = "") -> list[str]:
    """The files of the repository the import reads: config.json, the first weight format it
    has (and its shards), the first tokenizer file; an error names a group it lacks."""
    chosen = []
    for names in GROUPS:
        name = next((n for n in names if exists(n)), None)
        if name is None:
            where = "the repository has" if snapshot is None else "the cached snapshot has"
            extra = f" (it is not downloaded: {why})" if snapshot is not None else ""
            raise UserError(
                f"{source}: {where} no {' or '.join(names)}{extra}; download the checkpoint "
                "where the hub is reachable, or import a local directory"
            )
        chosen.append(name)
    if snapshot is not None and chosen[1].endswith(".index.json"):
        shards = sorted(set(_weight_map(snapshot / chosen[1]).values()))
        if not all(exists(n) for n in shards):
            raise UserError(f"{source}: weight shards are missing from the cache ({why})")
    chosen += [n for n in OPTIONAL_FILES if exists(n)]
    return chosen


def _weight_map(index: pathlib.Path) -> dict[str, str]:
    try:
        return json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{index}: not a weight index ({e}); is the download complete?") from None


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_weights(src: pathlib.Path) -> dict[str, np.ndarray]:
    """The state dict as float32 numpy arrays, from safetensors or PyTorch files (sharded or
    not)."""
    name = next((n for n in WEIGHT_FILES if (src / n).is_file()), None)
    if name is None:
        raise UserError(f"{src}: no weights ({' / '.join(WEIGHT_FILES)})")
    if name.endswith(".index.json"):
        files = sorted(set(_weight_map(src / name).values()))
    else:
        files = [name]
    weights: dict[str, np.ndarray] = {}
    for file in files:
        weights.update(_read_weight_file(src / file))
    return weights


def _read_weight_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: the weight shard is missing; is the download complete?")
    try:
        import torch

        if path.suffix == ".safetensors":  # through torch: numpy has no bfloat16
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        loaded = {k: v.float().numpy() for k, v in state.items()}
    except Exception as e:  # safetensors and torch raise their own types on a damaged file
        raise UserError(f"{path}: unreadable weights ({type(e).__name__}: {e})") from None
    return {k: np.asarray(v, np.float32) for k, v in loaded.items()}


def write_checkpoint(out: pathlib.Path, state: dict[str, np.ndarray], config: dict) -> None:
    """config.json and model.safetensors of an exported checkpoint."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
