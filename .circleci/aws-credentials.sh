#!/usr/bin/env bash
# aws-credentials.sh ENV [reader]: give the following steps of a CircleCI job the CI deployer's AWS
# credentials for environment ENV, the way config/environments.yml says (circleci.deployer); with
# "reader", the account's read-only role instead (AWS_READER_ROLE_ARN: the account root's output
# reader_role_arn), for `inv iam.plan` and `inv iam.drift` (oidc only):
#
#   oidc  writes the job's OpenID Connect token (CIRCLE_OIDC_TOKEN_V2) to a file readable by
#         this user only and exports, through $BASH_ENV, the standard web-identity variables
#         that boto3, the AWS CLI and Terraform's AWS provider read:
#           AWS_ROLE_ARN                 from the job's context: the account root's output
#                                        deployer_role_arn (checked: the environment's account)
#           AWS_WEB_IDENTITY_TOKEN_FILE  the token file
#           AWS_ROLE_SESSION_NAME        circleci-<job>-<build number>
#         Refuses while the context still holds an access key: environment credentials come
#         first in every SDK's chain, so the key, not the role, would be used.
#   user  (legacy) checks that the context holds AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
#
# CircleCI issues CIRCLE_OIDC_TOKEN_V2 only to jobs that use a context, and now and then leaves it out:
# the step then mints one with `circleci run oidc get` (3 tries). The token is valid for one
# hour (https://circleci.com/docs/openid-connect-tokens/). The token is never printed.
#
# Needs: the project's virtualenv active (it reads the configuration with the runbook).
# Optional: AWS_TOKEN_DIR (default $HOME/.aws-oidc), BASH_ENV (set by CircleCI).
# Exit status: 0 ready; 2 the configuration, the context or the job is not set up as needed
# (the message says what to change and where).
set -euo pipefail

readonly PROG="aws-credentials.sh"
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 2
}

env_name="${1:-}"
[[ -n "$env_name" ]] || die "usage: $PROG ENV [reader] (ENV: an environment of config/environments.yml, e.g. stg)"
role_var=AWS_ROLE_ARN role_output=deployer_role_arn
(($# <= 2)) || die "usage: $PROG ENV [reader]: one or two arguments, not $#"
case "${2-}" in
    "") (($# == 1)) || die "usage: $PROG ENV [reader]: the second argument is empty" ;;
    reader) role_var=AWS_READER_ROLE_ARN role_output=reader_role_arn ;;
    *) die "usage: $PROG ENV [reader]: the second argument can only be 'reader' (the read-only role), not '$2'" ;;
esac

# "<deployer> <account id> <account name>" of the environment, or the runbook's own error.
facts="$(python - "$env_name" <<'PY'
import sys

from runbook import config
from runbook.errors import RunbookError

try:
    cfg = config.load()
    env = cfg.environment(sys.argv[1])
except RunbookError as exc:
    sys.exit(exc.message)
print(cfg.circleci.deployer if cfg.circleci else "user", env.account.id, env.account.name,
      (cfg.circleci.org_id if cfg.circleci else "") or "-")
PY
)" || exit 2
read -r deployer account_id account_name org_id <<<"$facts"

case "$deployer" in
    oidc)
        if [[ -n "${AWS_ACCESS_KEY_ID:-}${AWS_SECRET_ACCESS_KEY:-}" ]]; then
            die "circleci.deployer is oidc, but this job's context still holds AWS_ACCESS_KEY_ID or" \
                "AWS_SECRET_ACCESS_KEY, which would be used instead of the role. Delete both from the" \
                "context (Organization Settings > Contexts), delete the old key with" \
                "'aws iam delete-access-key --user-name <user> --access-key-id <id>', then rerun: inv ci.rerun --env $env_name"
        fi
        token="${CIRCLE_OIDC_TOKEN_V2:-}"
        if [[ -z "$token" ]]; then
            # CircleCI leaves CIRCLE_OIDC_TOKEN_V2 out of a job now and then, context or not: mint one with the
            # job's own CLI, audience the organization ID like the default token's
            # (https://circleci.com/docs/openid-connect-tokens/), a few times before giving up.
            command -v circleci >/dev/null 2>&1 ||
                die "CIRCLE_OIDC_TOKEN_V2 is missing from this job, and this executor has no circleci CLI to mint" \
                    "one. CircleCI leaves the variable out now and then (intermittent): rerun the job (inv" \
                    "ci.rerun --env $env_name). If every rerun fails the same way, the job has no context: give it" \
                    "the context of account $account_name in .circleci/config.yml (workflows: ... context: <name>)"
            # Each try is given 20 s; what it prints must be a JSON Web Token (three base64url parts), or it
            # is not one: a CLI that prints an error and exits 0 mints nothing.
            minted="" said=""
            err_file="$(mktemp)"
            for try in 1 2 3; do
                token="$(timeout 20 circleci run oidc get --claims "{\"aud\":\"$org_id\"}" 2>"$err_file")" || token=""
                if [[ "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$ ]]; then
                    minted="$try"
                    break
                fi
                said="$(tail -n 1 -- "$err_file" | tr -c '[:print:]' ' ' | cut -c1-200)"
                token=""
                if ((try < 3)); then sleep 2; fi
            done
            rm -f -- "$err_file"
            [[ -n "$minted" ]] ||
                die "CIRCLE_OIDC_TOKEN_V2 is missing from this job, and 'circleci run oidc get' did not mint one in" \
                    "3 tries${said:+ (it said: $said)}. CircleCI leaves the variable out now and then (intermittent): rerun the job (inv" \
                    "ci.rerun --env $env_name). If every rerun fails the same way, the job has no context: give it" \
                    "the context of account $account_name in .circleci/config.yml (workflows: ... context: <name>)"
            printf '%s: CIRCLE_OIDC_TOKEN_V2 was missing (CircleCI leaves it out now and then); minted a token' \
                "$PROG" >&2
            printf ' with circleci run oidc get (try %s)\n' "$minted" >&2
        fi
        role_arn="${!role_var:-}"
        if [[ -z "$role_arn" ]]; then
            die "$role_var is not set. Put the account root's output $role_output of account" \
                "$account_name in this job's context as $role_var (read it with: cd" \
                "iam/terraform/account-specific/main && terraform output -raw $role_output)"
        fi
        if [[ ! "$role_arn" =~ ^arn:aws[a-z-]*:iam::([0-9]{12}):role/[^[:space:]]+$ ]]; then
            die "$role_var in this job's context is not an IAM role ARN (arn:aws:iam::<account>:role/...)." \
                "Set it to the account root's output $role_output of account $account_name"
        fi
        if [[ "${BASH_REMATCH[1]}" != "$account_id" ]]; then
            die "$role_var in this job's context is a role of account ${BASH_REMATCH[1]}, but environment" \
                "$env_name deploys into account $account_name ($account_id). Give the job the context of" \
                "that account, or set $role_var there to its $role_output"
        fi
        token_dir="${AWS_TOKEN_DIR:-$HOME/.aws-oidc}"
        (umask 077 && mkdir -p "$token_dir" && printf '%s' "$token" >"$token_dir/token")
        # A session name shows in CloudTrail; AWS allows [\w+=,.@-], 2 to 64 characters.
        session="circleci-${CIRCLE_JOB:-job}-${CIRCLE_BUILD_NUM:-0}"
        session="$(printf '%s' "$session" | tr -c 'A-Za-z0-9+=,.@_-' '-' | cut -c1-64)"
        {
            printf 'export AWS_ROLE_ARN=%q\n' "$role_arn"
            printf 'export AWS_WEB_IDENTITY_TOKEN_FILE=%q\n' "$token_dir/token"
            printf 'export AWS_ROLE_SESSION_NAME=%q\n' "$session"
        } >>"${BASH_ENV:?BASH_ENV is not set: run this as a step of a CircleCI job}"
        printf '%s: AWS credentials: web identity (CircleCI OIDC) as %s, session %s\n' \
            "$PROG" "$role_arn" "$session" >&2
        ;;
    user)
        [[ "$role_var" == AWS_ROLE_ARN ]] ||
            die "the read-only role exists only with circleci.deployer: oidc (config/environments.yml); with the" \
                "legacy user there is no read-only identity for the preview and drift jobs"
        if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
            die "circleci.deployer is user (legacy), but this job's context lacks AWS_ACCESS_KEY_ID or" \
                "AWS_SECRET_ACCESS_KEY. Create the key once (aws iam create-access-key --user-name" \
                "<project>-circleci-deployer) and put it in the context of account $account_name; or move" \
                "to OIDC (docs/RUNBOOK.md, \"CI deployer without long-lived keys\")"
        fi
        printf '%s: AWS credentials: the legacy deployer user'"'"'s access key from the context (circleci.deployer: user)\n' \
            "$PROG" >&2
        ;;
    *)
        die "unknown circleci.deployer '$deployer' in config/environments.yml (oidc or user)"
        ;;
esac
