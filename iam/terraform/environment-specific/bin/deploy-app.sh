#!/usr/bin/env bash
# Entry point for the environment root module (the environment's lambda roles):
#
#   (cd iam/terraform/environment-specific/main && ../bin/deploy-app.sh ENV)
#
# ENV is an environment name from config/environments.yml, e.g. stg. It becomes
# TF_VAR_environment. Hands over to the shared iam/terraform/bin/deploy-app.sh, which
# documents the environment it needs (TF_STATE_BUCKET, TF_STATE_KEY, TF_LOCK_TABLE,
# AWS_REGION, ...). `inv iam.env --name ENV` sets all of it from config/environments.yml.
set -euo pipefail

usage() {
    printf 'Usage: (cd iam/terraform/environment-specific/main && ../bin/deploy-app.sh ENV)\n' >&2
    printf '  ENV: an environment from config/environments.yml, e.g. stg (lower case letters, digits, hyphens).\n' >&2
}

if (($# != 1)); then
    printf 'deploy-app.sh: error: expected exactly one argument, the environment name (got %d).\n' "$#" >&2
    usage
    exit 2
fi

env_name="$1"
if [[ ! "$env_name" =~ ^[a-z][a-z0-9-]*$ ]]; then
    # %q shows the name unambiguously without the terminal interpreting it.
    printf 'deploy-app.sh: error: invalid environment name %q: it must match ^[a-z][a-z0-9-]*$.\n' "$env_name" >&2
    usage
    exit 2
fi

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
export DEPLOY_SCOPE=environment
export TF_VAR_environment="$env_name"
exec "${here}/../../bin/deploy-app.sh"
