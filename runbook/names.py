"""AWS's naming rules for the names the runbook builds (SSM parameter, S3 bucket and key, DynamoDB table, IAM names).

Each function returns None when the name is acceptable, else one sentence saying what is wrong, for a message that
adds the file, the line and the field: the configuration check applies them before anything changes.
"""

from __future__ import annotations

import re

SSM_NAME_URL = "https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-create.html"
S3_BUCKET_URL = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html"
S3_KEY_URL = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html"
DYNAMODB_NAME_URL = "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html"
IAM_QUOTAS_URL = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html"

SSM_NAME_MAX = 1011
"""Longest parameter name SSM accepts, in characters (including the leading ``/``)."""

_SSM_CHARS = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_S3_CHARS = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_S3_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_DYNAMODB_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")

IAM_NAME_MAX = {"role": 64, "user": 64, "policy": 128, "inline policy": 128}
"""Longest IAM names in characters: role and user names 64, managed and inline policy names 128
(IAM quotas: "IAM name and ID quotas")."""
_IAM_CHARS = re.compile(r"^[\w+=,.@-]+$", re.ASCII)


def ssm_parameter(name: str) -> str | None:
    """Why *name* cannot be an SSM parameter name, or None.

    Rules (AWS Systems Manager user guide, "Creating Parameter Store parameters",
    https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-create.html):
    letters, digits and ``_.-``, with ``/`` between the levels of a hierarchy; at most 1011
    characters; neither the name nor its first level may begin with ``aws`` or ``ssm``
    (case-insensitive: those names are reserved for AWS); at most 15 levels.
    """
    if not name or not _SSM_CHARS.match(name):
        return (f"{name!r} is not an SSM parameter name: use letters, digits and _.- only, with / between "
                "levels")
    first = name.lstrip("/").split("/", 1)[0]
    if first.lower().startswith(("aws", "ssm")):
        return (f"SSM parameter names may not begin with 'aws' or 'ssm' (reserved by AWS), and {name!r} does "
                f"({SSM_NAME_URL})")
    if len(name) > SSM_NAME_MAX:
        return f"the SSM parameter name {name[:40]!r}... is {len(name)} characters; at most {SSM_NAME_MAX}"
    if "//" in name or name.count("/") > 15:
        return f"{name!r} is not an SSM parameter hierarchy: no empty level, at most 15 levels ({SSM_NAME_URL})"
    return None


def s3_bucket(name: str) -> str | None:
    """Why *name* cannot be an S3 general purpose bucket name, or None.

    Rules (Amazon S3 user guide, "General purpose bucket naming rules",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html): 3 to 63 characters;
    lower-case letters, digits, ``.`` and ``-`` only (no upper case, no ``_``);
    begins and ends with a letter or digit; no two adjacent periods; not an IP address; no
    reserved prefix (``xn--``, ``sthree-``, ``amzn-s3-demo-``) or suffix (``-s3alias``,
    ``--ol-s3``, ``.mrap``, ``--x-s3``, ``--table-s3``).
    """
    if not 3 <= len(name) <= 63:
        return f"the S3 bucket name {name!r} is {len(name)} characters; bucket names take 3 to 63 ({S3_BUCKET_URL})"
    if not _S3_CHARS.match(name):
        return (f"{name!r} is not an S3 bucket name: lower-case letters, digits, '.' and '-' only (no upper case, "
                f"no '_'), beginning and ending with a letter or digit ({S3_BUCKET_URL})")
    if ".." in name or ".-" in name or "-." in name:
        return f"{name!r} is not an S3 bucket name: no '..', '.-' or '-.' ({S3_BUCKET_URL})"
    if _IPV4.match(name):
        return f"{name!r} is not an S3 bucket name: it looks like an IP address ({S3_BUCKET_URL})"
    if name.startswith(_S3_PREFIXES) or name.endswith(_S3_SUFFIXES):
        return f"{name!r} is not an S3 bucket name: it uses a prefix or suffix AWS reserves ({S3_BUCKET_URL})"
    return None


def state_key(key: str) -> str | None:
    """Why *key* cannot be the key of a Terraform state in an S3 backend, or None: an S3 key, 1 to 1024 bytes of UTF-8
    (Amazon S3 user guide, "Naming Amazon S3 objects",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html), that
    neither begins nor ends with ``/`` and has no empty path segment (``//``), which Terraform's S3 backend refuses
    at ``init`` (https://developer.hashicorp.com/terraform/language/backend/s3, ``key``): after the state bucket and
    the lock table were created."""
    if key.startswith("/") or key.endswith("/") or "//" in key:
        return (f"the state key {key[:60]!r} begins or ends with '/' or has an empty path segment ('//', often a "
                "placeholder that is empty for this scope, such as {environment} in the account's key): Terraform's "
                "S3 backend refuses it")
    size = len(key.encode("utf-8"))
    if not key or size > 1024:
        return f"the S3 object key {key[:40]!r} is {size} bytes; keys take 1 to 1024 ({S3_KEY_URL})"
    return None


def dynamodb_table(name: str) -> str | None:
    """Why *name* cannot be a DynamoDB table name, or None.

    Rules (Amazon DynamoDB developer guide, "Supported data types and naming rules",
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html):
    3 to 255 characters of letters, digits, ``_``, ``-`` and ``.``.
    """
    if not 3 <= len(name) <= 255 or not _DYNAMODB_CHARS.match(name):
        return (f"{name!r} is not a DynamoDB table name: 3 to 255 characters of letters, digits, '_', '-' and '.' "
                f"({DYNAMODB_NAME_URL})")
    return None


def iam_name(kind: str, name: str) -> str | None:
    """Why *name* cannot be the name of an IAM *kind* ("role", "user", "policy", "inline policy"), or None.

    Rules (IAM user guide, "IAM and AWS STS quotas",
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html): role and user names
    at most 64 characters, policy names at most 128; characters ``A-Za-z0-9+=,.@_-``.
    """
    limit = IAM_NAME_MAX[kind]
    if len(name) > limit:
        return f"the IAM {kind} name {name!r} would be {len(name)} characters; IAM allows {limit} ({IAM_QUOTAS_URL})"
    if not _IAM_CHARS.match(name):
        return f"{name!r} is not an IAM {kind} name: letters, digits and +=,.@_- only ({IAM_QUOTAS_URL})"
    return None
