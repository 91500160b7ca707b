provider "aws" {
  region = var.region

  # Refuse to touch any account other than the one this root is applied to.
  allowed_account_ids = [var.account_id]

  # A local AWS (moto, LocalStack) for rehearsals; deploy-app.sh sets
  # TF_VAR_endpoint_url from AWS_ENDPOINT_URL. Null means the real AWS.
  endpoints {
    iam = var.endpoint_url
    sts = var.endpoint_url
  }

  default_tags {
    tags = {
      Project   = var.project
      ManagedBy = "terraform"
      Root      = "iam/terraform/account-specific/main"
    }
  }
}
