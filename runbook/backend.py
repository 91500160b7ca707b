"""The Terraform backend in AWS: the S3 state bucket, the DynamoDB lock table, the state lock.

:func:`look` examines it without changing it; :func:`create` and :func:`repair` change it, only when the runbook's
decisions say so; :func:`read_lock` and :func:`release_lock` deal with a lock left by a run that died.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook import aws, console
from runbook.config import Account, Backend
from runbook.errors import RunbookError

# The lock table's hash key, and its items: <bucket>/<key> (the lock, Info = lock info JSON) and <bucket>/<key>-md5
# (https://developer.hashicorp.com/terraform/language/backend/s3).
LOCK_KEY = "LockID"
TABLE_WAIT_S = 120.0
"""How long a run waits for a lock table that another run is creating (DynamoDB: usually seconds)."""
VERSIONING, ENCRYPTION, PUBLIC_ACCESS_BLOCK = "versioning", "default encryption", "public access block"
_PAB = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
_SSE = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
# What switches each protection on: the S3 call, its parameter and value, the value as AWS CLI shorthand.
_REPAIRS = {
    VERSIONING: ("put_bucket_versioning", "VersioningConfiguration", {"Status": "Enabled"}, "Status=Enabled"),
    ENCRYPTION: ("put_bucket_encryption", "ServerSideEncryptionConfiguration", _SSE,
                 json.dumps(_SSE, separators=(",", ":"))),
    PUBLIC_ACCESS_BLOCK: ("put_public_access_block", "PublicAccessBlockConfiguration", _PAB,
                          ",".join(f"{k}=true" for k in _PAB)),
}
# The one lifecycle rule a new state bucket gets. Each S3 lock file (<key>.tflock) leaves a noncurrent version and
# a delete marker in a versioned bucket, and a rule cannot select objects by suffix, so it covers the bucket: the
# newest 100 noncurrent versions of every object are kept whatever their age, older ones once noncurrent for 90
# days, and delete markers left with no version are removed. A state's own versions are kept at least that long.
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/intro-lifecycle-rules.html)
LIFECYCLE = {"Rules": [{"ID": "bound-old-versions-and-lock-files", "Status": "Enabled", "Filter": {"Prefix": ""},
                        "NoncurrentVersionExpiration": {"NoncurrentDays": 90, "NewerNoncurrentVersions": 100},
                        "Expiration": {"ExpiredObjectDeleteMarker": True}}]}
# Terraform writes "terraform_version" second in a state snapshot, so the first KiB holds it
# (https://developer.hashicorp.com/terraform/internals/json-format uses the same field names).
_STATE_VERSION = re.compile(rb'"terraform_version"\s*:\s*"([0-9A-Za-z.+-]{1,40})"')


@dataclass(frozen=True)
class BackendState:
    """The Terraform backend as one look-up found it (nothing is changed by looking).

    Attributes:
        bucket_exists: S3 HeadBucket answered 200.
        table_exists: DynamoDB DescribeTable found the lock table (always False when it is not used).
        table_status: the table's status ("ACTIVE", "CREATING", ...; "" when absent).
        table_key: the table's key schema as text, e.g. "LockID (S)" ("" when absent).
        missing: the bucket's protections that are off: "versioning", "default encryption",
            "public access block" (empty when the bucket is absent or complete).
        states: state object key -> the ``terraform_version`` that last wrote it ("" when unknown), for the keys
            asked for whose object exists.
        table_needed: the backend locks with the DynamoDB table; False with S3 lock files only.
    """

    bucket_exists: bool
    table_exists: bool
    table_status: str = ""
    table_key: str = ""
    missing: tuple[str, ...] = ()
    states: Mapping[str, str] = field(default_factory=dict)
    table_needed: bool = True

    @property
    def absent(self) -> tuple[str, ...]:
        """What of the backend does not exist: "bucket" and/or "lock table" (the table only where the backend locks
        with one); empty when :attr:`complete`."""
        return tuple(part for part, there in (("bucket", self.bucket_exists),
                                              ("lock table", self.table_exists or not self.table_needed)) if not there)

    @property
    def complete(self) -> bool:
        """The bucket exists, and so does the lock table where the backend locks with one."""
        return not self.absent

    @property
    def key_schema_ok(self) -> bool:
        """The lock table (if it exists) is keyed ``LockID`` (string), as Terraform requires."""
        return not self.table_exists or self.table_key == f"{LOCK_KEY} (S)"

    @property
    def table_ready(self) -> bool:
        """The lock table takes reads and writes: ACTIVE, or UPDATING (DynamoDB keeps serving); always True when
        the backend locks with S3 lock files (DynamoDB API reference, TableDescription)."""
        return not self.table_needed or self.table_status in ("ACTIVE", "UPDATING")

    @property
    def verified(self) -> bool:
        """Bucket and table exist, the table is ready with the right key, and no protection is missing."""
        return self.complete and self.key_schema_ok and self.table_ready and not self.missing


def look(sess: Any, account: Account, backend: Backend, keys: Iterable[str] = ()) -> BackendState:
    """Look at the backend without changing it: the bucket, its protections, the lock table, the state objects.

    Calls: S3 HeadBucket, GetBucketVersioning, GetBucketEncryption, GetPublicAccessBlock, one ranged
    GetObject per key in *keys* (its first KiB: whether the state exists and which Terraform wrote it),
    DynamoDB DescribeTable (only when the backend locks with the table). Raises RunbookError when the
    bucket belongs to someone else, the identity may not read what must be verified, or on any AWS error.
    """
    s3 = aws.client(sess, "s3", account)
    try:
        bucket = aws.call("S3 HeadBucket", f"S3 bucket {backend.bucket}", account,
                          lambda: s3.head_bucket(Bucket=backend.bucket), absent=aws.NOT_FOUND_CODES) is not None
    except RunbookError as exc:
        if exc.id != "aws-access-denied":
            raise
        raise RunbookError(f"S3 bucket {backend.bucket} exists but this identity may not use it (403): the name may be "
                           "taken by another AWS account, or the identity lacks s3:ListBucket",
                           id="state-bucket-taken", where="config field terraform.backend.state_bucket",
                           fix="choose another state_bucket name, or use an administrator identity") from exc
    missing = _missing_protections(s3, account, backend) if bucket else ()
    versions = {key: _state_version(s3, account, backend.bucket, key) for key in dict.fromkeys(keys)} if bucket else {}
    found = aws.call("DynamoDB DescribeTable", f"lock table {backend.lock_table}", account, lambda: aws.client(
        sess, "dynamodb", account).describe_table(TableName=backend.lock_table),
        absent=("ResourceNotFoundException",)) if backend.uses_table else None
    table = (found or {}).get("Table", {})
    types = {a.get("AttributeName"): a.get("AttributeType") for a in table.get("AttributeDefinitions", [])}
    key = ", ".join(f"{k.get('AttributeName')} ({types.get(k.get('AttributeName'), '?')})"
                    for k in table.get("KeySchema", []))
    return BackendState(bucket, found is not None, str(table.get("TableStatus", "")), key, missing,
                        {k: v for k, v in versions.items() if v is not None}, backend.uses_table)


def _missing_protections(s3: Any, account: Account, backend: Backend) -> tuple[str, ...]:
    """The protections of the state bucket that are off (S3 GetBucketVersioning, -Encryption, GetPublicAccessBlock)."""
    b = backend.bucket
    checks = (
        (VERSIONING, "s3:GetBucketVersioning", lambda: s3.get_bucket_versioning(Bucket=b).get("Status") == "Enabled",
         ()),
        (ENCRYPTION, "s3:GetEncryptionConfiguration", lambda: any(
            r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in
            s3.get_bucket_encryption(Bucket=b).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])),
         ("ServerSideEncryptionConfigurationNotFoundError",)),
        (PUBLIC_ACCESS_BLOCK, "s3:GetBucketPublicAccessBlock", lambda: all(map(
            s3.get_public_access_block(Bucket=b).get("PublicAccessBlockConfiguration", {}).get, _PAB)),
         ("NoSuchPublicAccessBlockConfiguration",)),
    )
    return tuple(name for name, permission, is_on, absent in checks if not aws.call(
        f"reading the {name} of", f"S3 bucket {b}", account, is_on, absent=absent, permission=permission,
        fix=f"use an identity with {permission} (an administrator's): the runbook does not use a backend it cannot "
            "verify"))


def _state_version(s3: Any, account: Account, bucket: str, key: str) -> str | None:
    """None when the state object *key* does not exist, else the ``terraform_version`` that wrote it ("" unknown).
    One ranged S3 GetObject of the first KiB: the same single request as a HeadObject, and the version with it."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-1023")["Body"].read()
    except aws.errors() as exc:
        if aws.code_of(exc) == "InvalidRange":  # an empty object
            return ""
        if aws.code_of(exc) in aws.NOT_FOUND_CODES:
            return None
        raise aws.failure(exc, "S3 GetObject", f"s3://{bucket}/{key}", account) from exc
    found = _STATE_VERSION.search(body)
    return found.group(1).decode("ascii") if found else ""


