"""``fusion-emotion ui``: the web playground against a front end, a SageMaker endpoint or Triton itself."""
