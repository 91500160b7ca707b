# The environment's lambda execution roles, named
# <project>-<environment>-lambda-<name> under the IAM path /<project>/lambda/.
# Each trusts lambda.amazonaws.com, has AWSLambdaBasicExecutionRole (CloudWatch
# Logs) and a small inline policy for what that function does. The CircleCI
# deployer may pass exactly the roles under that path (account root:
# iam:PassRole on role/<project>/lambda/*); the path, unlike a name prefix,
# cannot match a project whose name starts with this one's ("acme" vs "acme-api").

locals {
  prefix    = "${var.project}-${var.environment}"
  partition = data.aws_partition.current.partition

  # Role name suffix -> the inline policy statements of that role.
  lambda_roles = {
    api = [
      {
        sid       = "ReadApiConfig"
        actions   = ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"]
        resources = ["arn:${local.partition}:ssm:${var.region}:${var.account_id}:parameter/${var.project}/${var.environment}/api/*"]
      },
      {
        sid       = "EnqueueJobs"
        actions   = ["sqs:GetQueueUrl", "sqs:SendMessage"]
        resources = ["arn:${local.partition}:sqs:${var.region}:${var.account_id}:${local.prefix}-jobs"]
      },
    ]
    worker = [
      {
        sid       = "ReadWorkerConfig"
        actions   = ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"]
        resources = ["arn:${local.partition}:ssm:${var.region}:${var.account_id}:parameter/${var.project}/${var.environment}/worker/*"]
      },
      {
        sid = "ConsumeJobs"
        actions = [
          "sqs:ChangeMessageVisibility",
          "sqs:DeleteMessage",
          "sqs:GetQueueAttributes",
          "sqs:ReceiveMessage",
        ]
        resources = ["arn:${local.partition}:sqs:${var.region}:${var.account_id}:${local.prefix}-jobs"]
      },
    ]
  }
}

data "aws_partition" "current" {}

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    sid     = "LambdaAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  for_each = local.lambda_roles

  name               = "${local.prefix}-lambda-${each.key}"
  path               = "/${var.project}/lambda/"
  description        = "Execution role of the ${var.project} ${each.key} lambda in ${var.environment}."
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
}

resource "aws_iam_role_policy_attachment" "basic_execution" {
  for_each = aws_iam_role.lambda

  role       = each.value.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}

data "aws_iam_policy_document" "lambda_inline" {
  for_each = local.lambda_roles

  dynamic "statement" {
    for_each = each.value
    content {
      sid       = statement.value.sid
      effect    = "Allow"
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }
}

resource "aws_iam_role_policy" "lambda" {
  for_each = aws_iam_role.lambda

  name   = "${each.value.name}-inline"
  role   = each.value.name
  policy = data.aws_iam_policy_document.lambda_inline[each.key].json
}

# Each role owns its policies exclusively: a policy attached or put by hand is a planned change that the next
# apply takes away, and `inv iam.drift` reports it. Without these, Terraform would only note such a policy as
# "changed outside of Terraform" and plan nothing (AWS provider: aws_iam_role_policy_attachments_exclusive,
# aws_iam_role_policies_exclusive).
resource "aws_iam_role_policy_attachments_exclusive" "lambda" {
  for_each = aws_iam_role.lambda

  role_name   = each.value.name
  policy_arns = [aws_iam_role_policy_attachment.basic_execution[each.key].policy_arn]
}

resource "aws_iam_role_policies_exclusive" "lambda" {
  for_each = aws_iam_role.lambda

  role_name    = each.value.name
  policy_names = [aws_iam_role_policy.lambda[each.key].name]
}
