"""Generate the gRPC stubs from ``proto/genrec/v1/*.proto`` into ``components/serving/pb/``.

The stubs are checked in (so an installed package needs no protoc) and a test regenerates them
and fails on any drift. Run ``python -m components.serving.protogen`` after editing a .proto.
protoc writes ``from genrec.v1 import x_pb2``; the imports are rewritten to this package.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
OUT = Path(__file__).resolve().parent / "pb"
PACKAGE = "components.serving.pb"


def generate(out: Path = OUT) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "genrec" / "v1").glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}/genrec/v1")
    with tempfile.TemporaryDirectory() as tmp:
        import grpc_tools

        include = str(Path(grpc_tools.__file__).parent / "_proto")
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", f"--pyi_out={tmp}", *protos])
        if rc != 0:
            raise RuntimeError(f"protoc failed with status {rc}")
        if out.exists():
            shutil.rmtree(out)
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = re.sub(r"^from genrec\.v1 import", f"from {PACKAGE}.genrec.v1 import", src.read_text(), flags=re.M)
            dst.write_text(text)
            written.append(dst)
    for d in [out, out / "genrec", out / "genrec" / "v1"]:
        (d / "__init__.py").write_text('"""Generated gRPC stubs (python -m components.serving.protogen)."""\n')
    return written


if __name__ == "__main__":
    files = generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {len(files)} files")
