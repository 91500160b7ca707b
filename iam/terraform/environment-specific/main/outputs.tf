output "lambda_role_names" {
  description = "Names of the environment's lambda execution roles (the pipeline's IAM gate checks them)."
  value       = [for key in sort(keys(aws_iam_role.lambda)) : aws_iam_role.lambda[key].name]
}

output "lambda_role_arns" {
  description = "Role name suffix (api, worker) -> ARN of the lambda execution role."
  value       = { for key, role in aws_iam_role.lambda : key => role.arn }
}
