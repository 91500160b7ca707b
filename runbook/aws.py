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

import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from runbook.config import Account, Backend
from runbook.errors import RunbookError

# STS error codes for credentials that exist but are not accepted. Source: AWS STS API
# reference, "Common Errors" (ExpiredToken, InvalidClientTokenId, SignatureDoesNotMatch).
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
REJECTED_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}
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


def session(account: Account, *, use_profile: bool = True) -> Any:
    """A ``boto3.Session`` for *account* (its profile when set and *use_profile*, its region).

    The pipeline passes ``use_profile=False``: there the credentials come from
    the CircleCI context's environment variables, and the administrators'
    profile names do not exist.

    Raises RunbookError when the named profile does not exist.
    """
    import boto3
    import botocore.exceptions

    try:
        return boto3.Session(profile_name=account.profile if use_profile else None, region_name=account.region)
    except botocore.exceptions.ProfileNotFound as exc:
        if account.profile and use_profile:
            raise RunbookError(
                f"The AWS profile {account.profile!r} of account {account.name!r} is not configured on this machine",
                where=f"config field accounts.{account.name}.profile",
                fix=f"aws configure sso --profile {account.profile}  (or aws configure --profile {account.profile})",
            ) from None
        profile = getattr(exc, "kwargs", {}).get("profile", "?")
        raise RunbookError(
            f"The AWS profile {profile!r} named by AWS_PROFILE (or AWS_DEFAULT_PROFILE) is not configured on this "
            "machine",
            fix="export AWS_PROFILE=<a profile from `aws configure list-profiles`>, or unset AWS_PROFILE",
        ) from None


