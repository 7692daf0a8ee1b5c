"""The two connection modules: the expert encoder (question -> features) and decoder (expert output -> slots).

Encoder: per column, a learned pointer onto the value the question states for it (a token of the
question for categorical and yes/no columns, a stated number for numeric ones) or onto "nothing
stated", over the frozen LLM's layer-`j` states mixed locally on both sides; a categorical value is
classified against the column's public levels, a number's value is taken from the text, and the stated
numbers are given to the numeric columns jointly, each to one column at most. Decoder:
SwiGLU from the expert's class probabilities to `num_tokens` hidden states, LayerNorm. Together they are a few MB, saved as safetensors plus a JSON config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from provider_party.model.number_matching import match_numbers

CONNECTOR_FORMAT = "llamdex.connectors/v3"  # v3: every column read by a pointer onto the value the question states, or onto "nothing stated"


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
    encoder_mixer_layers: int = 2
    encoder_kernel: int = 9            # tokens each mixer block sees around a token (5 misread numbers sharing a unit; see DESIGN_NOTES)
    decoder_ffn: int = 512
    format: str = CONNECTOR_FORMAT
    question_format: str = ""          # fingerprint of the questions trained on (`question_format`); the store fills it in
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.encoder_layer <= self.inject_layer < self.num_layers:
            raise ValueError(f"need 1 <= encoder_layer ({self.encoder_layer}) <= inject_layer ({self.inject_layer}) < num_layers ({self.num_layers}) so one forward pass suffices")
        if self.num_tokens < 1:
            raise ValueError("num_tokens must be at least 1")
        if self.encoder_kernel < 1 or self.encoder_kernel % 2 == 0:
            raise ValueError(f"encoder_kernel ({self.encoder_kernel}) must be an odd number >= 1 (a window centred on each token)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LocalMixer(nn.Module):
    """One residual block that lets every token see `kernel` tokens around it, on both sides.

    The LLM's states are causal: a value's tokens have seen the field name when it comes first
    ("age: 40") but not when it follows ("40-year-old", "third class", "no internet service for
    backup"). A centred window over the question gives each token its right-hand context too, at
    a cost that grows only linearly with the question's length: a depthwise convolution (one
    weight per channel and offset) followed by a per-token MLP.
    """

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(dim)
        self.window = nn.Parameter(torch.zeros(kernel, dim))
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            nn.init.normal_(self.window, std=kernel_std(self.kernel), generator=generator)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        half = self.kernel // 2
        y = self.norm(x) * mask[..., None]
        win = F.pad(y, (0, 0, half, half)).unfold(1, self.kernel, 1)  # (B, T, D, kernel)
        y = torch.einsum("btdk,kd->btd", win, self.window)
        y = self.out(F.gelu(self.mix(y)))
        return (x + y) * mask[..., None]


def kernel_std(kernel: int) -> float:
    return 1.0 / math.sqrt(kernel)


class ExpertEncoder(nn.Module):
    """Reads each schema column out of the question: a pointer onto the value the question states for it.

    The layer-`j` states of the question's tokens are projected and mixed locally on both sides
    (`LocalMixer`). Each column has a learned query that scores every candidate position (any token
    of the question for a categorical or yes/no column; the last token of each stated number for a
    numeric one) against a learned "nothing stated" option. The field's name or alias precedes or
    follows its value in every phrasing, so a position's mixed state tells which field it is the
    value of, even when many fields share value words ("Yes", "No internet service", "High").

    - Missing: "nothing stated" wins the pointer. This is the reader's own outcome for every column
      type (the value omitted, or said to be unknown), not a separate pooled guess.
    - Categorical / yes-no: the states the pointer lands on are classified against the column's
      public levels (a small head per column), so "3rd", "third" and "third-class" can all be read.
    - Numeric: the chosen number's value comes from the text (`QueryBatch.numbers`), scaled by the
      column's public range. The small LLM cannot carry a multi-digit number precisely in its hidden
      states, but it can tell which field a number belongs to.

    - Numbers are assigned jointly (`number_matching`): a number stated once is the value of one
      column at most, so two columns never take the same number.

    Outputs per column: categorical (B, levels + 1) log-probabilities, the last entry "missing";
    numeric (B, 2) = (value in [0, 1], missing logit: positive when "nothing stated" wins).
    """

    # How numbers are given to columns: "matching" (jointly, each number to one column at most), "independent" (each
    # column its own best number, as before matching) or "claim-all" (matching, and every stated number goes to some
    # column; `match_numbers`). Not stored with the connectors: a reading rule, not a weight.
    number_decoding: str = "matching"

    def __init__(self, feature_encoder: FeatureEncoder, hidden_size: int, dim: int = 256, mixer_layers: int = 2, kernel: int = 5):
        super().__init__()
        self.fe = feature_encoder
        self.dim = dim
        blocks = feature_encoder.blocks
        self.numeric = [i for i, b in enumerate(blocks) if b.kind == "numeric"]
        self.categorical = [i for i, b in enumerate(blocks) if b.kind != "numeric"]
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, dim)
        self.mixers = nn.ModuleList(LocalMixer(dim, kernel) for _ in range(mixer_layers))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.queries = nn.Parameter(torch.randn(len(blocks), dim) * 0.02)
        self.nothing = nn.Parameter(torch.zeros(len(blocks)))  # score of "nothing stated" per column
        self.level_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, blocks[i].num_levels)) for i in self.categorical
        )
        self.register_buffer("is_numeric", torch.tensor([b.kind == "numeric" for b in blocks]), persistent=False)
        # "Nothing stated" is an outcome for every nullable column and every number; see `can_be_missing`.
        self.register_buffer("can_be_missing", torch.tensor([can_be_missing(b) for b in blocks]), persistent=False)
        cols = [blocks[i].column for i in self.numeric]
        self.register_buffer("num_min", torch.tensor([float(c.min) for c in cols]).view(1, -1, 1), persistent=False)
        self.register_buffer("num_span", torch.tensor([float(c.max - c.min) for c in cols]).view(1, -1, 1), persistent=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The encoder's own parameters (its layers re-draw theirs): small random column queries, neutral "nothing"."""
        with torch.no_grad():
            nn.init.normal_(self.queries, std=0.02, generator=generator)
            self.nothing.zero_()

    def read(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor) -> Reading:
        """Pointer scores over positions + "nothing", and the per-position value states."""
        x = self.proj(self.norm(h.float())) * mask[..., None]
        for m in self.mixers:
            x = m(x, mask)
        B = x.shape[0]
        is_number = mask & torch.isfinite(numbers)
        allowed = torch.where(self.is_numeric[None, :, None], is_number[:, None, :], mask[:, None, :])  # (B, C, T)
        scores = torch.einsum("cd,btd->bct", self.queries, self.key(x)) / math.sqrt(self.dim)
        scores = scores.masked_fill(~allowed, -1e4)
        nothing = torch.where(self.can_be_missing, self.nothing, torch.full_like(self.nothing, -1e4)).view(1, -1, 1).expand(B, -1, 1)
        return Reading(torch.cat([scores, nothing], -1), allowed, self.value(x))

    def _levels(self, reading: Reading, weights: torch.Tensor) -> list[torch.Tensor]:
        """Level logits per categorical column from the value states, weighted over positions (B, C, T)."""
        idx = torch.tensor(self.categorical, dtype=torch.long, device=weights.device)  # long even when empty (an all-numeric schema)
        pooled = torch.einsum("bct,btd->bcd", weights[:, idx], reading.values)
        return [head(pooled[:, c]) for c, head in enumerate(self.level_heads)]

    def forward(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor) -> list[torch.Tensor]:
        r = self.read(h, mask, numbers)
        logp = r.scores.log_softmax(-1)                      # (B, C, T + 1)
        stated = logp[..., :-1]
        on_value = stated.softmax(-1) * r.allowed           # where the value is, given that one is stated
        levels = self._levels(r, on_value)
        outs: list[torch.Tensor] = [None] * len(self.fe.blocks)  # type: ignore[list-item]
        for lv, i in zip(levels, self.categorical):
            outs[i] = torch.cat([torch.logsumexp(stated[:, i], -1, keepdim=True) + lv.log_softmax(-1), logp[:, i, -1:]], -1)
        values = (torch.nan_to_num(numbers.float())[:, None, :] - self.num_min) / self.num_span  # (B, N, T)
        num_scores = r.scores[:, self.numeric]
        if self.number_decoding in ("matching", "claim-all"):   # each stated number goes to one column at most
            best, missing = match_numbers(num_scores, mask & torch.isfinite(numbers), claim_all=self.number_decoding == "claim-all")
            best = best[..., None]
        else:   # "independent": each column takes its own best number (the reading before matching; kept to measure the difference)
            best = num_scores[..., :-1].argmax(-1, keepdim=True)
            missing = num_scores[..., -1] - num_scores[..., :-1].max(-1).values  # > 0: "nothing stated" wins
        value = values.gather(-1, best).squeeze(-1)
        any_number = r.allowed[:, self.numeric].any(-1)
        value = torch.where(any_number, value, torch.full_like(value, 0.5))
        for c, i in enumerate(self.numeric):
            outs[i] = torch.stack([value[:, c], missing[:, c].clamp(-1e4, 1e4)], 1)
        return outs

    def loss(self, h: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor, targets: PointerTargets) -> torch.Tensor:
        """Pointer: cross-entropy onto the value's tokens, or onto "nothing stated" when the column is
        missing; levels: cross-entropy from the gold value tokens and from where the pointer looks."""
        r = self.read(h, mask, numbers)
        logp = r.scores.log_softmax(-1)
        on = targets.tokens & r.allowed                                       # (B, C, T)
        has_value = on.any(-1)
        gold = torch.cat([on, (targets.missing & ~has_value & self.can_be_missing)[..., None]], -1)
        use = gold.any(-1)                                                    # a stated value we could not place: no pointer loss
        ptr = -torch.logsumexp(logp.masked_fill(~gold, -1e4), -1)
        loss = (ptr * use).sum() / use.sum().clamp(min=1)
        if self.categorical:
            gold_w = on.float() / on.sum(-1, keepdim=True).clamp(min=1)
            pred_w = logp[..., :-1].softmax(-1) * r.allowed
            for weights in (gold_w, pred_w):
                for c, (lv, i) in enumerate(zip(self._levels(r, weights), self.categorical)):
                    ok = has_value[:, i]
                    if ok.any():
                        loss = loss + 0.5 * F.cross_entropy(lv[ok], targets.levels[ok, c], reduction="sum") / use.sum().clamp(min=1)
        return loss

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


