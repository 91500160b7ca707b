# The CircleCI deployer and the least privilege an automated deploy of the
# project's lambdas needs. Two ways in, chosen by var.ci_deployer
# (config/environments.yml: circleci.deployer):
#
#   oidc  a role that CircleCI jobs assume with their OpenID Connect token
#         (CIRCLE_OIDC_TOKEN_V2), trusted only for this CircleCI project and
#         the branches deployed into this account. No long-lived key exists.
#         https://circleci.com/docs/openid-connect-tokens/
#   user  (legacy) an IAM user. Its access key is NOT managed here (a key
#         created by Terraform would sit in the state in clear text): an
#         administrator creates it once with
#           aws iam create-access-key --user-name <deployer_user_name>
#         and stores it in the CircleCI context.
#
# Names the deployer may touch are delimited so that no other project can
# match them, whatever its name: paths where AWS has them (IAM roles under
# /<project>/lambda/, SSM parameters under /<project>/iam/), and "<project>--"
# where names are flat (functions, stacks, log groups, buckets). A project name
# has no "--" and does not end in "-" (variables.tf), so "acme--*" cannot
# match "acme-api--stg".

locals {
  deployer_name = "${var.project}-circleci-deployer"
  partition     = data.aws_partition.current.partition
  # The flat-name prefix of everything the project deploys: "<project>--".
  name_prefix = "${var.project}--"

  lambda_function_arn = "arn:${local.partition}:lambda:${var.region}:${var.account_id}:function:${local.name_prefix}*"
  lambda_role_arn     = "arn:${local.partition}:iam::${var.account_id}:role/${var.project}/lambda/*"
  stack_arn           = "arn:${local.partition}:cloudformation:${var.region}:${var.account_id}:stack/${local.name_prefix}*/*"
  deploy_bucket_arn   = "arn:${local.partition}:s3:::${local.name_prefix}*-deploy*"
  log_group_arn       = "arn:${local.partition}:logs:${var.region}:${var.account_id}:log-group:/aws/lambda/${local.name_prefix}*"
  iam_parameter_arn   = "arn:${local.partition}:ssm:*:${var.account_id}:parameter/${var.project}/iam/*"

  use_oidc = var.ci_deployer == "oidc"
  use_user = var.ci_deployer == "user"

  # CircleCI's issuer, without the scheme: also the prefix of the IAM condition keys.
  circleci_issuer = "oidc.circleci.com/org/${var.circleci_org_id}"
  # The sub claim of CIRCLE_OIDC_TOKEN_V2 is
  #   org/<org-id>/project/<project-id>/user/<user-id>/vcs-origin/<origin>/vcs-ref/<ref>
  # IAM can test only aud and sub of this issuer (CircleCI's other claims,
  # oidc.circleci.com/project-id, vcs-ref, context-ids, ssh-rerun, are not IAM
  # condition keys), so project, repository and branch are all pinned in sub.
  # The user ID is a UUID: 36 "?" match exactly one, so no "*" is left that
  # a crafted branch name (".../vcs-ref/refs/heads/staging") could stretch over.
  circleci_user_id_pattern = "????????-????-????-????-????????????"
  circleci_subjects = [
    for branch in var.deploy_branches :
    "org/${var.circleci_org_id}/project/${var.circleci_project_id}/user/${local.circleci_user_id_pattern}/vcs-origin/${var.circleci_vcs_origin}/vcs-ref/refs/heads/${branch}"
  ]
  # The read-only role: any branch of this project (pull requests' previews, the nightly drift check). The
  # wildcard is the last part of sub, so it cannot stretch over the organization, project or repository.
  circleci_any_branch = "org/${var.circleci_org_id}/project/${var.circleci_project_id}/user/${local.circleci_user_id_pattern}/vcs-origin/${var.circleci_vcs_origin}/vcs-ref/refs/heads/*"

  # Terraform 1.0 cannot check one variable against another in a validation
  # block: an OIDC deployer without its CircleCI IDs stops the plan here.
  oidc_inputs_missing = [
    for name, value in {
      circleci_org_id     = var.circleci_org_id
      circleci_project_id = var.circleci_project_id
      circleci_vcs_origin = var.circleci_vcs_origin
    } : name if value == ""
  ]
  oidc_ready = !local.use_oidc || (length(local.oidc_inputs_missing) == 0 && length(var.deploy_branches) > 0) ? true : tobool(
    "ci_deployer = \"oidc\" needs circleci_org_id, circleci_project_id, circleci_vcs_origin and deploy_branches; missing: ${join(", ", concat(local.oidc_inputs_missing, length(var.deploy_branches) == 0 ? ["deploy_branches"] : []))}"
  )
}

