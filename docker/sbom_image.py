"""Complete a CycloneDX SBOM of the image's Python packages with its OS packages and tritonserver.

Run by docker/sbom.sh in the Dockerfile's ``sbom`` stage, with the image's own python3
(standard library only). OS packages come from dpkg (purl ``pkg:deb/<distro>/<name>@<version>``),
tritonserver from /opt/tritonserver/TRITON_VERSION. Components are sorted, so the same image
gives the same document.

    python3 sbom_image.py PYTHON_BOM.json OUTPUT.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

TRITON_VERSION_FILE = Path("/opt/tritonserver/TRITON_VERSION")


def os_release() -> dict[str, str]:
    info = {}
    path = Path("/etc/os-release")
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value.strip().strip('"')
    return info


def dpkg_components() -> list[dict]:
    """One component per installed Debian package."""
    release = os_release()
    distro = release.get("ID", "debian")
    qualifier = f"{distro}-{release.get('VERSION_ID', '')}".rstrip("-")
    fmt = "${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    components = []
    for line in out.splitlines():
        status, name, version, arch = line.split("\t")
        if not status.startswith("ii"):
            continue  # removed, config-files only
        purl = f"pkg:deb/{distro}/{name}@{quote(version, safe='')}?arch={arch}&distro={qualifier}"
        components.append({"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl})
    return components


def triton_component() -> list[dict]:
    if not TRITON_VERSION_FILE.is_file():
        return []
    version = TRITON_VERSION_FILE.read_text().strip()
    purl = f"pkg:generic/nvidia/tritonserver@{version}"
    return [{"type": "application", "bom-ref": purl, "name": "tritonserver", "version": version, "purl": purl}]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    bom = json.loads(Path(argv[1]).read_text())
    components = bom.get("components", [])
    python_count = len(components)
    known = {c.get("bom-ref") for c in components}
    extra = [c for c in dpkg_components() + triton_component() if c["bom-ref"] not in known]
    bom["components"] = sorted(
        components + extra, key=lambda c: (c.get("purl") or c.get("name", ""), c.get("version", ""))
    )
    Path(argv[2]).write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    sys.stdout.write(f"SBOM: {python_count} Python packages + {len(extra)} OS/tritonserver components -> {argv[2]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
