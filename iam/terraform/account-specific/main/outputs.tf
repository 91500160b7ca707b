output "deployer_user_name" {
  description = "Name of the CircleCI deployer IAM user (create its access key by hand)."
  value       = aws_iam_user.deployer.name
}

output "deployer_user_arn" {
  description = "ARN of the CircleCI deployer IAM user."
  value       = aws_iam_user.deployer.arn
}

output "deployer_policy_arn" {
  description = "ARN of the deployer's managed policy."
  value       = aws_iam_policy.deployer.arn
}
