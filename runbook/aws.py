"""AWS access: sessions, the caller-identity guard and the Terraform backend.

boto3 is imported inside the functions, never at module import, so that
``inv --list`` stays fast (importing boto3 and making a client costs about a
quarter of a second). Sessions are passed in; nothing builds global clients.
Credentials come from boto3's standard chain (environment, profiles, SSO); this
module never reads credential files itself.

Errors are told apart by ``ClientError.response["Error"]["Code"]``, never by
message text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook.config import Account, Backend, shown_path
from runbook.errors import RunbookError

# The one table of AWS error codes the runbook tells apart (``ClientError.response["Error"]["Code"]``).
# Credentials that exist but are not accepted: AWS STS API reference, "Common Errors"
# (https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html).
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
REJECTED_CODES = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                            "InvalidSignatureException"})
CREDENTIAL_CODES = EXPIRED_CODES | REJECTED_CODES
# Refusals: IAM denied the action (S3 answers a bare "403" to HeadBucket).
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403"})
# Throttling, which passes by itself: botocore's own list (botocore.retries.standard).
THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
# The AWS SSO (IAM Identity Center) portal's answer to an expired or revoked access token
# (AWS SSO Portal API reference, GetRoleCredentials: UnauthorizedException), and the SSO OIDC
# answers when the token cannot be refreshed (SSO OIDC API reference, CreateToken).
SSO_EXPIRED_CODES = {"UnauthorizedException", "InvalidGrantException", "ExpiredTokenException"}


@dataclass(frozen=True)
class Credentials:
    """One frozen set of AWS credentials: the exact keys the caller identity check used.

    Never printed: every field is left out of ``repr``. :meth:`env` gives them as the standard
    environment variables (AWS CLI docs, "Environment variables to configure the AWS CLI":
    https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-envvars.html).
    """

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and (for temporary keys) ``AWS_SESSION_TOKEN``."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        if self.token:
            env["AWS_SESSION_TOKEN"] = self.token
        return env


@dataclass(frozen=True)
class Identity:
    """The AWS caller identity: ARN, 12-digit account ID, user ID (from STS GetCallerIdentity)."""

    arn: str
    account_id: str
    user_id: str


def session(account: Account, *, use_profile: bool = True, credentials: Credentials | None = None) -> Any:
    """A ``boto3.Session`` for *account* (its profile when set and *use_profile*, its region).

    The pipeline passes ``use_profile=False``: there the credentials come from
    the CircleCI context's environment variables, and the administrators'
    profile names do not exist. With *credentials* (frozen by a caller identity
    check) the session uses exactly those keys and nothing from the chain.

    Raises RunbookError when the named profile does not exist.
    """
    import boto3
    import botocore.exceptions

    if credentials is not None:
        return boto3.Session(aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                             aws_session_token=credentials.token, region_name=account.region)
    try:
        return boto3.Session(profile_name=account.profile if use_profile else None, region_name=account.region)
    except botocore.exceptions.ProfileNotFound as exc:
        if account.profile and use_profile:
            raise RunbookError(
                f"The AWS profile {account.profile!r} of account {account.name!r} is not configured on this machine",
                id="aws-profile-missing",
                where=f"config field accounts.{account.name}.profile",
                fix=f"aws configure sso --profile {account.profile}  (or aws configure --profile {account.profile})",
            ) from None
        profile = getattr(exc, "kwargs", {}).get("profile", "?")
        raise RunbookError(
            f"The AWS profile {profile!r} named by AWS_PROFILE (or AWS_DEFAULT_PROFILE) is not configured on this "
            "machine",
            id="aws-profile-missing",
            fix="export AWS_PROFILE=<a profile from `aws configure list-profiles`>, or unset AWS_PROFILE",
        ) from None


def client(sess: Any, service: str, account: Account, *, read_timeout_s: float = 10.0, attempts: int = 2,
           credentials: Credentials | None = None) -> Any:
    """A boto3 client for *service* in *account*'s region, at its ``endpoint_url`` when set.

    Standard retry mode (botocore backs off on throttling, 5xx, timeouts and dropped connections by
    itself) with *attempts* retries, so ``attempts + 1`` attempts in all (botocore's ``max_attempts``
    counts retries only); connect timeout ``min(5, read_timeout_s)`` seconds, read timeout
    *read_timeout_s* seconds. Standard mode waits a random 0 to ``min(20, 2 ** n)`` seconds before
    retry n (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html), so with the
    defaults one call against an endpoint that accepts connections but never answers gives up after
    at most 3 x 10 s + (1 + 2) s = 33 s (3 x 5 s + 3 s = 18 s when it does not even connect), where the
    former 30 s and 5 retries took up to 6 x 30 s + 15 s = 195 s, silent. An AWS API answers these
    calls in well under a second; a read timeout of 10 s is generous. A poller with its own deadline
    passes smaller values so that one call cannot outlast it. *credentials* (from
    :func:`frozen_credentials`) sign every call instead of the session's credential chain.
    """
    from botocore.config import Config

    keys = {}
    if credentials is not None:
        keys = {"aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
                "aws_session_token": credentials.token}
    return sess.client(
        service,
        region_name=account.region,
        endpoint_url=account.endpoint_url,
        # Only endpoint_url from the configuration counts: AWS_ENDPOINT_URL(_<SERVICE>) in the shell or
        # endpoint_url in ~/.aws/config would send the runbook's calls elsewhere than Terraform's
        # (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html).
        config=Config(retries={"mode": "standard", "max_attempts": attempts},
                      connect_timeout=min(5.0, read_timeout_s), read_timeout=read_timeout_s,
                      ignore_configured_endpoint_urls=True),
        **keys,
    )


def profile_in_use(account: Account | None = None, *, use_profile: bool = True) -> str | None:
    """The AWS profile whose credentials a session of :func:`session` uses: *account*'s configured
    profile (when *use_profile*), else ``AWS_PROFILE`` (or ``AWS_DEFAULT_PROFILE``), else None (the
    default profile or no profile at all)."""
    if account is not None and account.profile and use_profile:
        return account.profile
    return os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or None


def login_hint(account: Account | None = None, *, use_profile: bool = True) -> str:
    """The command that gets fresh credentials for *account* (the profile in use, see :func:`profile_in_use`)."""
    profile = profile_in_use(account, use_profile=use_profile)
    if profile:
        return f"aws sso login --profile {shlex.quote(profile)}  (then run the command again)"
    return ("get fresh credentials for the account: aws sso login --profile NAME and export AWS_PROFILE=NAME, "
            "or export AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN")


def login_error(exc: BaseException, account: Account | None = None, *, use_profile: bool = True) -> RunbookError | None:
    """A RunbookError when *exc* says the AWS SSO login is missing or expired, else None.

    Every form botocore raises for it (botocore source, ``botocore/exceptions.py``:
    https://github.com/boto/botocore/blob/develop/botocore/exceptions.py): ``SSOTokenLoadError``
    (no cached token: never logged in, or the cache was cleared), ``UnauthorizedSSOTokenError``
    (a legacy ``sso_start_url`` profile whose cached token expired), ``TokenRetrievalError`` (an
    ``sso_session`` token that could not be refreshed), any other ``SSOError``, and a ClientError
    from the SSO portal or SSO OIDC with one of :data:`SSO_EXPIRED_CODES`. None of them passes by
    waiting, so the gate must not treat them as temporary: the message names the exact
    ``aws sso login --profile <profile in use>`` command.
    """
    import botocore.exceptions as errors

    expired = isinstance(exc, (errors.SSOError, errors.TokenRetrievalError))
    if isinstance(exc, errors.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        expired = code in SSO_EXPIRED_CODES and exc.operation_name in ("GetRoleCredentials", "CreateToken")
    if not expired:
        return None
    profile = profile_in_use(account, use_profile=use_profile)
    named = f" of profile {profile!r}" if profile else " of the default profile"
    where = f"config field accounts.{account.name}.profile" if account and account.profile and use_profile else None
    return RunbookError(
        f"The AWS SSO login{named} has expired or was never made ({type(exc).__name__}); waiting will not help, "
        "and nothing was changed",
        id="aws-sso-expired",
        where=where,
        fix=f"aws sso login --profile {shlex.quote(profile)}  (then run the command again)" if profile
        else "aws sso login  (then run the command again)",
    )


def frozen_credentials(sess: Any, account: Account, *, purpose: str) -> Credentials:
    """Resolve *sess*'s credentials once and freeze them: the keys the caller identity check and
    Terraform both use (see :func:`caller_identity`, ``runbook.terraform.script_env``).

    botocore resolves them through the standard chain (environment, the profile, SSO, assume
    role...); temporary keys carry a session token and stay valid until they expire (one hour or
    more for SSO role credentials and assumed roles).

    Raises RunbookError when there are none, or when the SSO login is missing or expired (see
    :func:`login_error`).
    """
    import botocore.exceptions

    try:
        found = sess.get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
    except botocore.exceptions.BotoCoreError as exc:
        raise _credential_error(exc, account, purpose) from None
    except botocore.exceptions.ClientError as exc:
        raise login_error(exc, account) or _credential_error(exc, account, purpose) from None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise RunbookError(
            f"No AWS credentials found for account {account.name} ({account.id}), needed for {purpose}",
            id="aws-no-credentials",
            fix=login_hint(account),
        )
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)


def _credential_error(exc: Exception, account: Account, purpose: str) -> RunbookError:
    """The RunbookError for a failure to resolve credentials (anything but an answer from STS)."""
    expired = login_error(exc, account)
    if expired is not None:
        return expired
    import botocore.exceptions

    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return RunbookError(
            f"No AWS credentials found for account {account.name} ({account.id}), needed for {purpose}",
            id="aws-no-credentials",
            fix=login_hint(account),
        )
    where = account.endpoint_url or f"STS in {account.region}"
    return RunbookError(
        f"Cannot get an answer from AWS ({where}) to check the caller identity ({type(exc).__name__})",
        id="aws-unreachable",
        where=f"config field accounts.{account.name}.endpoint_url" if account.endpoint_url else None,
        fix="check the network (or that the local AWS at endpoint_url is running) and try again",
    )


def caller_identity(sess: Any, account: Account, *, purpose: str, credentials: Credentials | None = None) -> Identity:
    """Ask STS who we are and insist on being in *account*.

    Args:
        sess: boto3 Session from :func:`session`.
        account: the configured account the credentials must belong to.
        purpose: words for the message, e.g. "environment stg".
        credentials: when given (from :func:`frozen_credentials`), STS is asked with exactly these
            keys, so the identity returned is the identity of these keys and nothing else.

    Raises RunbookError for: no credentials, an expired or missing SSO login (naming
    ``aws sso login --profile <profile in use>``), expired or rejected credentials, an
    unreachable endpoint, or credentials of another account (the message names both account IDs).
    """
    import botocore.exceptions

    # STS answers in milliseconds: an endpoint that does not answer fails this check well within a
    # minute (at most 10 s to connect and 10 s to read, two attempts), not the minutes of the default client.
    sts = client(sess, "sts", account, credentials=credentials, read_timeout_s=10.0, attempts=1)
    try:
        found = sts.get_caller_identity()
    except botocore.exceptions.ClientError as exc:
        expired = login_error(exc, account)
        if expired is not None:
            raise expired from None
        code = exc.response.get("Error", {}).get("Code", "")
        if code in EXPIRED_CODES:
            what = f"The AWS credentials for account {account.name} ({account.id}) have expired ({code})"
        elif code in REJECTED_CODES:
            what = (
                f"AWS rejected the credentials for account {account.name} ({account.id}) ({code}): "
                "they are expired, revoked or mistyped"
            )
        else:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            what = f"STS GetCallerIdentity failed for account {account.name} ({account.id}): {code or status}"
            if status >= 500 or code in ("InternalFailure", "ServiceUnavailable"):
                raise RunbookError(what, id="aws-unreachable", where=account.endpoint_url or f"STS in {account.region}",
                                   fix="an AWS-side error: try again in a minute") from None
        raise RunbookError(what, id="aws-credentials-rejected", fix=login_hint(account)) from None
    except (botocore.exceptions.BotoCoreError, KeyError, ValueError) as exc:
        raise _credential_error(exc, account, purpose) from None
    try:
        identity = Identity(arn=found["Arn"], account_id=found["Account"], user_id=found["UserId"])
    except (KeyError, TypeError):
        raise RunbookError(
            f"AWS ({account.endpoint_url or 'STS'}) answered GetCallerIdentity without an account",
            id="not-an-aws-endpoint",
            fix="check endpoint_url in the configuration points at an AWS API",
        ) from None
    if identity.account_id != account.id:
        raise RunbookError(
            f"These AWS credentials are for account {identity.account_id} ({identity.arn}), but {purpose} "
            f"lives in account {account.name} ({account.id}); nothing was changed",
            id="wrong-account",
            where=f"config field accounts.{account.name}.id",
            fix=(
                f"use credentials for {account.id}"
                + (f": AWS_PROFILE={account.profile}" if account.profile else " (switch profile or role)")
            ),
        )
    return identity


# The lock table Terraform's S3 backend needs: a string hash key named LockID (Terraform docs,
# "Backend Type: s3", DynamoDB State Locking: https://developer.hashicorp.com/terraform/language/settings/backends/s3).
LOCK_KEY = "LockID"
# How long a run waits for a lock table that another run is creating (DynamoDB: usually seconds).
TABLE_WAIT_S = 120.0
# DescribeTable TableStatus values in which the table serves reads and writes (DynamoDB API reference,
# TableDescription: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TableDescription.html).
USABLE_TABLE_STATUSES = ("ACTIVE", "UPDATING")
VERSIONING = "versioning"
ENCRYPTION = "default encryption"
PUBLIC_ACCESS_BLOCK = "public access block"
_PAB = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
_SSE = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}


@dataclass(frozen=True)
class BackendState:
    """The Terraform backend as one look-up found it (nothing is changed by looking).

    Attributes:
        bucket_exists: S3 HeadBucket answered 200.
        table_exists: DynamoDB DescribeTable found the lock table.
        table_status: the table's status ("ACTIVE", "CREATING", ...; "" when absent).
        table_key: the table's key schema as text, e.g. "LockID (S)" ("" when absent).
        missing: the bucket's protections that are off: "versioning", "default encryption",
            "public access block" (empty when the bucket is absent or complete).
        states: state object key -> whether the state object exists (only the keys asked for).
        versions: state object key -> the ``terraform_version`` that last wrote it (keys whose object
            exists and names one).
        table_needed: the backend locks with the DynamoDB table (``lock: dynamodb``); False with S3 lock
            files (``lock: s3``): the table is then not looked up and not required.
    """

    bucket_exists: bool
    table_exists: bool
    table_status: str = ""
    table_key: str = ""
    missing: tuple[str, ...] = ()
    states: Mapping[str, bool] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    table_needed: bool = True

    @property
    def complete(self) -> bool:
        """The bucket exists, and so does the lock table where the backend locks with one."""
        return self.bucket_exists and (self.table_exists or not self.table_needed)

    @property
    def key_schema_ok(self) -> bool:
        """The lock table (if it exists) is keyed ``LockID`` (string), as Terraform requires."""
        return not self.table_exists or self.table_key == f"{LOCK_KEY} (S)"

    @property
    def verified(self) -> bool:
        """Bucket and table exist, the table is ACTIVE with the right key, and no protection is missing."""
        return self.complete and self.key_schema_ok and self.table_ready and not self.missing

    @property
    def table_ready(self) -> bool:
        """The lock table takes reads and writes: ACTIVE, or UPDATING (a settings change; DynamoDB keeps serving);
        always True when the backend locks with S3 lock files."""
        return not self.table_needed or self.table_status in USABLE_TABLE_STATUSES


def aws_command(account: Account, *args: str) -> str:
    """An AWS CLI command line an administrator can paste, for *account* (its region, profile, endpoint)."""
    words = ["aws", *args, "--region", account.region]
    if account.profile:
        words += ["--profile", account.profile]
    if account.endpoint_url:
        words += ["--endpoint-url", account.endpoint_url]
    return shlex.join(words)


def backend_state(sess: Any, account: Account, backend: Backend, keys: Iterable[str] = ()) -> BackendState:
    """Look at the backend without changing it: the bucket, its protections, the lock table, the state objects.

    Args:
        sess: boto3 Session for *account*.
        account: the configured account (region, endpoint_url).
        backend: bucket, lock table (and region) to look at.
        keys: state object keys to look for in the bucket (one HeadObject each).

    Calls: S3 HeadBucket, GetBucketVersioning, GetBucketEncryption, GetPublicAccessBlock, one ranged
    GetObject per key (its first KiB, when the bucket exists: whether the state exists and which Terraform
    wrote it, in the one request that HeadObject would take); DynamoDB DescribeTable (only when
    ``backend.lock`` is "dynamodb").

    Raises RunbookError when the bucket belongs to someone else or the identity may not read
    what must be verified (naming the permission), or on any other AWS error.
    """
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    ddb = client(sess, "dynamodb", account)
    bucket = _bucket_exists(s3, backend)
    missing: list[str] = []
    states: dict[str, bool] = {}
    versions: dict[str, str] = {}
    if bucket:
        missing = _missing_protections(s3, backend)
        for key in dict.fromkeys(keys):
            states[key], version = _state_object(s3, backend.bucket, key)
            if version:
                versions[key] = version
    if not backend.uses_table:
        return BackendState(bucket, False, missing=tuple(missing), states=states, versions=versions,
                            table_needed=False)
    try:
        table = ddb.describe_table(TableName=backend.lock_table)["Table"]
    except botocore.exceptions.ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return BackendState(bucket, False, missing=tuple(missing), states=states, versions=versions)
        raise _aws_error("DynamoDB DescribeTable", backend.lock_table, exc) from None
    types = {a.get("AttributeName"): a.get("AttributeType") for a in table.get("AttributeDefinitions", [])}
    key = ", ".join(f"{k.get('AttributeName')} ({types.get(k.get('AttributeName'), '?')})"
                    for k in table.get("KeySchema", []))
    return BackendState(bucket, True, table_status=str(table.get("TableStatus", "")), table_key=key,
                        missing=tuple(missing), states=states, versions=versions)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _bucket_exists(s3: Any, backend: Backend) -> bool:
    import botocore.exceptions

    try:
        s3.head_bucket(Bucket=backend.bucket)
        return True
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        if code in DENIED_CODES:
            raise RunbookError(
                f"S3 bucket {backend.bucket} exists but this identity may not use it (403): the name may be "
                "taken by another AWS account, or the identity lacks s3:ListBucket",
                id="state-bucket-taken",
                where="config field terraform.backend.state_bucket",
                fix="choose another state_bucket name, or use an administrator identity",
            ) from None
        raise _aws_error("S3 HeadBucket", backend.bucket, exc) from None


def _missing_protections(s3: Any, backend: Backend) -> list[str]:
    """The protections of the state bucket that are off (S3 GetBucketVersioning, -Encryption, GetPublicAccessBlock)."""
    import botocore.exceptions

    missing = []
    calls = (
        (VERSIONING, "s3:GetBucketVersioning", lambda: s3.get_bucket_versioning(Bucket=backend.bucket),
         lambda r: r.get("Status") == "Enabled", ()),
        (ENCRYPTION, "s3:GetEncryptionConfiguration", lambda: s3.get_bucket_encryption(Bucket=backend.bucket),
         lambda r: any(rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
                       for rule in r.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])),
         ("ServerSideEncryptionConfigurationNotFoundError",)),
        (PUBLIC_ACCESS_BLOCK, "s3:GetBucketPublicAccessBlock",
         lambda: s3.get_public_access_block(Bucket=backend.bucket),
         lambda r: all(r.get("PublicAccessBlockConfiguration", {}).get(k) for k in _PAB),
         ("NoSuchPublicAccessBlockConfiguration",)),
    )
    for name, permission, call, ok, absent in calls:
        try:
            if not ok(call()):
                missing.append(name)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in absent:
                missing.append(name)
            elif _code(exc) in DENIED_CODES:
                raise RunbookError(
                    f"Cannot verify the {name} of the state bucket {backend.bucket}: this identity lacks "
                    f"{permission}; the runbook does not use a backend it cannot verify",
                    id="state-bucket-unprotected",
                    fix="use an administrator identity for the IAM steps (aws sso login, or AWS_PROFILE)",
                ) from None
            else:
                raise _aws_error(f"reading the {name} of", backend.bucket, exc) from None
    return missing


# Terraform writes "terraform_version" second in a state snapshot (after "version"), so the first KiB holds it
# (https://developer.hashicorp.com/terraform/internals/json-format describes the same field names).
_STATE_HEAD_BYTES = 1024
_STATE_VERSION = re.compile(rb'"terraform_version"\s*:\s*"([0-9A-Za-z.+-]{1,40})"')


def _state_object(s3: Any, bucket: str, key: str) -> tuple[bool, str | None]:
    """Whether the state object *key* exists, and the ``terraform_version`` that wrote it (None when unknown).

    One ranged S3 GetObject (the first KiB): the same single request as a HeadObject, and the version with it.
    """
    import botocore.exceptions

    try:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{_STATE_HEAD_BYTES - 1}")["Body"].read()
    except botocore.exceptions.ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False, None
        if _code(exc) == "InvalidRange":  # an empty object
            return True, None
        raise _aws_error("S3 GetObject", f"s3://{bucket}/{key}", exc) from None
    found = _STATE_VERSION.search(body)
    return True, found.group(1).decode("ascii") if found else None


def repair_commands(account: Account, backend: Backend, missing: Iterable[str]) -> list[str]:
    """The AWS CLI commands that switch on each missing protection of the state bucket."""
    b = backend.bucket
    commands = {
        VERSIONING: ("s3api", "put-bucket-versioning", "--bucket", b, "--versioning-configuration",
                     "Status=Enabled"),
        ENCRYPTION: ("s3api", "put-bucket-encryption", "--bucket", b, "--server-side-encryption-configuration",
                     json.dumps(_SSE, separators=(",", ":"))),
        PUBLIC_ACCESS_BLOCK: ("s3api", "put-public-access-block", "--bucket", b,
                              "--public-access-block-configuration",
                              ",".join(f"{k}=true" for k in _PAB)),
    }
    return [aws_command(account, *commands[name]) for name in missing]


def repair_bucket(sess: Any, account: Account, backend: Backend, missing: Iterable[str]) -> list[str]:
    """Switch on the *missing* protections of the state bucket (versioning, SSE-S3, full public access block).

    Returns what was switched on, one line each. Raises RunbookError when AWS refuses one (e.g.
    AccessDenied): the message says which protections are still missing, which were repaired,
    and the exact commands an administrator runs.
    """
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    puts = {
        VERSIONING: lambda: s3.put_bucket_versioning(Bucket=backend.bucket,
                                                     VersioningConfiguration={"Status": "Enabled"}),
        ENCRYPTION: lambda: s3.put_bucket_encryption(Bucket=backend.bucket, ServerSideEncryptionConfiguration=_SSE),
        PUBLIC_ACCESS_BLOCK: lambda: s3.put_public_access_block(Bucket=backend.bucket,
                                                                PublicAccessBlockConfiguration=_PAB),
    }
    done, refused = [], []
    for name in missing:
        try:
            puts[name]()
            done.append(name)
        except botocore.exceptions.ClientError as exc:
            refused.append((name, _code(exc) or "error"))
    if refused:
        names = [name for name, _ in refused]
        why = ", ".join(f"{name} ({code})" for name, code in refused)
        repaired = f"; repaired: {', '.join(done)}" if done else ""
        raise RunbookError(
            f"The state bucket {backend.bucket} lacks {', '.join(names)} and this identity may not switch it on: "
            f"{why}{repaired}. Terraform's state holds the IAM of the account and must be versioned, encrypted "
            "and never public; nothing was applied",
            id="state-bucket-unprotected",
            where=f"S3 bucket {backend.bucket}",
            fix="an administrator runs: " + " && ".join(repair_commands(account, backend, names)),
        )
    return done


def create_backend(sess: Any, account: Account, backend: Backend, state: BackendState, *,
                   wait_s: float = TABLE_WAIT_S, poll_s: float = 2.0) -> list[str]:
    """Create what *state* says is missing: the state bucket and/or the lock table; wait for a table being created.

    The bucket gets versioning, default encryption (SSE-S3) and a full public access block;
    the table the ``LockID`` string hash key Terraform requires, on-demand billing. Another run
    creating the same backend at the same time is not an error: BucketAlreadyOwnedByYou
    (S3 CreateBucket) and ResourceInUseException (DynamoDB CreateTable) mean it exists or is
    being created, and a table in CREATING is waited for (at most *wait_s* seconds, polling
    DescribeTable every *poll_s* seconds).

    Callers decide *whether* creating is allowed (a true first deploy, or ``inv iam.bootstrap``).
    Returns what was done, one line each. Raises RunbookError naming the resource on an AWS error
    or when the table does not become ACTIVE in time.
    """
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    ddb = client(sess, "dynamodb", account)
    done = []
    if not state.bucket_exists:
        kwargs: dict[str, Any] = {"Bucket": backend.bucket}
        if account.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": account.region}
        try:
            s3.create_bucket(**kwargs)
            done.append(f"created S3 bucket {backend.bucket}")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "BucketAlreadyOwnedByYou":
                done.append(f"S3 bucket {backend.bucket} was just created by another run")
            elif _code(exc) == "BucketAlreadyExists":
                raise RunbookError(
                    f"The S3 bucket name {backend.bucket} is taken by another AWS account (bucket names are global)",
                    id="state-bucket-taken",
                    where=f"{shown_path()}, field terraform.backend.state_bucket",
                    fix=f"choose another state_bucket name in {shown_path()} (the default has the account ID "
                    "in it: {project}-tfstate-{account_id})",
                ) from None
            else:
                raise _aws_error("S3 CreateBucket", backend.bucket, exc) from None
        protections = repair_bucket(sess, account, backend, (VERSIONING, ENCRYPTION, PUBLIC_ACCESS_BLOCK))
        done.append(f"switched on {', '.join(protections)} of {backend.bucket}")
    if state.table_needed and not state.table_exists:
        try:
            ddb.create_table(
                TableName=backend.lock_table,
                AttributeDefinitions=[{"AttributeName": LOCK_KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": LOCK_KEY, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            done.append(f"created DynamoDB lock table {backend.lock_table} (hash key {LOCK_KEY})")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise _aws_error("DynamoDB CreateTable", backend.lock_table, exc) from None
            done.append(f"DynamoDB lock table {backend.lock_table} is being created by another run")
    if not state.table_ready:
        wait_for_table(sess, account, backend, wait_s=wait_s, poll_s=poll_s)
        if state.table_exists:
            done.append(f"waited for DynamoDB lock table {backend.lock_table} (another run was creating it)")
    return done


def wait_for_table(sess: Any, account: Account, backend: Backend, *, wait_s: float = TABLE_WAIT_S,
                   poll_s: float = 2.0) -> None:
    """Poll DynamoDB DescribeTable every *poll_s* seconds until the lock table is usable (ACTIVE or UPDATING),
    at most *wait_s* seconds.

    Raises RunbookError when it is still not ACTIVE (naming its status), when it disappears
    (the run creating it failed) or on an AWS error.
    """
    import time

    import botocore.exceptions

    ddb = client(sess, "dynamodb", account)
    deadline = time.monotonic() + wait_s
    status = "?"
    while True:
        try:
            status = ddb.describe_table(TableName=backend.lock_table)["Table"].get("TableStatus", "?")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise _aws_error("DynamoDB DescribeTable", backend.lock_table, exc) from None
            raise RunbookError(
                f"The DynamoDB lock table {backend.lock_table} that another run was creating has gone (its "
                "creation failed or it was deleted); nothing was applied",
                id="lock-table-not-active",
                fix="run the same command again",
            ) from None
        if status in USABLE_TABLE_STATUSES:
            return
        if time.monotonic() + poll_s > deadline:
            raise RunbookError(
                f"The DynamoDB lock table {backend.lock_table} is still {status} after {wait_s:.0f} s (another run "
                "or the console is creating or changing it); nothing was applied",
                id="lock-table-not-active",
                fix="wait a minute and run the same command again; "
                + aws_command(account, "dynamodb", "describe-table", "--table-name", backend.lock_table)
                + " shows its status",
            )
        time.sleep(poll_s)


def state_digests(sess: Any, account: Account, backend: Backend) -> list[str]:
    """The state objects (``bucket/key``) whose MD5 digest Terraform keeps in the lock table (``<bucket>/<key>-md5``).

    A digest is left by every state Terraform wrote through this table, so any digest means
    state was written before. One paginated DynamoDB Scan (keys only).
    """
    import botocore.exceptions

    ddb = client(sess, "dynamodb", account)
    found = []
    kwargs: dict[str, Any] = {"TableName": backend.lock_table, "ProjectionExpression": LOCK_KEY}
    try:
        while True:
            page = ddb.scan(**kwargs)
            found += [item[LOCK_KEY]["S"][: -len("-md5")] for item in page.get("Items", [])
                      if item.get(LOCK_KEY, {}).get("S", "").endswith("-md5")]
            if "LastEvaluatedKey" not in page:
                return sorted(found)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    except botocore.exceptions.ClientError as exc:
        raise _aws_error("DynamoDB Scan", backend.lock_table, exc) from None


def state_objects(sess: Any, account: Account, backend: Backend, *, limit: int = 100) -> list[str]:
    """Keys of up to *limit* objects in the state bucket (S3 ListObjectsV2, one page)."""
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    try:
        page = s3.list_objects_v2(Bucket=backend.bucket, MaxKeys=limit)
    except botocore.exceptions.ClientError as exc:
        raise _aws_error("S3 ListObjectsV2", backend.bucket, exc) from None
    return [item["Key"] for item in page.get("Contents", [])]


def deleted_state_version(sess: Any, account: Account, backend: Backend, key: str) -> str | None:
    """The version ID of the delete marker that hides a deleted state object at *key*, or None.

    In a versioned bucket a deleted object keeps its versions under a delete marker; deleting the
    marker (``aws s3api delete-object --version-id``) brings the last version back.
    """
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    try:
        page = s3.list_object_versions(Bucket=backend.bucket, Prefix=key)
    except botocore.exceptions.ClientError:
        return None
    markers = [m for m in page.get("DeleteMarkers", []) if m.get("Key") == key and m.get("IsLatest")]
    versions = [v for v in page.get("Versions", []) if v.get("Key") == key]
    return markers[0]["VersionId"] if markers and versions else None


def forget_digests(sess: Any, account: Account, backend: Backend) -> list[str]:
    """Delete the lock table's state digests of *backend*'s bucket (``<bucket>/<key>-md5``); returns their names.

    Only for ``inv iam.bootstrap`` re-creating a bucket that had gone, after the administrator
    confirmed it: a new bucket holds no state, and Terraform's S3 backend refuses a state whose
    digest does not match ("state data in S3 does not have the expected content").
    """
    import botocore.exceptions

    ddb = client(sess, "dynamodb", account)
    stale = [name for name in state_digests(sess, account, backend) if name.startswith(f"{backend.bucket}/")]
    try:
        for name in stale:
            ddb.delete_item(TableName=backend.lock_table, Key={LOCK_KEY: {"S": f"{name}-md5"}})
    except botocore.exceptions.ClientError as exc:
        raise _aws_error("DynamoDB DeleteItem", backend.lock_table, exc) from None
    return stale


def _aws_error(action: str, resource: str, exc: Any) -> RunbookError:
    code = _code(exc) or "Unknown"
    if code in DENIED_CODES:
        return RunbookError(
            f"AWS denied {action} for {resource} ({code})",
            id="aws-access-denied",
            fix="use an administrator identity for the IAM steps (the CI deployer cannot do this)",
        )
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500 or code in ("InternalError", "ServiceUnavailable", "SlowDown", "ThrottlingException"):
        return RunbookError(f"AWS error while {action} for {resource}: {code}", id="aws-unreachable",
                            fix="an AWS-side error: run the same command again in a minute")
    return RunbookError(f"AWS error while {action} for {resource}: {code}",
                        id="aws-error", fix="fix the cause and run again")
