"""The two connection modules: the expert encoder (question -> features) and decoder (expert output -> slots).

Encoder: per-feature learned attention queries over the frozen LLM's hidden states at layer `j`,
one small head per column (categorical: levels plus missing; numeric: a missing logit), and for
numeric columns a learned pointer onto the number in the question that states the column's value. Decoder: SwiGLU from the expert's class probabilities to `num_tokens` hidden states,
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

CONNECTOR_FORMAT = "llamdex.connectors/v2"  # v2: numeric columns read through a pointer onto stated numbers


@dataclass
class ConnectorConfig:
    base_model_id: str
    schema_digest: str
    hidden_size: int
    num_layers: int
    num_tokens: int = 4
    encoder_layer: int = 12
    inject_layer: int = 20
    encoder_dim: int = 256
    encoder_heads: int = 4
    encoder_window: int = 12
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
    """Reads each schema column out of the question's hidden states.

    Categorical columns and every column's "missing" flag come from per-column attention pooling
    over the layer-`j` states. A numeric column's value comes from a learned pointer: the column's
    query scores every number the question states (at the number's last token, whose hidden state
    has seen the field name before it), and the value of the chosen number is taken from the text
    (`QueryBatch.numbers`), scaled by the column's public range. The small LLM cannot carry a
    multi-digit number precisely in its hidden states, but it can tell which field a number belongs to.
    """

    def __init__(self, feature_encoder: FeatureEncoder, hidden_size: int, dim: int = 256, heads: int = 4, window: int = 12):
        super().__init__()
        self.fe = feature_encoder
        self.window = window
        self.heads, self.dh, self.dim = heads, dim // heads, dim
        n = len(feature_encoder.blocks)
        self.numeric = [i for i, b in enumerate(feature_encoder.blocks) if b.kind == "numeric"]
        self.norm = nn.LayerNorm(hidden_size)
        self.key = nn.Linear(hidden_size, dim)
        self.value = nn.Linear(hidden_size, dim)
        self.queries = nn.Parameter(torch.randn(n, heads, self.dh) * 0.02)
        self.column_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1 if b.kind == "numeric" else b.num_levels + 1))
            for b in feature_encoder.blocks
        )
        # A number's key sees the `window` tokens ending at it: the field name usually precedes the value.
        self.pointer_proj = nn.Linear(hidden_size, dim // 2)
        self.pointer_key = nn.Sequential(nn.Linear(window * (dim // 2), dim), nn.GELU(), nn.Linear(dim, dim))
        self.pointer_queries = nn.Parameter(torch.randn(len(self.numeric), dim) * 0.02)
        cols = [feature_encoder.blocks[i].column for i in self.numeric]
        self.register_buffer("num_min", torch.tensor([float(c.min) for c in cols]).view(1, -1, 1), persistent=False)
        self.register_buffer("num_span", torch.tensor([float(c.max - c.min) for c in cols]).view(1, -1, 1), persistent=False)
        # Half a unit of the coarsest printed precision (the verbalizer may drop one decimal), in [0, 1] units.
        tol = [0.5 if c.type == "int" or not c.decimals else 0.5 * 10.0 ** -(c.decimals - 1) for c in cols]
        self.register_buffer("num_tol", (torch.tensor(tol) * 1.001).view(1, -1) / self.num_span.view(1, -1), persistent=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The encoder's own parameters (its layers re-draw theirs): small random column queries."""
        with torch.no_grad():
            nn.init.normal_(self.queries, std=0.02, generator=generator)
            nn.init.normal_(self.pointer_queries, std=0.02, generator=generator)

    def _pointer(self, x: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores (B, C, T) of each stated number for each numeric column, their scaled values, and which positions hold one."""
        valid = mask & torch.isfinite(numbers)
        z = self.pointer_proj(x) * mask[..., None]
        # Keys only where a number ends (a few positions per question): z[t], z[t-1], ..., z[t-window+1].
        b_idx, t_idx = valid.nonzero(as_tuple=True)
        back = t_idx[:, None] - torch.arange(self.window, device=z.device)[None, :]
        win = z[b_idx[:, None], back.clamp(min=0)] * (back >= 0)[..., None]
        keys = self.pointer_key(win.reshape(len(b_idx), self.window * z.shape[-1]))  # N may be 0
        scores = torch.full((z.shape[0], len(self.numeric), z.shape[1]), -1e9, dtype=z.dtype, device=z.device)
        scores[b_idx, :, t_idx] = keys @ self.pointer_queries.T / math.sqrt(self.dim)
        values = (torch.nan_to_num(numbers.float())[:, None, :] - self.num_min) / self.num_span
        return scores, values, valid

    def _forward(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor):
        B, T, _ = h.shape
        x = self.norm(h.float())
        k = self.key(x).view(B, T, self.heads, self.dh)
        v = self.value(x).view(B, T, self.heads, self.dh)
        scores = torch.einsum("fhd,bthd->bfht", self.queries, k) / math.sqrt(self.dh)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        pooled = torch.einsum("bfht,bthd->bfhd", scores.softmax(-1), v).reshape(B, len(self.column_heads), -1)
        heads = [head(pooled[:, i]) for i, head in enumerate(self.column_heads)]
        ptr_scores, ptr_values, valid = self._pointer(x, mask, numbers)
        any_valid = valid.any(-1, keepdim=True)
        if self.training:  # differentiable expectation; the loss also supervises the pointer directly
            chosen = (ptr_scores.softmax(-1) * ptr_values).sum(-1)
        else:
            chosen = ptr_values.gather(-1, ptr_scores.argmax(-1, keepdim=True)).squeeze(-1)
        chosen = torch.where(any_valid, chosen, torch.full_like(chosen, 0.5))
        outs = list(heads)
        for c, i in enumerate(self.numeric):
            outs[i] = torch.cat([chosen[:, c:c + 1], heads[i]], dim=1)  # [value in [0, 1], missing logit]
        return outs, ptr_scores, ptr_values, valid

    def forward(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor) -> list[torch.Tensor]:
        return self._forward(h, mask, numbers)[0]

    def loss(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Numeric: cross-entropy of the pointer onto the stated number(s) equal to the true value
        (MSE of the expected value where none matches) + BCE on the missing flag; categorical: CE."""
        outs, ptr_scores, ptr_values, valid = self._forward(h, mask, numbers)
        total = 0.0
        for c, i in enumerate(self.numeric):
            o, t = outs[i], targets[i]
            present = t[:, 1] < 0.5
            match = valid & ((ptr_values[:, c] - t[:, :1]).abs() <= self.num_tol[:, c:c + 1]) & present[:, None]
            hit = match.any(-1)
            s = ptr_scores[:, c]
            if hit.any():
                ce = torch.logsumexp(s[hit], -1) - torch.logsumexp(s[hit].masked_fill(~match[hit], -1e9), -1)
                total = total + ce.sum() / max(int(present.sum()), 1)
            miss = present & ~hit
            if miss.any():
                total = total + 10.0 * F.mse_loss(o[miss, 0], t[miss, 0], reduction="sum") / max(int(present.sum()), 1)
            total = total + F.binary_cross_entropy_with_logits(o[:, 1], t[:, 1])
        for i, b in enumerate(self.fe.blocks):
            if b.kind != "numeric":
                total = total + F.cross_entropy(outs[i], targets[i])
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
    enc = ExpertEncoder(fe, config.hidden_size, config.encoder_dim, config.encoder_heads, config.encoder_window)
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


def read_connector_meta(folder: str | Path) -> dict[str, Any]:
    """The stored `connectors.json`, refused unless it is in the current connector format."""
    raw = json.loads((Path(folder) / "connectors.json").read_text())
    if raw.get("format") != CONNECTOR_FORMAT:
        raise ValueError(f"{folder}: connector format {raw.get('format')!r} is not {CONNECTOR_FORMAT!r}")
    return raw


def load_connectors(folder: str | Path) -> tuple[ConnectorConfig, ExpertEncoder, ExpertDecoder, PublicSchema]:
    from safetensors.torch import load_file

    folder = Path(folder)
    config = ConnectorConfig(**read_connector_meta(folder))
    schema = PublicSchema.load(folder / "schema.json")
    if schema.digest != config.schema_digest:
        raise ValueError(f"{folder}: schema.json digest {schema.digest} does not match connectors.json {config.schema_digest}")
    enc, dec = build_connectors(config, schema)
    tensors = load_file(str(folder / "connectors.safetensors"))
    enc.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
    dec.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
    enc.eval(), dec.eval()
    return config, enc, dec, schema
