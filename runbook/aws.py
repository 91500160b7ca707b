"""AWS access: the one session and client factory, the one table of AWS errors (:func:`failure`), the caller identity.

boto3 is imported inside the functions, never at module import, so that ``inv --list`` stays fast.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from runbook.config import Account
from runbook.errors import RunbookError, Transient

# The one table of AWS error codes the runbook tells apart (``ClientError.response["Error"]["Code"]``).
# Credentials that exist but are expired or not accepted: AWS STS API reference, "Common Errors"
# (https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html).
REJECTED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired",
                            "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                            "InvalidSignatureException"})
# Refusals: IAM denied the action (S3 answers a bare "403" to HeadBucket).
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403"})
# Throttling, which passes by itself: botocore's own list (botocore.retries.standard).
THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
                              "SlowDown"})
# Answers that mean "no such thing" across the services the runbook reads.
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket", "ParameterNotFound", "NoSuchEntity",
                             "ResourceNotFoundException"})
# The AWS SSO (IAM Identity Center) portal's answer to an expired or revoked access token (GetRoleCredentials:
# UnauthorizedException) and the SSO OIDC answers when it cannot be refreshed (CreateToken).
SSO_EXPIRED_CODES = frozenset({"UnauthorizedException", "InvalidGrantException", "ExpiredTokenException"})


_LOADER: dict[str, Any] = {}
EXPIRY_MARGIN_S = 900.0
"""Seconds of validity the credentials must have left when a plan and apply start (and again before the apply):
botocore itself refreshes refreshable credentials 15 minutes before they expire, so fewer left means that refresh
failed (https://github.com/boto/botocore/blob/develop/botocore/credentials.py, ``_advisory_refresh_timeout``)."""


def _shared(made: Any) -> Any:
    """*made* (a boto3 Session) reading botocore's data (API models, endpoints: files of the installed botocore,
    cached once read, nothing about AWS accounts) through the loader of the process's first session: each session
    would read them again, ~0.08 s before its first client (bench/bench_overhead.py, bench/bench_status.py)."""
    made._session.register_component("data_loader", _LOADER.setdefault("loader",
                                                                      made._session.get_component("data_loader")))
    return made


@dataclass(frozen=True)
class Credentials:
    """One frozen set of AWS credentials: the exact keys the caller identity check used. Never printed:
    every field is left out of ``repr``. :meth:`env` gives them as the standard environment variables
    (https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-envvars.html)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None  # known for refreshable credentials (SSO, an assumed role); UTC

    def expiring(self, account: Account, now: datetime | None = None) -> RunbookError | None:
        """The error when these keys expire within :data:`EXPIRY_MARGIN_S` seconds of *now* (default: the current
        time), else None: keys that expire during an apply leave IAM partly changed and the state unsaved."""
        left = (self.expires_at - (now or datetime.now(timezone.utc))).total_seconds() if self.expires_at else None
        if left is None or left >= EXPIRY_MARGIN_S:
            return None
        return RunbookError(
            f"The AWS credentials for account {account.name} ({account.id}) expire at "
            f"{self.expires_at.astimezone(timezone.utc):%H:%M:%S} UTC, in {max(left, 0) / 60:.0f} min: a plan and "
            f"apply need {EXPIRY_MARGIN_S / 60:.0f} min, and keys that expire during an apply leave IAM partly changed "
            "and the state unsaved; nothing was applied", id="credentials-expiring",
            where=f"account {account.name}", fix=_login_hint(account))

    def env(self) -> dict[str, str]:
        """``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and (for temporary keys) ``AWS_SESSION_TOKEN``."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return {**env, "AWS_SESSION_TOKEN": self.token} if self.token else env


@dataclass(frozen=True)
class Identity:
    """The AWS caller identity: ARN, 12-digit account ID, user ID (from STS GetCallerIdentity)."""

    arn: str
    account_id: str
    user_id: str


def session(account: Account, *, use_profile: bool = True, credentials: Credentials | None = None) -> Any:
    """A ``boto3.Session`` for *account* (its profile when set and *use_profile*, its region).

    The pipeline passes ``use_profile=False``: there the credentials come from the job's environment, and
    the administrators' profile names do not exist. With *credentials* (frozen by a caller identity check)
    the session uses exactly those keys and nothing from the chain. Raises RunbookError when the named
    profile does not exist.
    """
    import boto3
    import botocore.exceptions

    if credentials is not None:
        return _shared(boto3.Session(aws_access_key_id=credentials.access_key,
                                     aws_secret_access_key=credentials.secret_key,
                                     aws_session_token=credentials.token, region_name=account.region))
    try:
        return _shared(boto3.Session(profile_name=account.profile if use_profile else None,
                                     region_name=account.region))
    except botocore.exceptions.ProfileNotFound as exc:
        if account.profile and use_profile:
            raise RunbookError(f"The AWS profile {account.profile!r} of account {account.name!r} is not configured on "
                               "this machine", id="aws-profile-missing",
                               where=f"config field accounts.{account.name}.profile",
                               fix=f"aws configure sso --profile {account.profile}  (or aws configure --profile "
                                   f"{account.profile})") from exc
        raise RunbookError(f"The AWS profile {getattr(exc, 'kwargs', {}).get('profile', '?')!r} named by AWS_PROFILE "
                           "(or AWS_DEFAULT_PROFILE) is not configured on this machine", id="aws-profile-missing",
                           fix="export AWS_PROFILE=<a profile from `aws configure list-profiles`>, or unset "
                               "AWS_PROFILE") from exc


def client(sess: Any, service: str, account: Account, *, read_timeout_s: float = 10.0, attempts: int = 2) -> Any:
    """A boto3 client for *service* in *account*'s region, at its ``endpoint_url`` when set: the one client factory.

    Standard retry mode (botocore backs off on throttling, 5xx, timeouts and dropped connections by itself)
    with *attempts* retries, so ``attempts + 1`` attempts in all; connect timeout ``min(5, read_timeout_s)``
    seconds, read timeout *read_timeout_s* seconds. With the defaults one call against an endpoint that
    accepts connections but never answers gives up after at most 3 x 10 s + 3 s = 33 s
    (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html). A poller with its own
    deadline passes smaller values. Only ``endpoint_url`` from the configuration counts: endpoints from the
    shell or ``~/.aws/config`` would send the runbook's calls elsewhere than Terraform's
    (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html).
    """
    from botocore.config import Config

    made = sess.__dict__.setdefault("_runbook_clients", {})  # one client per kind and session (~0.05 s each)
    key = (service, account.region, account.endpoint_url, read_timeout_s, attempts)
    if key not in made:
        made[key] = sess.client(service, region_name=account.region, endpoint_url=account.endpoint_url,
                                config=Config(retries={"mode": "standard", "max_attempts": attempts},
                                              connect_timeout=min(5.0, read_timeout_s), read_timeout=read_timeout_s,
                                              ignore_configured_endpoint_urls=True))
    return made[key]


def errors() -> tuple[type[BaseException], ...]:
    """What a botocore call raises when AWS (or what answers in its place) fails: ``except aws.errors() as exc``,
    then :func:`failure` names it. botocore is imported here, not at module import (it costs ~0.1 s)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    return BotoCoreError, ClientError, ResponseParserError


def call(action: str, resource: str, account: Account | None, fn: Callable[[], Any], *,
         absent: Collection[str] = (), **failure_kwargs: Any) -> Any:
    """``fn()``, one AWS call; None when AWS answers one of the codes *absent* ("no such thing"); any other
    failure raised as :func:`failure` names it (*action* on *resource*, *failure_kwargs* passed on)."""
    try:
        return fn()
    except errors() as exc:
        if code_of(exc) in absent:
            return None
        raise failure(exc, action, resource, account, **failure_kwargs) from exc


def _response(exc: BaseException) -> dict:
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def code_of(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    return str(_response(exc).get("Error", {}).get("Code", ""))


def status_of(exc: BaseException) -> int:
    """The HTTP status of a botocore ClientError (0 for anything else)."""
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _profile_in_use(account: Account | None) -> str | None:
    if account is not None and account.profile:
        return account.profile
    return os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or None


def _login_hint(account: Account | None) -> str:
    profile = _profile_in_use(account)
    if profile:
        return f"aws sso login --profile {shlex.quote(profile)}  (then run the command again)"
    return ("get fresh credentials for the account: aws sso login --profile NAME and export AWS_PROFILE=NAME, "
            "or export AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN")


def failure(exc: BaseException, action: str, resource: str, account: Account | None = None, *,
            permission: str | None = None, fix: str | None = None) -> RunbookError:
    """The one mapping from an AWS failure to the message a user reads.

    Args:
        exc: a botocore ClientError or BotoCoreError.
        action: what was being done ("S3 HeadBucket", "reading the applied record").
        resource: what it was done to ("bucket acme-api-tfstate-...", "SSM parameter /acme-api/iam/env/stg").
        account: the configured account (its profile names the login command).
        permission: the IAM action a refusal lacks ("ssm:GetParameter"), for the fix.
        fix: the fix of a refusal, when the caller knows better than "grant *permission*".

    Returns a RunbookError to raise (``from exc``): refused (``aws-access-denied``), credentials expired or
    rejected (``aws-credentials-rejected``), SSO login expired (``aws-sso-expired``), no credentials
    (``aws-no-credentials``), an endpoint that refuses connections or does not speak AWS
    (``aws-unreachable``, ``not-an-aws-endpoint``); a :class:`~runbook.errors.Transient` for throttling, 5xx,
    timeouts; ``aws-error`` for anything else, with AWS's code and message.
    """
    import botocore.exceptions as errors
    from botocore.parsers import ResponseParserError

    code, status = code_of(exc), status_of(exc)
    message = str(_response(exc).get("Error", {}).get("Message") or "")[:300]
    said = f"{code}: {message}" if message else (code or type(exc).__name__)
    endpoint, profile = account.endpoint_url if account else None, _profile_in_use(account)
    # Every form botocore raises for a missing or expired SSO login, which waiting does not cure
    # (https://github.com/boto/botocore/blob/develop/botocore/exceptions.py): SSOError and its subclasses,
    # TokenRetrievalError, a ClientError of the SSO portal or SSO OIDC.
    if isinstance(exc, (errors.SSOError, errors.TokenRetrievalError)) or (
            code in SSO_EXPIRED_CODES and getattr(exc, "operation_name", "") in ("GetRoleCredentials", "CreateToken")):
        where = f"config field accounts.{account.name}.profile" if account and account.profile else None
        return RunbookError(f"The AWS SSO login {f'of profile {profile!r}' if profile else 'of the default profile'} "
                            f"has expired or was never made ({type(exc).__name__}); waiting will not help, and nothing "
                            "was changed", id="aws-sso-expired", where=where,
                            fix=_login_hint(account) if profile else "aws sso login  (then run the command again)")
    if getattr(exc, "operation_name", "") == "AssumeRoleWithWebIdentity":
        return _token_refused(code, message, said)
    if code in DENIED_CODES:
        return RunbookError(f"AWS refused {action} on {resource} ({said})", id="aws-access-denied", where=resource,
                            fix=fix or (f"grant {permission} to the identity you use, or switch to one that has it"
                                        if permission else "use an administrator identity for the IAM steps")
                            + " (aws sts get-caller-identity shows the current one)")
    if code in REJECTED_CODES:
        return RunbookError(f"AWS rejected the credentials during {action} on {resource} ({said}): they are "
                            "expired, revoked or mistyped", id="aws-credentials-rejected", fix=_login_hint(account))
    if isinstance(exc, (errors.NoCredentialsError, errors.PartialCredentialsError)):
        return RunbookError(f"No AWS credentials found for {action} on {resource}", id="aws-no-credentials",
                            fix=_login_hint(account))
    if isinstance(exc, errors.EndpointConnectionError):
        return RunbookError(f"Cannot reach AWS at {getattr(exc, 'kwargs', {}).get('endpoint_url', endpoint)} for "
                            f"{action}", id="aws-unreachable", where=f"config field accounts.*.endpoint_url "
                                                                     f"({endpoint or 'AWS default'})",
                            fix="start the local AWS (moto_server, LocalStack) or correct endpoint_url; or check the "
                                "network")
    if isinstance(exc, ResponseParserError) or (isinstance(exc, errors.ClientError) and not code and status):
        return RunbookError(f"The endpoint {endpoint or 'of AWS'} answered {action} with something that is not an AWS "
                            f"answer (HTTP {status or '?'}): a proxy, a wrong port or a web page",
                            id="not-an-aws-endpoint", where=f"config field accounts.*.endpoint_url ({endpoint})",
                            fix="point endpoint_url at the AWS API (moto, LocalStack) or remove it")
    # What passes by itself (https://docs.aws.amazon.com/general/latest/gr/api-retries.html): 5xx, throttling, a
    # timeout, a dropped connection; not a refused connection (a wrong endpoint_url or no network, above).
    if status >= 500 or code in THROTTLING_CODES or isinstance(exc, errors.BotoCoreError):
        return Transient(f"AWS did not answer {action} on {resource} usefully ({said}, HTTP {status or 'none'})",
                         where=resource, fix="an AWS-side or network failure: run the same command again in a minute")
    return RunbookError(f"AWS failed {action} on {resource} ({said})", id="aws-error", where=resource,
                        fix="fix what AWS's message says, then run the command again")


def _token_refused(code: str, message: str, said: str) -> RunbookError:
    """What failed when botocore exchanged a CI job's OIDC token for the role in ``AWS_ROLE_ARN`` (STS
    AssumeRoleWithWebIdentity, "Errors": https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html):
    the token expired (``oidc-token-expired``), or the role's trust or the OIDC provider's audience refused it
    (``oidc-token-refused``). Names the claims the trust checks, read from ``AWS_WEB_IDENTITY_TOKEN_FILE``."""
    claims = token_claims(os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE", ""))
    shown = (f"The token's claims that the trust checks: aud {claims.get('aud')!r}, sub {claims.get('sub')!r}"
             if claims else "The token's claims could not be read from AWS_WEB_IDENTITY_TOKEN_FILE")
    role = os.environ.get("AWS_ROLE_ARN") or "named in AWS_ROLE_ARN"
    if code in ("ExpiredTokenException", "ExpiredToken"):
        return RunbookError(f"This job's OIDC token has expired ({said}); AWS gave no keys for the deployer role "
                            f"{role}. {shown}", id="oidc-token-expired",
                            fix="rerun the job: a rerun gets a fresh token (CircleCI's token is valid for one hour)")
    if "audience" in message.lower():
        return RunbookError(f"AWS refused this job's OIDC token for its audience ({said}): the account's OIDC "
                            f"provider for CircleCI lists other client IDs. {shown}", id="oidc-token-refused",
                            fix="use the job's own CIRCLE_OIDC_TOKEN_V2, whose audience is the organization ID (no "
                                "custom aud claim); if circleci.org_id in the configuration is not this "
                                "organization's, correct it and apply the account step (inv iam.account)")
    return RunbookError(f"The deployer role {role} refused this job's OIDC token ({said}): its trust admits only "
                        f"this project's deploy branches. {shown}", id="oidc-token-refused",
                        fix="check that the job runs on an environment's branch, that circleci.org_id, project_id and "
                            "vcs_origin in the configuration are this project's, and that the account step is applied "
                            "for this commit (inv iam.status; else inv iam.account)")


def token_claims(path: str) -> dict[str, str]:
    """The ``aud`` and ``sub`` claims of the JSON Web Token in file *path* (RFC 7519: the payload is the second
    base64url part), as strings (a list of audiences joined with ", "); {} when the file or the token cannot be
    read. Never the token itself."""
    try:
        with open(path, encoding="ascii") as file:
            payload = file.read(16384).strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {k: (", ".join(map(str, claims[k])) if isinstance(claims[k], list) else str(claims[k]))[:300]
                for k in ("aud", "sub") if k in claims}
    except (OSError, IndexError, ValueError, TypeError, AttributeError):
        return {}


def frozen_credentials(sess: Any, account: Account, *, purpose: str) -> Credentials:
    """Resolve *sess*'s credentials once and freeze them: the keys the caller identity check and Terraform both
    use. Raises RunbookError when there are none, or the SSO login is missing or expired."""
    try:
        found = sess.get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
    except errors() as exc:
        raise failure(exc, "resolving the credentials", f"account {account.name} ({account.id})", account) from exc
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise RunbookError(f"No AWS credentials found for account {account.name} ({account.id}), needed for {purpose}",
                           id="aws-no-credentials", fix=_login_hint(account))
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None,
                       getattr(found, "_expiry_time", None))  # botocore's RefreshableCredentials keeps it there


def caller_identity(sess: Any, account: Account) -> Identity:
    """Ask STS who the session's credentials are (STS GetCallerIdentity; at most 2 attempts of 10 s).

    Raises RunbookError as :func:`failure` maps the failure, or (``not-an-aws-endpoint``) when the answer has
    no account. Whether the identity is in the right account is decided by the caller.
    """
    found = call("STS GetCallerIdentity", f"account {account.name} ({account.id})", account,
                 client(sess, "sts", account, attempts=1).get_caller_identity)
    try:
        return Identity(arn=found["Arn"], account_id=found["Account"], user_id=found["UserId"])
    except (KeyError, TypeError) as exc:
        raise RunbookError(f"AWS ({account.endpoint_url or 'STS'}) answered GetCallerIdentity without an account",
                           id="not-an-aws-endpoint",
                           fix="check endpoint_url in the configuration points at an AWS API") from exc


def aws_command(account: Account, *args: str) -> str:
    """An AWS CLI command line an administrator can paste, for *account* (its region, profile, endpoint)."""
    words = ["aws", *args, "--region", account.region]
    if account.profile:
        words += ["--profile", account.profile]
    if account.endpoint_url:
        words += ["--endpoint-url", account.endpoint_url]
    return shlex.join(words)
