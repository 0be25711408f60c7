"""Offline checks of the inference stack's Terraform (inference/tf), its ASL and its make targets.

Runs with no network and no AWS: terraform uses the local provider mirror; ``terraform test``
mocks the AWS provider; checkov runs with --skip-download. The IaC checkers are installed by
``make iac_tools`` (idempotent; the first run downloads them). The opt-in ``apply`` test
(``RUN_TF_APPLY=1``) applies and destroys the stack against a moto server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import compose
from tests.infra.terraform_tools import (
    CHECKOV,
    REPO_ROOT,
    find_provider_mirror,
    require_success,
    terraform_env,
)

TF_DIR = REPO_ROOT / "inference" / "tf"
ASL_FILE = REPO_ROOT / "inference" / "statemachine" / "pipeline.asl.json"
ASL_VALIDATOR = REPO_ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "asl-validator"
# The only variables the ASL template may use (the contract with the chain).
ASL_VARIABLES = {
    "process_function_arn",
    "infer_function_arn",
    "assemble_function_arn",
    "observe_function_arn",
    "failure_function_arn",
    "notify_function_arn",
    "manifest_bucket",
}


def _run(cmd: list[str], cwd: Path = TF_DIR, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        cmd, cwd=cwd, env=env or terraform_env(), capture_output=True, text=True, timeout=timeout
    )


def _render_asl(arns: dict[str, str]) -> str:
    """What templatefile() makes of the ASL file, for the contract variables."""
    text = ASL_FILE.read_text()
    return re.sub(r"\$\{(\w+)\}", lambda m: arns[m.group(1)], text)


FAKE_VALUES = {
    "process_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-process",
    "infer_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-infer",
    "assemble_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-assemble",
    "observe_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-observe",
    "failure_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-failure",
    "notify_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:lc-notify",
    "manifest_bucket": "lc-predictions",
}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iac_tools() -> None:
    """checkov and asl-validator in .cache/, installed by `make iac_tools` when missing."""
    if CHECKOV.exists() and ASL_VALIDATOR.exists():
        return
    proc = subprocess.run(["make", "-s", "iac_tools"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, (
        f"make iac_tools failed (needs PyPI and npm once):\n{proc.stdout}\n{proc.stderr}"
    )


@pytest.fixture(scope="module")
def checkov_run(iac_tools) -> Iterator[subprocess.Popen]:
    """checkov started early in the background: it runs beside the terraform tests (2 cores)."""
    env = dict(os.environ, HCL_PARSE_TIMEOUT_SEC="120", LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [str(CHECKOV), "--config-file", str(TF_DIR / ".checkov.yaml"), "-d", str(TF_DIR), "-o", "json"],
        cwd=TF_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def initialised(terraform, checkov_run) -> Path:
    """`terraform init` of inference/tf from the local mirror only (no backend, no network), against
    the committed .terraform.lock.hcl (read-only: a provider that does not match it fails)."""
    mirror = find_provider_mirror()
    # -lockfile=readonly: the committed .terraform.lock.hcl must match the mirror's provider.
    init = [
        terraform,
        "init",
        "-backend=false",
        "-input=false",
        "-lockfile=readonly",
        f"-plugin-dir={mirror}",
    ]
    require_success(_run(init))
    return mirror


# --- offline checks -----------------------------------------------------------------------------


def test_fmt(terraform) -> None:
    proc = _run([terraform, "fmt", "-check", "-recursive", "-diff"])
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def test_validate(terraform, initialised) -> None:
    out = require_success(_run([terraform, "validate", "-json"]))
    result = json.loads(out)
    assert result["valid"], result["diagnostics"]
    assert result["warning_count"] == 0, result["diagnostics"]


@pytest.mark.slow
def test_terraform_test_with_mock_provider(terraform, initialised) -> None:
    """tests/main.tftest.hcl: definition == ASL with ARNs, schedule target, memory/timeouts, RDS, S3."""
    out = require_success(_run([terraform, "test", "-no-color"], timeout=600))
    assert re.search(r"Success! \d+ passed, 0 failed", out), out[-3000:]


def test_asl_uses_only_the_contract_variables() -> None:
    used = set(re.findall(r"\$\{(\w+)\}", ASL_FILE.read_text()))
    assert used == ASL_VARIABLES, f"ASL template variables {sorted(used)} != contract {sorted(ASL_VARIABLES)}"
    assert "$${" not in ASL_FILE.read_text()


def test_asl_validator(iac_tools, tmp_path) -> None:
    """The definition Terraform deploys (template rendered with ARNs) passes asl-validator."""
    rendered = tmp_path / "pipeline.json"
    rendered.write_text(_render_asl(FAKE_VALUES))
    json.loads(rendered.read_text())
    proc = subprocess.run(
        [str(ASL_VALIDATOR), "--json-path", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"asl-validator:\n{proc.stdout}{proc.stderr}"


def test_every_checkov_skip_has_a_reason() -> None:
    skips = []
    for path in TF_DIR.rglob("*.tf"):
        if ".terraform" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "checkov:skip" in line:
                skips.append((path, n, line))
                assert re.search(r"#checkov:skip=CKV2?_AWS_\d+:\s*\S.{10,}", line), (
                    f"{path.relative_to(REPO_ROOT)}:{n}: a skip needs an inline reason: {line.strip()}"
                )
    assert skips, "expected the documented skips"


def test_checkov_has_no_unexplained_failures(checkov_run) -> None:
    stdout, stderr = checkov_run.communicate(timeout=600)
    assert checkov_run.returncode in (0, 1), f"checkov crashed:\n{stderr[-4000:]}"
    report = json.loads(stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [
        (c["check_id"], c["resource"], c["file_path"]) for c in report["results"].get("failed_checks", [])
    ]
    print(f"checkov {summary.get('checkov_version')}: {summary}")
    assert summary["parsing_errors"] == 0, "checkov could not parse some files"
    assert failed == [], f"checkov failures (fix, or skip inline with a reason): {failed}"
    assert summary["passed"] > 100
    for check in report["results"].get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) > 10, f"skip without a reason: {check['check_id']} on {check['resource']}"


# --- tfvars rendering and make targets -----------------------------------------------------------


def _variable_names() -> set[str]:
    return set(re.findall(r'^variable "(\w+)"', (TF_DIR / "variables.tf").read_text(), flags=re.M))


def test_render_tfvars_from_hydra(tmp_path) -> None:
    out = tmp_path / "inference.tfvars.json"
    proc = subprocess.run(
        [
            sys.executable,
            "setup/render_tfvars.py",
            "--out",
            str(out),
            "--image-tag",
            "t1",
            "infra.project=acme-lc",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    tfvars = json.loads(out.read_text())
    assert tfvars["project"] == "acme-lc"
    assert tfvars["registry_bucket_name"] == "acme-lc-registry"  # the training registry bucket
    assert tfvars["image_tag"] == "t1"
    # Tunables the config leaves null keep the chain's own default on Lambda too.
    assert "CHIP_SIZE" not in tfvars["chain_settings"]
    assert tfvars["infer_memory_mb"] == compose().infra.infer_memory_mb  # one home: the config
    assert tfvars["infer_timeout_s"] == compose().infra.infer_timeout_s
    unknown = set(tfvars) - _variable_names()
    assert not unknown, f"tfvars keys with no Terraform variable: {unknown}"


def test_block_outputs_lifecycle_prefix_is_the_code_s() -> None:
    # Terraform cannot import core.artifacts: its blocks prefix must spell the same folder.
    from core import artifacts

    main_tf = (TF_DIR / "main.tf").read_text()
    assert f'blocks_prefix = "${{trimsuffix(var.output_prefix, "/")}}/{artifacts.BLOCKS_DIR}/"' in main_tf


def test_trigger_rule_pattern_is_the_code_s() -> None:
    """Terraform cannot import inference.trigger: its rule must spell the same pattern (the
    tftest checks the deployed pattern is this one for the default stack)."""
    from inference import trigger

    assert trigger.event_pattern("B", "incoming/") == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": ["B"]}, "object": {"key": [{"prefix": "incoming/"}]}},
    }
    hcl = re.sub(r"\s+", " ", (TF_DIR / "modules" / "trigger" / "main.tf").read_text())
    for part in (
        f'source = ["{trigger.S3_SOURCE}"]',
        f'"detail-type" = ["{trigger.OBJECT_CREATED}"]',
        "bucket = { name = [var.bucket_name] }",
        "object = { key = [{ prefix = var.input_prefix }] }",
        'command = ["inference.handlers.trigger.handler"]',
    ):
        assert part in hcl, part
    main_tf = re.sub(r"\s+", " ", (TF_DIR / "main.tf").read_text())
    assert 'input_prefix = "${trimsuffix(var.input_prefix, "/")}/"' in main_tf  # the prefix as a folder


def test_tfvars_carry_triggers_and_notices(tmp_path) -> None:
    from setup import render_tfvars

    tfvars = render_tfvars.render(
        [
            "infra.trigger_window_s=120",
            "infra.notice_subscriptions=[{protocol:email,endpoint:ops@example.org}]",
        ]
    )
    assert tfvars["trigger_enabled"] is True and tfvars["trigger_window_s"] == 120
    assert tfvars["notice_subscriptions"] == [{"protocol": "email", "endpoint": "ops@example.org"}]
    assert "trigger_window_s" not in render_tfvars.render([])  # null: the chain's default


def _variable_block(name: str) -> str:
    text = (TF_DIR / "variables.tf").read_text()
    match = re.search(rf'^variable "{name}" {{\n(.*?)^}}', text, flags=re.M | re.S)
    assert match, f"variables.tf has no variable {name}"
    return match.group(1)


def _variable_default_and_values(name: str) -> tuple[str, list[str]]:
    """A string variable's default and the values its contains([...], var.x) validation accepts."""
    block = _variable_block(name)
    default = re.search(r'^\s*default\s*=\s*"([^"]*)"', block, flags=re.M)
    allowed = re.search(rf"contains\(\[([^\]]*)\],\s*var\.{name}\)", block)
    assert default and allowed, f"variable {name} needs a string default and a contains() validation"
    return default.group(1), re.findall(r'"([^"]*)"', allowed.group(1))


