"""Triton side: the tritonserver launcher and watchdog, Python-backend helpers, the one BLS helper."""
