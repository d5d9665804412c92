"""fusion-emotion: audio-visual emotion recognition served on Triton."""

__version__ = "0.1.0"
