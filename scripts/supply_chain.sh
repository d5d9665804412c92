#!/usr/bin/env bash
# Supply chain: a CycloneDX SBOM of the project's Python environment and a
# vulnerability report for the same packages (`make sbom`).
#
#   build/sbom.cdx.json   CycloneDX 1.6 JSON (cyclonedx-py environment)
#   build/vulns.json      pip-audit JSON (vulnerability data from PyPI's JSON API)
#   build/vulns.txt       pip-audit's table, for humans
#
# pip-audit asks PyPI (https://pypi.org/pypi/<name>/<version>/json, which carries
# the PyPA advisory-database entries) by default here; set
# PIP_AUDIT_SERVICE=osv to ask osv.dev instead. Without network access the SBOM
# is still written and vulns.json says why it could not be produced.
# Exit status: 0 unless the SBOM fails, or FAIL_ON_VULNS=1 and a vulnerability is found.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$ROOT/build}"
SERVICE="${PIP_AUDIT_SERVICE:-pypi}"
mkdir -p "$OUT"

"$PYTHON" -m cyclonedx_py environment \
    --pyproject "$ROOT/pyproject.toml" \
    --output-reproducible \
    --of JSON -o "$OUT/sbom.cdx.json" \
    "$PYTHON"
"$PYTHON" - "$OUT/sbom.cdx.json" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
print(f"SBOM: {len(bom.get('components', []))} components, CycloneDX {bom['specVersion']} -> {sys.argv[1]}")
PY

set +e
"$PYTHON" -m pip_audit --vulnerability-service "$SERVICE" --progress-spinner off \
    --format json --output "$OUT/vulns.json" 2> "$OUT/vulns.stderr"
status=$?
set -e
if [ ! -s "$OUT/vulns.json" ]; then
    reason="$(tail -n 5 "$OUT/vulns.stderr" | tr '\n' ' ')"
    "$PYTHON" - "$OUT/vulns.json" "$SERVICE" "$reason" <<'PY'
import json, sys
json.dump({"error": "pip-audit could not produce a report", "service": sys.argv[2], "detail": sys.argv[3]},
          open(sys.argv[1], "w"), indent=2)
PY
    echo "vulnerability report NOT produced (service $SERVICE): see $OUT/vulns.json" >&2
    exit 0
fi
"$PYTHON" - "$OUT/vulns.json" "$OUT/vulns.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
deps = report.get("dependencies", [])
found = [(d["name"], d.get("version"), v["id"], ",".join(v.get("fix_versions", [])))
         for d in deps for v in d.get("vulns", [])]
skipped = [d["name"] for d in deps if d.get("skip_reason")]
audited = len(deps) - len(skipped)
lines = [f"{audited} of {len(deps)} packages audited, {len(found)} known vulnerabilities, {len(skipped)} skipped"]
if deps and not audited:
    lines.append("  NOT AUDITED: the vulnerability service answered for no package (offline, or PyPI's"
                 " per-version JSON API https://pypi.org/pypi/<name>/<version>/json unreachable)")
lines += [f"  {n} {ver}: {vid} (fixed in: {fix or 'no fix yet'})" for n, ver, vid, fix in found]
if skipped and audited:
    lines.append("  skipped: " + ", ".join(sorted(skipped)))
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
if [ "${FAIL_ON_VULNS:-0}" = "1" ] && [ "$status" -ne 0 ]; then
    exit "$status"
fi
