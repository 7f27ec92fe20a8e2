"""Regenerate the ONE Python package of gRPC contracts from the .proto files beside this script.

Usage: ``python proto/generate.py`` writes ``libs/proto/src/mt_proto``;
``python proto/generate.py --check`` regenerates into a temporary folder and exits 1 if the
committed package differs (CI's staleness check, after etcd's genproto/verify).
Nothing under ``libs/proto/src/mt_proto`` is edited by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent
PACKAGE = "mt_proto"
TARGET = REPO / "libs" / "proto" / "src" / PACKAGE
BIN = Path(sys.executable).parent

INIT = '''"""Generated gRPC contracts of minithreads (do not edit: run `make proto`)."""
'''


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> Path:
    """Compile every .proto into ``out_root/mt_proto`` and return that folder."""
    out_root.mkdir(parents=True, exist_ok=True)
    include = (
        Path(protoc.__file__).parent / "_proto"
    )  # google/protobuf/*.proto ship with grpc_tools
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        # The plugins come from the same environment as this interpreter, not from PATH.
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out=quiet:{out_root}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_root / PACKAGE
    (package / "__init__.py").write_text(INIT)
    (package / "py.typed").write_text("")
    return package


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two generated trees (added, removed or changed)."""
    files_a = {
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    files_b = {
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    changed = [p for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)]
    return sorted(str(p) for p in (files_a ^ files_b) | set(changed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the package is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            stale = differences(fresh, TARGET) if TARGET.exists() else ["<missing package>"]
            if stale:
                print("proto: generated package is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print(f"proto: {PACKAGE} is fresh ({len(proto_files())} contracts)")
            return 0
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(fresh, TARGET, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"proto: wrote {TARGET.relative_to(REPO)} from {len(proto_files())} contracts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
