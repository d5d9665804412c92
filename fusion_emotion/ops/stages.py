"""Per-stage times of one request (``fusion-emotion bench --stages DIR``): where a request's time goes.

Each stage of the lean pipeline (decode, QA flags, tensors, encoders, head) is
timed alone, wall clock and process CPU, and optionally the old design's stages
(``--baseline``), for the report and for GPU budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """Median wall and process-CPU milliseconds of ``fn`` over ``repeats`` calls (after one warm call)."""
    result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_ms": float(np.median(walls) * 1000), "cpu_ms": float(np.median(cpus) * 1000)}, result


def measure_stages(
    repository: str | Path, video: bytes, audio: bytes | None = None, repeats: int = 5, baseline: bool = False
) -> dict[str, dict[str, float]]:
    """Per-stage times of one request, run alone (no concurrency), for the report and GPU budgets.

    ``cpu_ms`` is process CPU time, so a stage that uses both cores shows
    cpu_ms > wall_ms; the sum of cpu_ms is what one request costs the machine.
    """
    # optional: [models] (bench imports this module; its other targets need no decoder)
    from fusion_emotion.core import qa
    from fusion_emotion.core.audio import decode_audio
    from fusion_emotion.core.fusion import score
    from fusion_emotion.core.model_inputs import frames_for_model, waveform_for_model
    from fusion_emotion.core.pipeline import ReferencePipeline
    from fusion_emotion.core.video import decode_video

    pipe = ReferencePipeline(repository)
    stages: dict[str, dict[str, float]] = {}
    stages["decode_video"], dec = _timed(lambda: decode_video(video, want_audio=audio is None), repeats)
    if audio is not None:
        stages["decode_audio"], adec = _timed(lambda: decode_audio(audio), repeats)
        native, rate = adec.samples, adec.sample_rate
    else:
        native, rate = dec.audio, dec.sample_rate
    # qa_frames: the face detector's frames, once the decoder provides them (else the model frames are used)
    qa_frames = getattr(dec, "qa_frames", None)
    stages["qa_flags"], media_qa = _timed(lambda: qa.media_qa(dec.frames, native, rate, qa_frames), repeats)
    stages["frames_for_model"], frames = _timed(lambda: frames_for_model(dec.frames), repeats)
    stages["waveform_for_model"], wave = _timed(lambda: waveform_for_model(native, rate), repeats)
    stages["video_encoder"], v = _timed(lambda: pipe.video_encoder(frames[None]), repeats)
    stages["audio_encoder"], a = _timed(lambda: pipe.audio_encoder(wave[None]), repeats)
    mask = np.ones((1, 2), np.float32)
    stages["fusion_head"], _ = _timed(lambda: score(pipe.head, v, a, mask, media_qa[None].astype(np.float32)), repeats)
    stages["lean_total"] = {k: sum(s[k] for s in stages.values()) for k in ("wall_ms", "cpu_ms")}
    stages["lean_end_to_end"], _ = _timed(lambda: pipe.predict(video, audio), repeats)
    if baseline:
        import torch  # optional: [export]

        from fusion_emotion.ops.baseline import BaselineTarget  # optional: [export]

        base = BaselineTarget(video, audio)
        stages["baseline_decode_all"], (all_frames, _, _) = _timed(
            lambda: BaselineTarget.decode_all(video, want_audio=audio is None), max(1, repeats // 2)
        )
        with torch.no_grad():
            stages["baseline_preprocess"], clip = _timed(lambda: base.preprocess_video(all_frames), repeats)
            del all_frames
            stages["baseline_video_encoder"], _ = _timed(lambda: base.model.video_encoder(clip), repeats)
            tw = torch.from_numpy(wave).unsqueeze(0)
            stages["baseline_audio_encoder"], _ = _timed(lambda: base.audio_model(tw), repeats)
        stages["baseline_end_to_end"], _ = _timed(lambda: base.predict(video, audio), max(1, repeats // 2))
    return stages
