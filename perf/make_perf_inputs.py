#!/usr/bin/env python3
"""Write perf_analyzer ``--input-data`` JSON for the ``fusion_emotion`` ensemble.

    python perf/make_perf_inputs.py --video clip.mp4 [--audio speech.wav] -o perf/fusion_emotion_input.json
    python perf/make_perf_inputs.py --synth -o perf/fusion_emotion_input.json   # RAVDESS-like 1280x720 clip

Several --video files give several entries (perf_analyzer cycles through them).
The format is documented in fusion_emotion/perf_inputs.py and perf/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fusion_emotion.ops.perf_inputs import decode_input_data, make_input_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, action="append", default=[], help="video file (repeatable)")
    p.add_argument("--audio", type=Path, help="WAV sent with every entry (default: none, the video's own track)")
    p.add_argument("--synth", action="store_true", help="generate the RAVDESS-like test clip (1280x720, 3.5 s)")
    p.add_argument("--save-clip", type=Path, help="with --synth: also write the generated clip here")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)

    videos = [v.read_bytes() for v in args.video]
    if args.synth:
        from fusion_emotion import testmedia  # only with --synth (its media generators need av and espeak-ng)

        clip = testmedia.mp4(audio=testmedia.speech(rate=48_000), audio_rate=48_000)
        if args.save_clip:
            args.save_clip.write_bytes(clip)
        videos.append(clip)
    audio = args.audio.read_bytes() if args.audio else None
    if not videos and audio is None:
        p.error("give --video, --audio or --synth")
    requests = [(v, audio) for v in videos] or [(None, audio)]
    doc = make_input_data(requests)
    assert len(decode_input_data(doc)) == len(requests)  # refuse to write something we cannot read back
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc))
    print(
        f"{args.output}: {len(requests)} entr{'y' if len(requests) == 1 else 'ies'}, {args.output.stat().st_size} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
