"""S3 URIs: the one parser for every ``s3://`` string the product takes (request inputs, batch inputs, deploy).

Pure (no boto3): the fetching stays where it happens (``fusion_emotion.s3fetch``, ``deploy``). One rule for
buckets everywhere: S3's names (3-63 lowercase letters, digits, dots, hyphens), never IP-address-shaped and
never with adjacent dots, so a URI can never name a host (e.g. 169.254.169.254) instead of a bucket; and no
``.``/``..`` key segments, which a normalising proxy or custom endpoint would resolve outside the bucket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


class S3UriError(ValueError):
    """A string is not an S3 URI of the form asked for; the message names the field and the form."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""  # no leading slash; "" for the bucket root

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)


def parse_s3_uri(raw: Any, what: str = "S3 URI", *, object_key: bool = False) -> S3Uri:
    """``s3://bucket[/prefix]`` (a prefix, slashes trimmed) or, with ``object_key``, ``s3://bucket/key``
    (one object, the key as given); anything else is an S3UriError naming ``what``."""
    form = "s3://bucket/key" if object_key else "s3://bucket/prefix"
    if not isinstance(raw, str):
        raise S3UriError(f"{what} must be a string of the form {form}")
    bucket, sep, key = raw[len("s3://") :].partition("/") if raw.startswith("s3://") else ("", "", "")
    valid_bucket = bool(_BUCKET.match(bucket)) and not _IP_LIKE.match(bucket) and ".." not in bucket
    if not valid_bucket or (object_key and not (sep and key)):
        raise S3UriError(f"{what} must look like {form}, got {raw!r}")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise S3UriError(f"{what}: the key must not contain '.' or '..' path segments")
    return S3Uri(bucket, key if object_key else key.strip("/"))
