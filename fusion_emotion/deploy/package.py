"""Pack a Triton model repository as a SageMaker ``model.tar.gz``.

SageMaker extracts ModelDataUrl into /opt/ml/model, and both our ``serve``
entrypoint and the stock SageMaker Triton container expect the model folders
directly there: so the tarball has the model folders at its top level, no
leading directory and no config.pbtxt at the root. The archive is deterministic
(``fusion_emotion.deploy.archive``): the same repository always gives the same
bytes and S3 ETag.

Two targets:

- ``sagemaker`` (our image): the repository as it is, every profile's configs
  included; the container picks one with ``FUSION_EMOTION_PROFILE``.
- ``sagemaker-triton`` (SageMaker's stock Triton image, whose ``serve`` script
  cannot pass ``--model-config-name``): each model's config for the chosen
  profile written as its ``config.pbtxt``, ``configs/`` dropped, and every
  Python-backend model given the packed execution environment
  (``<model>/env.tar.gz``, ``EXECUTION_ENV_PATH``); the copies are hard links
  inside the archive, so the environment is stored once.

Both refuse a repository the profile cannot serve (the weight-less templates in
``model_repository/``), naming every missing file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fusion_emotion import repository as R
from fusion_emotion.contract import ENSEMBLE, PROFILES
from fusion_emotion.deploy.archive import ArchiveError, Member, list_tarball, scan_tree, write_tarball

log = logging.getLogger(__name__)

TARGETS = ("sagemaker", "sagemaker-triton")
ENV_FILENAME = "env.tar.gz"
ENV_PARAMETER = "EXECUTION_ENV_PATH"

__all__ = ["PackageError", "build_model_tarball", "build_stock_triton_tarball", "list_tarball", "validate_repository"]


class PackageError(ValueError):
    """The directory cannot be packaged (not a Triton repository, incomplete, unsafe links)."""


# The stock image runs our Python models in the packed execution environment, which holds the `models`
# extra only: no DALI (nvidia-dali-cuda120 is ~400 MB as a wheel, extracted by every Python model's stub
# at load), so the DALI profiles cannot load there and are refused before any packing.
STOCK_PROFILES = tuple(p for p in PROFILES if "dali" not in p)


def validate_stock_profile(profile: str) -> None:
    """PackageError naming a profile that works when ``profile`` cannot run on the stock Triton image."""
    if profile not in STOCK_PROFILES:
        near = profile.replace("_dali", "")
        raise PackageError(
            f"--profile {profile} cannot run on SageMaker's stock Triton image: its packed environment has no "
            f"DALI (~400 MB). Package --profile {near} for --target sagemaker-triton, or use --target sagemaker "
            f"(this project's image, which has DALI) for {profile}"
        )


def validate_repository(repository: Path, profile: str = R.DEFAULT_PROFILE) -> None:
    """Refuse anything SageMaker/Triton would reject at container start, before uploading it."""
    if not repository.is_dir():
        raise PackageError(f"{repository}: not a directory")
    if (repository / "config.pbtxt").exists():
        raise PackageError(
            f"{repository} has a config.pbtxt at its root: that is a single model folder, "
            "pass the repository that contains the model folders"
        )
    if not (repository / ENSEMBLE / "config.pbtxt").is_file():
        raise PackageError(
            f"{repository} is not a fusion-emotion Triton model repository: "
            f"{ENSEMBLE}/config.pbtxt is missing (build one with `fusion-emotion export`)"
        )
    try:
        R.check_servable(repository, profile)
    except R.IncompleteRepositoryError as exc:
        raise PackageError(str(exc)) from exc


def _scan(repository: Path, output: Path) -> list[Member]:
    try:
        return scan_tree(repository, skip=[output, output.with_name(output.name + ".partial")])
    except ArchiveError as exc:
        raise PackageError(f"{repository}: {exc}") from exc


def build_model_tarball(
    repository: str | os.PathLike[str], output: str | os.PathLike[str], *, profile: str = R.DEFAULT_PROFILE
) -> list[str]:
    """Our image's tarball: the repository as it is. Returns the member names in archive order."""
    repo, out = Path(repository), Path(output)
    validate_repository(repo, profile)
    names = write_tarball(_scan(repo, out), out)
    log.info("packaged %s -> %s (%d entries, %d bytes)", repo, out, len(names), out.stat().st_size)
    return names


def stock_config(text: str, profile: str, with_env: bool) -> bytes:
    """A profile's config as the model's only config.pbtxt, plus the execution environment for Python models."""
    if ENV_PARAMETER in R.parameters(text):
        raise PackageError(f"the config already sets {ENV_PARAMETER}; remove it to let package ship the environment")
    out = text.rstrip() + "\n"
    if with_env:
        out += (
            f"# written by `fusion-emotion package --target sagemaker-triton --profile {profile}`: the stock\n"
            "# image's Python backend lacks this model's dependencies; they come from the packed environment.\n"
            f'parameters {{ key: "{ENV_PARAMETER}" value: {{ string_value: "$$TRITON_MODEL_DIRECTORY/{ENV_FILENAME}" }} }}\n'
        )
    return out.encode()


def build_stock_triton_tarball(
    repository: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    profile: str,
    env_tarball: str | os.PathLike[str],
) -> list[str]:
    """The stock SageMaker Triton image's tarball (see the module docstring). Returns member names."""
    repo, out, env = Path(repository), Path(output), Path(env_tarball)
    validate_stock_profile(profile)
    validate_repository(repo, profile)
    models = R.model_dirs(repo)
    replaced: dict[str, Member] = {}
    for model in models:
        text = R.config_path(repo / model, profile).read_text(encoding="utf-8")
        python = R.backend(text) == "python"
        try:
            replaced[f"{model}/config.pbtxt"] = Member(
                f"{model}/config.pbtxt", data=stock_config(text, profile, python)
            )
        except PackageError as exc:
            raise PackageError(f"{model}: {exc}") from exc
        if python:
            replaced[f"{model}/{ENV_FILENAME}"] = Member(f"{model}/{ENV_FILENAME}", source=env)
    members = [
        m
        for m in _scan(repo, out)
        if m.name not in replaced
        and not any(m.name == f"{x}/configs" or m.name.startswith(f"{x}/configs/") for x in models)
    ]
    names = write_tarball(members + list(replaced.values()), out)
    log.info(
        "packaged %s (profile %s) for the stock Triton image -> %s (%d bytes)", repo, profile, out, out.stat().st_size
    )
    return names