def state_tag(sess: Any, account: Account, backend: Backend) -> str | None:
    """The S3 version id of *backend*'s state object (its ETag where the bucket keeps no versions), None when it
    does not exist: two equal tags mean nobody wrote the state in between. One HeadObject. Raises RunbookError as
    :func:`runbook.aws.failure` maps a failure."""
    s3 = aws.client(sess, "s3", account)
    head = aws.call("S3 HeadObject", f"s3://{backend.bucket}/{backend.key}", account,
                    lambda: s3.head_object(Bucket=backend.bucket, Key=backend.key), absent=aws.NOT_FOUND_CODES)
    return None if head is None else str(head.get("VersionId") or head.get("ETag"))


def _repair_command(account: Account, bucket: str, name: str) -> str:
    method, parameter, _, shorthand = _REPAIRS[name]
    option = re.sub(r"(?<=[a-z])(?=[A-Z])", "-", parameter).lower()  # VersioningConfiguration: versioning-configuration
    return aws.aws_command(account, "s3api", method.replace("_", "-"), "--bucket", bucket, f"--{option}", shorthand)


def repair(sess: Any, account: Account, backend: Backend, missing: Iterable[str]) -> list[str]:
    """Switch on the *missing* protections of the state bucket (versioning, SSE-S3, full public access block).

    Returns what was switched on. Raises RunbookError when AWS refuses one: the message says which are still
    missing, which were repaired, and the exact commands an administrator runs; another failure is named as
    what it is (:func:`runbook.aws.failure`), never as a refusal.
    """
    s3, b = aws.client(sess, "s3", account), backend.bucket
    done, refused = [], []
    for name in missing:
        method, parameter, value, _ = _REPAIRS[name]
        try:
            getattr(s3, method)(Bucket=b, **{parameter: value})
            done.append(name)
        except aws.errors() as exc:
            if aws.code_of(exc) not in aws.DENIED_CODES:
                raise aws.failure(exc, f"switching on the {name} of", f"S3 bucket {b}", account) from exc
            refused.append((name, aws.code_of(exc)))
    if refused:
        names = [name for name, _ in refused]
        raise RunbookError(
            f"The state bucket {b} lacks {', '.join(names)} and this identity may not switch it on: "
            + ", ".join(f"{n} ({c})" for n, c in refused) + (f"; repaired: {', '.join(done)}" if done else "")
            + ". Terraform's state holds the IAM of the account and must be versioned, encrypted and never public; "
            "nothing was applied", id="state-bucket-unprotected", where=f"S3 bucket {b}",
            fix="an administrator runs: " + " && ".join(_repair_command(account, b, name) for name in names))
    return done


