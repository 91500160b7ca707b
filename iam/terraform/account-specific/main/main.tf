# The CircleCI deployer: one IAM user and the least privilege an automated
# deploy of the project's lambdas needs. Its access key is NOT managed here
# (a key created by Terraform would sit in the state in clear text): an
# administrator creates it once with
#   aws iam create-access-key --user-name <deployer_user_name>
# and stores it in the CircleCI context.

locals {
  deployer_name = "${var.project}-circleci-deployer"

  lambda_function_arn = "arn:${data.aws_partition.current.partition}:lambda:${var.region}:${var.account_id}:function:${var.project}-*"
  lambda_role_arn     = "arn:${data.aws_partition.current.partition}:iam::${var.account_id}:role/${var.project}-*-lambda-*"
  stack_arn           = "arn:${data.aws_partition.current.partition}:cloudformation:${var.region}:${var.account_id}:stack/${var.project}-*/*"
  deploy_bucket_arn   = "arn:${data.aws_partition.current.partition}:s3:::${var.project}-*-deploy*"
  log_group_arn       = "arn:${data.aws_partition.current.partition}:logs:${var.region}:${var.account_id}:log-group:/aws/lambda/${var.project}-*"
  iam_parameter_arn   = "arn:${data.aws_partition.current.partition}:ssm:*:${var.account_id}:parameter/${var.project}/iam/*"
}

data "aws_partition" "current" {}

resource "aws_iam_user" "deployer" {
  name = local.deployer_name
}

data "aws_iam_policy_document" "deployer" {
  statement {
    sid    = "LambdaDeploy"
    effect = "Allow"
    actions = [
      "lambda:AddPermission",
      "lambda:CreateAlias",
      "lambda:CreateFunction",
      "lambda:GetAlias",
      "lambda:GetFunction",
      "lambda:GetFunctionConfiguration",
      "lambda:ListAliases",
      "lambda:ListTags",
      "lambda:ListVersionsByFunction",
      "lambda:PublishVersion",
      "lambda:RemovePermission",
      "lambda:TagResource",
      "lambda:UntagResource",
      "lambda:UpdateAlias",
      "lambda:UpdateFunctionCode",
      "lambda:UpdateFunctionConfiguration",
    ]
    resources = [
      local.lambda_function_arn,
      "${local.lambda_function_arn}:*",
    ]
  }

  # Serverless-style deploys go through one CloudFormation stack per service.
  statement {
    sid    = "CloudFormationStacks"
    effect = "Allow"
    actions = [
      "cloudformation:CreateChangeSet",
      "cloudformation:CreateStack",
      "cloudformation:DeleteChangeSet",
      "cloudformation:DescribeChangeSet",
      "cloudformation:DescribeStackEvents",
      "cloudformation:DescribeStackResource",
      "cloudformation:DescribeStackResources",
      "cloudformation:DescribeStacks",
      "cloudformation:ExecuteChangeSet",
      "cloudformation:GetTemplate",
      "cloudformation:ListStackResources",
      "cloudformation:UpdateStack",
    ]
    resources = [local.stack_arn]
  }

  # ValidateTemplate supports no resource-level permissions.
  statement {
    sid       = "CloudFormationValidate"
    effect    = "Allow"
    actions   = ["cloudformation:ValidateTemplate"]
    resources = ["*"]
  }

  statement {
    sid    = "DeploymentArtifactBuckets"
    effect = "Allow"
    actions = [
      "s3:CreateBucket",
      "s3:GetBucketLocation",
      "s3:GetBucketPolicy",
      "s3:GetEncryptionConfiguration",
      "s3:ListBucket",
      "s3:ListBucketVersions",
      "s3:PutBucketPolicy",
      "s3:PutBucketPublicAccessBlock",
      "s3:PutBucketTagging",
      "s3:PutBucketVersioning",
      "s3:PutEncryptionConfiguration",
    ]
    resources = [local.deploy_bucket_arn]
  }

  statement {
    sid    = "DeploymentArtifacts"
    effect = "Allow"
    actions = [
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${local.deploy_bucket_arn}/*"]
  }

  statement {
    sid    = "LambdaLogGroups"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:DeleteRetentionPolicy",
      "logs:PutRetentionPolicy",
      "logs:TagResource",
    ]
    resources = [local.log_group_arn, "${local.log_group_arn}:*"]
  }

  # DescribeLogGroups supports no resource-level permissions.
  statement {
    sid       = "DescribeLogGroups"
    effect    = "Allow"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["*"]
  }

  # Functions may only be given the project's own lambda execution roles.
  statement {
    sid       = "PassLambdaRoles"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [local.lambda_role_arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["lambda.amazonaws.com"]
    }
  }

  # The pipeline's IAM gate checks that the roles exist and trust lambda.
  statement {
    sid       = "ReadLambdaRoles"
    effect    = "Allow"
    actions   = ["iam:GetRole"]
    resources = [local.lambda_role_arn]
  }

  # The gate reads the applied-IAM records under /<project>/iam/.
  statement {
    sid    = "ReadIamRecords"
    effect = "Allow"
    actions = [
      "ssm:GetParameter",
      "ssm:GetParameters",
    ]
    resources = [local.iam_parameter_arn]
  }
}

resource "aws_iam_policy" "deployer" {
  name        = local.deployer_name
  description = "What the CircleCI pipeline needs to deploy the ${var.project} lambdas."
  policy      = data.aws_iam_policy_document.deployer.json
}

resource "aws_iam_user_policy_attachment" "deployer" {
  user       = aws_iam_user.deployer.name
  policy_arn = aws_iam_policy.deployer.arn
}
