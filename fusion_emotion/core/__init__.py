"""Serving core: pure numpy/PyAV functions shared by Triton models and the in-process reference."""
