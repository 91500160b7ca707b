"""Terraform state locks: who holds one (Terraform's lock info), and releasing one left by a run that died.

Terraform's S3 backend locks a state with an item of the DynamoDB lock table: LockID
"<bucket>/<key>" (the default workspace), attribute Info holding the lock info as JSON. Terraform
1.10+ can lock with an S3 object "<key>.tflock" instead (``use_lockfile``); a backend in that mode
gets a branch of its own in :func:`read_lock` and :func:`release_lock` (read the object; delete it
only if its ETag is unchanged), and their callers stay as they are.
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

    def describe(self) -> str:
        """One line: who holds it, since when, doing what, and its ID (text from outside: control characters
        and terminal escapes replaced, secrets masked, at most 400 characters)."""
        from runbook import console

        op = self.operation.removeprefix("OperationType").lower() or "?"
        text = (f"held by {self.who or '?'} since {self.created or '?'} (terraform {op}, "
                f"Terraform {self.version or '?'}), lock ID {self.id}")
        return console.mask("".join(ch if ch.isprintable() else "?" for ch in text)[:400])

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
        backend: the root module's backend (bucket, key, lock table).

    One DynamoDB GetItem (strongly consistent). Raises RunbookError when the table cannot be read,
    or holds a lock item whose Info is not Terraform's lock info.
    """
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

    The delete is conditional on the lock still being *lock* (same ID), so a lock taken again by
    another run in the meantime is never released. Raises RunbookError when it changed or AWS refuses.
    """
    from botocore.exceptions import ClientError

    from runbook import aws

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


def _lock_error(action: str, backend: Backend, exc) -> RunbookError:
    code = exc.response.get("Error", {}).get("Code", "Unknown")
    return RunbookError(
        f"AWS refused {action} the state lock of {backend.key} in table {backend.lock_table} ({code})",
        id="aws-access-denied",
        fix="use an administrator identity for the account (the one the iam.* tasks use), then run again",
    )
