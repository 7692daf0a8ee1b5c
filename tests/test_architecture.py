"""The layering the design promises: protocol at the bottom, two parties that never import each other,
and inside the provider a model room that never imports the service room."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> list[tuple[Path, str]]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                out += [(path, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((path, node.module))
    return out


@pytest.mark.parametrize("folder, forbidden", [
    ("protocol", ("client_party", "provider_party", "simulations")),
    ("client_party", ("provider_party", "simulations")),
    ("provider_party", ("client_party", "simulations")),
    ("provider_party/model", ("provider_party.service",)),
])
def test_layers_import_only_downwards(folder, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p, m in _imports(folder) if m.split(".")[0] in forbidden or m.startswith(forbidden)]
    assert not bad, "\n".join(bad)


def test_the_provider_servicer_holds_no_state_of_its_own():
    """The gRPC layer is thin: every store belongs to ProviderParty (the Flower app uses the same core)."""
    src = (ROOT / "provider_party/service/servicer.py").read_text()
    for store in ("Ledger", "UploadManager", "ExpertStore", "JobManager", "ConnectorStore"):
        assert not re.search(rf"(?<![\w.]){store}\(", src), f"servicer.py builds a {store}; it belongs to provider_party.service.core.ProviderParty"
