"""Compare face detectors for the `video_face_detection_confidence` flag: recall, false positives, count, cost.

    .venv/bin/python perf/face_flag.py [--scenes 8] [--repeats 5]

Scenes come from ``fusion_emotion.testmedia.face_scene`` (the astronaut's frontal
face at a known share of the frame height, pasted on a wall at random places) in
1280x720 and 480x360 frames, JPEG quality 50, scaled as the decoder's ``qa_frames``
(height <= 360 px); negatives are a face-less photo, noise, a blank wall and a
brick/gravel texture. Candidates are OpenCV's bundled frontal-face Haar cascades
(the only face detectors found inside a registry package that serving can use:
see README "video_face_detection_confidence"), each run at several detection
heights, plus the old setting (default cascade on the 128x171 model frames).

Printed per candidate: share of face frames with a face found at 8/10/15/30 %
face height (both frame sizes pooled), share with exactly one face, false-positive
frames over all negatives, the flag's minimum over the 10 % clips (4 frames each),
and milliseconds per request (4 frames, 1280x720 source; wall clock and CPU time of
all threads) with the load average. Wall-clock numbers on a shared machine are
noisy, CPU time less so: compare candidates within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from fusion_emotion import testmedia
from fusion_emotion.core import qa

FRACTIONS = (0.08, 0.10, 0.15, 0.30)
NEGATIVES = ("no_face", "noise", "wall", "texture")
SIZES = ((1280, 720), (480, 360))


def _jpeg(frame: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def scenes(n: int, seed: int = 1) -> dict[tuple, np.ndarray]:
    """(width, height, fraction or negative kind) -> qa frames [n, H, W, 3]."""
    rng = np.random.default_rng(seed)
    out: dict[tuple, np.ndarray] = {}
    for w, h in SIZES:
        for frac in FRACTIONS:
            frames = [
                testmedia.face_scene(w, h, frac, centers=[(rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.6))], seed=i)
                for i in range(n)
            ]
            out[(w, h, frac)] = testmedia.qa_frames(np.stack([_jpeg(f) for f in frames]))
        for kind in NEGATIVES:
            frames = [testmedia.face_scene(w, h, kind=kind, seed=i) for i in range(n)]
            out[(w, h, kind)] = testmedia.qa_frames(np.stack([_jpeg(f) for f in frames]))
    return out


def to_model_frames(frames: np.ndarray) -> np.ndarray:
    """What the old flag saw: the 128x171 model frames."""
    return np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_AREA) for f in frames])


def evaluate(name: str, detect, data: dict[tuple, np.ndarray], repeats: int) -> dict[str, object]:
    row: dict[str, object] = {"detector": name}
    for frac in FRACTIONS:
        found = [f for (w, h, k), frames in data.items() if k == frac for f in detect(frames, len(frames))]
        row[f"found@{int(frac * 100)}%"] = np.mean([f.count > 0 for f in found])
        if frac == 0.15:
            row["one face@15%"] = np.mean([f.count == 1 for f in found])
    clips = [
        qa.face_confidence_of(detect(frames[i : i + 4], 4))
        for (w, h, k), frames in data.items()
        if k == 0.10
        for i in range(0, len(frames) - 3, 4)
    ]
    row["flag min@10%"] = min(clips)
    neg = [f for (w, h, k), frames in data.items() if k in NEGATIVES for f in detect(frames, len(frames))]
    row["false-pos frames"] = f"{sum(f.count > 0 for f in neg)}/{len(neg)}"
    # CPU per request on 720p scenes: a 15 % face, a 30 % face (head and shoulders), no face
    for label, key in (("", (1280, 720, 0.15)), (" @30%", (1280, 720, 0.30)), (" no face", (1280, 720, "no_face"))):
        request = data[key][:4]
        detect(request, 4)  # load the cascade
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            detect(request, 4)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        if not label:
            row["wall ms/request"] = 1000 * float(np.median(wall))
        row[f"CPU ms/request{label}"] = 1000 * float(np.median(cpu))
    return row


def candidates() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        (
            "old: default @128x171 min28",
            lambda f, k: _old(to_model_frames(f), k),
        )
    ]
    for cascade in ("default", "alt", "alt2"):
        for height in (240, 300, 360):
            file = f"haarcascade_frontalface_{cascade}.xml"
            out.append(
                (
                    f"{cascade} @{height}px" + (" (chosen)" if file == qa.FACE_CASCADE and height == 300 else ""),
                    lambda f, k, file=file, height=height: qa.detect_faces(f, k, detect_height=height, cascade=file),
                )
            )
    for height, frames in ((250, 4), (250, 3), (250, 2), (300, 2)):  # alt2's own 20 px window: 8 % of 250 px
        out.append(
            (
                f"alt2 @{height}px min20, {frames} frames",
                lambda f, k, height=height, frames=frames: qa.detect_faces(
                    f, min(k, frames) if k == 4 else k, detect_height=height, min_size=20
                ),
            )
        )
    out.append(
        (
            "alt2 @300px min20, 2 frames, no coarse pass (before)",
            lambda f, k: qa.detect_faces(f, min(k, 2) if k == 4 else k, coarse_fraction=0.0),
        )
    )
    for scale in (1.2, 1.3):  # fewer pyramid levels: the cost, against recall at 8-10 %
        out.append(
            (
                f"alt2 @300px scale {scale}",
                lambda f, k, scale=scale: qa.detect_faces(f, k, detect_height=300, scale_factor=scale),
            )
        )
    return out


def _old(frames: np.ndarray, k: int) -> list[qa.FaceFrame]:
    """The previous flag's detector: default cascade, 128x171, minimum face 28 px."""
    cascade = qa._face_cascade("haarcascade_frontalface_default.xml")
    out = []
    for frame in qa._examined(frames, k):
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        boxes, support = cascade.detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=3, minSize=(28, 28))
        out.append(qa.FaceFrame(np.asarray(boxes).reshape(-1, 4), np.asarray(support).reshape(-1)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8, help="frames per (size, face height or negative), multiple of 4")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per candidate (median reported)")
    args = p.parse_args(argv)
    data = scenes(args.scenes)
    print(f"load average before: {os.getloadavg()[0]:.2f}; cv2 threads {cv2.getNumThreads()}")
    rows = [evaluate(name, fn, data, args.repeats) for name, fn in candidates()]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
