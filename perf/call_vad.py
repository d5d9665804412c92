"""Speech gating on a generated two-speaker call: the VAD's frame-level F1, and CPU per call-minute with and
without gating (``speakers=channels``, each channel's timeline in-process on the reference pipeline).

    .venv/bin/python -m fusion_emotion.cli export --init random --output build/perf/repo   # once
    PYTHONPATH=$PWD .venv/bin/python perf/call_vad.py build/perf/repo --minutes 2

The call (``fusion_emotion.testmedia.calls``): espeak-ng voices on the two channels, alternating turns with
1-4 s pauses, line noise at about -54 dBFS; the known speech spans are each utterance trimmed to its first
and last audible sample. CPU is the process's CPU time (all threads) for the whole per-speaker timeline:
decode, resampling, the VAD, both channels' encoder calls and the head.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fusion_emotion import testmedia
from fusion_emotion.core.calls import call_options
from fusion_emotion.core.pipeline import ReferencePipeline
from fusion_emotion.core.timeline import timeline_local
from fusion_emotion.core.vad import FRAME_S, frame_f1, speech_frames, window_speech
from fusion_emotion.core.windows import TIMELINE_DEFAULTS, plan_file_windows
from fusion_emotion.testmedia.calls import Call, scripted_turns, two_speaker_call


def vad_table(call: Call) -> list[str]:
    """Per channel: frame-level F1 against the known speech, and windows scored vs windows holding speech."""
    windows = plan_file_windows(call.duration_s, TIMELINE_DEFAULTS)
    rows = []
    for channel in range(call.samples.shape[1]):
        detected = speech_frames(call.samples[:, channel])
        truth = call.truth_frames(channel, FRAME_S)
        scored = window_speech(detected, windows)
        known = window_speech(truth, windows)
        rows.append(
            f"{channel} | {frame_f1(detected, truth):.3f} | {truth.mean():.2f} | "
            f"{int(scored.sum())} of {len(windows)} | {int(known.sum())} | {int(np.sum(scored != known))}"
        )
    return rows


def cpu_per_minute(pipeline: ReferencePipeline, wav: bytes, minutes: float, vad: bool) -> tuple[float, int]:
    """(process CPU s per call-minute, windows scored) of one per-speaker timeline, after one warm-up call."""
    options = call_options("channels", None, vad)
    timeline_local(pipeline, None, wav, call=options)
    t = time.process_time()
    result = timeline_local(pipeline, None, wav, call=options)
    cpu = time.process_time() - t
    return cpu / minutes, sum(1 for s in result["segments"] if s.get("speech", True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repository", type=Path, help="an exported repository (fusion-emotion export)")
    p.add_argument("--minutes", type=float, default=2.0, help="call length (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    seconds = 60.0 * args.minutes
    call = two_speaker_call(scripted_turns(seconds, args.seed), seconds, seed=args.seed)
    wav = testmedia.wav(call.samples, call.rate)
    print(f"call: {seconds:g} s, 2 channels, {sum(len(s) for s in call.speech)} turns, 4 s windows back to back")
    print("channel | frame F1 | speech share | windows scored | windows with known speech | windows differing")
    for row in vad_table(call):
        print(row)
    pipeline = ReferencePipeline(args.repository)
    off, n_off = cpu_per_minute(pipeline, wav, args.minutes, vad=False)
    on, n_on = cpu_per_minute(pipeline, wav, args.minutes, vad=True)
    print("gating | windows scored (both channels) | CPU s per call-minute")
    print(f"off | {n_off} | {off:.1f}")
    print(f"on | {n_on} | {on:.1f}")
    print(f"saving: {100 * (1 - on / off):.0f} % of the CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
