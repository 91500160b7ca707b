"""The IAM root modules under iam/terraform, checked without an AWS provider.

Terraform cannot download providers here, so the real roots are checked with
`terraform fmt`, with a parse by `terraform init` (which reads every file before it looks
for providers), and by reading the policy documents: a small reader below extracts the
blocks of the .tf files, renders the ARNs with sample inputs and checks what the
policies grant, as a reviewer of the plan would.
"""

from __future__ import annotations

import fnmatch
import json
import os
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


def policy_statements(text: str, name: str, local_values: dict[str, str] | None = None) -> list[dict]:
    """The statements of ``data "aws_iam_policy_document" "<name>"``, rendered with SAMPLE, or with
    *local_values* (e.g. the locals as Terraform evaluated them, see :func:`evaluate_locals`)."""
    local_values = locals_of(text) if local_values is None else local_values
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


def iam_like(pattern: str, value: str) -> bool:
    """IAM's wildcard match (StringLike, ARN patterns): * any run of characters, / included, and
    ? exactly one; case-sensitive; nothing else is special.
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
    """
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


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


def lambda_role_arns(env_tf: str) -> list[str]:
    """ARNs of the roles the environment root creates (path included), rendered with SAMPLE."""
    role = only_block(env_tf, r'resource\s+"aws_iam_role"\s+"lambda"')
    (path,) = strings(attribute(role, "path"), locals_of(env_tf))
    return [f"arn:aws:iam::123456789012:role{path}{name}" for name in lambda_role_names(env_tf)]


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
    assert 'Finding hashicorp/aws versions matching "~> 5.81"' in output, output
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
    assert aws and 'source  = "hashicorp/aws"' in aws.group(1) and 'version = "~> 5.81"' in aws.group(1)
    assert only_block(settings, r'backend\s+"s3"').strip() == "", "backend settings come from deploy-app.sh at init"
    provider = only_block(text, r'provider\s+"aws"')
    assert attribute(provider, "allowed_account_ids") == "[var.account_id]"


# --- the account root: the CircleCI deployer ----------------------------------------------------


def test_deployer_user_is_named_after_the_project_and_only_made_for_the_legacy_path(account_tf: str):
    local_values = locals_of(account_tf)
    user = only_block(account_tf, r'resource\s+"aws_iam_user"\s+"deployer"')
    assert strings(attribute(user, "name"), local_values) == ["acme-api-circleci-deployer"]
    assert attribute(user, "count") == "local.use_user ? 1 : 0"
    attachment = only_block(account_tf, r'resource\s+"aws_iam_user_policy_attachment"\s+"deployer"')
    assert attribute(attachment, "count") == "local.use_user ? 1 : 0"
    assert attribute(attachment, "user") == "aws_iam_user.deployer[0].name"
    assert attribute(attachment, "policy_arn") == "aws_iam_policy.deployer.arn"
    policy = only_block(account_tf, r'resource\s+"aws_iam_policy"\s+"deployer"')
    assert attribute(policy, "policy") == "data.aws_iam_policy_document.deployer.json"


def test_no_access_key_in_terraform_state(account_tf: str):
    assert "aws_iam_access_key" not in account_tf, "a Terraform-made access key would sit in the state in clear text"


def test_pass_role_is_limited_to_the_projects_lambda_roles(deployer: list[dict]):
    statements = granting(deployer, "iam:PassRole")
    assert len(statements) == 1
    (statement,) = statements
    assert statement["resources"] == ["arn:aws:iam::123456789012:role/acme-api/lambda/*"]
    assert statement["conditions"] == [
        {"test": "StringEquals", "variable": "iam:PassedToService", "values": ["lambda.amazonaws.com"]}
    ]


