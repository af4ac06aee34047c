#!/usr/bin/env bash
# The device tool sends the working tree to a lent GPU machine only when it is under 64 MiB
# (tracked and untracked files, plus what `carry` names). This checkout is ~76 MB, 54 MB of it
# the embedded toy models' weights, which the GPU suite does not load. Around the GPU call:
#
#   bash benchmarks/gpu_slim.sh aside     # weights -> $GPU_SLIM_DIR (default /tmp/mdtools-toy-weights)
#   ... device run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=590) ...
#   bash benchmarks/gpu_slim.sh back      # and restore them (git status is clean again)
#
# Only the *.safetensors of mdtools/assets/toy-*/ move; configs and cards stay.
set -euo pipefail
cd "$(dirname "$0")/.."
AWAY=${GPU_SLIM_DIR:-/tmp/mdtools-toy-weights}
case "${1:-}" in
    aside)
        mkdir -p "$AWAY"
        find mdtools/assets -path 'mdtools/assets/toy-*' -name '*.safetensors' | while read -r f; do
            mkdir -p "$AWAY/$(dirname "$f")" && mv "$f" "$AWAY/$f"
        done
        ;;
    back)
        [ -d "$AWAY/mdtools" ] || { echo "gpu_slim: nothing set aside in $AWAY" >&2; exit 1; }
        (cd "$AWAY" && find mdtools -name '*.safetensors') | while read -r f; do mv "$AWAY/$f" "$f"; done
        find "$AWAY/mdtools" -type d -empty -delete
        ;;
    *) echo "usage: bash benchmarks/gpu_slim.sh aside|back" >&2; exit 2 ;;
esac
# what would travel: tracked and untracked-not-ignored files that exist, and the carried .whl
python3 - <<'PY'
import os, subprocess
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                       check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(f) for f in set(files) if f and os.path.isfile(f))
whl = sum(e.stat().st_size for e in os.scandir(".whl")) if os.path.isdir(".whl") else 0
mib = 2**20
print(f"gpu_slim: working tree {tree / mib:.1f} MiB + .whl {whl / mib:.1f} MiB = {(tree + whl) / mib:.1f} MiB "
      f"({'within' if tree + whl <= 64 * mib else 'OVER'} the device tool's 64 MiB)")
PY
