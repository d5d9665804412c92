"""`make demo`: export demo weights, start Triton, send a generated clip, print the JSON, stop."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import start_triton  # noqa: E402

from fusion_emotion import testmedia  # noqa: E402
from fusion_emotion.cli import main  # noqa: E402


def run() -> int:
    repo = ROOT / "build" / "demo_repo"
    if main(["export", "--init", "random", "--seed", "0", "--output", str(repo), "--force"]) != 0:
        return 1
    clip = ROOT / "build" / "demo_clip.mp4"
    clip.write_bytes(testmedia.mp4(audio=testmedia.speech(rate=48_000), audio_rate=48_000))
    sys.stderr.write(f"demo clip: {clip} (1280x720 30 fps H.264 + 48 kHz AAC, espeak-ng speech, astronaut face)\n")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_triton(repo, Path(tmp) / "tritonserver.log")
        try:
            sys.stderr.write(f"tritonserver ready: gRPC {server.grpc_url}\n")
            cmd = [sys.executable, "-m", "fusion_emotion.cli", "predict", str(clip), "--triton", server.grpc_url]
            code = subprocess.run(cmd, check=False).returncode
        finally:
            server.stop()
    sys.stderr.write(
        "tritonserver stopped. NOTE: demo weights are UNTRAINED random weights; the numbers are meaningless.\n"
    )
    return code


if __name__ == "__main__":
    sys.exit(run())
