"""Structured errors on the wire, and the one BLS helper's requests (a recording stand-in for the stub module).

The BLS helper's real calls run in every integration test against tritonserver; here the stand-in records
exactly what the helper hands to ``pb_utils``: the memory preference, how inputs are made, how errors map.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from fusion_emotion.errors import ErrorKind, ServingError, parse_wire
from fusion_emotion.frontend.triton import MediaRejected, map_triton_error
from fusion_emotion.server.bls import BlsEncoder, BlsModel, Callees


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", list(ErrorKind))
def test_wire_round_trip_keeps_kind_subject_reason(kind: ErrorKind) -> None:
    err = ServingError(kind, "video", "duration 700.0 s is over the 600 s limit")
    wrapped = f"in ensemble 'fusion_emotion', {err.wire()}"
    got = parse_wire(wrapped)
    assert got is not None
    assert (got.kind, got.subject, got.reason) == (kind, "video", "duration 700.0 s is over the 600 s limit")


def test_status_follows_the_kind_not_the_wording() -> None:
    # keyed by the wire tag clients see: the tag -> status contract, pinned independently of errors.py's table
    statuses = {k.value: k.http_status for k in ErrorKind}
    assert statuses == {
        "bad_request": 400,
        "invalid_media": 422,
        "too_large": 413,
        "cancelled": 499,
        "deadline": 504,
        "overloaded": 503,
        "internal": 500,
    }
    # a reason that reads like another kind does not change the status
    tricky = ServingError(ErrorKind.INVALID_MEDIA, "audio", "nothing is over the limit here")
    assert parse_wire(tricky.wire()).http_status == 422
    assert parse_wire("video: over the 600 s limit (no tag)") is None


class _TritonException(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self._status, self._message = status, message

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._message


def test_front_end_maps_tagged_errors() -> None:
    too_large = ServingError(ErrorKind.TOO_LARGE, "video", "input is 9 bytes, over the 8-byte limit").wire()
    err = map_triton_error(_TritonException("StatusCode.INVALID_ARGUMENT", f"in ensemble 'x', {too_large}"))
    assert isinstance(err, MediaRejected) and err.status == 413 and err.input_name == "video" and err.too_large
    bad = ServingError(ErrorKind.BAD_REQUEST, "window_s", "0.2 s is outside [1, 10] s").wire()
    err = map_triton_error(_TritonException("StatusCode.INVALID_ARGUMENT", bad))
    assert err.status == 400 and err.message == "window_s: 0.2 s is outside [1, 10] s"
    internal = ServingError(ErrorKind.INTERNAL, "encoder", "model call failed (secret detail)").wire()
    err = map_triton_error(_TritonException("StatusCode.INTERNAL", internal))
    assert err.status == 500 and "secret" not in err.message
    busy = ServingError(ErrorKind.OVERLOADED, "preprocess", "queue full").wire()
    err = map_triton_error(_TritonException("StatusCode.UNAVAILABLE", busy))
    assert err.status == 503 and err.headers.get("Retry-After")
    assert map_triton_error(_TritonException("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded")).status == 504
    assert map_triton_error(_TritonException("StatusCode.UNAVAILABLE", "failed to connect")).status == 503


# --------------------------------------------------------------------------- BLS
class _Tensor:
    def __init__(self, name: str, array: np.ndarray | None = None, *, cpu: bool = True, dlpack: Any = None) -> None:
        self._name, self.array, self.cpu, self.dlpack = name, array, cpu, dlpack

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return self.cpu

    def as_numpy(self) -> np.ndarray:
        if not self.cpu:
            raise RuntimeError("Tensor is stored in GPU and cannot be converted to NumPy")
        return self.array

    def to_dlpack(self) -> Any:
        return ("capsule", self._name)

    @classmethod
    def from_dlpack(cls, name: str, obj: Any) -> _Tensor:
        return cls(name, None, cpu=False, dlpack=obj)


class _Error:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class _Response:
    def __init__(self, outputs: dict[str, _Tensor], error: str | None = None) -> None:
        self.outputs, self._error = outputs, error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> _Error:
        return _Error(self._error or "")


class _PreferredMemory:
    def __init__(self, kind: str, device: int) -> None:
        self.kind, self.device = kind, device


class FakeStub:
    """Records every InferenceRequest; the callee doubles its input, or fails as told."""

    TRITONSERVER_MEMORY_CPU = "CPU"
    TRITONSERVER_MEMORY_GPU = "GPU"
    PreferredMemory = _PreferredMemory
    Tensor = _Tensor

    def __init__(self, *, error: str | None = None, gpu_outputs: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.error, self.gpu_outputs = error, gpu_outputs
        self.ready: set[str] = set()
        self.loaded: list[str] = []

        stub = self

        class InferenceRequest:
            def __init__(self, **kwargs: Any) -> None:
                stub.requests.append(kwargs)
                self.kwargs = kwargs

            def _respond(self) -> _Response:
                if stub.error:
                    return _Response({}, stub.error)
                x = self.kwargs["inputs"][0]
                pref = self.kwargs.get("preferred_memory")
                on_cpu = not stub.gpu_outputs or (pref is not None and pref.kind == "CPU")
                data = None if x.array is None else x.array * 2
                return _Response({n: _Tensor(n, data, cpu=on_cpu) for n in self.kwargs["requested_output_names"]})

            def exec(self) -> _Response:
                return self._respond()

            async def async_exec(self) -> _Response:
                return self._respond()

        self.InferenceRequest = InferenceRequest

    @staticmethod
    def get_output_tensor_by_name(response: _Response, name: str) -> _Tensor | None:
        return response.outputs.get(name)

    def is_model_ready(self, model_name: str) -> bool:
        return model_name in self.ready

    def load_model(self, model_name: str) -> None:
        self.loaded.append(model_name)
        self.ready.add(model_name)

    class Logger:
        @staticmethod
        def log_info(message: str) -> None:
            pass


def test_bls_asks_for_host_memory_by_default() -> None:
    stub = FakeStub(gpu_outputs=True)  # the callee is a KIND_GPU model
    out = BlsModel("video_encoder", ["embedding"], pb=stub).infer({"frames": np.ones((2, 3), np.float32)})
    req = stub.requests[-1]
    assert req["model_name"] == "video_encoder" and req["requested_output_names"] == ["embedding"]
    assert req["preferred_memory"].kind == "CPU" and req["preferred_memory"].device == 0
    np.testing.assert_array_equal(out["embedding"], np.full((2, 3), 2.0, np.float32))


def test_bls_device_outputs_stay_tensors_when_asked() -> None:
    stub = FakeStub(gpu_outputs=True)
    out = BlsModel("video_encoder", ["embedding"], pb=stub).infer(
        {"frames": np.ones((1, 3), np.float32)}, host_outputs=False
    )
    assert "preferred_memory" not in stub.requests[-1]
    assert isinstance(out["embedding"], _Tensor) and not out["embedding"].is_cpu()


def test_bls_never_hands_a_device_buffer_to_numpy() -> None:
    stub = FakeStub(gpu_outputs=True)

    class IgnoresPreference(stub.InferenceRequest):  # type: ignore[name-defined, misc]
        def exec(self):  # the callee put its outputs on the GPU anyway
            r = super().exec()
            for t in r.outputs.values():
                t.cpu = False
            return r

    stub.InferenceRequest = IgnoresPreference
    with pytest.raises(ServingError, match="stayed in device memory") as err:
        BlsModel("audio_encoder", ["embedding"], pb=stub).infer({"waveform": np.ones((1, 4), np.float32)})
    assert err.value.kind is ErrorKind.INTERNAL


def test_bls_inputs_from_dlpack_without_a_host_copy() -> None:
    class DeviceArray:
        def __dlpack__(self, stream: Any = None) -> Any:
            return "capsule"

        def __dlpack_device__(self) -> tuple[int, int]:
            return (2, 0)  # kDLCUDA

    stub = FakeStub()
    BlsModel("video_encoder", ["embedding"], pb=stub).request({"frames": DeviceArray()})
    (tensor,) = stub.requests[-1]["inputs"]
    assert tensor.name() == "frames" and not tensor.is_cpu() and isinstance(tensor.dlpack, DeviceArray)
    with pytest.raises(TypeError, match="numpy array or a DLPack tensor"):
        BlsModel("video_encoder", ["embedding"], pb=stub).request({"frames": [1, 2, 3]})


def test_bls_errors_keep_their_kind() -> None:
    tagged = ServingError(ErrorKind.TOO_LARGE, "video", "too many frames").wire()
    with pytest.raises(ServingError) as err:
        BlsModel("preprocess", ["x"], pb=FakeStub(error=f"in model 'preprocess', {tagged}")).infer(
            {"a": np.zeros(1, np.float32)}
        )
    assert (err.value.kind, err.value.subject, err.value.reason) == (ErrorKind.TOO_LARGE, "video", "too many frames")
    with pytest.raises(ServingError) as err:
        BlsModel("audio_encoder", ["x"], pb=FakeStub(error="onnxruntime: CUDA out of memory at 0x7f")).infer(
            {"a": np.zeros(1, np.float32)}
        )
    assert err.value.kind is ErrorKind.INTERNAL and "0x7f" not in str(err.value)


def test_bls_encoder_chunks_by_max_batch() -> None:
    stub = FakeStub()
    encoder = BlsEncoder("video_encoder", "frames", "embedding", max_batch=3, pb=stub)
    batch = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    np.testing.assert_array_equal(encoder(batch), batch * 2)
    assert [r["inputs"][0].array.shape[0] for r in stub.requests] == [3, 3, 1]
    stub.requests.clear()
    np.testing.assert_array_equal(asyncio.run(encoder.encode_async(batch)), batch * 2)
    assert [r["inputs"][0].array.shape[0] for r in stub.requests] == [3, 3, 1]


def test_callees_load_once_on_first_use() -> None:
    stub = FakeStub()
    stub.ready.add("video_encoder")
    callees = Callees(("video_encoder", "audio_encoder"), "preprocess", pb=stub)
    assert stub.loaded == []  # nothing is asked of the server while it starts
    callees.ensure()
    callees.ensure()
    assert stub.loaded == ["audio_encoder"]


def test_bls_encoder_hands_a_dali_tensor_on_by_dlpack_and_asks_for_host_outputs() -> None:
    """preprocess's DALI route: the clip goes in by DLPack, the embedding comes back in host memory."""

    class DaliTensor:  # what DALI's TensorGPU exposes
        def __dlpack__(self, stream: Any = None) -> Any:
            return ("capsule", "clip")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (2, 0)  # kDLCUDA

    stub = FakeStub(gpu_outputs=True)
    encoder = BlsEncoder("video_encoder", "frames", "embedding", 8, pb=stub)
    clip = DaliTensor()
    asyncio.run(encoder.encode_async(clip))
    (req,) = stub.requests
    assert req["preferred_memory"].kind == "CPU"
    (tensor,) = req["inputs"]
    assert tensor.name() == "frames" and tensor.dlpack is clip  # no host copy on the way in
