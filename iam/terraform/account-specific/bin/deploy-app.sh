#!/usr/bin/env bash
# Entry point for the account root module (the CircleCI deployer user and policy):
#
#   (cd iam/terraform/account-specific/main && ../bin/deploy-app.sh)
#
# Hands over to the shared iam/terraform/bin/deploy-app.sh, which documents the
# environment it needs (TF_STATE_BUCKET, TF_STATE_KEY, TF_LOCK_TABLE, AWS_REGION, ...).
# `inv iam.account` sets all of it from config/environments.yml.
set -euo pipefail

if (($# != 0)); then
    printf 'deploy-app.sh: error: the account root takes no arguments (got: %s).\n' "$*" >&2
    printf 'Usage: (cd iam/terraform/account-specific/main && ../bin/deploy-app.sh)\n' >&2
    exit 2
fi

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
export DEPLOY_SCOPE=account
exec "${here}/../../bin/deploy-app.sh"
