#!/usr/bin/env bash
# One command for a lent GPU, at most ~9 minutes on one H100/H200 class GPU; nothing is downloaded:
#
#   bash benchmarks/gpu_suite.sh            # writes gpu_*.csv, gpu_tests*.xml and gpu_suite.log
#
# Through the device tool (its image has torch but not diffusers, lpips or pydantic, and it
# takes a working tree of at most 64 MiB):
#   here:  bash benchmarks/gpu_wheels.sh    # the missing wheels into .whl/ (git-ignored, 9 MB)
#          bash benchmarks/gpu_slim.sh aside  # the toy models' 54 MB of weights out of the tree
#   then:  run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=590)
#   here:  bash benchmarks/gpu_slim.sh back
# and copy the files that come back into results/bench/.
#
# 0. preflight (seconds): the Python (.venv if present, else python3), the carried wheels
#    (.whl/, installed into a private folder), the imports, a CUDA device, and every
#    real_arch.py invocation below validated with --check (a typo fails here, not after
#    minutes of building);
# 1. the GPU tests: tests/test_cuda.py (one-window exactness vs diffusers on CUDA, the exact
#    tiled decode, parking off the device, fp16/bf16 generation, CUDA peaks) and the DiT,
#    arch-preset and single-file tests, with CUDA required (MDTOOLS_TEST_CUDA=require);
# 2. the real SD VAE decode at 2048^2 / 4096^2 / 8192^2 in fp16: the exact tiled decode first
#    (parked states on the host, 48 GiB budget: 'park' at every size; --check prints the
#    schedules), then the full decode, with OOM rows where it does not fit;
# 3. fp16/bf16 generation on the arch presets (random weights, exact architectures) at
#    1024^2 and 2048^2, 4 steps: forward time per view, CUDA allocated/reserved per phase.
# Each part has its own time limit (together 540 s), clipped to what is left before 575 s from
# the start (the device tool stops a command at 600 s); a part that runs out keeps what it
# finished (the CSVs are rewritten after every row). Output folder: $GPU_SUITE_OUT, else $OUT
# (on the device tool, the folder whose files come back: 7 files here, it takes 8), else
# results/bench. gpu_suite.log holds the whole output.
set -u
cd "$(dirname "$0")/.."
DEST=${GPU_SUITE_OUT:-${OUT:-results/bench}}
mkdir -p "$DEST"
LOG="$DEST/gpu_suite.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

