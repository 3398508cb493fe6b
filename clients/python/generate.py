"""Generates the gRPC stubs of kiln.proto into kiln_client/_pb (run before installing or testing).

    python3 -m pip install grpcio-tools
    python3 clients/python/generate.py

The stubs are generated, not committed: they always match the kiln.proto of the checkout.
"""

import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
OUT = HERE / "kiln_client" / "_pb"


def main() -> int:
    source = PROTO_ROOT / "kiln" / "v1" / "kiln.proto"
    if not source.is_file():
        print(f"generate.py: no {source}; run it from a Kiln checkout", file=sys.stderr)
        return 1
    (OUT / "kiln" / "v1").mkdir(parents=True, exist_ok=True)
    for package in (OUT, OUT / "kiln", OUT / "kiln" / "v1"):
        (package / "__init__.py").touch()
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(source),
        ]
    )
    if status != 0:
        print("generate.py: protoc failed", file=sys.stderr)
        return status
    # protoc writes `from kiln.v1 import kiln_pb2`; inside this package it is a relative import.
    stub = OUT / "kiln" / "v1" / "kiln_pb2_grpc.py"
    text = stub.read_text()
    stub.write_text(text.replace("from kiln.v1 import kiln_pb2", "from . import kiln_pb2"))
    print(f"generated {OUT.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
