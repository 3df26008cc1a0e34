"""Generate the Python protobuf/gRPC package from proto/, or check that it is fresh.

    python tools/protogen.py          # write control_plane/backbeat/v1/
    python tools/protogen.py --check  # exit 1 if the committed files differ from a fresh build

Needs only grpcio-tools and mypy-protobuf (the dev extra): no protoc binary, no network.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "control_plane"
PACKAGE = Path("backbeat") / "v1"
INIT = '"""Generated protobuf and gRPC code for backbeat.v1 (from proto/; never edit by hand)."""\n'


def generate(out_root: Path) -> None:
    import grpc_tools

    bin_dir = Path(sys.executable).parent
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}", f"-I{well_known}",
        f"--python_out={out_root}", f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}", f"--mypy_grpc_out={out_root}",
        *protos,
    ]  # fmt: skip
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    (out_root / PACKAGE / "__init__.py").write_text(INIT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if not args.check:
        target = OUT_ROOT / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        generate(OUT_ROOT)
        print(f"generated {target.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {p.name: p.read_text() for p in (Path(tmp) / PACKAGE).iterdir() if p.is_file()}
    current = (
        {p.name: p.read_text() for p in (OUT_ROOT / PACKAGE).iterdir() if p.is_file()}
        if (OUT_ROOT / PACKAGE).exists()
        else {}
    )
    stale = False
    for name in sorted(fresh.keys() | current.keys()):
        if fresh.get(name) != current.get(name):
            stale = True
            diff = difflib.unified_diff(
                current.get(name, "").splitlines(),
                fresh.get(name, "").splitlines(),
                f"committed/{name}",
                f"fresh/{name}",
                lineterm="",
                n=1,
            )
            print("\n".join(list(diff)[:20]))
    if stale:
        print("generated code is stale: run `make proto` and commit the result", file=sys.stderr)
        return 1
    print("generated code is fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
