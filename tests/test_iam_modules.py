"""The IAM root modules under iam/terraform, checked without an AWS provider.

Terraform cannot download providers here, so the real roots are checked with
`terraform fmt`, with a parse by `terraform init` (which reads every file before it looks
for providers), and by reading the policy documents: a small reader below extracts the
blocks of the .tf files, renders the ARNs with sample inputs and checks what the
policies grant, as a reviewer of the plan would.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ACCOUNT_ROOT = Path("iam/terraform/account-specific/main")
ENV_ROOT = Path("iam/terraform/environment-specific/main")
SAMPLE = {
    "var.project": "acme-api",
    "var.account_id": "123456789012",
    "var.region": "eu-west-1",
    "var.environment": "stg",
    "data.aws_partition.current.partition": "aws",
}
ENV_NAME_PATTERN = "^[a-z][a-z0-9-]*$"


# --- a small reader for the HCL used here ----------------------------------------------------


def _strip_comments(text: str) -> str:
    out, in_string, i = [], False, 0
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char == "#" or text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _body_at(text: str, open_brace: int) -> str:
    """The text between the brace at *open_brace* and its matching close (strings skipped)."""
    depth, in_string, i = 0, False, open_brace
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    raise AssertionError("unbalanced braces")


def blocks(text: str, header: str) -> list[str]:
    """Bodies of the blocks whose header matches the regex *header* (e.g. r'statement')."""
    found = []
    for match in re.finditer(rf"(?m)^\s*{header}\s*\{{", text):
        found.append(_body_at(text, match.end() - 1))
    return found


def only_block(text: str, header: str) -> str:
    found = blocks(text, header)
    assert len(found) == 1, f"expected one block {header!r}, found {len(found)}"
    return found[0]


def top_level(body: str) -> str:
    """*body* without its nested blocks, so attribute lookups do not see inner attributes."""
    out, depth, in_string = [], 0, False
    for i, char in enumerate(body):
        if in_string:
            if char == '"' and body[i - 1] != "\\":
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
            continue
        elif char == "}":
            depth -= 1
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


def attribute(body: str, name: str) -> str | None:
    """Raw expression of attribute *name* at the top level of *body* (lists may span lines)."""
    flat = top_level(body)
    match = re.search(rf"(?m)^\s*{name}\s*=\s*", flat)
    if match is None:
        return None
    rest = flat[match.end() :]
    if rest.startswith("["):
        return rest[: rest.index("]") + 1]
    return rest.splitlines()[0].strip()


def strings(expr: str, local_values: dict[str, str]) -> list[str]:
    """The string elements of a list or single expression: quoted strings and local.NAME."""
    items = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|local\.(\w+)', expr):
        items.append(match.group(1) if match.group(1) is not None else local_values[match.group(2)])
    return [render(item, local_values) for item in items]


def render(template: str, local_values: dict[str, str]) -> str:
    """Substitute ${var.*}, ${local.*} and the partition with the SAMPLE inputs."""

    def value(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref.startswith("local."):
            return render(local_values[ref.removeprefix("local.")], local_values)
        return SAMPLE.get(ref, match.group(0))

    return re.sub(r"\$\{([\w.]+)\}", value, template)


def locals_of(text: str) -> dict[str, str]:
    """The string-valued locals (name = "template") of a module."""
    values = {}
    for body in blocks(text, "locals"):
        for match in re.finditer(r'(?m)^\s*(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$', top_level(body)):
            values[match.group(1)] = match.group(2)
        for match in re.finditer(r"(?m)^\s*(\w+)\s*=\s*(data\.[\w.]+|var\.\w+)\s*$", top_level(body)):
            values[match.group(1)] = "${" + match.group(2) + "}"
    return values


def module_text(repo_root: Path, root: Path) -> str:
    return "\n".join(_strip_comments(p.read_text()) for p in sorted((repo_root / root).glob("*.tf")))


def policy_statements(text: str, name: str) -> list[dict]:
    local_values = locals_of(text)
    document = only_block(text, rf'data\s+"aws_iam_policy_document"\s+"{name}"')
    statements = []
    for body in blocks(document, "statement"):
        conditions = [
            {
                "test": strings(attribute(c, "test"), local_values)[0],
                "variable": strings(attribute(c, "variable"), local_values)[0],
                "values": strings(attribute(c, "values"), local_values),
            }
            for c in blocks(body, "condition")
        ]
        principals = [
            {
                "type": strings(attribute(p, "type"), local_values)[0],
                "identifiers": strings(attribute(p, "identifiers"), local_values),
            }
            for p in blocks(body, "principals")
        ]
        effect = attribute(body, "effect")
        statements.append(
            {
                "sid": strings(attribute(body, "sid") or '""', local_values)[0],
                "effect": strings(effect, local_values)[0] if effect else "Allow",
                "actions": strings(attribute(body, "actions"), local_values),
                "resources": strings(attribute(body, "resources") or "[]", local_values),
                "conditions": conditions,
                "principals": principals,
            }
        )
    assert statements, f"no statements in aws_iam_policy_document.{name}"
    return statements


def granting(statements: list[dict], action: str) -> list[dict]:
    """Allow statements whose actions match *action* (wildcards in the statement count)."""
    return [
        s
        for s in statements
        if s["effect"] == "Allow" and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in s["actions"])
    ]


@pytest.fixture(scope="module")
def account_tf(repo_root: Path) -> str:
    return module_text(repo_root, ACCOUNT_ROOT)


@pytest.fixture(scope="module")
def env_tf(repo_root: Path) -> str:
    return module_text(repo_root, ENV_ROOT)


@pytest.fixture(scope="module")
def deployer(account_tf: str) -> list[dict]:
    return policy_statements(account_tf, "deployer")


def lambda_role_names(env_tf: str) -> list[str]:
    """Role names the environment root creates, rendered with SAMPLE."""
    local_values = locals_of(env_tf)
    role = only_block(env_tf, r'resource\s+"aws_iam_role"\s+"lambda"')
    assert attribute(role, "for_each") == "local.lambda_roles"
    keys = re.findall(r"(?m)^    (\w+)\s*=\s*\[", only_block(env_tf, "locals"))
    assert keys, "no roles in local.lambda_roles"
    name = strings(attribute(role, "name"), local_values)[0]
    return sorted(name.replace("${each.key}", key) for key in keys)


# --- formatting and parsing --------------------------------------------------------------------


def test_terraform_fmt_is_clean(repo_root: Path, terraform_bin: Path, aws_env: dict[str, str]):
    for path in ("iam", "tests/fixtures/roots"):
        result = subprocess.run(
            [str(terraform_bin), "fmt", "-check", "-recursive", "-diff", path],
            cwd=repo_root,
            env=aws_env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"terraform fmt -recursive {path} would change:\n{result.stdout}"


@pytest.mark.parametrize("root", [ACCOUNT_ROOT, ENV_ROOT], ids=["account", "environment"])
def test_real_roots_parse(root: Path, repo_root: Path, terraform_bin: Path, aws_env, tmp_path: Path):
    """init reads every file before it looks for providers: get that far, offline."""
    work = tmp_path / "root"
    shutil.copytree(repo_root / root, work)
    (tmp_path / "no-plugins").mkdir()
    result = subprocess.run(
        [
            str(terraform_bin),
            "init",
            "-no-color",
            "-input=false",
            "-backend=false",
            f"-plugin-dir={tmp_path / 'no-plugins'}",
        ],
        cwd=work,
        env=aws_env,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert "Initializing provider plugins" in output, output
    assert 'Finding hashicorp/aws versions matching "~> 5.0"' in output, output
    errors = re.findall(r"Error: (.+)", output)
    assert set(errors) <= {"Failed to query available provider packages"}, output


@pytest.mark.parametrize("root", ["account", "environment"])
def test_fixture_roots_validate(root: str, repo_root: Path, terraform_bin: Path, aws_env, tmp_path: Path):
    work = tmp_path / root
    shutil.copytree(repo_root / "tests/fixtures/roots" / root, work)
    for command in (["init", "-backend=false", "-input=false"], ["validate"]):
        result = subprocess.run(
            [str(terraform_bin), *command, "-no-color"], cwd=work, env=aws_env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("root", [ACCOUNT_ROOT, ENV_ROOT], ids=["account", "environment"])
def test_versions_are_pinned_and_backend_is_partial_s3(root: Path, repo_root: Path):
    text = module_text(repo_root, root)
    settings = only_block(text, "terraform")
    assert attribute(settings, "required_version") == '"~> 1.0"'
    aws = re.search(r"aws\s*=\s*\{([^}]*)\}", only_block(settings, "required_providers"))
    assert aws and 'source  = "hashicorp/aws"' in aws.group(1) and 'version = "~> 5.0"' in aws.group(1)
    assert only_block(settings, r'backend\s+"s3"').strip() == "", "backend settings come from deploy-app.sh at init"
    provider = only_block(text, r'provider\s+"aws"')
    assert attribute(provider, "allowed_account_ids") == "[var.account_id]"


# --- the account root: the CircleCI deployer ----------------------------------------------------


def test_deployer_user_is_named_after_the_project(account_tf: str):
    local_values = locals_of(account_tf)
    user = only_block(account_tf, r'resource\s+"aws_iam_user"\s+"deployer"')
    assert strings(attribute(user, "name"), local_values) == ["acme-api-circleci-deployer"]
    attachment = only_block(account_tf, r'resource\s+"aws_iam_user_policy_attachment"\s+"deployer"')
    assert attribute(attachment, "user") == "aws_iam_user.deployer.name"
    assert attribute(attachment, "policy_arn") == "aws_iam_policy.deployer.arn"
    policy = only_block(account_tf, r'resource\s+"aws_iam_policy"\s+"deployer"')
    assert attribute(policy, "policy") == "data.aws_iam_policy_document.deployer.json"


def test_no_access_key_in_terraform_state(account_tf: str):
    assert "aws_iam_access_key" not in account_tf, "a Terraform-made access key would sit in the state in clear text"


def test_pass_role_is_limited_to_the_projects_lambda_roles(deployer: list[dict]):
    statements = granting(deployer, "iam:PassRole")
    assert len(statements) == 1
    (statement,) = statements
    assert statement["resources"] == ["arn:aws:iam::123456789012:role/acme-api-*-lambda-*"]
    assert statement["conditions"] == [
        {"test": "StringEquals", "variable": "iam:PassedToService", "values": ["lambda.amazonaws.com"]}
    ]


def test_gate_can_read_the_lambda_roles_and_nothing_more_of_iam(deployer: list[dict]):
    (statement,) = granting(deployer, "iam:GetRole")
    assert statement["resources"] == ["arn:aws:iam::123456789012:role/acme-api-*-lambda-*"]
    for action in (
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:AttachRolePolicy",
        "iam:CreateAccessKey",
        "iam:CreateUser",
    ):
        assert granting(deployer, action) == [], f"the deployer must not have {action}"


def test_gate_can_read_the_applied_records(deployer: list[dict]):
    for action in ("ssm:GetParameter", "ssm:GetParameters"):
        (statement,) = granting(deployer, action)
        assert statement["resources"] == ["arn:aws:ssm:*:123456789012:parameter/acme-api/iam/*"]
    assert granting(deployer, "ssm:PutParameter") == [], "only administrators write applied records"


def test_deploy_actions_are_granted_on_project_resources(deployer: list[dict]):
    expected = {
        "lambda:UpdateFunctionCode": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api-*",
        "lambda:PublishVersion": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api-*",
        "lambda:UpdateAlias": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api-*",
        "cloudformation:UpdateStack": "arn:aws:cloudformation:eu-west-1:123456789012:stack/acme-api-*/*",
        "s3:PutObject": "arn:aws:s3:::acme-api-*-deploy*/*",
        "s3:ListBucket": "arn:aws:s3:::acme-api-*-deploy*",
        "logs:CreateLogGroup": "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/acme-api-*",
    }
    for action, resource in expected.items():
        statements = granting(deployer, action)
        assert statements, f"{action} is not granted"
        assert resource in statements[0]["resources"], f"{action}: {statements[0]['resources']}"


def test_no_wildcard_actions_and_star_resources_only_where_aws_requires(deployer: list[dict]):
    for statement in deployer:
        for action in statement["actions"]:
            assert "*" not in action, f"{statement['sid']}: wildcard action {action}"
        if "*" in statement["resources"]:
            assert set(statement["actions"]) <= {"cloudformation:ValidateTemplate", "logs:DescribeLogGroups"}, statement
        for resource in statement["resources"]:
            assert resource == "*" or "123456789012" in resource or resource.startswith("arn:aws:s3:::acme-api-")


def test_account_outputs(account_tf: str):
    outputs = set(re.findall(r'(?m)^output\s+"(\w+)"', account_tf))
    assert {"deployer_user_name", "deployer_user_arn", "deployer_policy_arn"} <= outputs


# --- the environment root: lambda execution roles ---------------------------------------------


def test_environment_roles_trust_lambda_only(env_tf: str):
    (statement,) = policy_statements(env_tf, "lambda_trust")
    assert statement["actions"] == ["sts:AssumeRole"]
    assert statement["principals"] == [{"type": "Service", "identifiers": ["lambda.amazonaws.com"]}]
    role = only_block(env_tf, r'resource\s+"aws_iam_role"\s+"lambda"')
    assert attribute(role, "assume_role_policy") == "data.aws_iam_policy_document.lambda_trust.json"


def test_environment_roles_are_named_after_the_environment(env_tf: str):
    assert lambda_role_names(env_tf) == ["acme-api-stg-lambda-api", "acme-api-stg-lambda-worker"]


def test_deployer_may_pass_exactly_the_environment_roles(deployer: list[dict], env_tf: str):
    (pass_role,) = granting(deployer, "iam:PassRole")
    (pattern,) = pass_role["resources"]
    for name in lambda_role_names(env_tf):
        assert fnmatch.fnmatchcase(f"arn:aws:iam::123456789012:role/{name}", pattern), name
    for other in ("other-stg-lambda-api", "acme-api-stg-admin", "acme-api-circleci-deployer"):
        assert not fnmatch.fnmatchcase(f"arn:aws:iam::123456789012:role/{other}", pattern), other


def test_roles_get_basic_execution_and_an_inline_policy(env_tf: str):
    attachment = only_block(env_tf, r'resource\s+"aws_iam_role_policy_attachment"\s+"basic_execution"')
    assert attribute(attachment, "for_each") == "aws_iam_role.lambda"
    assert strings(attribute(attachment, "policy_arn"), locals_of(env_tf)) == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    ]
    inline = only_block(env_tf, r'resource\s+"aws_iam_role_policy"\s+"lambda"')
    assert attribute(inline, "for_each") == "aws_iam_role.lambda"
    assert "data.aws_iam_policy_document.lambda_inline" in attribute(inline, "policy")


def test_environment_name_is_validated_like_the_entry_point(env_tf: str, repo_root: Path):
    variable = only_block(env_tf, r'variable\s+"environment"')
    assert f'regex("{ENV_NAME_PATTERN}", var.environment)' in only_block(variable, "validation")
    entry = (repo_root / "iam/terraform/environment-specific/bin/deploy-app.sh").read_text()
    assert f"=~ {ENV_NAME_PATTERN} ]]" in entry


def test_environment_outputs_lambda_role_names(env_tf: str):
    output = only_block(env_tf, r'output\s+"lambda_role_names"')
    assert "aws_iam_role.lambda" in attribute(output, "value")


# --- the fixture roots stand in for the real ones --------------------------------------------------


def declared(kind: str, text: str) -> set[str]:
    """Names of the top-level *kind* blocks (variable, output) of a module."""
    return set(re.findall(rf'(?m)^{kind}\s+"(\w+)"', text))


@pytest.mark.parametrize(
    ("real", "fixture"), [(ACCOUNT_ROOT, "account"), (ENV_ROOT, "environment")], ids=["account", "environment"]
)
def test_fixture_roots_have_the_real_roots_inputs_and_outputs(real: Path, fixture: str, repo_root: Path):
    real_text = module_text(repo_root, real)
    fixture_text = module_text(repo_root, Path("tests/fixtures/roots") / fixture)
    assert declared("variable", fixture_text) == declared("variable", real_text) - {"endpoint_url"}
    assert declared("output", fixture_text) <= declared("output", real_text)
    assert declared("output", fixture_text)
