"""CPU profile adapter: OpenVINO (cpu) or onnxruntime (cpu_int8) over model.onnx (the gpu profiles use Triton's onnxruntime backend)."""

from fusion_emotion.server.python_model import OnnxEncoderModel as TritonPythonModel  # noqa: F401
