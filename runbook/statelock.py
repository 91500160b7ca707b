"""Terraform state locks: who holds one (Terraform's lock info), and releasing one left by a run that died.

Terraform's S3 backend locks a state with an item of the DynamoDB lock table: LockID
"<bucket>/<key>" (the default workspace), attribute Info holding the lock info as JSON. Terraform
1.10+ can lock with an S3 object "<key>.tflock" instead (``use_lockfile``, configuration
``terraform.backend.lock: s3``), whose body is the same lock info JSON (ID, Operation, Who, Version,
Created, Path); Terraform writes it with a conditional PutObject (If-None-Match: *). In that mode
:func:`read_lock` reads the object and :func:`release_lock` deletes it only if its ETag is unchanged
(DeleteObject If-Match); with ``dynamodb+s3`` (a migration) both locks are read and released.
Source: https://developer.hashicorp.com/terraform/language/backend/s3#state-locking
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from runbook.config import Backend
from runbook.errors import RunbookError


@dataclass(frozen=True)
class LockInfo:
    """Who holds a Terraform state lock: Terraform's own lock info (``terraform force-unlock`` takes ``id``).

    Fields as Terraform writes them (JSON in the lock table's ``Info`` attribute, and the "Lock Info:"
    block of "Error acquiring the state lock"): id, path (bucket/key), operation (e.g.
    OperationTypeApply), who (user@host), version (Terraform's), created (UTC time).
    """

    id: str
    path: str = ""
    operation: str = ""
    who: str = ""
    version: str = ""
    created: str = ""
    etag: str = ""  # the S3 lock file's ETag when the lock is one ("" for a lock table item)

    def describe(self) -> str:
        """One line: who holds it, since when, doing what, and its ID (text from outside: control characters
        and terminal escapes replaced, secrets masked, at most 400 characters)."""
        from runbook import console

        op = self.operation.removeprefix("OperationType").lower() or "?"
        text = (f"held by {self.who or '?'} since {self.created or '?'} (terraform {op}, "
                f"Terraform {self.version or '?'}), lock ID {self.id}")
        return console.mask("".join(ch if ch.isprintable() else "?" for ch in text)[:400])

    def created_at(self) -> float | None:
        """``created`` as seconds since the epoch, or None when it is not a time Terraform writes.

        Terraform writes it in UTC, as Go prints a time ("2026-11-30 12:37:49.893271922 +0000 UTC" in its
        lock error) or as RFC 3339 ("2026-11-30T12:37:49.893271922Z" in the lock table and lock file).
        """
        import calendar

        found = re.match(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(\.\d+)?", self.created.strip())
        if found is None:
            return None
        whole = calendar.timegm(tuple(int(part) for part in found.groups()[:6]) + (0, 0, 0))
        return whole + float(found.group(7) or 0)

    @classmethod
    def from_json(cls, text: str) -> LockInfo | None:
        """From the JSON Terraform stores with a lock; None when it is not such JSON."""
        try:
            info = json.loads(text)
        except ValueError:
            return None
        if not isinstance(info, dict) or not isinstance(info.get("ID"), str):
            return None
        return cls(id=info["ID"], path=str(info.get("Path", "")), operation=str(info.get("Operation", "")),
                   who=str(info.get("Who", "")), version=str(info.get("Version", "")),
                   created=str(info.get("Created", "")))


def parse_lock_error(output: str) -> LockInfo | None:
    """The lock info of Terraform's "Error acquiring the state lock" in *output*, or None when absent.

    None too when the error carries no Lock Info with an ID: then no run holds the lock, and Terraform
    could not use the lock table or lock file at all (AccessDenied, a missing table).

    Terraform prints it as a "Lock Info:" block of ``Name: value`` lines (ID, Path, Operation, Who,
    Version, Created, Info); see https://developer.hashicorp.com/terraform/language/state/locking.
    """
    start = output.rfind("Error acquiring the state lock")
    if start < 0:
        return None
    fields = dict(re.findall(r"^\s*(ID|Path|Operation|Who|Version|Created):[ \t]*(.*?)\s*$", output[start:], re.M))
    if not fields.get("ID"):
        return None  # no Lock Info: nobody holds the lock, Terraform could not use the lock table or file at all
    return LockInfo(id=fields.get("ID", ""), path=fields.get("Path", ""), operation=fields.get("Operation", ""),
                    who=fields.get("Who", ""), version=fields.get("Version", ""), created=fields.get("Created", ""))


def read_lock(session, account, backend: Backend) -> LockInfo | None:
    """Who holds the state lock of *backend*, or None when nobody does.

    Args:
        session: boto3 Session for *account*.
        account: the configured account (region, endpoint_url).
        backend: the root module's backend (bucket, key, lock mode, lock table).

    In "s3" mode one S3 GetObject of ``<key>.tflock``; in "dynamodb" mode one DynamoDB GetItem (strongly
    consistent); in "dynamodb+s3" mode the lock file first, then the table. Raises RunbookError when the lock
    cannot be read, or holds something that is not Terraform's lock info.
    """
    if backend.uses_lockfile:
        found = _lock_file(session, account, backend)
        if found is not None or not backend.uses_table:
            return found
    item = _lock_item(session, account, backend)
    if item is None:
        return None
    info = LockInfo.from_json(item.get("Info", {}).get("S", ""))
    if info is None:
        raise RunbookError(
            f"The lock table {backend.lock_table} holds an item for {backend.bucket}/{backend.key} that is not "
            "Terraform's lock info",
            id="unlock-refused",
            where=f"DynamoDB table {backend.lock_table}, LockID {backend.bucket}/{backend.key}",
            fix="look at it (aws dynamodb get-item) before removing anything",
        )
    return info


def release_lock(session, account, backend: Backend, lock: LockInfo) -> None:
    """Release the state lock *lock* (as read by :func:`read_lock`): what ``terraform force-unlock`` does.

    The delete is conditional on the lock still being *lock* (same ID; for an S3 lock file, the same
    ETag), so a lock taken again by another run in the meantime is never released. Raises RunbookError
    when it changed or AWS refuses.
    """
    from botocore.exceptions import ClientError

    from runbook import aws

    if lock.etag:
        _release_lock_file(session, account, backend, lock)
        if not backend.uses_table:
            return
        item = _lock_item(session, account, backend)
        if item is None or lock.id not in item.get("Info", {}).get("S", ""):
            return
    ddb = aws.client(session, "dynamodb", account)
    try:
        ddb.delete_item(
            TableName=backend.lock_table,
            Key={"LockID": {"S": _lock_id(backend)}},
            ConditionExpression="contains(Info, :id)",
            ExpressionAttributeValues={":id": {"S": json.dumps(lock.id)}},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            raise RunbookError(
                f"The state lock of {backend.key} changed while you confirmed: it is no longer lock {lock.id}; "
                "nothing was released",
                id="unlock-refused",
                fix="run the run's command again: it reports the lock that is held now",
            ) from None
        raise _lock_error("releasing", backend, exc) from None


def _lock_file(session, account, backend: Backend) -> LockInfo | None:
    """The lock info in the S3 lock file ``<key>.tflock`` with its ETag, or None when there is no such object."""
    from botocore.exceptions import ClientError

    from runbook import aws

    s3 = aws.client(session, "s3", account)
    where = f"s3://{backend.bucket}/{backend.lock_object}"
    try:
        found = s3.get_object(Bucket=backend.bucket, Key=backend.lock_object)
        body = found["Body"].read(65536)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise _lock_error("reading", backend, exc, where=where) from None
    info = LockInfo.from_json(body.decode("utf-8", "replace"))
    if info is None:
        raise RunbookError(
            f"The lock file {where} is not Terraform's lock info",
            id="unlock-refused",
            where=where,
            fix="look at it before removing anything: "
            + aws.aws_command(account, "s3", "cp", where, "-"),
        )
    return LockInfo(id=info.id, path=info.path, operation=info.operation, who=info.who, version=info.version,
                    created=info.created, etag=str(found.get("ETag", "")))


def _release_lock_file(session, account, backend: Backend, lock: LockInfo) -> None:
    """Delete the S3 lock file only if its ETag is still *lock*'s (DeleteObject If-Match)."""
    from botocore.exceptions import ClientError

    from runbook import aws

    s3 = aws.client(session, "s3", account)
    try:
        s3.delete_object(Bucket=backend.bucket, Key=backend.lock_object, IfMatch=lock.etag)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey", "404", "412"):
            raise RunbookError(
                f"The state lock of {backend.key} changed while you confirmed: the lock file "
                f"s3://{backend.bucket}/{backend.lock_object} is no longer lock {lock.id}; nothing was released",
                id="unlock-refused",
                fix="run the run's command again: it reports the lock that is held now",
            ) from None
        raise _lock_error("releasing", backend, exc, where=f"s3://{backend.bucket}/{backend.lock_object}") from None


def _lock_id(backend: Backend) -> str:
    return f"{backend.bucket}/{backend.key}"


def _lock_item(session, account, backend: Backend) -> dict | None:
    from botocore.exceptions import ClientError

    from runbook import aws

    ddb = aws.client(session, "dynamodb", account)
    try:
        return ddb.get_item(TableName=backend.lock_table, Key={"LockID": {"S": _lock_id(backend)}},
                            ConsistentRead=True).get("Item")
    except ClientError as exc:
        raise _lock_error("reading", backend, exc) from None


def _lock_error(action: str, backend: Backend, exc, *, where: str | None = None) -> RunbookError:
    code = exc.response.get("Error", {}).get("Code", "Unknown")
    return RunbookError(
        f"AWS refused {action} the state lock of {backend.key} in {where or 'table ' + backend.lock_table} ({code})",
        id="aws-access-denied",
        fix="use an administrator identity for the account (the one the iam.* tasks use), then run again",
    )
