terraform {
  required_version = "~> 1.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    # data.tls_certificate: the thumbprints of CircleCI's OIDC issuer.
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }

  # Partial configuration: bucket, key, region, dynamodb_table and encrypt are
  # passed at init by ../../bin/deploy-app.sh from TF_STATE_BUCKET, TF_STATE_KEY,
  # AWS_REGION and TF_LOCK_TABLE.
  backend "s3" {}
}