def test_gate_can_read_the_lambda_roles_and_nothing_more_of_iam(deployer: list[dict]):
    (statement,) = granting(deployer, "iam:GetRole")
    assert statement["resources"] == ["arn:aws:iam::123456789012:role/acme-api/lambda/*"]
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
        "lambda:UpdateFunctionCode": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api--*",
        "lambda:PublishVersion": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api--*",
        "lambda:UpdateAlias": "arn:aws:lambda:eu-west-1:123456789012:function:acme-api--*",
        "cloudformation:UpdateStack": "arn:aws:cloudformation:eu-west-1:123456789012:stack/acme-api--*/*",
        "s3:PutObject": "arn:aws:s3:::acme-api--*-deploy*/*",
        "s3:ListBucket": "arn:aws:s3:::acme-api--*-deploy*",
        "logs:CreateLogGroup": "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/acme-api--*",
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
    assert {"deployer_role_arn", "circleci_oidc_provider_arn", "deployer_user_name", "deployer_user_arn",
            "deployer_policy_arn"} <= outputs


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
    arns = lambda_role_arns(env_tf)
    assert arns == ["arn:aws:iam::123456789012:role/acme-api/lambda/acme-api-stg-lambda-api",
                    "arn:aws:iam::123456789012:role/acme-api/lambda/acme-api-stg-lambda-worker"]
    for arn in arns:
        assert iam_like(pattern, arn), arn
    for other in ("other-stg-lambda-api", "acme-api-stg-admin", "acme-api-circleci-deployer",
                  "acme-api/ci/acme-api-circleci-deployer", "acme-api-admin/lambda/acme-api-admin-stg-lambda-api"):
        assert not iam_like(pattern, f"arn:aws:iam::123456789012:role/{other}"), other


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


# --- the account root's locals, evaluated by the real Terraform ---------------------------------

OIDC_INPUTS = {
    "project": "acme-api",
    "account_id": "123456789012",
    "region": "eu-west-1",
    "ci_deployer": "oidc",
    "circleci_org_id": "8a6b3c1e-0f2d-4b5a-9c7e-1d2f3a4b5c6d",
    "circleci_project_id": "5e4d3c2b-1a09-4f8e-a7d6-c5b4a3928170",
    "circleci_vcs_origin": "github.com/acme/acme-api",
    "deploy_branches": ["develop", "staging", "test"],
}
ISSUER = f"oidc.circleci.com/org/{OIDC_INPUTS['circleci_org_id']}"
USER_ID = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


