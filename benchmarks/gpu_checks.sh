#!/usr/bin/env bash
# The checks a GPU machine can make and a CPU cannot: the CUDA tests, the published detectors'
# parity through a CUDA scan, and GPU throughput. Run from the repository root with i2pscan
# importable; logs go to OUTDIR. Each step has its own time limit, so that one slow step does not
# cost the others.
#
#     bash benchmarks/gpu_checks.sh OUTDIR
set -u
out=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$out"
repo=$(pwd)
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run in a folder without an i2pscan/ of its own
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)"
    (cd "$repo/benchmarks" && timeout "$limit" "$@") 2>&1 | tee "$out/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, open_clip, i2pscan; print('torch', torch.__version__, '| open_clip', open_clip.__version__, '| i2pscan', i2pscan.__version__, i2pscan.__file__)"
pytest=(python3 -m pytest -p no:cacheprovider -c "$repo/pyproject.toml" --rootdir "$repo")
step test_cuda 90 "${pytest[@]}" -q -s -rA "$repo/tests/test_cuda.py"
step parity_on_cuda 80 "${pytest[@]}" -q -rA "$repo/tests/test_published.py" -k "score_as_the_authors"
step bench_delta_path 80 python3 bench_delta_path.py --device cuda --images 1024 --batch-size 64 --delta-scales 0.03,0.3
step bench_precision 80 python3 bench_precision.py --device cuda --images 1024 --batch-size 64
step sensitivity_vitl 90 bash -c 'for b in 8 64; do for e in old new; do echo "ViT-L-14 batch $b $e: $(python3 bench_sensitivity.py --device cuda --cell ViT-L-14,$b,$e)"; done; done'