def create(sess: Any, account: Account, backend: Backend, state: BackendState) -> list[str]:
    """Create what *state* says is missing: the state bucket and/or the lock table; wait for the table.

    The bucket gets versioning, default encryption (SSE-S3), a full public access block and the lifecycle rule
    :data:`LIFECYCLE` (only a new bucket: a lifecycle configuration replaces the bucket's own rules); the table the
    ``LockID`` string hash key, on-demand billing. Another run creating the same backend at the same time is
    not an error (BucketAlreadyOwnedByYou, ResourceInUseException). The table is waited for with boto3's
    ``table_exists`` waiter (DescribeTable every 2 seconds, at most :data:`TABLE_WAIT_S`). Callers decide
    *whether* creating is allowed. Returns what was done. Raises RunbookError naming the resource.
    """
    import botocore.exceptions as errors

    s3, ddb, done = aws.client(sess, "s3", account), aws.client(sess, "dynamodb", account), []
    if not state.bucket_exists:
        extra = {} if account.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": account.region}}
        try:
            s3.create_bucket(Bucket=backend.bucket, **extra)
            done.append(f"created S3 bucket {backend.bucket}")
        except aws.errors() as exc:
            if aws.code_of(exc) == "BucketAlreadyExists":
                raise RunbookError(f"The S3 bucket name {backend.bucket} is taken by another AWS account (bucket names "
                                   "are global)", id="state-bucket-taken",
                                   where="config field terraform.backend.state_bucket",
                                   fix="choose another state_bucket name (the default has the account ID in it: "
                                       "{project}-tfstate-{account_id})") from exc
            if aws.code_of(exc) != "BucketAlreadyOwnedByYou":
                raise aws.failure(exc, "S3 CreateBucket", backend.bucket, account) from exc
            done.append(f"S3 bucket {backend.bucket} was just created by another run")
        switched = repair(sess, account, backend, (VERSIONING, ENCRYPTION, PUBLIC_ACCESS_BLOCK))
        done.append(f"switched on {', '.join(switched)} of {backend.bucket}")
        aws.call("S3 PutBucketLifecycleConfiguration", f"S3 bucket {backend.bucket}", account,
                 lambda: s3.put_bucket_lifecycle_configuration(Bucket=backend.bucket, LifecycleConfiguration=LIFECYCLE))
        done.append(f"bounded the old versions (lock files, states) of {backend.bucket}: newest 100 kept, older ones "
                    "after 90 days")
    if state.table_needed and not state.table_exists:
        made = aws.call("DynamoDB CreateTable", backend.lock_table, account, lambda: ddb.create_table(
            TableName=backend.lock_table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": LOCK_KEY, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": LOCK_KEY, "KeyType": "HASH"}]), absent=("ResourceInUseException",))
        done.append(f"created DynamoDB lock table {backend.lock_table} (hash key {LOCK_KEY})" if made is not None
                    else f"DynamoDB lock table {backend.lock_table} is being created by another run")
    if not state.table_ready:
        try:
            ddb.get_waiter("table_exists").wait(TableName=backend.lock_table,
                                                WaiterConfig={"Delay": 2, "MaxAttempts": int(TABLE_WAIT_S / 2)})
        except errors.WaiterError as exc:
            raise RunbookError(f"The DynamoDB lock table {backend.lock_table} did not become ACTIVE within "
                               f"{TABLE_WAIT_S:.0f} s (another run or the console is creating or changing it, or its "
                               "creation failed); nothing was applied", id="lock-table-not-active",
                               fix="wait a minute and run the same command again; " + aws.aws_command(
                                   account, "dynamodb", "describe-table", "--table-name", backend.lock_table)
                               + " shows its status") from exc
    return done


