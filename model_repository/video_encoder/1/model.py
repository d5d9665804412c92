"""CPU profile adapter: onnxruntime over model.onnx (the gpu profiles use Triton's onnxruntime backend)."""

from fusion_emotion.triton_python import OnnxEncoderModel as TritonPythonModel  # noqa: F401