def evaluate_locals(repo_root: Path, terraform_bin: Path, work: Path, inputs: dict) -> subprocess.CompletedProcess:
    """Apply a root module made of the account root's variables.tf and its locals block (the
    partition fixed to "aws": the one data source needs the AWS provider), with an output per
    local. No provider, so it runs offline; the variables' validations and the locals' own guards
    run as in a real plan. Returns the finished ``terraform apply`` (outputs: ``terraform output``).
    """
    main = _strip_comments((repo_root / ACCOUNT_ROOT / "main.tf").read_text())
    body = only_block(main, "locals").replace("data.aws_partition.current.partition", '"aws"')
    names = re.findall(r"(?m)^  (\w+)\s*=", body)
    work.mkdir(parents=True)
    shutil.copy(repo_root / ACCOUNT_ROOT / "variables.tf", work)
    outputs = "".join(f'output "{n}" {{\n  value = local.{n}\n}}\n' for n in names)
    (work / "main.tf").write_text(f"locals {{{body}}}\n{outputs}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    init = subprocess.run([str(terraform_bin), "init", "-no-color", "-input=false"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert init.returncode == 0, init.stdout + init.stderr
    args = [f"-var={k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in inputs.items()]
    return subprocess.run([str(terraform_bin), "apply", "-no-color", "-input=false", "-auto-approve", *args],
                          cwd=work, env=env, capture_output=True, text=True)


def terraform_outputs(terraform_bin: Path, work: Path) -> dict:
    done = subprocess.run([str(terraform_bin), "output", "-no-color", "-json"], cwd=work, capture_output=True,
                          text=True, env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    return {name: item["value"] for name, item in json.loads(done.stdout).items()}


def oidc_locals_of(repo_root: Path, terraform_bin: Path, work: Path, inputs: dict = OIDC_INPUTS) -> dict:
    """The account root's locals for *inputs*, as Terraform 1.0 evaluates them."""
    done = evaluate_locals(repo_root, terraform_bin, work, inputs)
    assert done.returncode == 0, done.stdout + done.stderr
    return terraform_outputs(terraform_bin, work)


@pytest.fixture(scope="module")
def oidc_locals(repo_root: Path, pinned_terraform_bin: Path, tmp_path_factory) -> dict:
    return oidc_locals_of(repo_root, pinned_terraform_bin, tmp_path_factory.mktemp("locals") / "oidc")


def policy_json(statements: list[dict]) -> str:
    """The IAM policy document that aws_iam_policy_document renders from *statements* (the shape
    of :func:`policy_statements`): Sid, Effect, Action, Resource, Principal, Condition."""
    rendered = []
    for s in statements:
        out = {"Sid": s["sid"], "Effect": s["effect"], "Action": s["actions"]}
        if s.get("resources"):
            out["Resource"] = s["resources"]
        if s.get("principals"):
            out["Principal"] = {p["type"]: p["identifiers"] for p in s["principals"]}
        for c in s.get("conditions", []):
            out.setdefault("Condition", {}).setdefault(c["test"], {})[c["variable"]] = c["values"]
        rendered.append(out)
    return json.dumps({"Version": "2012-10-17", "Statement": rendered})


def hcl_value(raw, values: dict):
    """A python-hcl2 value (quoted template, or a lone ${reference}) with local.* and var.* filled in."""
    if isinstance(raw, list):
        return [hcl_value(item, values) for item in raw]
    whole = re.fullmatch(r"\$\{((?:local|var)\.\w+)\}", raw)
    if whole:
        return values[whole.group(1)]
    assert raw.startswith('"') and raw.endswith('"'), f"not a template: {raw}"
    return re.sub(r"\$\{((?:local|var)\.\w+)\}", lambda m: str(values[m.group(1)]), raw[1:-1])


@pytest.fixture(scope="module")
def trust_statement(repo_root: Path, oidc_locals: dict) -> dict:
    return trust_statement_of(repo_root, oidc_locals)


def trust_statement_of(repo_root: Path, oidc_locals: dict, document_name: str = "deployer_trust") -> dict:
    """The deployer role's trust statement, parsed with python-hcl2 and filled in with *oidc_locals*
    and OIDC_INPUTS: effect, actions, principals [{type, identifiers}], conditions [{test, variable,
    values}], the shape :func:`policy_statements` gives."""
    import hcl2

    parsed = hcl2.loads((repo_root / ACCOUNT_ROOT / "main.tf").read_text())
    documents = [d['"aws_iam_policy_document"'] for d in parsed["data"] if '"aws_iam_policy_document"' in d]
    (document,) = [d[f'"{document_name}"'] for d in documents if f'"{document_name}"' in d]
    (statement,) = document["statement"]
    values = {f"local.{k}": v for k, v in oidc_locals.items()} | {f"var.{k}": v for k, v in OIDC_INPUTS.items()}
    return {
        "sid": hcl_value(statement["sid"], values),
        "effect": hcl_value(statement["effect"], values),
        "actions": hcl_value(statement["actions"], values),
        "principals": [{"type": hcl_value(p["type"], values), "identifiers": hcl_value(p["identifiers"], values)}
                       for p in statement["principals"]],
        "conditions": [{"test": hcl_value(c["test"], values), "variable": hcl_value(c["variable"], values),
                        "values": hcl_value(c["values"], values)} for c in statement["condition"]],
    }


def v2_subject(branch: str, *, org: str = OIDC_INPUTS["circleci_org_id"],
               project: str = OIDC_INPUTS["circleci_project_id"], user: str = USER_ID,
               origin: str = "github.com/acme/acme-api", ref: str | None = None) -> str:
    """The sub claim of CIRCLE_OIDC_TOKEN_V2 (https://circleci.com/docs/openid-connect-tokens/)."""
    return f"org/{org}/project/{project}/user/{user}/vcs-origin/{origin}/vcs-ref/{ref or 'refs/heads/' + branch}"


def admits(statement: dict, claims: dict) -> bool:
    """Whether the trust statement's conditions hold for a token with *claims* (aud, sub), as IAM
    evaluates StringEquals and StringLike (every condition must hold; any value of one may match)."""
    for condition in statement["conditions"]:
        claim = claims.get(condition["variable"].removeprefix(f"{ISSUER}:"))
        if claim is None:
            return False
        match = {"StringEquals": lambda p, v: p == v, "StringLike": iam_like}[condition["test"]]
        if not any(match(pattern, claim) for pattern in condition["values"]):
            return False
    return True


def test_deployer_role_trusts_circleci_oidc_of_this_organization_only(trust_statement: dict, oidc_locals: dict):
    assert trust_statement["effect"] == "Allow"
    assert trust_statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert trust_statement["principals"] == [
        {"type": "Federated", "identifiers": [f"arn:aws:iam::123456789012:oidc-provider/{ISSUER}"]}
    ]
    conditions = {c["variable"]: c for c in trust_statement["conditions"]}
    assert set(conditions) == {f"{ISSUER}:aud", f"{ISSUER}:sub"}, "IAM can test only aud and sub of this issuer"
    assert conditions[f"{ISSUER}:aud"]["test"] == "StringEquals"
    assert conditions[f"{ISSUER}:aud"]["values"] == [OIDC_INPUTS["circleci_org_id"]]
    assert conditions[f"{ISSUER}:sub"]["test"] == "StringLike"
    prefix = (f"org/{OIDC_INPUTS['circleci_org_id']}/project/{OIDC_INPUTS['circleci_project_id']}"
              "/user/????????-????-????-????-????????????/vcs-origin/github.com/acme/acme-api/vcs-ref/refs/heads/")
    assert conditions[f"{ISSUER}:sub"]["values"] == [prefix + b for b in ("develop", "staging", "test")]
    assert oidc_locals["oidc_ready"] is True


def test_deployer_role_admits_the_projects_deploy_branches_and_nothing_else(trust_statement: dict):
    org = OIDC_INPUTS["circleci_org_id"]
    good = {"aud": org}
    for branch in ("develop", "staging", "test"):
        assert admits(trust_statement, {**good, "sub": v2_subject(branch)}), branch
    refused = {
        "another project of the organization": v2_subject("staging", project="1f2e3d4c-5b6a-4978-8a6b-5c4d3e2f1a0b"),
        "another organization": v2_subject("staging", org="2b3c4d5e-6f70-4819-a2b3-c4d5e6f70819"),
        "a branch deployed into another account": v2_subject("prod"),
        "a branch that starts like one": v2_subject("staging-hotfix"),
        "a branch named to end like one": v2_subject("x/vcs-ref/refs/heads/staging"),
        "a branch named to stretch over the user":
            v2_subject("x", ref=f"refs/heads/a/user/{USER_ID}/vcs-origin/github.com/acme/acme-api/vcs-ref/refs/heads/"
                                "staging"),
        "a fork": v2_subject("staging", origin="github.com/mallory/acme-api"),
        "a tag": v2_subject("staging", ref="refs/tags/staging"),
        "a pull request": v2_subject("staging", ref="refs/pull/7/head"),
        "a custom webhook (no vcs-origin, no vcs-ref)": v2_subject("", origin="", ref=""),
        "a CIRCLE_OIDC_TOKEN (v1) subject": f"org/{org}/project/{OIDC_INPUTS['circleci_project_id']}/user/{USER_ID}",
    }
    for why, sub in refused.items():
        assert not admits(trust_statement, {**good, "sub": sub}), why
    assert not admits(trust_statement, {"aud": "sts.amazonaws.com", "sub": v2_subject("staging")}), "audience"


def test_the_read_only_role_admits_any_branch_of_this_project_and_nothing_else(repo_root: Path, oidc_locals: dict):
    reader = trust_statement_of(repo_root, oidc_locals, "reader_trust")
    org = OIDC_INPUTS["circleci_org_id"]
    for branch in ("feature/x", "staging", "renovate/boto3-1.x"):
        assert admits(reader, {"aud": org, "sub": v2_subject(branch)}), branch
    assert not admits(reader, {"aud": org, "sub": v2_subject("staging", ref="refs/tags/v1")})
    assert not admits(reader, {"aud": org, "sub": v2_subject("staging", project=USER_ID)})
    assert not admits(reader, {"aud": org, "sub": v2_subject("staging", origin="github.com/acme/other")})
    assert not admits(reader, {"aud": "sts.amazonaws.com", "sub": v2_subject("staging")})


def test_the_read_only_role_may_only_read(account_tf: str):
    actions = {a for s in policy_statements(account_tf, "reader") for a in s["actions"]}
    assert actions and all(a.split(":")[1].startswith(("Get", "List", "Describe")) for a in actions), actions


def test_a_star_for_the_user_would_let_a_crafted_branch_name_in(trust_statement: dict):
    """Why the user ID is matched with 36 '?' and not '*' (the pattern CircleCI's docs show):
    a '*' also matches '/', so a branch named '<anything>/vcs-ref/refs/heads/staging' would pass."""
    (sub_condition,) = [c for c in trust_statement["conditions"] if c["variable"].endswith(":sub")]
    staging = next(p for p in sub_condition["values"] if p.endswith("/staging"))
    loose = staging.replace("????????-????-????-????-????????????", "*")
    crafted = v2_subject("x", ref=f"refs/heads/a/user/{USER_ID}/vcs-origin/github.com/acme/acme-api/vcs-ref/"
                                  "refs/heads/staging")
    assert iam_like(loose, crafted)
    assert not iam_like(staging, crafted)


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        ({"circleci_org_id": ""}, "circleci_org_id"),
        ({"circleci_project_id": "", "circleci_vcs_origin": ""}, "circleci_project_id, circleci_vcs_origin"),
        ({"deploy_branches": []}, "deploy_branches"),
    ],
)
def test_oidc_deployer_without_its_circleci_inputs_stops_the_plan(change, missing, repo_root, terraform_bin,
                                                                   tmp_path: Path):
    done = evaluate_locals(repo_root, terraform_bin, tmp_path / "root", {**OIDC_INPUTS, **change})
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert "needs circleci_org_id, circleci_project_id, circleci_vcs_origin and deploy_branches" in output, output
    assert f"missing: {missing}" in output, output


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("deploy_branches", ["staging*"]),
        ("deploy_branches", ["st?ging"]),
        ("deploy_branches", ["$${aws:username}"]),  # "$${" is HCL for a literal "${"
        ("circleci_org_id", "my-org"),
        ("circleci_vcs_origin", "github.com/acme/*"),
        ("ci_deployer", "keys"),
    ],
)
def test_inputs_that_would_widen_the_trust_are_refused(name, value, repo_root, terraform_bin, tmp_path: Path):
    done = evaluate_locals(repo_root, terraform_bin, tmp_path / "root", {**OIDC_INPUTS, name: value})
    assert done.returncode != 0, f"{name}={value!r} was accepted"
    assert "Invalid value for variable" in done.stdout + done.stderr


