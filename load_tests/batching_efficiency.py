"""Dynamic batching efficiency, as BENCHMARKS.md records it: 16 concurrent
single-image Predict clients against `framewire serve`, as a ratio of the same
model run in-process at its best batch size, measured side by side.

    python -m load_tests.batching_efficiency [--device cpu] [--duration 20] [--out report.json]

A preset of `python -m load_tests sweep` (which takes the same flags).
"""

from __future__ import annotations

import sys

from .__main__ import main as load_main

PRESET = ["sweep", "--model", "mobilenet_v3_small", "--mode", "predict", "--concurrency", "16",
          "--input", "float32:224", "--max-batch-size", "16", "--duration", "20", "--warmup", "5"]


def main(argv=None) -> int:
    return load_main(PRESET + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