def client(sess: Any, service: str, account: Account, *, read_timeout_s: float = 30.0, attempts: int = 5,
           credentials: Credentials | None = None) -> Any:
    """A boto3 client for *service* in *account*'s region, at its ``endpoint_url`` when set.

    Standard retry mode (botocore backs off on throttling by itself) with *attempts* retries;
    connect timeout 10 s, read timeout *read_timeout_s* seconds. A poller with its own deadline
    passes small values so that one call cannot outlast it. *credentials* (from
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
        config=Config(retries={"mode": "standard", "max_attempts": attempts},
                      connect_timeout=min(10.0, read_timeout_s), read_timeout=read_timeout_s),
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
            fix=login_hint(account),
        )
    where = account.endpoint_url or f"STS in {account.region}"
    return RunbookError(
        f"Cannot get an answer from AWS ({where}) to check the caller identity ({type(exc).__name__})",
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

    sts = client(sess, "sts", account, credentials=credentials)
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
                raise RunbookError(what, where=account.endpoint_url or f"STS in {account.region}",
                                   fix="an AWS-side error: try again in a minute") from None
        raise RunbookError(what, fix=login_hint(account)) from None
    except (botocore.exceptions.BotoCoreError, KeyError, ValueError) as exc:
        raise _credential_error(exc, account, purpose) from None
    try:
        identity = Identity(arn=found["Arn"], account_id=found["Account"], user_id=found["UserId"])
    except (KeyError, TypeError):
        raise RunbookError(
            f"AWS ({account.endpoint_url or 'STS'}) answered GetCallerIdentity without an account",
            fix="check endpoint_url in the configuration points at an AWS API",
        ) from None
    if identity.account_id != account.id:
        raise RunbookError(
            f"These AWS credentials are for account {identity.account_id} ({identity.arn}), but {purpose} "
            f"lives in account {account.name} ({account.id}); nothing was changed",
            where=f"config field accounts.{account.name}.id",
            fix=(
                f"use credentials for {account.id}"
                + (f": AWS_PROFILE={account.profile}" if account.profile else " (switch profile or role)")
            ),
        )
    return identity


@dataclass(frozen=True)
class BackendState:
    """Whether the state bucket and the lock table exist (as seen by S3 HeadBucket / DynamoDB DescribeTable)."""

    bucket_exists: bool
    table_exists: bool

    @property
    def complete(self) -> bool:
        return self.bucket_exists and self.table_exists


def backend_state(sess: Any, account: Account, backend: Backend) -> BackendState:
    """Look at the backend without changing it. Raises RunbookError on access problems."""
    import botocore.exceptions

    s3 = client(sess, "s3", account)
    ddb = client(sess, "dynamodb", account)
    try:
        s3.head_bucket(Bucket=backend.bucket)
        bucket = True
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            bucket = False
        elif code in ("403", "AccessDenied"):
            raise RunbookError(
                f"S3 bucket {backend.bucket} exists but this identity may not use it (403): the name may be "
                "taken by another AWS account, or the identity lacks s3:ListBucket",
                where="config field terraform.backend.state_bucket",
                fix="choose another state_bucket name, or use an administrator identity",
            ) from None
        else:
            raise _aws_error("S3 HeadBucket", backend.bucket, exc) from None
    try:
        ddb.describe_table(TableName=backend.lock_table)
        table = True
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            table = False
        else:
            raise _aws_error("DynamoDB DescribeTable", backend.lock_table, exc) from None
    return BackendState(bucket_exists=bucket, table_exists=table)


def ensure_backend(sess: Any, account: Account, backend: Backend) -> list[str]:
    """Create the state bucket and the lock table when absent; leave them alone when present.

    The bucket gets versioning, default encryption (SSE-S3) and a full public
    access block; the table has the ``LockID`` string hash key that Terraform's
    S3 backend requires (Terraform docs, "Backend Type: s3", DynamoDB State Locking)
    and on-demand billing.

    Returns the list of things created (empty when both existed).
    Raises RunbookError on any AWS error, naming the resource.
    """
    import botocore.exceptions

    state = backend_state(sess, account, backend)
    created = []
    s3 = client(sess, "s3", account)
    ddb = client(sess, "dynamodb", account)
    try:
        if not state.bucket_exists:
            kwargs: dict[str, Any] = {"Bucket": backend.bucket}
            if account.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": account.region}
            s3.create_bucket(**kwargs)
            s3.put_bucket_versioning(Bucket=backend.bucket, VersioningConfiguration={"Status": "Enabled"})
            s3.put_bucket_encryption(
                Bucket=backend.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
            s3.put_public_access_block(
                Bucket=backend.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            created.append(f"S3 bucket {backend.bucket} (versioned, encrypted, public access blocked)")
            if state.table_exists:
                stale = _forget_digests(ddb, backend)
                if stale:
                    created.append(f"(removed {stale} state digest(s) of the old bucket from {backend.lock_table})")
        if not state.table_exists:
            ddb.create_table(
                TableName=backend.lock_table,
                AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            ddb.get_waiter("table_exists").wait(
                TableName=backend.lock_table, WaiterConfig={"Delay": 2, "MaxAttempts": 60}
            )
            created.append(f"DynamoDB lock table {backend.lock_table}")
    except botocore.exceptions.ClientError as exc:
        raise _aws_error("creating the Terraform backend", backend.bucket, exc) from None
    return created


def _forget_digests(ddb: Any, backend: Backend) -> int:
    """Delete the lock table's state digests (``<bucket>/<key>-md5``) of a bucket that was just created.

    Terraform's S3 backend keeps an MD5 digest of each state object in the lock table and refuses a
    state whose digest does not match ("state data in S3 does not have the expected content"). A
    bucket created afresh holds no state, so every digest naming it is stale. Returns how many were
    deleted.
    """
    deleted = 0
    kwargs: dict[str, Any] = {
        "TableName": backend.lock_table,
        "FilterExpression": "begins_with(LockID, :bucket)",
        "ExpressionAttributeValues": {":bucket": {"S": f"{backend.bucket}/"}},
        "ProjectionExpression": "LockID",
    }
    while True:
        page = ddb.scan(**kwargs)
        for item in page.get("Items", []):
            lock_id = item["LockID"]["S"]
            if lock_id.endswith("-md5"):
                ddb.delete_item(TableName=backend.lock_table, Key={"LockID": {"S": lock_id}})
                deleted += 1
        if "LastEvaluatedKey" not in page:
            return deleted
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _aws_error(action: str, resource: str, exc: Any) -> RunbookError:
    code = exc.response.get("Error", {}).get("Code", "Unknown")
    if code in ("AccessDenied", "AccessDeniedException", "403"):
        return RunbookError(
            f"AWS denied {action} for {resource} ({code})",
            fix="use an administrator identity for the IAM steps (the CI deployer cannot do this)",
        )
    return RunbookError(f"AWS error while {action} for {resource}: {code}", fix="fix the cause and run again")
