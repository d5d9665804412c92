"""fusion_head: embeddings -> calibrated probabilities + QA flags (numpy, no torch)."""

from pathlib import Path

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.server.python_model import respond_batched

INPUTS = [C.VIDEO_EMBEDDING.name, C.AUDIO_EMBEDDING.name, C.MODALITY_MASK.name, C.MEDIA_QA.name]
OUTPUTS = [C.OUT_PROBABILITIES.name, C.OUT_QA_FLAGS.name]


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / C.HEAD_WEIGHTS_FILENAME
        self.head = FusionHead.load(path)

    def execute(self, requests):
        return respond_batched(requests, INPUTS, OUTPUTS, lambda v, a, m, q: score(self.head, v, a, m, q))
