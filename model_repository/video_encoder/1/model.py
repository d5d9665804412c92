"""CPU profile adapter: onnxruntime over model.onnx (the gpu profiles use Triton's onnxruntime backend)."""
