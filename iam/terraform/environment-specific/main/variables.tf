variable "project" {
  description = "Short project name, e.g. acme-api: prefixes every name and the SSM path."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*(-[a-z0-9]+)*$", var.project))
    error_message = "The project must match ^[a-z][a-z0-9]*(-[a-z0-9]+)*$ (lower case letters and digits, single hyphens between them)."
  }
}

variable "environment" {
  description = "Environment name from config/environments.yml, e.g. stg: part of every role name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*$", var.environment))
    error_message = "The environment must match ^[a-z][a-z0-9-]*$ (lower case letters, digits, hyphens)."
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
