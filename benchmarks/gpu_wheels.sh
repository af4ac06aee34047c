#!/usr/bin/env bash
# Run HERE, where the package registry is reachable, before a GPU run through the device tool:
#
#   bash benchmarks/gpu_wheels.sh
#
# downloads into .whl/ (git-ignored) the wheels that the lent GPU machine's image lacks. That
# image holds torch, transformers, pandas, scikit-image, pytest, ... but not diffusers, lpips
# or pydantic (/work/.library/device/KINDS.md), and nothing can be fetched there. The versions
# are the ones this checkout's .venv is tested with; the platform is the image's Python 3.12
# on x86-64 Linux. Then, on the device tool: run(command="bash benchmarks/gpu_suite.sh",
# carry=[".whl"], timeout_s=590); gpu_suite.sh installs them into a private folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${GPU_WHEELS_PYTHON:-3.12}  # the lent image's Python (KINDS.md); DEST for another folder than .whl
DEST=${GPU_WHEELS_DEST:-.whl}
# mdtools' dependencies missing from the image, and theirs (pydantic's, importlib_metadata's)
NAMES="diffusers lpips pydantic pydantic_core annotated_types typing_inspection typing_extensions importlib_metadata lazy_importer"
rm -rf "$DEST"
mkdir -p "$DEST"
for name in $NAMES; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$name==$version" 2>&1 \
        | grep -v "^WARNING: Location" || true
    ls "$DEST" | grep -qi "^${name//_/[-_]}-$version" || { echo "gpu_wheels: no wheel of $name==$version" >&2; exit 1; }
done
echo "gpu_wheels: $(ls "$DEST" | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1)): $(ls "$DEST" | tr '\n' ' ')"
