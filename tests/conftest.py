"""Session fixtures: an exported random-init repository, a live tritonserver, generated media."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import start_triton  # noqa: E402


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Deterministic random-init weights exported through the real CLI code path."""
    from fusion_emotion.cli import main

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    assert main(["export", "--init", "random", "--seed", "0", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    handle = start_triton(demo_repository, tmp_path_factory.mktemp("triton") / "tritonserver.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def reference(demo_repository: Path):
    from fusion_emotion.core.pipeline import ReferencePipeline

    return ReferencePipeline(demo_repository)


@pytest.fixture(scope="session")
def media() -> dict[str, bytes]:
    """Media the tests make themselves: real speech (espeak-ng) and a real face (astronaut)."""
    import numpy as np

    from fusion_emotion import testmedia

    speech48 = testmedia.speech(rate=48_000)
    speech44 = testmedia.speech(text="It is eleven o'clock. Please sit down.", rate=44_100)
    speech16 = testmedia.speech(text="The quick brown fox jumps over the lazy dog.", rate=16_000)
    stereo = np.stack([speech44, 0.5 * speech44], axis=1)
    return {
        # RAVDESS-like: 1280x720 30 fps H.264 + 48 kHz AAC
        "mp4": testmedia.mp4(audio=speech48, audio_rate=48_000),
        "mp4_noaudio": testmedia.mp4(seconds=2.0, audio=None),
        # CREMA-D-like: 480x360 FLV
        "flv": testmedia.flv(audio=speech44, audio_rate=44_100),
        "avi": testmedia.avi(audio=speech44, audio_rate=44_100),
        "wav": testmedia.wav(stereo, 44_100, "s16"),
        "wav16k": testmedia.wav(speech16, 16_000, "s24"),
        "wav_header_only": testmedia.header_only_wav(),
        "garbage": np.random.default_rng(0).bytes(50_000),
        "empty": b"",
    }