# ---- 0. preflight ------------------------------------------------------------------------
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import diffusers, pydantic, lpips" 2> /dev/null && ls .whl/*.whl > /dev/null 2>&1; then
    SITE=${TMPDIR:-/tmp}/mdtools-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        >> "$LOG" 2>&1 || { say "gpu_suite: the carried wheels (.whl) do not install into $PY (see $LOG)"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MDTOOLS_TEST_CUDA=require
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util, sys
need = ["torch", "diffusers", "transformers", "safetensors", "pandas", "yaml", "pydantic", "skimage", "lpips", "pytest"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_suite: {sys.executable} lacks {', '.join(missing)}; run benchmarks/gpu_wheels.sh here and carry .whl, "
             "or set PY to a Python that has them")
import diffusers, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_suite: torch {torch.__version__} sees no CUDA device; this suite measures a GPU (nothing was run)")
print(f"gpu_suite: python {sys.version.split()[0]}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
      f"{torch.cuda.get_device_name(0)}, {torch.cuda.mem_get_info()[1] / 2**30:.0f} GiB")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
say "gpu_suite $(date -u +%FT%TZ)"

# the benchmark invocations, one per line: "<timeout s>|<real_arch.py arguments>" (tests/test_gpu_suite.py checks them)
RUNS=(
"150|--device cuda --dtype float16 --presets sd21 --sizes sd21= --full-decode sd21= --tiled-decode sd21=2048,4096,8192 --extrapolate sd21= --park-budget-gb 48 --out $DEST/gpu_decode_tiled.csv"
"60|--device cuda --dtype float16 --presets sd21 --sizes sd21= --full-decode sd21=2048,4096,8192 --tiled-decode sd21= --extrapolate sd21= --out $DEST/gpu_decode_full.csv"
"150|--device cuda --dtype float16 --steps 4 --presets sd21,sdxl,sd3 --sizes sd21=512,1024,2048;sdxl=1024,2048;sd3=1024,2048 --full-decode sd21=;sdxl=;sd3= --tiled-decode sd21=;sdxl=;sd3= --extrapolate sd21=4096;sdxl=4096;sd3=4096 --out $DEST/gpu_real_arch_fp16.csv"
"80|--device cuda --dtype bfloat16 --steps 4 --presets flux --sizes flux=1024,2048 --full-decode flux= --tiled-decode flux= --extrapolate flux=4096 --out $DEST/gpu_real_arch_flux_bf16.csv"
)
for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # the arguments hold no spaces: split on purpose
    "$PY" benchmarks/real_arch.py ${run#*|} --check >> "$LOG" 2>&1 || { say "gpu_suite: bad arguments: ${run#*|}"; exit 1; }
done

# every part gets its own limit, clipped to what is left before DEADLINE_S (from the start of
# this script; the device tool kills a command at 600 s); a part with under 15 s left is skipped
DEADLINE_S=${GPU_SUITE_DEADLINE_S:-575}
part() {  # part <limit s> <name> <command...>: run it under `timeout`, its output appended to $LOG
    local lim=$1 name=$2 left=$((DEADLINE_S - SECONDS))
    shift 2
    if [ "$left" -lt 15 ]; then say "gpu_suite: skipped $name ($left s left)"; return; fi
    [ "$lim" -gt "$left" ] && lim=$left
    say "== $name (limit $lim s, at $SECONDS s)"
    timeout "$lim" "$@" >> "$LOG" 2>&1
    local rc=$?
    [ "$rc" -eq 124 ] && say "gpu_suite: $name stopped at its limit ($lim s); what it finished is kept"
    return 0
}
TIMEOUT_FLAG=()  # one hung test fails alone, where pytest-timeout is installed (the GPU image has it)
"$PY" -c "import pytest_timeout" 2> /dev/null && TIMEOUT_FLAG=(--timeout=60)

# ---- 1. tests (~1-2 min) -------------------------------------------------------------------
TEST_S=100
# the CUDA cases first, in their own report; then the DiT, preset and single-file tests on
# this machine's packages (deselected: the one that loads the embedded toy model, whose
# weights benchmarks/gpu_slim.sh sets aside to fit the device tool's 64 MiB)
part 50 "tests/test_cuda.py" "$PY" -m pytest -q -p no:cacheprovider -rfE "${TIMEOUT_FLAG[@]}" \
    --junitxml="$DEST/gpu_tests_cuda.xml" tests/test_cuda.py
part $((TEST_S - 50)) "DiT, preset and single-file tests" "$PY" -m pytest -q -p no:cacheprovider -rfE "${TIMEOUT_FLAG[@]}" \
    --junitxml="$DEST/gpu_tests.xml" tests/test_dit.py tests/test_arch.py tests/test_single_file.py \
    --deselect tests/test_single_file.py::test_checkpoint_config_from_the_cli_and_experiment_configs
grep -E "(passed|failed|error)" "$LOG" | tail -2

# ---- 2. and 3. benchmarks -------------------------------------------------------------------
for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # the arguments hold no spaces: split on purpose
    part "${run%%|*}" "real_arch.py ${run#*|}" "$PY" benchmarks/real_arch.py ${run#*|}
    tail -3 "$LOG"
done

say "done at $SECONDS s, $(date -u +%FT%TZ); files: $(cd "$DEST" && ls gpu_* 2>/dev/null | tr '\n' ' ')"