@pytest.mark.parametrize(
    ("variable", "field"), [("backend", "backend"), ("lambda_architecture", "lambda_architecture")]
)
def test_backend_and_architecture_agree_everywhere(variable, field) -> None:
    """The Hydra config's value (the one home), Terraform's default and ChainDefaults' default are one
    value, and Terraform accepts exactly the values the chain's settings accept."""
    import typing

    from inference.settings import DEFAULTS, ChainDefaults

    default, allowed = _variable_default_and_values(variable)
    assert default == compose().infra[variable] == getattr(DEFAULTS, field)
    assert sorted(allowed) == sorted(typing.get_args(ChainDefaults.model_fields[field].annotation))


def test_backend_defaults_to_the_dispatcher() -> None:
    """BACKEND=auto lets inference.runtime_cpu pick OpenVINO where it is fastest; onnx never would."""
    assert compose().infra.backend == "auto"
    assert _variable_default_and_values("backend")[0] == "auto"


def test_tfvars_carry_backend_and_architecture() -> None:
    from setup import render_tfvars

    default = render_tfvars.render([])
    assert (default["backend"], default["lambda_architecture"]) == ("auto", "x86_64")
    assert "BACKEND" not in default["chain_settings"]  # one variable carries it, not two
    arm = render_tfvars.render(["infra.lambda_architecture=arm64", "infra.backend=onnx"])
    assert (arm["backend"], arm["lambda_architecture"]) == ("onnx", "arm64")