def test_legacy_user_needs_no_circleci_inputs(repo_root, terraform_bin, tmp_path: Path):
    inputs = {k: OIDC_INPUTS[k] for k in ("project", "account_id", "region")} | {"ci_deployer": "user"}
    done = evaluate_locals(repo_root, terraform_bin, tmp_path / "root", inputs)
    assert done.returncode == 0, done.stdout + done.stderr
    values = terraform_outputs(terraform_bin, tmp_path / "root")
    assert (values["use_user"], values["use_oidc"]) == (True, False)


def test_oidc_and_user_resources_follow_the_switch(account_tf: str):
    provider = only_block(account_tf, r'resource\s+"aws_iam_openid_connect_provider"\s+"circleci"')
    assert attribute(provider, "count") == "local.use_oidc && local.oidc_ready ? 1 : 0"
    assert attribute(provider, "thumbprint_list") is None  # IAM takes it itself; nothing fetched at plan time
    assert not re.search(r'data\s+"tls_certificate"', account_tf)
    role = only_block(account_tf, r'resource\s+"aws_iam_role"\s+"deployer"')
    assert attribute(role, "count") == "local.use_oidc ? 1 : 0"
    assert attribute(role, "assume_role_policy") == "data.aws_iam_policy_document.deployer_trust.json"
    attachment = only_block(account_tf, r'resource\s+"aws_iam_role_policy_attachment"\s+"deployer"')
    assert attribute(attachment, "policy_arn") == "aws_iam_policy.deployer.arn"
    assert attribute(provider, "url") == '"https://${local.circleci_issuer}"'
    assert attribute(provider, "client_id_list") == "[var.circleci_org_id]"


