"""``inv config.check``: validate config/environments.yml."""

from __future__ import annotations

from runbook.tasks._common import task, user_errors


@task(help={"path": "configuration file (default: $RUNBOOK_CONFIG or config/environments.yml)"})
@user_errors
def check(c, path=None):
    """Validate the configuration and list environments with their branches and accounts."""
    from runbook import config as configuration
    from runbook import console

    cfg = configuration.load(path)
    console.ok(f"{cfg.path} is valid")
    for warning in configuration.warnings(cfg):
        console.warn(warning)
    for env in cfg.environments.values():
        flag = "  protected" if env.protected else ""
        console.say(f"  {env.name:<10} branch {env.branch:<12} account {env.account.name} ({env.account.id}){flag}")