def digests(sess: Any, account: Account, backend: Backend) -> list[str]:
    """The state objects (``bucket/key``) whose MD5 Terraform keeps in the lock table (items ``<bucket>/<key>-md5``):
    any means state was written before; none when the table does not exist. One paginated DynamoDB Scan (keys
    only)."""
    pages = aws.client(sess, "dynamodb", account).get_paginator("scan").paginate(
        TableName=backend.lock_table, ProjectionExpression=LOCK_KEY)
    return sorted(aws.call("DynamoDB Scan", f"lock table {backend.lock_table}", account, lambda: [
        item[LOCK_KEY]["S"][:-4] for page in pages for item in page.get("Items", [])
        if item.get(LOCK_KEY, {}).get("S", "").endswith("-md5")], absent=("ResourceNotFoundException",)) or [])


def objects(sess: Any, account: Account, backend: Backend, *, limit: int = 100) -> list[str]:
    """Keys of up to *limit* objects in the state bucket (S3 ListObjectsV2, one page)."""
    page = aws.call("S3 ListObjectsV2", f"S3 bucket {backend.bucket}", account, lambda: aws.client(
        sess, "s3", account).list_objects_v2(Bucket=backend.bucket, MaxKeys=limit))
    return [item["Key"] for item in page.get("Contents", [])]