data "aws_partition" "current" {}

# --- oidc: CircleCI's identity provider and the deployer role ---------------------------------

# No thumbprint_list: IAM checks the issuer's TLS certificate against its own library of trusted
# root CAs, and when the list is left out at creation it takes the thumbprint it needs itself
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_providers_create_oidc_verify-thumbprint.html).
# The hashicorp/tls data source that used to fetch the issuer's certificate at every plan made a
# plan fail offline or behind a proxy; the CreateOpenIDConnectProvider API no longer needs it
# (https://github.com/aws/aws-sdk/issues/563), nor does the AWS provider (versions.tf).
resource "aws_iam_openid_connect_provider" "circleci" {
  count = local.use_oidc && local.oidc_ready ? 1 : 0

  url = "https://${local.circleci_issuer}"
  # CircleCI's default tokens have a fixed audience: the organization ID.
  client_id_list = [var.circleci_org_id]
}

data "aws_iam_policy_document" "deployer_trust" {
  statement {
    sid     = "CircleCIProjectBranches"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = ["arn:${local.partition}:iam::${var.account_id}:oidc-provider/${local.circleci_issuer}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.circleci_issuer}:aud"
      values   = [var.circleci_org_id]
    }

    condition {
      test     = "StringLike"
      variable = "${local.circleci_issuer}:sub"
      values   = local.circleci_subjects
    }
  }
}

resource "aws_iam_role" "deployer" {
  count = local.use_oidc ? 1 : 0

  name                 = local.deployer_name
  path                 = "/${var.project}/ci/"
  description          = "Assumed by the ${var.project} CircleCI deploy jobs with their OIDC token."
  assume_role_policy   = data.aws_iam_policy_document.deployer_trust.json
  max_session_duration = 3600

  depends_on = [aws_iam_openid_connect_provider.circleci]
}

resource "aws_iam_role_policy_attachment" "deployer" {
  count = local.use_oidc ? 1 : 0

  role       = aws_iam_role.deployer[0].name
  policy_arn = aws_iam_policy.deployer.arn
}

# The role owns its policies exclusively: one attached or put by hand is a planned change that the next apply
# takes away, and `inv iam.drift` reports it (environment root: the same for the lambda roles).
resource "aws_iam_role_policy_attachments_exclusive" "deployer" {
  count = local.use_oidc ? 1 : 0

  role_name   = aws_iam_role.deployer[0].name
  policy_arns = [aws_iam_role_policy_attachment.deployer[0].policy_arn]
}

resource "aws_iam_role_policies_exclusive" "deployer" {
  count = local.use_oidc ? 1 : 0

  role_name    = aws_iam_role.deployer[0].name
  policy_names = []
}

# --- oidc: the read-only role of `inv iam.plan` (pull requests) and `inv iam.drift` (nightly) ------------------

data "aws_iam_policy_document" "reader_trust" {
  statement {
    sid     = "CircleCIProjectAnyBranch"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = ["arn:${local.partition}:iam::${var.account_id}:oidc-provider/${local.circleci_issuer}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.circleci_issuer}:aud"
      values   = [var.circleci_org_id]
    }

    condition {
      test     = "StringLike"
      variable = "${local.circleci_issuer}:sub"
      values   = [local.circleci_any_branch]
    }
  }
}

