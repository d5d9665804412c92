"""DALI (cpu_dali) vs PyAV on the generated 1280x720 H.264 clip and its AVI/MKV remuxes: prints numbers.

    python perf/dali_parity.py REPOSITORY   # an exported repository (fusion-emotion export ...)

Per container: mean / max |diff| of the video-encoder input (Kinetics-normalised units), max |dp| of the
ensemble's probabilities (in-process reference pipeline, same graphs), and whether the argmax agrees.
tests/test_dali_video.py holds the tolerances; README "DALI parity" reports these numbers.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from fusion_emotion import testmedia
from fusion_emotion.core.pipeline import ReferencePipeline


def main(argv: list[str]) -> int:
    repo = argv[0]
    base = testmedia.mp4(seconds=1.0, audio=testmedia.speech(rate=48_000)[:48_000], audio_rate=48_000)
    clips = {"mp4": base, "avi (H.264)": testmedia.remux(base, "avi"), "mkv": testmedia.remux(base, "matroska")}
    pyav, dali = ReferencePipeline(repo), ReferencePipeline(repo, video_decoder="dali_cpu")
    for name, data in clips.items():
        fp, fd = pyav.row(data, None), dali.row(data, None)
        d = np.abs(fp.frames - fd.host_frames())
        pp, pd = pyav.score_rows([fp]), dali.score_rows([fd])
        fd.release()
        row = {
            "container": name,
            "input_mean_abs": round(float(d.mean()), 4),
            "input_max_abs": round(float(d.max()), 3),
            "input_p99_9": round(float(np.percentile(d, 99.9)), 3),
            "probs_max_abs": float(f"{np.abs(pp[0][0] - pd[0][0]).max():.2e}"),
            "same_argmax": bool(pp[0][0].argmax() == pd[0][0].argmax()),
            "qa_max_abs": float(f"{np.nanmax(np.abs(pp[1][0] - pd[1][0])):.2e}"),
        }
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
