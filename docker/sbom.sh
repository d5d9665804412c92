#!/usr/bin/env bash
# The serving image's SBOM (Dockerfile stage `sbom`; tests run it on this machine too):
# CycloneDX JSON of the Python packages the serving interpreter sees (cyclonedx-py environment),
# plus the OS packages (dpkg) and tritonserver (docker/sbom_image.py).
#
#   sbom.sh PYTHON TOOLS_DIR PYPROJECT OUTPUT
#
# TOOLS_DIR holds cyclonedx-bom (pip --target). It is put on the tool's own sys.path only, never
# in PYTHONPATH: cyclonedx-py asks PYTHON for its sys.path, and the tools must not appear there.
set -euo pipefail
[[ $# -eq 4 ]] || { echo "usage: $0 PYTHON TOOLS_DIR PYPROJECT OUTPUT" >&2; exit 2; }
python="$1"
tools="$2"
pyproject="$3"
out="$4"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python_bom="$(mktemp)"
trap 'rm -f "$python_bom"' EXIT

env -u PYTHONPATH "$python" -c '
import runpy, sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["cyclonedx-py", *sys.argv[2:]]
runpy.run_module("cyclonedx_py", run_name="__main__")
' "$tools" environment --pyproject "$pyproject" --output-reproducible --of JSON -o "$python_bom" "$python"
"$python" "$here/sbom_image.py" "$python_bom" "$out"
