"""SageMaker-compatible HTTP front end (``/ping``, ``/invocations``, ``/predict``) over Triton gRPC."""
