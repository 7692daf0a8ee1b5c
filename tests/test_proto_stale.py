"""The generated gRPC stubs in protocol/rpc/ match proto/llamdex/v1/*.proto (regenerate with
`python scripts/gen_proto.py`), and they import from their own package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_stubs_are_not_stale():
    stale = _gen_module().stale_files()
    assert stale == [], f"stale gRPC stubs {stale}: run `python scripts/gen_proto.py` and commit the result"


def test_stubs_import_from_protocol_rpc():
    from protocol.rpc.llamdex.v1 import client_pb2_grpc, provider_pb2, provider_pb2_grpc

    assert provider_pb2.DESCRIPTOR.package == "llamdex.v1"
    assert provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name == "llamdex.v1.ProviderService"
    assert hasattr(provider_pb2_grpc, "ProviderServiceStub") and hasattr(client_pb2_grpc, "ClientServiceStub")


def test_every_proto_has_stubs():
    names = {p.stem for p in (ROOT / "proto" / "llamdex" / "v1").glob("*.proto")}
    gen = ROOT / "protocol" / "rpc" / "llamdex" / "v1"
    assert names == {"client", "common", "provider"}
    for n in names:
        assert (gen / f"{n}_pb2.py").is_file() and (gen / f"{n}_pb2_grpc.py").is_file()