def can_be_missing(block) -> bool:
    """Whether "nothing stated" is one of the column's outcomes: for nullable columns and for numbers.

    A categorical or yes/no column the schema declares non-nullable always has a value, and the
    client's expert never saw it missing; a question that seems to leave it out far more often
    words it in a way training never showed ("a gentleman" for sex: male), and the pointer still
    ranks such a word first (measured on hand-written test sentences). So such a column always reads
    its best-scoring value. A number the question does not state is different: the pointer would
    otherwise take another column's number, so every numeric column keeps "nothing stated" (and the
    joint assignment of numbers, `number_matching`, leaves it there once the number's own column
    has taken it).
    """
    return bool(block.column.nullable or block.kind == "numeric")


@dataclass
class Reading:
    """What the encoder's pointer sees in one batch: scores (B, C, T + 1, the last "nothing stated"),
    which positions each column may point at (B, C, T), and the value states (B, T, dim)."""

    scores: torch.Tensor
    allowed: torch.Tensor
    values: torch.Tensor


@dataclass
class PointerTargets:
    """Training targets of the encoder for one batch.

    tokens (B, C, T) bool: the tokens of each column's stated value (for a number, the token that ends it);
    missing (B, C) bool: the column's value is missing (omitted or said to be unknown);
    levels (B, number of categorical columns) long: the level index where a categorical value is stated;
    values (B, number of numeric columns) float: the stated number scaled to [0, 1] by the public range.
    """

    tokens: torch.Tensor
    missing: torch.Tensor
    levels: torch.Tensor
    values: torch.Tensor

    def to(self, device: torch.device | str) -> PointerTargets:
        return PointerTargets(self.tokens.to(device), self.missing.to(device), self.levels.to(device), self.values.to(device))


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
    enc = ExpertEncoder(fe, config.hidden_size, config.encoder_dim, config.encoder_mixer_layers, config.encoder_kernel)
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
    unknown = set(raw) - {f.name for f in fields(ConnectorConfig)}
    if unknown:
        raise ValueError(f"{folder}: connectors.json has fields this version does not know ({sorted(unknown)}); retrain the connectors")
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
