#!/usr/bin/env bash
# Build the serving image and push it to Amazon ECR (creating the repository if needed).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: ${0##*/} [-r REGION] [-a ACCOUNT_ID] [-n REPOSITORY] [-t TAG] [--base-image REF] [--no-push] [-- DOCKER_BUILD_ARGS...]

Builds the Dockerfile at the repository root and pushes
  ACCOUNT_ID.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG

The base image is pinned by digest: a REF without @sha256:... is resolved with
docker buildx imagetools inspect and passed as BASE_IMAGE=REF@sha256:<digest>
(printed on stderr: keep it, and pass it back as --base-image to rebuild the same base).

Options (environment variable in brackets):
  -r, --region REGION       AWS region            [AWS_REGION, AWS_DEFAULT_REGION, aws configure]
  -a, --account ACCOUNT_ID  AWS account id        [AWS_ACCOUNT_ID, aws sts get-caller-identity]
  -n, --repository NAME     ECR repository name   [ECR_REPOSITORY, default fusion-emotion]
  -t, --tag TAG             image tag             [IMAGE_TAG, default: git short SHA or "latest"]
      --platform PLATFORM   docker build platform [DOCKER_PLATFORM, default linux/amd64]
      --base-image REF      base image            [BASE_IMAGE, default ${default_base}]
      --no-push             build and tag only
  -h, --help                this text

Arguments after -- go to docker build (e.g. -- --no-cache).
Prints the pushed image URI on stdout (use it as deploy --image-uri).
USAGE
}

die() {
    echo "error: $*" >&2
    exit 2
}

default_base="nvcr.io/nvidia/tritonserver:24.10-py3"
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
context="$(cd "${script_dir}/.." && pwd)"

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
account="${AWS_ACCOUNT_ID:-}"
repository="${ECR_REPOSITORY:-fusion-emotion}"
tag="${IMAGE_TAG:-}"
platform="${DOCKER_PLATFORM:-linux/amd64}"
base_image="${BASE_IMAGE:-${default_base}}"
push=1
build_args=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        -r | --region) [[ $# -ge 2 ]] || die "$1 needs a value"; region="$2"; shift 2 ;;
        -a | --account) [[ $# -ge 2 ]] || die "$1 needs a value"; account="$2"; shift 2 ;;
        -n | --repository) [[ $# -ge 2 ]] || die "$1 needs a value"; repository="$2"; shift 2 ;;
        -t | --tag) [[ $# -ge 2 ]] || die "$1 needs a value"; tag="$2"; shift 2 ;;
        --platform) [[ $# -ge 2 ]] || die "$1 needs a value"; platform="$2"; shift 2 ;;
        --base-image) [[ $# -ge 2 ]] || die "$1 needs a value"; base_image="$2"; shift 2 ;;
        --no-push) push=0; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; build_args=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed"

if [[ -z "${tag}" ]]; then
    tag="$(git -C "${context}" rev-parse --short HEAD 2>/dev/null || echo latest)"
fi

if [[ "${push}" -eq 1 ]]; then
    command -v aws >/dev/null 2>&1 || die "the aws CLI is required to push (or use --no-push)"
    if [[ -z "${region}" ]]; then
        region="$(aws configure get region || true)"
    fi
    [[ -n "${region}" ]] || die "no AWS region: pass --region or set AWS_REGION"
    if [[ -z "${account}" ]]; then
        account="$(aws sts get-caller-identity --query Account --output text)"
    fi
    [[ "${account}" =~ ^[0-9]{12}$ ]] || die "account id must be 12 digits, got '${account}'"
    registry="${account}.dkr.ecr.${region}.amazonaws.com"
else
    registry="${account:-local}.dkr.ecr.${region:-local}.amazonaws.com"
fi
[[ "${repository}" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "invalid ECR repository name '${repository}'"
image="${registry}/${repository}:${tag}"

if [[ "${base_image}" != *@sha256:* ]]; then
    digest="$(docker buildx imagetools inspect "${base_image}" --format '{{.Manifest.Digest}}')"
    [[ "${digest}" =~ ^sha256:[0-9a-f]{64}$ ]] || die "could not resolve the digest of ${base_image} (got '${digest}')"
    base_image="${base_image}@${digest}"
fi
[[ "${base_image}" =~ @sha256:[0-9a-f]{64}$ ]] || die "base image must end in @sha256:<64 hex>, got '${base_image}'"
echo "base image: ${base_image}" >&2

echo "building ${image} from ${context}" >&2
docker build --platform "${platform}" --target final --build-arg "BASE_IMAGE=${base_image}" \
    -t "${repository}:${tag}" "${build_args[@]}" "${context}"
docker tag "${repository}:${tag}" "${image}"

if [[ "${push}" -eq 0 ]]; then
    echo "${image}"
    exit 0
fi

if ! aws ecr describe-repositories --region "${region}" --repository-names "${repository}" >/dev/null 2>&1; then
    echo "creating ECR repository ${repository}" >&2
    aws ecr create-repository --region "${region}" --repository-name "${repository}" \
        --image-scanning-configuration scanOnPush=true >/dev/null
fi

aws ecr get-login-password --region "${region}" \
    | docker login --username AWS --password-stdin "${registry}" >&2
docker push "${image}" >&2
echo "${image}"