# --- least privilege: nothing public, no other project's names ----------------------------------


def test_deployer_cannot_make_a_bucket_or_an_object_public(deployer: list[dict]):
    for action in ("s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:PutBucketPublicAccessBlock",
                   "s3:DeletePublicAccessBlock", "s3:PutBucketAcl", "s3:PutObjectAcl", "s3:PutAccountPublicAccessBlock",
                   "s3:PutBucketOwnershipControls", "s3:PutBucketWebsite"):
        assert granting(deployer, action) == [], f"the deployer must not have {action}"


@pytest.fixture(scope="module")
def short_project_locals(repo_root: Path, pinned_terraform_bin: Path, tmp_path_factory) -> dict:
    """The locals of project "acme": a name that "acme-api" starts with."""
    work = tmp_path_factory.mktemp("locals") / "acme"
    done = evaluate_locals(repo_root, pinned_terraform_bin, work, {**OIDC_INPUTS, "project": "acme"})
    assert done.returncode == 0, done.stdout + done.stderr
    return terraform_outputs(pinned_terraform_bin, work)


def project_resources(project: str) -> list[str]:
    """ARNs of what a deploy of *project*'s stg creates or reads, named the way the roots name them."""
    p, a, r = project, "123456789012", "eu-west-1"
    return [
        f"arn:aws:lambda:{r}:{a}:function:{p}--stg-api",
        f"arn:aws:lambda:{r}:{a}:function:{p}--stg-api:live",
        f"arn:aws:cloudformation:{r}:{a}:stack/{p}--stg/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        f"arn:aws:s3:::{p}--stg-deploy-1a2b3c",
        f"arn:aws:s3:::{p}--stg-deploy-1a2b3c/serverless/{p}/stg/code.zip",
        f"arn:aws:logs:{r}:{a}:log-group:/aws/lambda/{p}--stg-api",
        f"arn:aws:logs:{r}:{a}:log-group:/aws/lambda/{p}--stg-api:*",
        f"arn:aws:iam::{a}:role/{p}/lambda/{p}-stg-lambda-api",
        f"arn:aws:ssm:{r}:{a}:parameter/{p}/iam/stg",
    ]


