"""The Python backend's /dev/shm: what its regions need, and the plan for one repository and profile.

python_backend r24.10 (src/shm_manager.cc, stub_launcher.cc) gives every model instance (stub) its own
region, posix_fallocate'd to shm-default-byte-size at load (ENOSPC fails the load), grown on demand by
growth * (bytes // growth + 1) and never shrunk while the stub lives. A request's inputs are copied into
its instance's region for the whole execute, BLS tensors into the caller's and the callee's. A large
default region only reserves space no other stub can use, so regions start at the backend's own minimum
and grow in small steps; what /dev/shm must hold is the sum of the regions' high-water marks.

Pure but for ``dev_shm_size``: the launcher (``triton``), the container's supervisor and ``deploy`` read it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fusion_emotion import contract as C
from fusion_emotion.repository import backend, config_path, parameters

SHM_REGION_BYTES = 1024 * 1024
SHM_GROWTH_BYTES = 1024 * 1024
# Docker's default --shm-size and SageMaker's fixed /dev/shm (SageMaker's figure not checked on SageMaker).
SHM_DEFAULT_DEV_SHM_BYTES = 64 * 1024 * 1024
# The input one decoder (preprocess instance) must carry: the real-time body limit (SageMaker's 6 MiB).
SHM_REALTIME_INPUT_BYTES = 6 * 1024 * 1024
# Measured (docs/reliability.md "Shared memory"): a preprocess region grew to input + 5 MiB (its BLS
# frames and waveform, allocator overhead, growth rounding), the video encoder's by 6 MiB for 4 decoders.
SHM_DECODER_OVERHEAD_BYTES = 5 * 1024 * 1024
SHM_ENCODER_BYTES_PER_DECODER = 2 * 1024 * 1024


def shm_needed_bytes(stubs: int, decoders: int, input_bytes: int, region_bytes: int = SHM_REGION_BYTES) -> int:
    """/dev/shm the Python backend needs when ``decoders`` preprocess instances each hold an input at once."""
    per_decoder = input_bytes + SHM_DECODER_OVERHEAD_BYTES + SHM_ENCODER_BYTES_PER_DECODER
    return stubs * region_bytes + decoders * per_decoder


def shm_input_limit(dev_shm_bytes: int, stubs: int, decoders: int, region_bytes: int = SHM_REGION_BYTES) -> int:
    """Largest input each of ``decoders`` concurrent decoders can carry in ``dev_shm_bytes`` (<= 0: none)."""
    free = (
        dev_shm_bytes - stubs * region_bytes - decoders * (SHM_DECODER_OVERHEAD_BYTES + SHM_ENCODER_BYTES_PER_DECODER)
    )
    return min(C.MAX_INPUT_BYTES, free // max(decoders, 1))


_COUNT = re.compile(r"instance_group\s*\[?\s*\{[^}]*?count\s*:\s*(\d+)", re.S)


def python_instances(repository: Path, profile: str) -> dict[str, int]:
    """Python-backend model -> instance count (one stub, one shm region each) for ``profile``."""
    counts: dict[str, int] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        cfg = config_path(model_dir, profile)
        if not cfg.is_file():
            continue
        text = cfg.read_text(encoding="utf-8")
        if backend(text) == "python":
            counts[model_dir.name] = sum(int(n) for n in _COUNT.findall(text)) or 1
    return counts


@dataclass(frozen=True)
class ShmPlan:
    """The Python backend's /dev/shm budget for one repository and profile."""

    dev_shm_bytes: int
    stubs: int
    decoders: int
    region_bytes: int
    needed_bytes: int  # at the real-time input limit, every decoder busy
    input_limit_bytes: int  # the largest input per decoder this /dev/shm carries
    timeline_bytes: int = 0  # one timeline request at the same limit on top (its BLS batches of frames)

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.dev_shm_bytes

    @property
    def fits_timeline(self) -> bool:
        return self.needed_bytes + self.timeline_bytes <= self.dev_shm_bytes

    def describe(self) -> str:
        mib = 1024 * 1024
        return (
            f"/dev/shm {self.dev_shm_bytes / mib:.0f} MiB; {self.stubs} Python-backend stubs x "
            f"{self.region_bytes / mib:g} MiB regions + {self.decoders} decoders x "
            f"({SHM_REALTIME_INPUT_BYTES / mib:g} MiB input + BLS tensors) needs {self.needed_bytes / mib:.0f} MiB; "
            f"largest input per decoder it carries: {max(self.input_limit_bytes, 0) / mib:.1f} MiB"
        )


def plan_shm(repository: Path, profile: str, dev_shm_bytes: int, region_bytes: int = SHM_REGION_BYTES) -> ShmPlan:
    """What the profile's stubs need in a /dev/shm of ``dev_shm_bytes`` (pure; the launcher checks it)."""
    counts = python_instances(repository, profile)
    stubs = sum(counts.values())
    decoders = counts.get(C.PREPROCESS, 0)
    timeline = 0
    if C.TIMELINE_MODEL in counts:
        text = config_path(repository / C.TIMELINE_MODEL, profile).read_text(encoding="utf-8")
        batch = int(parameters(text).get("bls_max_batch", "8") or 8)
        frames = batch * 4 * math.prod(C.VIDEO_FRAMES.dims)
        # its input, one chunk of frames in its region and, when the encoder is a stub too, in the encoder's
        callees = 2 if C.VIDEO_ENCODER in counts else 1
        timeline = SHM_REALTIME_INPUT_BYTES + SHM_DECODER_OVERHEAD_BYTES + callees * frames
    return ShmPlan(
        timeline_bytes=timeline,
        dev_shm_bytes=dev_shm_bytes,
        stubs=stubs,
        decoders=decoders,
        region_bytes=region_bytes,
        needed_bytes=shm_needed_bytes(stubs, decoders, SHM_REALTIME_INPUT_BYTES, region_bytes),
        input_limit_bytes=shm_input_limit(dev_shm_bytes, stubs, decoders, region_bytes),
    )


def dev_shm_size(path: Path = Path("/dev/shm")) -> int:
    """Total bytes of the tmpfs at ``path`` (Docker's --shm-size)."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize
