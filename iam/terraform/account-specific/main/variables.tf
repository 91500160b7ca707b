variable "project" {
  description = "Short project name, e.g. acme-api: prefixes every name and the SSM path."
  type        = string

  # No "--" and no trailing "-": "<project>--" then starts the deployer's names
  # of this project and of no other (see main.tf).
  validation {
    condition     = can(regex("^[a-z][a-z0-9]*(-[a-z0-9]+)*$", var.project))
    error_message = "The project must match ^[a-z][a-z0-9]*(-[a-z0-9]+)*$ (lower case letters and digits, single hyphens between them)."
  }
}

variable "account_id" {
  description = "The 12-digit AWS account ID this root is applied to."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "The account_id must be a 12-digit string (quote it in YAML to keep leading zeros)."
  }
}

variable "region" {
  description = "AWS region of the deployments, e.g. eu-west-1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "The region must look like eu-west-1."
  }
}

variable "endpoint_url" {
  description = "Optional local AWS endpoint (moto, LocalStack) for rehearsals. Null means the real AWS."
  type        = string
  default     = null
}

variable "ci_deployer" {
  description = "How CircleCI authenticates: oidc (a role assumed with the job's OIDC token) or user (legacy: an IAM user with an access key). config: circleci.deployer. No default: an apply without it must stop, not switch the pipeline to the other way in."
  type        = string

  validation {
    condition     = contains(["oidc", "user"], var.ci_deployer)
    error_message = "The ci_deployer must be \"oidc\" or \"user\"."
  }
}

variable "circleci_org_id" {
  description = "CircleCI organization ID (a UUID: Organization Settings > Overview); the OIDC issuer and audience. config: circleci.org_id."
  type        = string
  default     = ""

  validation {
    condition     = var.circleci_org_id == "" || can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.circleci_org_id))
    error_message = "The circleci_org_id must be a lower-case UUID such as 3f2504e0-4f89-41d3-9a0c-0305e82c3301."
  }
}

variable "circleci_project_id" {
  description = "CircleCI project ID (a UUID: Project Settings > Overview); only its jobs may assume the deployer role. config: circleci.project_id."
  type        = string
  default     = ""

  validation {
    condition     = var.circleci_project_id == "" || can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.circleci_project_id))
    error_message = "The circleci_project_id must be a lower-case UUID such as 3f2504e0-4f89-41d3-9a0c-0305e82c3301."
  }
}

variable "circleci_vcs_origin" {
  description = "The repository as CircleCI's token names it (vcs-origin), e.g. github.com/acme/acme-api. config: circleci.vcs_origin, or derived from circleci.project_slug."
  type        = string
  default     = ""

  validation {
    condition     = var.circleci_vcs_origin == "" || can(regex("^[A-Za-z0-9.-]+(/[A-Za-z0-9_.-]+)+$", var.circleci_vcs_origin))
    error_message = "The circleci_vcs_origin must look like github.com/acme/acme-api (no wildcard, no scheme)."
  }
}

variable "deploy_branches" {
  description = "The git branches whose pipelines deploy into this account (environments.<name>.branch of its environments): the only refs the deployer role trusts."
  type        = list(string)
  default     = []

  validation {
    # * and ? would widen the StringLike match; ${ starts an IAM policy variable.
    condition     = alltrue([for b in var.deploy_branches : b != "" && !can(regex("[*?$[:space:]]", b))])
    error_message = "Each deploy branch must be a plain branch name: no *, ?, $ or white space."
  }
}

variable "state_bucket" {
  description = "The S3 bucket of the Terraform states of this account (config: terraform.backend.state_bucket, rendered): the read-only role may read the states in it."
  type        = string
  default     = ""
}

variable "lock_table" {
  description = "The DynamoDB lock table of this account's states, or \"\" when the states are locked with S3 lock files (config: terraform.backend): the read-only role may read the state digests in it."
  type        = string
  default     = ""
}
