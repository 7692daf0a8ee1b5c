"""Regenerates the Python gRPC stubs of `proto/llamdex/v1/*.proto` into `protocol/rpc/` (the one command).

    python scripts/gen_proto.py           # regenerate protocol/rpc/llamdex/v1/*_pb2*.py(i)
    python scripts/gen_proto.py --check   # exit 1 if the committed stubs are stale

It uses the installed `grpcio-tools` (pinned 1.81.x: grpcio-tools 1.82+ needs protobuf>=7, which
flwr 1.42 refuses). protoc runs with `-I proto`, so the descriptors keep the wire names
`llamdex/v1/*.proto`; the imports between generated modules are then rewritten from
`llamdex.v1` to `protocol.rpc.llamdex.v1`, the package they live in. Generated files stay apart
from hand-written code, as in Flower.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "protocol" / "rpc"
PACKAGE_PATH = Path("llamdex") / "v1"
PY_PACKAGE = "protocol.rpc.llamdex.v1"
REQUIRED_TOOLS = "1.81."
INIT_DOC = '"""Generated gRPC stubs of package llamdex.v1 (do not edit; run scripts/gen_proto.py)."""\n'


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / PACKAGE_PATH).glob("*.proto"))


def _check_tools() -> None:
    from importlib.metadata import version

    v = version("grpcio-tools")
    if not v.startswith(REQUIRED_TOOLS):
        raise SystemExit(f"grpcio-tools {v} is installed; the stubs are generated with {REQUIRED_TOOLS}x "
                         "(protobuf must stay <7 for flwr 1.42): pip install 'grpcio-tools==1.81.*'")


def generate(out_dir: Path) -> list[Path]:
    """Writes the stubs (and the package __init__ files) under `out_dir`; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    _check_tools()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    gen = out_dir / PACKAGE_PATH
    written = []
    for p in sorted(gen.iterdir()):
        text = p.read_text()
        text = re.sub(r"^from llamdex\.v1 import ", f"from {PY_PACKAGE} import ", text, flags=re.M)
        # the module name the message classes report (only there: service names keep 'llamdex.v1.')
        text = re.sub(r"BuildTopDescriptorsAndMessages\(DESCRIPTOR, 'llamdex\.v1\.", f"BuildTopDescriptorsAndMessages(DESCRIPTOR, '{PY_PACKAGE}.", text)
        p.write_text(text)
        written.append(p)
    for folder in (out_dir, out_dir / "llamdex", gen):
        init = folder / "__init__.py"
        init.write_text(INIT_DOC)
        written.append(init)
    return written


def stale_files(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files that differ from a fresh generation (or are missing or extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        rel = {p.relative_to(tmp) for p in fresh}
        out = []
        for r in sorted(rel):
            committed = out_dir / r
            if not committed.is_file() or not filecmp.cmp(committed, Path(tmp) / r, shallow=False):
                out.append(str(r))
        gen = out_dir / PACKAGE_PATH
        if gen.is_dir():
            out += [str(p.relative_to(out_dir)) + " (extra)" for p in sorted(gen.iterdir())
                    if p.is_file() and p.relative_to(out_dir) not in rel]
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale stubs (exit 1 if any)")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale gRPC stubs (run `python scripts/gen_proto.py`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("gRPC stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        gen = OUT_DIR / PACKAGE_PATH
        if gen.exists():
            shutil.rmtree(gen)
        shutil.copytree(Path(tmp), OUT_DIR, dirs_exist_ok=True)
    print(f"generated stubs for {[p.name for p in proto_files()]} in {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
