"""Point generated *_pb2.py files at framewire's own descriptor pool.

Run by `make protos` on the Open Inference Protocol's generated code (see
framewire/oip/pool.py for why).
"""

import sys
from pathlib import Path

DEFAULT = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE = "_oip_pool.POOL.AddSerializedFile("
IMPORT = "from framewire.oip import pool as _oip_pool\n"


def rewrite(path: Path) -> None:
    text = path.read_text()
    if PRIVATE in text:
        return
    if DEFAULT not in text:
        raise SystemExit(f"{path}: generated code does not add its file to the default pool; check protoc's output")
    marker = "# @@protoc_insertion_point(imports)\n"
    text = text.replace(marker, IMPORT + marker, 1).replace(DEFAULT, PRIVATE)
    path.write_text(text)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        rewrite(Path(name))