def deleted_version(sess: Any, account: Account, backend: Backend, key: str) -> str | None:
    """The version ID of the delete marker that hides a deleted state object at *key*, or None. Deleting that
    marker (``aws s3api delete-object --version-id``) brings the last version back."""
    try:
        page = aws.client(sess, "s3", account).list_object_versions(Bucket=backend.bucket, Prefix=key)
    except aws.errors():
        return None  # only for a message's fix: without it the fix names the other ways back
    markers = [m for m in page.get("DeleteMarkers", []) if m.get("Key") == key and m.get("IsLatest")]
    return markers[0]["VersionId"] if markers and any(v.get("Key") == key for v in page.get("Versions", [])) else None


def forget_digests(sess: Any, account: Account, backend: Backend, stale: Iterable[str]) -> None:
    """Delete the lock table's digests *stale* (``bucket/key``): only for ``inv iam.bootstrap`` re-creating a bucket
    that had gone, once confirmed (a new bucket holds no state, and Terraform refuses a state whose digest does
    not match)."""
    ddb = aws.client(sess, "dynamodb", account)
    for name in stale:
        aws.call("DynamoDB DeleteItem", f"lock table {backend.lock_table}", account,
                 lambda name=name: ddb.delete_item(TableName=backend.lock_table, Key={LOCK_KEY: {"S": f"{name}-md5"}}))


