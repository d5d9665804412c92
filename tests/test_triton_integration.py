"""The ensemble on a real tritonserver, compared with the in-process reference pipeline."""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fusion_emotion.client.triton import infer_grpc
from helpers import start_triton
from tritonclient.utils import InferenceServerException

from fusion_emotion import contract as C
from fusion_emotion.ops.server_stats import TritonStats
from fusion_emotion.server import procs
from fusion_emotion.tensors import build_inputs, requested_outputs

pytestmark = pytest.mark.integration

CASES = {
    "mp4 (audio from its own track)": ("mp4", None),
    "flv": ("flv", None),
    "avi": ("avi", None),
    "wav only": (None, "wav"),
    "wav 16 kHz 24-bit": (None, "wav16k"),
    "mp4 + wav": ("mp4", "wav"),
    "mp4 without audio track": ("mp4_noaudio", None),
}


def _pick(media: dict[str, bytes], key: str | None) -> bytes | None:
    return None if key is None else media[key]


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=0)
    assert np.array_equal(np.isnan(got[1]), np.isnan(want[1])), (got[1], want[1])
    np.testing.assert_allclose(np.nan_to_num(got[1]), np.nan_to_num(want[1]), atol=1e-4, rtol=0)


def _stats(url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) once the counters settle (bench's one reader)."""
    stats = TritonStats(url)
    try:
        counters = stats.snapshot().get(model, {})
    finally:
        stats.close()
    return counters.get("inference_count", 0), counters.get("execution_count", 0)


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, triton, reference, media):
    video, audio = (_pick(media, k) for k in CASES[case])
    got = infer_grpc(triton.grpc_url, video, audio)
    want = reference.predict(video, audio)
    _assert_same(got, want)
    assert abs(float(got[0].sum()) - 1.0) < 1e-5


def test_modalities(triton, reference, media):
    probs_av, qa_av = infer_grpc(triton.grpc_url, media["mp4"], None)
    # the video's own audio track is used: the answer differs from a video-only one
    row = reference.row(media["mp4"], None)
    assert row.waveform is not None
    row.waveform = None
    video_only = reference.score_rows([row])[0][0]
    assert np.abs(probs_av - video_only).max() > 1e-4
    assert not np.isnan(qa_av).any()  # both modalities: every flag computed

    _, qa_audio = infer_grpc(triton.grpc_url, None, media["wav"])
    names = list(C.QA_FLAG_NAMES)
    assert np.isnan(qa_audio[names.index("video_blur_level")])
    assert np.isnan(qa_audio[names.index("video_face_detection_confidence")])
    assert np.isnan(qa_audio[names.index("modality_consistency_score")])
    assert not np.isnan(qa_audio[names.index("audio_silence_ratio")])

    _, qa_silent_video = infer_grpc(triton.grpc_url, media["mp4_noaudio"], None)
    assert np.isnan(qa_silent_video[names.index("audio_clipping_ratio")])
    assert not np.isnan(qa_silent_video[names.index("video_blur_level")])


def test_fusion_head_stub_does_not_spin_between_requests(triton, media):
    """The head's two small matrix products are ~0.2 ms of work. With OpenBLAS's default pool its idle worker
    busy-waited after each call: ~50 ms of CPU per request at one request per 0.1 s (fusion_emotion.server.blas)."""
    (head,) = [pid for pid, model in procs.stubs(triton.proc.pid).items() if model == C.FUSION_HEAD]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    infer_grpc(triton.grpc_url, None, media["wav"], client=client)  # warm
    n, spent = 6, 0.0
    for _ in range(n):
        before = procs.cpu_seconds(head)
        infer_grpc(triton.grpc_url, None, media["wav"], client=client)
        time.sleep(0.1)  # the gap a spinning pool would fill
        spent += procs.cpu_seconds(head) - before
    assert spent / n < 0.015, f"fusion_head stub: {spent / n * 1000:.1f} ms CPU per request"


def test_audio_only_does_no_video_encoder_work(triton, media):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before_v = _stats(triton.grpc_url, C.VIDEO_ENCODER)[0]
    before_a = _stats(triton.grpc_url, C.AUDIO_ENCODER)[0]
    infer_grpc(triton.grpc_url, None, media["wav"], client=client)
    assert _stats(triton.grpc_url, C.VIDEO_ENCODER)[0] == before_v
    assert _stats(triton.grpc_url, C.AUDIO_ENCODER)[0] == before_a + 1
    infer_grpc(triton.grpc_url, media["mp4_noaudio"], None, client=client)
    assert _stats(triton.grpc_url, C.AUDIO_ENCODER)[0] == before_a + 1
    assert _stats(triton.grpc_url, C.VIDEO_ENCODER)[0] == before_v + 1