# --- setup/infra.sh with fake docker and terraform -------------------------------------------------

FAKE_TOOL = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >> "$TOOL_LOG"
if [[ "$(basename "$0")" == terraform && " $* " == *" output "* ]]; then
  echo 123456789012.dkr.ecr.us-east-1.amazonaws.com/acme-lc
fi
"""


def _infra_sh(tmp_path: Path, body: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Source setup/infra.sh (functions only), stub credentials and ECR login, run ``body`` with fake
    ``docker`` and ``terraform`` on PATH that record their arguments; the tfvars and the Terraform
    folder are under ``tmp_path``, never the checkout's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("docker", "terraform"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "tools.log"
    log.write_text("")
    script = f"""
source setup/infra.sh
require_credentials() {{ :; }}
require_tool() {{ :; }}
ecr_login() {{ echo "docker login $1" >> "$TOOL_LOG"; }}
TF_DIR="{tmp_path / "tf"}"
TFVARS="{tmp_path / "tf" / "vars" / "inference.tfvars.json"}"
{body}
"""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_STATE_"))}
    full_env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PY=sys.executable, TOOL_LOG=str(log), **env)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=180
    )
    return proc, log.read_text().splitlines()


@pytest.mark.parametrize(("arch", "platform"), [("x86_64", "linux/amd64"), ("arm64", "linux/arm64")])
def test_infra_setup_builds_the_image_for_the_configured_architecture(arch, platform, tmp_path) -> None:
    """make setup_inference_infra: infra.lambda_architecture -> tfvars -> docker build --platform, and
    --provenance=false (Lambda rejects an image index with an attestation manifest)."""
    proc, calls = _infra_sh(
        tmp_path, "cmd_setup", ARGS=f"infra.project=acme-lc infra.lambda_architecture={arch}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tfvars = json.loads((tmp_path / "tf" / "vars" / "inference.tfvars.json").read_text())
    assert tfvars["lambda_architecture"] == arch
    (build,) = [c.split() for c in calls if c.startswith("docker build ")]
    assert build[build.index("--platform") + 1] == platform
    assert "--provenance=false" in build
    assert build[build.index("--build-arg") + 1] == f"LAMBDA_ARCH={arch}"
    tag = build[build.index("-t") + 1]
    assert tag.startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/acme-lc:")
    assert calls[-1] == f"docker push {tag}"
    assert not (tmp_path / "tf" / "backend_s3.tf").exists()  # local state unless TF_STATE_BUCKET


def test_infra_refuses_an_unknown_architecture(tmp_path) -> None:
    proc, calls = _infra_sh(tmp_path, "build_and_push repo:tag aarch64")
    assert proc.returncode == 2 and "x86_64 or arm64" in proc.stderr
    assert not any(c.startswith("docker build") for c in calls)


def _write_tfvars(tmp_path: Path) -> None:
    (tmp_path / "tf" / "vars").mkdir(parents=True)
    (tmp_path / "tf" / "vars" / "inference.tfvars.json").write_text(
        json.dumps({"project": "acme-lc", "aws_region": "eu-west-1"})
    )


def test_infra_init_keeps_local_state_by_default(tmp_path) -> None:
    _write_tfvars(tmp_path)
    proc, calls = _infra_sh(tmp_path, "terraform_init")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls == [f"terraform -chdir={tmp_path / 'tf'} init -input=false"]
    assert not (tmp_path / "tf" / "backend_s3.tf").exists()


def test_infra_init_uses_s3_state_with_a_lock_file(tmp_path) -> None:
    _write_tfvars(tmp_path)
    proc, calls = _infra_sh(tmp_path, "terraform_init", TF_STATE_BUCKET="acme-tfstate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = tmp_path / "tf" / "vars" / "s3.tfbackend"
    assert calls == [f"terraform -chdir={tmp_path / 'tf'} init -input=false -backend-config={config}"]
    assert re.search(r'backend "s3" \{\}', (tmp_path / "tf" / "backend_s3.tf").read_text())
    settings = dict(
        (k.strip(), v.strip().strip('"'))
        for k, v in (line.split("=", 1) for line in config.read_text().splitlines())
    )
    assert settings == {
        "bucket": "acme-tfstate",
        "key": "acme-lc/inference.tfstate",
        "region": "eu-west-1",
        "encrypt": "true",
        "use_lockfile": "true",
    }
    # Later, without TF_STATE_BUCKET, it refuses rather than init a second, empty local state.
    proc, calls = _infra_sh(tmp_path, "terraform_init")
    assert proc.returncode == 2 and "TF_STATE_BUCKET" in proc.stderr
    assert calls == []


def test_infra_sh_only_defines_functions_when_sourced(tmp_path) -> None:
    proc, calls = _infra_sh(tmp_path, "true")
    assert proc.returncode == 0 and "usage" not in proc.stderr and calls == []


@pytest.mark.parametrize("action", ["setup", "provision", "clean"])
def test_make_targets_refuse_without_credentials(action, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(tmp_path),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        PY=sys.executable,
    )
    secrets = REPO_ROOT / "setup" / ".secrets"
    if secrets.exists():
        pytest.skip("setup/.secrets holds credentials on this machine")
    proc = subprocess.run(
        ["bash", "setup/infra.sh", action],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "about to" in proc.stdout  # it says what it would do first
    assert "REFUSING: no AWS credentials found" in proc.stderr
    assert "Nothing was changed" in proc.stderr


# --- opt-in: apply and destroy against moto -------------------------------------------------------

PROVIDER_OVERRIDE = """
# Written by tests/infra/test_terraform.py: both AWS provider configurations talk to moto.
%(blocks)s
"""
SERVICES = [
    "cloudwatch", "cloudwatchlogs", "ec2", "ecr", "iam", "kms", "lambda", "rds", "s3", "scheduler",
    "secretsmanager", "sfn", "sns", "ssm", "sts", "events", "sqs",
]  # fmt: skip


def _provider_block(alias: str | None, endpoint: str) -> str:
    endpoints = "\n".join(f'    {name} = "{endpoint}"' for name in SERVICES)
    alias_line = f'  alias = "{alias}"\n' if alias else ""
    return f"""provider "aws" {{
{alias_line}  region                      = var.aws_region
  access_key                  = "testing"
  secret_key                  = "testing"
  s3_use_path_style           = true
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  endpoints {{
{endpoints}
  }}
}}
"""


@pytest.mark.apply
@pytest.mark.skipif(os.environ.get("RUN_TF_APPLY") != "1", reason="opt-in: set RUN_TF_APPLY=1")
def test_apply_and_destroy_against_moto(terraform, tmp_path) -> None:
    import boto3

    from tests.infra.moto_sfn_server import MotoSfnServer

    mirror = find_provider_mirror()
    work = tmp_path / "tf"
    shutil.copytree(
        TF_DIR,
        work,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "tests", "vars", "backend_s3.tf"),
    )
    project = f"lc-apply-{uuid.uuid4().hex[:6]}"
    tfvars = {
        "project": project,
        "model_name": "chesapeake-landcover",
        "image_tag": "apply-test",
        "infer_memory_mb": compose().infra.infer_memory_mb,
        "infer_timeout_s": compose().infra.infer_timeout_s,
        "state_machine_definition_file": str(ASL_FILE),
        "allow_destroy": True,  # moto: let destroy empty buckets and drop RDS without a snapshot
    }
    (work / "test.auto.tfvars.json").write_text(json.dumps(tfvars))
    timings: dict[str, float] = {}

    with MotoSfnServer() as endpoint:
        (work / "moto_override.tf").write_text(
            PROVIDER_OVERRIDE
            % {"blocks": _provider_block(None, endpoint) + _provider_block("secrets", endpoint)}
        )
        env = terraform_env()
        init = [terraform, "init", "-input=false", "-lockfile=readonly", f"-plugin-dir={mirror}"]
        require_success(_run(init, cwd=work, env=env))

        start = time.monotonic()
        require_success(
            _run(
                [terraform, "apply", "-auto-approve", "-input=false", "-no-color"],
                cwd=work,
                env=env,
                timeout=600,
            )
        )
        timings["apply_s"] = time.monotonic() - start
        outputs = {
            k: v["value"]
            for k, v in json.loads(
                require_success(_run([terraform, "output", "-json"], cwd=work, env=env))
            ).items()
        }

        session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        sfn = session.client("stepfunctions", endpoint_url=endpoint)
        machine = sfn.describe_state_machine(stateMachineArn=outputs["state_machine_arn"])
        lambdas = session.client("lambda", endpoint_url=endpoint)
        arns = {
            f"{key}_function_arn": lambdas.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
            for key, name in outputs["function_names"].items()
        }
        expected = json.loads(
            _render_asl({**arns, "manifest_bucket": outputs["bucket_names"]["predictions"]})
        )
        assert json.loads(machine["definition"]) == expected

        schedule = session.client("scheduler", endpoint_url=endpoint).get_schedule(Name=f"{project}-pipeline")
        assert schedule["Target"]["Arn"] == outputs["state_machine_arn"]
        infer = lambdas.get_function_configuration(FunctionName=outputs["function_names"]["infer"])
        assert infer["MemorySize"] == 1024 and infer["Timeout"] == 900
        rds = session.client("rds", endpoint_url=endpoint).describe_db_instances(DBInstanceIdentifier=project)
        assert rds["DBInstances"][0]["PubliclyAccessible"] is False
        secret = json.loads(
            session.client("secretsmanager", endpoint_url=endpoint).get_secret_value(
                SecretId=outputs["ledger_secret_arn"]
            )["SecretString"]
        )
        assert (
            set(secret) >= {"username", "password", "host", "port", "dbname"}
            and len(secret["password"]) == 32
        )
        state = require_success(_run([terraform, "show", "-json"], cwd=work, env=env))
        assert secret["password"] not in state, "the generated password must not be in the state"

        # Runs triggered by new imagery and completion notices, as provisioned.
        from inference import trigger

        data_bucket = outputs["bucket_names"]["data"]
        events = session.client("events", endpoint_url=endpoint)
        rule = events.describe_rule(Name=f"{project}-pipeline-object-created")
        assert json.loads(rule["EventPattern"]) == trigger.event_pattern(data_bucket, "incoming/")
        (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        trigger_fn = lambdas.get_function(FunctionName=outputs["trigger_function_name"])["Configuration"]
        assert target["Arn"] == trigger_fn["FunctionArn"]
        assert trigger_fn["Environment"]["Variables"]["STATE_MACHINE_ARN"] == outputs["state_machine_arn"]
        # moto's GetBucketNotificationConfiguration never returns EventBridgeConfiguration, so the
        # bucket's notifications are checked by what they do: an upload under the input prefix
        # reaches the provisioned rule. moto cannot deliver to a Lambda target (and then drops the
        # event for every rule), so the rule's target is swapped for an SQS probe and put back.
        sqs = session.client("sqs", endpoint_url=endpoint)
        probe = sqs.create_queue(QueueName=f"{project}-probe")["QueueUrl"]
        probe_arn = sqs.get_queue_attributes(QueueUrl=probe, AttributeNames=["QueueArn"])["Attributes"]
        events.remove_targets(Rule=rule["Name"], Ids=[target["Id"]])
        events.put_targets(Rule=rule["Name"], Targets=[{"Id": "probe", "Arn": probe_arn["QueueArn"]}])
        s3 = session.client("s3", endpoint_url=endpoint)
        # moto enforces the TLS-only bucket policy, and its endpoint is plain HTTP: lift it for the probe.
        tls_only = s3.get_bucket_policy(Bucket=data_bucket)["Policy"]
        s3.delete_bucket_policy(Bucket=data_bucket)
        s3.put_object(Bucket=data_bucket, Key="incoming/probe.tif", Body=b"x")
        s3.put_object(Bucket=data_bucket, Key="elsewhere/probe.tif", Body=b"x")
        s3.put_bucket_policy(Bucket=data_bucket, Policy=tls_only)
        got = sqs.receive_message(QueueUrl=probe, MaxNumberOfMessages=10, WaitTimeSeconds=2).get(
            "Messages", []
        )
        assert [json.loads(m["Body"])["detail"]["object"]["key"] for m in got] == ["incoming/probe.tif"]
        events.remove_targets(Rule=rule["Name"], Ids=["probe"])
        events.put_targets(Rule=rule["Name"], Targets=[{"Id": target["Id"], "Arn": target["Arn"]}])
        sns = session.client("sns", endpoint_url=endpoint)
        assert sns.get_topic_attributes(TopicArn=outputs["notice_topic_arn"])["Attributes"]["KmsMasterKeyId"]
        notify_fn = lambdas.get_function_configuration(FunctionName=outputs["function_names"]["notify"])
        assert notify_fn["Environment"]["Variables"]["NOTICE_TOPIC_ARN"] == outputs["notice_topic_arn"]

        execution = sfn.start_execution(
            stateMachineArn=outputs["state_machine_arn"],
            name=f"apply-test-{uuid.uuid4().hex[:8]}",
            input="{}",
        )
        described = sfn.describe_execution(executionArn=execution["executionArn"])
        assert described["stateMachineArn"] == outputs["state_machine_arn"]
        assert described["status"] in {"RUNNING", "SUCCEEDED", "FAILED"}

        start = time.monotonic()
        require_success(
            _run(
                [terraform, "destroy", "-auto-approve", "-input=false", "-no-color"],
                cwd=work,
                env=env,
                timeout=600,
            )
        )
        timings["destroy_s"] = time.monotonic() - start
        assert _run([terraform, "state", "list"], cwd=work, env=env).stdout.strip() == ""

    print(f"terraform against moto: apply {timings['apply_s']:.1f} s, destroy {timings['destroy_s']:.1f} s")