# What a Terraform plan of this project's IAM roots reads, and nothing it could change: the project's roles,
# policies, OIDC provider and legacy user; the states and their digests; the applied records.
data "aws_iam_policy_document" "reader" {
  statement {
    sid    = "ReadProjectIam"
    effect = "Allow"
    actions = [
      "iam:GetOpenIDConnectProvider",
      "iam:GetPolicy",
      "iam:GetPolicyVersion",
      "iam:GetRole",
      "iam:GetRolePolicy",
      "iam:GetUser",
      "iam:GetUserPolicy",
      "iam:ListAttachedRolePolicies",
      "iam:ListAttachedUserPolicies",
      "iam:ListPolicyVersions",
      "iam:ListRolePolicies",
      "iam:ListUserPolicies",
    ]
    resources = [
      "arn:${local.partition}:iam::${var.account_id}:role/${var.project}/*",
      "arn:${local.partition}:iam::${var.account_id}:policy/${var.project}-*",
      "arn:${local.partition}:iam::${var.account_id}:user/${var.project}-*",
      "arn:${local.partition}:iam::${var.account_id}:oidc-provider/${local.circleci_issuer}",
    ]
  }

  statement {
    sid       = "ReadStates"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${var.state_bucket}", "arn:${local.partition}:s3:::${var.state_bucket}/*"]
  }

  dynamic "statement" {
    for_each = var.lock_table == "" ? [] : [var.lock_table]
    content {
      sid       = "ReadStateDigests"
      effect    = "Allow"
      actions   = ["dynamodb:GetItem", "dynamodb:DescribeTable"]
      resources = ["arn:${local.partition}:dynamodb:${var.region}:${var.account_id}:table/${statement.value}"]
    }
  }

  statement {
    sid       = "ReadIamRecords"
    effect    = "Allow"
    actions   = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = [local.iam_parameter_arn]
  }
}

resource "aws_iam_role" "reader" {
  count = local.use_oidc && var.state_bucket != "" ? 1 : 0

  name                 = "${var.project}-circleci-iam-reader"
  path                 = "/${var.project}/ci/"
  description          = "Assumed by the ${var.project} CircleCI preview and drift jobs with their OIDC token: reads, never writes."
  assume_role_policy   = data.aws_iam_policy_document.reader_trust.json
  max_session_duration = 3600

  depends_on = [aws_iam_openid_connect_provider.circleci]
}

resource "aws_iam_role_policy" "reader" {
  count = length(aws_iam_role.reader)

  name   = "${var.project}-circleci-iam-reader"
  role   = aws_iam_role.reader[0].name
  policy = data.aws_iam_policy_document.reader.json
}

resource "aws_iam_role_policy_attachments_exclusive" "reader" {
  count = length(aws_iam_role.reader)

  role_name   = aws_iam_role.reader[0].name
  policy_arns = []
}

resource "aws_iam_role_policies_exclusive" "reader" {
  count = length(aws_iam_role.reader)

  role_name    = aws_iam_role.reader[0].name
  policy_names = [aws_iam_role_policy.reader[0].name]
}

# --- user (legacy): an IAM user whose key an administrator makes by hand -----------------------

resource "aws_iam_user" "deployer" {
  #checkov:skip=CKV_AWS_273: legacy path for teams that cannot use CircleCI OIDC yet (ci_deployer = "user"); not created with ci_deployer = "oidc", and CircleCI jobs cannot use SSO
  count = local.use_user ? 1 : 0

  name = local.deployer_name
}

resource "aws_iam_user_policy_attachment" "deployer" {
  #checkov:skip=CKV_AWS_40: legacy path only (ci_deployer = "user"); one machine user with one policy, a group around it would add a resource and take no right away; ci_deployer = "oidc" attaches the policy to a role
  count = local.use_user ? 1 : 0

  user       = aws_iam_user.deployer[0].name
  policy_arn = aws_iam_policy.deployer.arn
}

resource "aws_iam_user_policy_attachments_exclusive" "deployer" {
  count = local.use_user ? 1 : 0

  user_name   = aws_iam_user.deployer[0].name
  policy_arns = [aws_iam_user_policy_attachment.deployer[0].policy_arn]
}

resource "aws_iam_user_policies_exclusive" "deployer" {
  count = local.use_user ? 1 : 0

  user_name    = aws_iam_user.deployer[0].name
  policy_names = []
}

# --- what the deployer may do, either way ------------------------------------------------------

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

  # No s3:PutBucketPolicy, s3:PutBucketPublicAccessBlock, s3:PutBucketAcl or
  # s3:PutObjectAcl: the deployer cannot make a bucket or an object public.
  # New buckets block public access by default; a bucket policy the deploy
  # wants (e.g. deny plain HTTP) is set by an administrator.
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
