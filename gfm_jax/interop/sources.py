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


def _from_hub(source: str, repo: str, revision: str | None) -> pathlib.Path:
    try:
        from huggingface_hub import constants, errors, hf_hub_download
    except ImportError:
        raise UserError("hf: ids need huggingface_hub: pip install -e '.[interop]'") from None

    missing: list[str] = []

    def fetch(name: str) -> pathlib.Path | None:
        """The file's local path; None if the repository has no such file."""
        try:
            return pathlib.Path(hf_hub_download(repo, name, revision=revision))
        except errors.LocalEntryNotFoundError:  # offline or unreachable, and not cached
            missing.append(name)
            return None
        except errors.EntryNotFoundError:  # the hub answered: the repository has no such file
            return None
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
            raise UserError(f"{source}: {type(e).__name__} ({str(e).splitlines()[0]})") from None
        except (errors.HFValidationError, ValueError) as e:
            raise UserError(f"{source}: {str(e).splitlines()[0]}") from None

    groups = {"config.json": ("config.json",), "weights": WEIGHT_FILES, "vocab": TOKENIZER_FILES}
    found = {group: _first_found(fetch, names) for group, names in groups.items()}
    for name in OPTIONAL_FILES:
        fetch(name)
    optional = set(OPTIONAL_FILES)
    weights = found["weights"]
    if weights is not None and weights.name.endswith(".index.json"):
        for shard in sorted(set(_weight_map(weights).values())):
            optional.discard(shard)
            fetch(shard)
    absent = [" or ".join(groups[g]) for g, path in found.items() if path is None]
    uncached = [n for n in missing if n not in optional and not any(n in a for a in absent)]
    if not absent and not uncached:
        return found["config.json"].parent
    if any(n not in optional for n in missing):
        where = "offline" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        raise UserError(
            f"{source}: {'; '.join(absent + uncached)} not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {where}; download them where the hub is reachable "
            "(the same command, or `hf download`), or import a local directory"
        )
    raise UserError(f"{source}: the repository has no {'; '.join(absent)}; is it a checkpoint?")


def _first_found(fetch, names: tuple[str, ...]) -> pathlib.Path | None:
    for name in names:
        path = fetch(name)
        if path is not None:
            return path
    return None


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
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            loaded = load_file(str(path))
        else:
            import torch

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
