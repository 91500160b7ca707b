terraform {
  required_version = "~> 1.0"

  required_providers {
    # 5.81.0 made thumbprint_list of aws_iam_openid_connect_provider optional (main.tf: no thumbprint_list).
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.81"
    }
  }

  # Partial configuration: bucket, key, region, dynamodb_table and encrypt are
  # passed at init by ../../bin/deploy-app.sh from TF_STATE_BUCKET, TF_STATE_KEY,
  # AWS_REGION and TF_LOCK_TABLE.
  backend "s3" {}
}
