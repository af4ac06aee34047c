#!/usr/bin/env bash
# One command for a lent GPU (about 8 minutes on one H100/H200 class GPU; nothing is downloaded):
#
#   bash benchmarks/gpu_suite.sh            # writes results/bench/gpu_*.csv and gpu_suite.log
#
# 1. the CUDA-relevant tests (SD3/FLUX exactness, arch presets, single files, engine) on CPU
#    semantics but with a CUDA torch: they must stay green on the GPU machine too;
# 2. fp16/bf16 generation on the arch presets (random weights, exact architectures) at
#    1024^2 and 2048^2: forward time per view, CUDA allocated/reserved per phase;
# 3. the real SD VAE decode at 2048^2 / 4096^2 / 8192^2, tiled vs full, with OOM rows
#    where the full decode does not fit.
# Each part has its own time limit so that the whole stays within ~8 minutes; a part that
# runs out writes what it finished (the CSVs are rewritten after every row).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/bench}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
: > "$LOG"
export HF_HUB_OFFLINE=1
echo "gpu_suite $(date -u +%FT%TZ) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')" | tee -a "$LOG"

# 1. tests (~1.5 min)
timeout 150 $PY -m pytest -q -p no:cacheprovider -x tests/test_dit.py tests/test_arch.py tests/test_single_file.py \
    2>&1 | tail -3 | tee -a "$LOG"

# 2. generation on the presets: SDXL fp16, SD3 fp16, FLUX-dev bf16 at 1024^2 and 2048^2, 4 steps (~4 min)
timeout 270 $PY benchmarks/real_arch.py --device cuda --steps 4 --dtype float16 --presets sd21,sdxl,sd3 \
    --sizes "sd21=512,1024,2048;sdxl=1024,2048;sd3=1024,2048" --full-decode "sd21=;sdxl=;sd3=" \
    --tiled-decode "sd21=;sdxl=;sd3=" --extrapolate "sd21=4096;sdxl=4096;sd3=4096" \
    --out "$OUT/gpu_real_arch_fp16.csv" 2>&1 | tail -12 | tee -a "$LOG"
timeout 150 $PY benchmarks/real_arch.py --device cuda --steps 4 --dtype bfloat16 --presets flux \
    --sizes "flux=1024,2048" --full-decode "flux=" --tiled-decode "flux=" --extrapolate "flux=4096" \
    --out "$OUT/gpu_real_arch_flux_bf16.csv" 2>&1 | tail -6 | tee -a "$LOG"

# 3. real SD VAE decode, tiled vs full, fp16 (~1.5 min; full 8192^2 may be an OOM row)
timeout 120 $PY benchmarks/real_arch.py --device cuda --dtype float16 --presets sd21 --sizes "sd21=" \
    --full-decode "sd21=2048,4096,8192" --tiled-decode "sd21=2048,4096,8192" --extrapolate "sd21=" \
    --out "$OUT/gpu_decode.csv" 2>&1 | tail -8 | tee -a "$LOG"

echo "done $(date -u +%FT%TZ); CSVs: $(ls "$OUT"/gpu_*.csv 2>/dev/null | tr '\n' ' ')" | tee -a "$LOG"
