"""Invoke entry point: `inv --list` shows the runbook's tasks. The logic lives in the runbook package."""

from runbook.tasks import namespace

ns = namespace()
