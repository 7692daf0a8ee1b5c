"""The expert's architecture as data, so a provider rebuilds it from a spec and tensors alone.

No client code ever runs at the provider: the spec names only layer sizes and an activation from a
closed list, and the weights load through safetensors (never pickle).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protocol.errors import SpecError

SPEC_FORMAT = "llamdex.expert-mlp/v1"
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
MAX_WIDTH = 4096
MAX_LAYERS = 8


@dataclass(frozen=True)
class ExpertSpec:
    """MLP of the paper: Linear -> LayerNorm -> activation per hidden layer, then a linear head."""

    input_dim: int
    num_classes: int
    hidden: tuple[int, ...] = (400, 200)
    activation: str = "relu"
    layer_norm: bool = True
    schema_digest: str = ""
    format: str = SPEC_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        self.validate()

    def validate(self) -> None:
        if self.format != SPEC_FORMAT:
            raise SpecError(f"expert spec: format {self.format!r} is not supported; expected {SPEC_FORMAT!r}")
        for name, v in (("input_dim", self.input_dim), ("num_classes", self.num_classes)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_WIDTH:
                raise SpecError(f"expert spec: {name} must be an integer in 1..{MAX_WIDTH}, got {v!r}")
        if self.num_classes < 2:
            raise SpecError("expert spec: num_classes must be at least 2")
        if not 1 <= len(self.hidden) <= MAX_LAYERS or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise SpecError(f"expert spec: hidden must be 1..{MAX_LAYERS} integers in 1..{MAX_WIDTH}, got {list(self.hidden)!r}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"expert spec: activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> "ExpertSpec":
        if not isinstance(d, dict):
            raise SpecError("expert spec must be a JSON object")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - allowed
        if unknown:
            raise SpecError(f"expert spec: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
        try:
            return cls(**{**d, "hidden": tuple(d.get("hidden", (400, 200)))})
        except TypeError as e:
            raise SpecError(f"expert spec: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "ExpertSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise SpecError(f"expert spec {path}: not valid JSON: {e}") from None

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in build_expert(self).state_dict().items()}


class ExpertMLP(nn.Module):
    """Tabular classifier; outputs logits over the label's classes."""

    def __init__(self, spec: ExpertSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.input_dim
        for h in spec.hidden:
            layers.append(nn.Linear(width, h))
            if spec.layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(ACTIVATIONS[spec.activation]())
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_expert(spec: ExpertSpec) -> ExpertMLP:
    return ExpertMLP(spec)


def load_expert_state(spec: ExpertSpec, tensors: dict[str, torch.Tensor]) -> ExpertMLP:
    """Builds the expert from its spec and loads tensors after checking every name, shape and dtype."""
    model = build_expert(spec)
    expected = model.state_dict()
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        raise SpecError(f"expert tensors do not match the spec: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise SpecError(f"expert tensor {k!r} has shape {tuple(t.shape)}, the spec needs {tuple(expected[k].shape)}")
        if not t.dtype.is_floating_point:
            raise SpecError(f"expert tensor {k!r} has dtype {t.dtype}; floating point required")
        if not torch.isfinite(t).all():
            raise SpecError(f"expert tensor {k!r} contains NaN or infinity")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    model.eval()
    return model


def save_expert(model: ExpertMLP, folder: str | Path) -> None:
    """Writes `expert.safetensors` and `expert.json` (the spec)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "expert.safetensors"))
    (folder / "expert.json").write_text(model.spec.to_json())


def load_expert(folder: str | Path) -> ExpertMLP:
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = ExpertSpec.load(folder / "expert.json")
    return load_expert_state(spec, load_file(str(folder / "expert.safetensors")))
