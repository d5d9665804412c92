"""Container and SageMaker deployment: model packaging, endpoint management, process supervision.

Modules here import boto3 lazily (inside functions) so the serving image and
``fusion-emotion --help`` never pay for it.
"""