@pytest.mark.parametrize("other", ["acme-api", "acme-api-admin", "acme-x", "acmeapi"])
def test_project_patterns_cannot_match_another_project_sharing_the_prefix(other, account_tf, short_project_locals):
    """Project "acme"'s deployer may touch "acme"'s names, and none of "acme-api"'s (or any other)."""
    statements = policy_statements(account_tf, "deployer", {k: str(v) for k, v in short_project_locals.items()})
    patterns = [res for s in statements for res in s["resources"] if res != "*"]
    for own in project_resources("acme"):
        assert any(iam_like(p, own) for p in patterns), f"acme's own {own} is not granted"
    for theirs in project_resources(other):
        assert not any(iam_like(p, theirs) for p in patterns), f"project acme's deployer may touch {theirs}"


@pytest.mark.parametrize("project", ["acme-", "acme--api", "a--", "Acme"])
def test_project_names_that_would_break_the_delimiter_are_refused(project, repo_root, terraform_bin, tmp_path: Path):
    done = evaluate_locals(repo_root, terraform_bin, tmp_path / "root", {**OIDC_INPUTS, "project": project})
    assert done.returncode != 0 and "Invalid value for variable" in done.stdout + done.stderr, project
    env_vars = only_block(module_text(repo_root, ENV_ROOT), r'variable\s+"project"')
    assert '"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"' in env_vars, "both roots validate the project the same way"


def test_every_checkov_skip_says_why(repo_root: Path):
    """.ci/run runs checkov over iam/terraform; a finding not fixed is skipped in the HCL, with a reason."""
    skips = []
    for path in sorted((repo_root / "iam/terraform").rglob("*.tf")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "checkov:skip" in line:
                match = re.fullmatch(r"\s*#checkov:skip=(CKV2?_AWS_\d+): (.{40,})", line)
                assert match, f"{path.relative_to(repo_root)}:{number}: a skip needs an ID and a reason"
                skips.append(match.group(1))
    assert sorted(skips) == ["CKV_AWS_273", "CKV_AWS_40"], "each skip is reported in the change that adds it"
    ci_run = (repo_root / ".ci/run").read_text()
    assert "checkov --directory iam/terraform --framework terraform" in ci_run
    assert ".venv-checkov/" in (repo_root / ".gitignore").read_text().splitlines()
