"""The two connection modules: the expert encoder (question -> features) and decoder (expert output -> slots).

Encoder: per-feature learned attention queries over the frozen LLM's hidden states at layer `j`,
one small head per column (numeric: value in [0,1] and a missing logit; categorical: levels plus
missing). Decoder: SwiGLU from the expert's class probabilities to `num_tokens` hidden states,
LayerNorm. Together they are a few MB, saved as safetensors plus a JSON config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema

CONNECTOR_FORMAT = "llamdex.connectors/v1"


@dataclass
class ConnectorConfig:
    base_model_id: str
    schema_digest: str
    hidden_size: int
    num_layers: int
    num_tokens: int = 4
    encoder_layer: int = 8
    inject_layer: int = 20
    encoder_dim: int = 256
    encoder_heads: int = 4
    decoder_ffn: int = 512
    format: str = CONNECTOR_FORMAT
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.encoder_layer <= self.inject_layer < self.num_layers:
            raise ValueError(f"need 1 <= encoder_layer ({self.encoder_layer}) <= inject_layer ({self.inject_layer}) < num_layers ({self.num_layers}) so one forward pass suffices")
        if self.num_tokens < 1:
            raise ValueError("num_tokens must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ExpertEncoder(nn.Module):
    """Reads each schema column out of the question's hidden states."""

    def __init__(self, feature_encoder: FeatureEncoder, hidden_size: int, dim: int = 256, heads: int = 4):
        super().__init__()
        self.fe = feature_encoder
        self.heads, self.dh = heads, dim // heads
        n = len(feature_encoder.blocks)
        self.norm = nn.LayerNorm(hidden_size)
        self.key = nn.Linear(hidden_size, dim)
        self.value = nn.Linear(hidden_size, dim)
        self.queries = nn.Parameter(torch.randn(n, heads, self.dh) * 0.02)
        self.column_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2 if b.kind == "numeric" else b.num_levels + 1))
            for b in feature_encoder.blocks
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        B, T, _ = h.shape
        x = self.norm(h.float())
        k = self.key(x).view(B, T, self.heads, self.dh)
        v = self.value(x).view(B, T, self.heads, self.dh)
        scores = torch.einsum("fhd,bthd->bfht", self.queries, k) / math.sqrt(self.dh)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        pooled = torch.einsum("bfht,bthd->bfhd", scores.softmax(-1), v).reshape(B, len(self.column_heads), -1)
        return [head(pooled[:, i]) for i, head in enumerate(self.column_heads)]

    def loss(self, outs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """MSE on present numeric values + BCE on their missing flag; CE on categorical levels."""
        total = 0.0
        for b, o, t in zip(self.fe.blocks, outs, targets):
            if b.kind == "numeric":
                present = t[:, 1] < 0.5
                mse = F.mse_loss(o[present, 0], t[present, 0]) if present.any() else o.sum() * 0
                total = total + 10.0 * mse + F.binary_cross_entropy_with_logits(o[:, 1], t[:, 1])
            else:
                total = total + F.cross_entropy(o, t)
        return total / len(outs)

    def to_expert_input(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """Hard decisions in the shared encoding (the expert was trained on exact one-hots)."""
        parts = []
        for b, o in zip(self.fe.blocks, outs):
            if b.kind == "numeric":
                missing = (o[:, 1] > 0).float()
                parts.append(torch.stack([o[:, 0].clamp(0, 1) * (1 - missing), missing], dim=1))
            else:
                parts.append(F.one_hot(o.argmax(-1), b.num_levels + 1).float())
        return torch.cat(parts, dim=1)


class ExpertDecoder(nn.Module):
    """SwiGLU: expert class probabilities -> `num_tokens` hidden states for the reserved slots."""

    def __init__(self, num_classes: int, hidden_size: int, num_tokens: int, ffn: int = 512):
        super().__init__()
        self.num_tokens, self.hidden_size = num_tokens, hidden_size
        self.gate = nn.Linear(num_classes, ffn)
        self.up = nn.Linear(num_classes, ffn)
        self.down = nn.Linear(ffn, num_tokens * hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        x = self.down(F.silu(self.gate(probs)) * self.up(probs))
        return self.norm(x.view(-1, self.num_tokens, self.hidden_size))


def build_connectors(config: ConnectorConfig, schema: PublicSchema) -> tuple[ExpertEncoder, ExpertDecoder]:
    fe = FeatureEncoder(schema)
    enc = ExpertEncoder(fe, config.hidden_size, config.encoder_dim, config.encoder_heads)
    dec = ExpertDecoder(schema.label.num_classes, config.hidden_size, config.num_tokens, config.decoder_ffn)
    return enc, dec


def save_connectors(folder: str | Path, config: ConnectorConfig, encoder: ExpertEncoder, decoder: ExpertDecoder, schema: PublicSchema) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().contiguous() for k, v in encoder.state_dict().items()}
    tensors |= {f"decoder.{k}": v.detach().contiguous() for k, v in decoder.state_dict().items()}
    tmp = folder / ".connectors.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "connectors.safetensors")
    schema.save(folder / "schema.json")
    (folder / "connectors.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return folder


def load_connectors(folder: str | Path) -> tuple[ConnectorConfig, ExpertEncoder, ExpertDecoder, PublicSchema]:
    from safetensors.torch import load_file

    folder = Path(folder)
    raw = json.loads((folder / "connectors.json").read_text())
    if raw.get("format") != CONNECTOR_FORMAT:
        raise ValueError(f"{folder}: connector format {raw.get('format')!r} is not {CONNECTOR_FORMAT!r}")
    config = ConnectorConfig(**raw)
    schema = PublicSchema.load(folder / "schema.json")
    if schema.digest != config.schema_digest:
        raise ValueError(f"{folder}: schema.json digest {schema.digest} does not match connectors.json {config.schema_digest}")
    enc, dec = build_connectors(config, schema)
    tensors = load_file(str(folder / "connectors.safetensors"))
    enc.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
    dec.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
    enc.eval(), dec.eval()
    return config, enc, dec, schema
