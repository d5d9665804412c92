"""Preprocessing fidelity against the references a user's checkpoint was trained with.

The Triton tests compare Triton with ReferencePipeline, which runs our own code.
Here our frames and waveform are compared with what torchvision's R3D-18 eval
transform and Hugging Face's HuBERT feature extractor make of the same decoded
media (both constructed locally: no weights, nothing downloaded).

Measured (this machine, synth clips, normalised units = after the Kinetics mean/std):

| clip | mean abs | p99 | max |
|---|---|---|---|
| 1280x720 H.264 face | 0.051 | 0.36 | 1.37 |
| 480x360 FLV face | 0.041 | 0.24 | 0.91 |
| 640x480 MPEG-4 face | 0.044 | 0.28 | 0.89 |

The crop and normalisation are identical (same 128x171 frames: max 7e-7). What
differs is the resize: ours averages source pixels (swscale's area filter,
straight from the decoded YUV), torchvision converts to full-size RGB and applies
an antialiased bilinear filter. Of swscale's filters, area is the closest to
torchvision's (bilinear 0.068 mean, bicubic 0.056, lanczos 0.056 on the 720p clip).
The differences sit on sharp edges; they are a few percent of the pixel range on
average, below what JPEG/H.264 re-encoding changes. Tolerances: mean <= 0.08 and
p99 <= 0.5 normalised units on natural content.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.model_inputs import frames_for_model, resample, to_mono, waveform_for_model
from fusion_emotion.core.video import resize_frame

MEAN_TOL = 0.08
P99_TOL = 0.5


@pytest.fixture(scope="module")
def torchvision_transform():
    from torchvision.models.video import R3D_18_Weights

    tf = R3D_18_Weights.KINETICS400_V1.transforms()  # builds the preset; downloads nothing
    assert list(tf.resize_size) == list(C.RESIZE_HW) and list(tf.crop_size) == list(C.CROP_HW)
    assert tuple(tf.mean) == C.KINETICS_MEAN and tuple(tf.std) == C.KINETICS_STD
    return tf


def _decoded_frames(data: bytes, n: int = C.NUM_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """The same decoded frames twice: resized as our decoder does, and as full-size RGB."""
    ours, full = [], []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            ours.append(resize_frame(frame))
            full.append(frame.to_ndarray(format="rgb24"))
            if len(ours) == n:
                break
    return np.stack(ours), np.stack(full)


def _torchvision(tf, frames: np.ndarray) -> np.ndarray:
    import torch

    return tf(torch.from_numpy(frames).permute(0, 3, 1, 2)).numpy()  # [T, C, H, W] uint8 -> [C, T, 112, 112]


@pytest.mark.parametrize(
    "maker",
    [
        lambda: testmedia.mp4(seconds=0.6),  # RAVDESS-like 1280x720 H.264
        lambda: testmedia.flv(seconds=0.6),  # CREMA-D-like 480x360
        lambda: testmedia.avi(seconds=0.7),  # 640x480 MPEG-4 Part 2
    ],
    ids=["mp4-1280x720", "flv-480x360", "avi-640x480"],
)
def test_frames_match_torchvision_r3d18_transform(torchvision_transform, maker) -> None:
    ours, full = _decoded_frames(maker())
    a = frames_for_model(ours)
    b = _torchvision(torchvision_transform, full)
    assert a.shape == b.shape == (3, C.NUM_FRAMES, *C.CROP_HW)
    diff = np.abs(a - b)
    mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    print(f"frames vs torchvision: mean {mean:.4f} p99 {p99:.4f} max {diff.max():.4f}")
    assert mean <= MEAN_TOL and p99 <= P99_TOL


def test_crop_and_normalisation_equal_torchvision(torchvision_transform) -> None:
    """On the same 128x171 frames the rest of the transform is exact."""
    ours, _ = _decoded_frames(testmedia.mp4(width=320, height=240, seconds=0.6))
    np.testing.assert_allclose(frames_for_model(ours), _torchvision(torchvision_transform, ours), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def hubert_feature_extractor():
    """HuBERT-base's feature extractor configuration, built locally: raw 16 kHz waveform, no normalisation."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=C.SAMPLE_RATE, padding_value=0.0, do_normalize=False, return_attention_mask=False
    )


def _hf(fe, wave16k: np.ndarray) -> np.ndarray:
    out = fe(
        wave16k,
        sampling_rate=C.SAMPLE_RATE,
        padding="max_length",
        max_length=C.AUDIO_SAMPLES,
        truncation=True,
        return_tensors="np",
    )
    return np.asarray(out["input_values"][0], dtype=np.float32)


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_waveform_matches_the_hubert_feature_extractor(hubert_feature_extractor, rate: int) -> None:
    """Up to the 4 s window: ours equals the extractor's output on the same 16 kHz mono audio (zero-padded at the end)."""
    speech = testmedia.speech(rate=rate)[: int(3.5 * rate)]
    dec = decode_audio(testmedia.wav(np.stack([speech, 0.5 * speech], axis=1), rate, "s16"))
    ours = waveform_for_model(dec.samples, dec.sample_rate)
    mono16 = resample(to_mono(dec.samples), dec.sample_rate)  # the extractor takes 16 kHz mono only
    np.testing.assert_array_equal(ours, _hf(hubert_feature_extractor, mono16))


def test_long_audio_keeps_the_centred_window(hubert_feature_extractor) -> None:
    """Past 4 s the extractor truncates to the first 4 s; we keep the centred 4 s (documented choice)."""
    speech = testmedia.speech(rate=16_000)
    wave = np.concatenate([speech, speech, speech])[: 10 * 16_000]
    assert wave.size > C.AUDIO_SAMPLES
    start = (wave.size - C.AUDIO_SAMPLES) // 2
    ours = waveform_for_model(wave[None], 16_000)
    np.testing.assert_array_equal(ours, _hf(hubert_feature_extractor, wave[start:]))
    assert not np.array_equal(ours, _hf(hubert_feature_extractor, wave))
