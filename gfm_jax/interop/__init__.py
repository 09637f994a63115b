"""Import and export Hugging Face checkpoints (ESM / Nucleotide Transformer). Needs the optional
`interop` extra (torch, transformers, safetensors): `pip install -e '.[interop]'`."""