@dataclass(frozen=True)
class LockInfo:
    """Who holds a Terraform state lock: Terraform's own lock info (``terraform force-unlock`` takes ``id``).

    Fields as Terraform writes them (the lock table's ``Info``, the lock file, and the "Lock Info:" block of
    "Error acquiring the state lock"): id, path, operation (e.g. OperationTypeApply), who (user@host),
    version (Terraform's), created (UTC); ``etag`` is the S3 lock file's ETag ("" for a table item).
    """

    id: str
    path: str = ""
    operation: str = ""
    who: str = ""
    version: str = ""
    created: str = ""
    etag: str = ""

    def describe(self) -> str:
        """One line: who holds it, since when, doing what, its ID (outside text: made safe, masked, <= 400 chars)."""
        op = self.operation.removeprefix("OperationType").lower() or "?"
        return console.mask(console.one_line(f"held by {self.who or '?'} since {self.created or '?'} (terraform {op}, "
                                             f"Terraform {self.version or '?'}), lock ID {self.id}")[:400])

    def created_at(self) -> float | None:
        """``created`` in seconds since the epoch ("2026-11-30 12:37:49.89 +0000 UTC" or RFC 3339), or None."""
        import calendar

        found = re.match(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(\.\d+)?", self.created.strip())
        if found is None:
            return None
        return calendar.timegm(tuple(int(p) for p in found.groups()[:6]) + (0, 0, 0)) + float(found.group(7) or 0)

    @classmethod
    def parse(cls, text: str, *, etag: str = "") -> LockInfo | None:
        """From Terraform's lock info JSON, or from the "Lock Info:" block of its "Error acquiring the state lock"
        (``Name: value`` lines, https://developer.hashicorp.com/terraform/language/state/locking); None when
        *text* holds neither, or no lock ID (then no run holds the lock: Terraform could not use it at all)."""
        try:
            info = json.loads(text)
        except (ValueError, RecursionError):
            start = text.rfind("Error acquiring the state lock")
            info = {} if start < 0 else dict(re.findall(
                r"^\s*(ID|Path|Operation|Who|Version|Created):[ \t]*(.*?)\s*$", text[start:], re.M))
        if not isinstance(info, dict) or not isinstance(info.get("ID"), str) or not info["ID"]:
            return None
        return cls(info["ID"], *(str(info.get(k, "")) for k in ("Path", "Operation", "Who", "Version", "Created")),
                   etag=etag)


def read_lock(sess: Any, account: Account, backend: Backend) -> LockInfo | None:
    """Who holds the state lock of *backend*, or None when nobody does: the S3 lock file (one GetObject) where
    used, and the lock table's item (one strongly consistent GetItem) where used; in "dynamodb+s3" mode Terraform
    writes both with one ID. Raises RunbookError (``unlock-refused``) when a lock holds something that is not
    Terraform's lock info, when the two places hold two different locks, or on an AWS error."""
    in_file = in_table = None
    if backend.uses_lockfile:
        where = f"s3://{backend.bucket}/{backend.lock_object}"
        try:
            found = aws.client(sess, "s3", account).get_object(Bucket=backend.bucket, Key=backend.lock_object)
            in_file = LockInfo.parse(found["Body"].read(65536).decode("utf-8", "replace"),
                                     etag=str(found.get("ETag", "")))
            if in_file is None:
                raise RunbookError(f"The lock file {where} is not Terraform's lock info", id="unlock-refused",
                                   where=where, fix="look at it before removing anything: "
                                   + aws.aws_command(account, "s3", "cp", where, "-"))
        except aws.errors() as exc:
            if aws.code_of(exc) not in aws.NOT_FOUND_CODES:
                raise aws.failure(exc, "reading the state lock", where, account) from exc
    if backend.uses_table:
        where = f"DynamoDB table {backend.lock_table}, LockID {backend.bucket}/{backend.key}"
        item = aws.call("reading the state lock", f"lock table {backend.lock_table}", account, lambda: aws.client(
            sess, "dynamodb", account).get_item(TableName=backend.lock_table, ConsistentRead=True,
                                                Key={LOCK_KEY: {"S": f"{backend.bucket}/{backend.key}"}})).get("Item")
        in_table = None if item is None else LockInfo.parse(item.get("Info", {}).get("S", ""))
        if item is not None and in_table is None:
            raise RunbookError(f"The lock table {backend.lock_table} holds an item for {backend.bucket}/{backend.key} "
                               "that is not Terraform's lock info", id="unlock-refused", where=where,
                               fix="look at it (aws dynamodb get-item) before removing anything")
    if in_file and in_table and in_file.id != in_table.id:
        raise RunbookError(f"The lock file holds lock {in_file.id} and the lock table lock {in_table.id}: two runs, "
                           "one of them with the other lock mode?; nothing was released", id="unlock-refused",
                           where=backend.lock_text, fix="find both runs (Who above in their errors) and wait for "
                           "them; release each lock only once its run has stopped, in each place, by hand")
    return in_file or in_table


def release_lock(sess: Any, account: Account, backend: Backend, lock: LockInfo) -> None:
    """Release *lock* (as :func:`read_lock` found it) in every place the backend locks: what ``terraform
    force-unlock`` does. Each delete is conditional on the lock still being *lock* (S3: the same ETag,
    DeleteObject If-Match; DynamoDB: no item, or its ID in ``Info``), so a lock taken again by another run meanwhile
    is never released. Raises RunbookError (``unlock-refused``) when it changed, saying whether the lock file was
    released already, or on an AWS error."""
    released = ""
    try:
        if lock.etag:
            aws.client(sess, "s3", account).delete_object(Bucket=backend.bucket, Key=backend.lock_object,
                                                          IfMatch=lock.etag)
            released = f"the lock file s3://{backend.bucket}/{backend.lock_object} WAS released, but "
        if backend.uses_table:
            aws.client(sess, "dynamodb", account).delete_item(
                TableName=backend.lock_table, Key={LOCK_KEY: {"S": f"{backend.bucket}/{backend.key}"}},
                ConditionExpression=f"attribute_not_exists({LOCK_KEY}) OR contains(Info, :id)",
                ExpressionAttributeValues={":id": {"S": json.dumps(lock.id)}})
    except aws.errors() as exc:
        if aws.code_of(exc) in ("ConditionalCheckFailedException", "PreconditionFailed", "412", "NoSuchKey"):
            raise RunbookError(f"The state lock of {backend.key} changed while you confirmed: {released}it is no "
                               f"longer lock {lock.id}; nothing {'else ' if released else ''}was released",
                               id="unlock-refused", where=backend.lock_text,
                               fix="run the run's command again: it reports the lock that is held now") from exc
        raise aws.failure(exc, "releasing the state lock", f"{backend.lock_text}", account) from exc
