"""The one way our Python-backend models call other Triton models (BLS).

Every call goes through :class:`BlsModel`, so three rules hold everywhere:

* **Outputs come to the host only when asked, and then always.** Without ``preferred_memory`` a BLS
  response keeps its outputs where the callee put them: GPU memory for a ``KIND_GPU`` onnxruntime or
  TensorRT model, where ``as_numpy()`` raises. ``host_outputs=True`` (the default: embeddings are small)
  asks for CPU memory; ``host_outputs=False`` returns the ``pb_utils.Tensor`` objects, to be handed on by
  DLPack (``to_dlpack``) without a copy.
* **Inputs go in without a host copy when they live on a device**: numpy arrays become ``pb_utils.Tensor``;
  anything exposing ``__dlpack__`` (a DALI GPU tensor, a CuPy or torch array) goes in through
  ``pb_utils.Tensor.from_dlpack``.
* **Errors keep their kind**: a callee's tagged error (``fusion_emotion.errors``) is re-raised with the same
  kind; anything else becomes an INTERNAL ``ServingError`` naming the callee.

The Triton stub module is injected (``pb``) so the request this builds is unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.embed import Embeddings, EncoderCalls
from fusion_emotion.core.rows import Row
from fusion_emotion.errors import ErrorKind, ServingError, is_shm_exhausted, parse_wire

log = logging.getLogger(__name__)


def _stub_module() -> Any:
    import triton_python_backend_utils as pb_utils  # deferred: exists only inside the stub (tests inject ``pb``)

    return pb_utils


class BlsModel:
    """Calls one Triton model by name (thread-safe; the stub serialises nothing here)."""

    def __init__(self, model: str, output_names: Sequence[str], *, pb: Any = None, timeout_us: int = 0) -> None:
        self.model = model
        self.output_names = list(output_names)
        self.pb = pb if pb is not None else _stub_module()
        self.timeout_us = int(timeout_us)

    def _tensor(self, name: str, value: Any) -> Any:
        pb = self.pb
        if isinstance(value, np.ndarray):
            return pb.Tensor(name, np.ascontiguousarray(value))
        if isinstance(value, pb.Tensor):
            return value if value.name() == name else pb.Tensor.from_dlpack(name, value.to_dlpack())
        if hasattr(value, "__dlpack__"):
            return pb.Tensor.from_dlpack(name, value)
        raise TypeError(f"BLS input {name!r}: need a numpy array or a DLPack tensor, got {type(value).__name__}")

    def request(self, inputs: Mapping[str, Any], *, host_outputs: bool = True) -> Any:
        """The ``pb_utils.InferenceRequest`` for ``inputs``; host memory is preferred for outputs when asked."""
        pb = self.pb
        kwargs: dict[str, Any] = {
            "model_name": self.model,
            "requested_output_names": self.output_names,
            "inputs": [self._tensor(name, value) for name, value in inputs.items()],
        }
        if self.timeout_us:
            kwargs["timeout"] = self.timeout_us
        if host_outputs:
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        return pb.InferenceRequest(**kwargs)

    def _outputs(self, response: Any, host_outputs: bool) -> dict[str, Any]:
        if response.has_error():
            raise self._error(response.error().message())
        out: dict[str, Any] = {}
        for name in self.output_names:
            tensor = self.pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise ServingError(ErrorKind.INTERNAL, self.model, f"response has no output {name!r}")
            if host_outputs and not tensor.is_cpu():
                # preferred_memory is a preference: never hand a device buffer to numpy.
                raise ServingError(ErrorKind.INTERNAL, self.model, f"output {name!r} stayed in device memory")
            out[name] = tensor.as_numpy() if host_outputs else tensor
        return out

    def _error(self, message: str) -> ServingError:
        wire = parse_wire(message)
        if wire is not None:
            return ServingError(wire.kind, wire.subject, wire.reason)
        if is_shm_exhausted(message):
            # regions never shrink: retrying once the other requests finish can succeed (docs/reliability.md)
            log.warning(
                "BLS call to %s: /dev/shm full (%s); give the container a larger --shm-size", self.model, message
            )
            return ServingError(ErrorKind.OVERLOADED, self.model, "shared memory (/dev/shm) full")
        log.error("BLS call to %s failed: %s", self.model, message)
        return ServingError(ErrorKind.INTERNAL, self.model, "model call failed")

    def infer(self, inputs: Mapping[str, Any], *, host_outputs: bool = True) -> dict[str, Any]:
        """Blocking call (``exec``); for synchronous ``execute`` methods."""
        return self._outputs(self.request(inputs, host_outputs=host_outputs).exec(), host_outputs)

    async def infer_async(self, inputs: Mapping[str, Any], *, host_outputs: bool = True) -> dict[str, Any]:
        """Awaitable call (``async_exec``); calls awaited together run concurrently in Triton."""
        response = await self.request(inputs, host_outputs=host_outputs).async_exec()
        return self._outputs(response, host_outputs)


class BlsEncoder:
    """An encoder model as a callable ``float32 [N, ...] -> float32 [N, dim]``, in chunks of its max batch."""

    def __init__(self, model: str, input_name: str, output_name: str, max_batch: int, *, pb: Any = None) -> None:
        self.bls = BlsModel(model, [output_name], pb=pb)
        self.input_name = input_name
        self.output_name = output_name
        self.max_batch = max(1, int(max_batch))

    def _chunks(self, batch: Any) -> list[Any]:
        n = batch.shape[0]
        return [batch[i : i + self.max_batch] for i in range(0, n, self.max_batch)]

    def __call__(self, batch: Any) -> np.ndarray:
        outs = [self.bls.infer({self.input_name: chunk})[self.output_name] for chunk in self._chunks(batch)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    async def encode_async(self, batch: Any) -> np.ndarray:
        """A host batch with all its chunks in flight at once (the encoder's dynamic batcher sees them
        together), or one already-batched DLPack tensor (a DALI output, ``[n <= max_batch, ...]``) without
        a host copy; such a tensor must stay alive (and its producer must not overwrite it) until this returns."""
        if not isinstance(batch, np.ndarray):
            result = await self.bls.infer_async({self.input_name: batch})
            return np.asarray(result[self.output_name], dtype=np.float32)
        results = await asyncio.gather(*(self.bls.infer_async({self.input_name: c}) for c in self._chunks(batch)))
        return np.concatenate([r[self.output_name] for r in results]).astype(np.float32, copy=False)


def ensure_loaded(models: Sequence[str], caller: str, pb: Any = None) -> None:
    """Load models this one calls through BLS if the server did not (explicit model control).

    SageMaker's stock Triton image starts ``--model-control-mode=explicit --load-model=<ensemble>``, which
    loads the ensemble's steps but not the models they call through BLS. Under ``--model-control-mode=none``
    every model is loaded already and nothing is asked of the server.
    """
    pb = pb if pb is not None else _stub_module()
    for name in models:
        if not pb.is_model_ready(model_name=name):
            pb.Logger.log_info(f"{caller}: loading {name} (not loaded by the server)")
            pb.load_model(model_name=name)


class Callees:
    """The models a Python model calls through BLS, loaded on its first request if the server did not.

    Not in ``initialize``: while tritonserver starts, its model API answers "Server not ready" to every
    readiness or load call from a stub (Triton 2.51), and stubs asking concurrently during startup crashed
    the server here (``boost::interprocess::lock_exception``, exit -6). Our launcher loads every model at
    start (``--load-model=*``), so only the stock SageMaker image's first request pays for the load.
    """

    def __init__(self, models: Sequence[str], caller: str, pb: Any = None) -> None:
        self.models = tuple(models)
        self.caller = caller
        self.pb = pb
        self.ready = False

    def ensure(self) -> None:
        if not self.ready:
            ensure_loaded(self.models, self.caller, self.pb)
            self.ready = True


class Encoders:
    """Both encoders through BLS, as the models that call them see them (loaded on first use, see Callees)."""

    def __init__(self, caller: str, max_batch: int, *, pb: Any = None) -> None:
        self.video = BlsEncoder(C.VIDEO_ENCODER, C.VIDEO_FRAMES.name, C.VIDEO_ENC_OUT.name, max_batch, pb=pb)
        self.audio = BlsEncoder(C.AUDIO_ENCODER, C.AUDIO_WAVEFORM.name, C.AUDIO_ENC_OUT.name, max_batch, pb=pb)
        self.callees = Callees((C.VIDEO_ENCODER, C.AUDIO_ENCODER), caller, pb)

    async def embed_async(self, rows: Sequence[Row]) -> Embeddings:
        """Every row's embeddings: all encoder calls of the batch in flight at once."""
        self.callees.ensure()
        calls = EncoderCalls(rows)
        jobs = [self.video.encode_async(x) for x in calls.video_inputs]
        if calls.audio_input is not None:
            jobs.append(self.audio.encode_async(calls.audio_input))
        results = list(await asyncio.gather(*jobs))
        audio = results.pop() if calls.audio_input is not None else None
        return calls.assemble(results, audio)