BAD = {
    "empty video": (("empty", None), "video: empty input"),
    "garbage video": (("garbage", None), "video: not a decodable media file"),
    "wav sent as video": (("wav", None), "video: unsupported container 'wav'"),
    "mp4 sent as audio": ((None, "mp4"), "audio: unsupported container"),
    "header-only wav": ((None, "wav_header_only"), "audio: WAV contains no audio samples"),
    "empty audio": ((None, "empty"), "audio: empty input"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_invalid_arg_naming_the_input(case, triton, media):
    (vk, ak), message = BAD[case]
    with pytest.raises(InferenceServerException) as err:
        infer_grpc(triton.grpc_url, _pick(media, vk), _pick(media, ak))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_server_live() and client.is_model_ready(C.ENSEMBLE)


def test_neither_input_is_refused(triton):
    """Triton itself refuses a request with no inputs, before any model runs."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.infer(C.ENSEMBLE, [], outputs=requested_outputs(grpcclient))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "request has 0 inputs" in err.value.message()
    assert client.is_model_ready(C.ENSEMBLE)
    with pytest.raises(ValueError, match="at least one"):
        build_inputs(None, None, grpcclient)  # our client refuses before sending


def test_classification_extension_answers_with_labels(triton, media):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    out = grpcclient.InferRequestedOutput(C.OUT_PROBABILITIES.name, class_count=C.NUM_CLASSES)
    result = client.infer(C.ENSEMBLE, build_inputs(None, media["wav"], grpcclient), outputs=[out])
    entries = [e.decode() for e in result.as_numpy(C.OUT_PROBABILITIES.name).reshape(-1)]
    labels = {e.split(":")[2] for e in entries}
    assert labels == set(C.LABELS)
    scores = [float(e.split(":")[0]) for e in entries]
    assert scores == sorted(scores, reverse=True)


def test_repository_says_untrained(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    cfg = client.get_model_config(C.ENSEMBLE, as_json=True)["config"]
    assert "UNTRAINED" in cfg["parameters"][C.PROVENANCE_PARAMETER]["string_value"]
    assert cfg["parameters"]["trained"]["string_value"] == "false"


def test_request_with_batch_of_rows(triton, reference, media):
    """One request carrying two rows (batch dim 2) gets two answers."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    arr = np.array([[media["wav"]], [media["wav16k"]]], dtype=np.object_)
    inp = grpcclient.InferInput("audio", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    result = client.infer(C.ENSEMBLE, [inp], outputs=requested_outputs(grpcclient))
    probs = result.as_numpy(C.OUT_PROBABILITIES.name)
    np.testing.assert_allclose(probs[0], reference.predict(None, media["wav"])[0], atol=1e-4)
    np.testing.assert_allclose(probs[1], reference.predict(None, media["wav16k"])[0], atol=1e-4)


@pytest.fixture(scope="module")
def batching_triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """One preprocess instance with dynamic batching and a long queue delay: concurrent requests share one execute.

    The shipped config has no dynamic batching (decoding gains nothing from it); the model must still answer
    every request of a batch on its own, as it does for a multi-row request or a user's batching config.
    """
    repo = tmp_path_factory.mktemp("batching") / "repo"
    shutil.copytree(demo_repository, repo, symlinks=True)
    cfg = repo / C.PREPROCESS / "config.pbtxt"
    text = cfg.read_text().replace("count: 4", "count: 1")
    # The shipped batcher hands out one request at a time (preferred size 1, no delay). Here it waits for the
    # test's six requests (up to 10 s: on a loaded 2-core host six client threads took over 1.5 s to send
    # them), so they form one batch whatever the machine's load.
    assert "preferred_batch_size: [ 1 ]" in text and "max_queue_delay_microseconds: 0" in text
    text = text.replace("preferred_batch_size: [ 1 ]", "preferred_batch_size: [ 6 ]").replace(
        "max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 10000000"
    )
    cfg.write_text(text)
    handle = start_triton(repo, tmp_path_factory.mktemp("batching-log") / "tritonserver.log")
    yield handle
    handle.stop()


def test_concurrent_requests_batched_into_one_execute(batching_triton, reference, media):
    jobs = [("mp4", None), (None, "wav"), ("garbage", None), ("flv", None), (None, "wav16k"), ("mp4", "wav")]
    inf0, exe0 = _stats(batching_triton.grpc_url, C.PREPROCESS)
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(infer_grpc, batching_triton.grpc_url, _pick(media, v), _pick(media, a)) for v, a in jobs]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except InferenceServerException as exc:
                outcomes.append(exc)
    inf1, exe1 = _stats(batching_triton.grpc_url, C.PREPROCESS)
    assert inf1 - inf0 == len(jobs)
    assert exe1 - exe0 < len(jobs), "requests were not batched together"
    for (v, a), outcome in zip(jobs, outcomes):
        if v == "garbage":
            assert isinstance(outcome, InferenceServerException)
            assert "video: not a decodable media file" in outcome.message()
        else:
            assert not isinstance(outcome, Exception), outcome
            _assert_same(outcome, reference.predict(_pick(media, v), _pick(media, a)))


def test_sigterm_stops_cleanly_without_orphan_stubs(batching_triton):
    children = [p.pid for p in procs.descendants(batching_triton.proc.pid)]
    stubs = procs.stubs(batching_triton.proc.pid)
    assert len(stubs) >= 4  # one per model instance: preprocess, 2 encoders, fusion_head
    assert batching_triton.stop() == 0
    assert [p for p in children if procs.alive(p)] == []


def test_cpu_int8_profile_serves_the_named_graph(demo_repository: Path, tmp_path: Path, reference, media):
    """`--profile cpu_int8` (written by `fusion-emotion quantize`) loads model_int8.onnx, not model.onnx.

    The int8 graph is stood in for by the fp32 one under the int8 name, with model.onnx removed,
    so answers equal the reference only if the profile really loads the named file.
    """
    from fusion_emotion.ops import quantize

    repo = tmp_path / "repo"
    shutil.copytree(demo_repository, repo, symlinks=True)
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        version = repo / model / "1"
        (version / C.ONNX_FILENAME).rename(version / quantize.INT8_FILENAME)
        quantize.write_int8_config(repo, model)
    handle = start_triton(repo, tmp_path / "tritonserver.log", profile="cpu_int8")
    try:
        _assert_same(infer_grpc(handle.grpc_url, media["mp4"], None), reference.predict(media["mp4"], None))
    finally:
        handle.stop()
