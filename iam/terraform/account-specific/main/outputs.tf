output "deployer_role_arn" {
  description = "ARN of the CircleCI deployer role (ci_deployer = oidc): put it in the CircleCI context as AWS_ROLE_ARN. Null for the user."
  value       = one(aws_iam_role.deployer[*].arn)
}

output "circleci_oidc_provider_arn" {
  description = "ARN of CircleCI's OIDC identity provider in this account (ci_deployer = oidc), else null."
  value       = one(aws_iam_openid_connect_provider.circleci[*].arn)
}

output "deployer_user_name" {
  description = "Name of the legacy CircleCI deployer IAM user (ci_deployer = user; create its access key by hand), else null."
  value       = one(aws_iam_user.deployer[*].name)
}

output "deployer_user_arn" {
  description = "ARN of the legacy CircleCI deployer IAM user (ci_deployer = user), else null."
  value       = one(aws_iam_user.deployer[*].arn)
}

output "deployer_policy_arn" {
  description = "ARN of the deployer's managed policy."
  value       = aws_iam_policy.deployer.arn
}

output "reader_role_arn" {
  description = "ARN of the read-only role of the preview and drift jobs (ci_deployer = oidc): put it in the CircleCI context as AWS_READER_ROLE_ARN. Null for the user."
  value       = one(aws_iam_role.reader[*].arn)
}
