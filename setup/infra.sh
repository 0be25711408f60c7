#!/usr/bin/env bash
# The inference stack's make targets: setup (tfvars + image), provision, clean.
#
#   bash setup/infra.sh setup       # make setup_inference_infra
#   bash setup/infra.sh provision   # make provision_inference_infra
#   bash setup/infra.sh clean       # make clean_up_infra
#
# Each prints what it is about to do and refuses, changing nothing, when no AWS credentials
# are found. Credentials come from the environment/profile, or from setup/.secrets (a .env
# file, see the README); none are written anywhere. Terraform prompts before changing AWS
# unless AUTO_APPROVE=1. Extra Hydra overrides for the tfvars: ARGS="infra.project=acme".
#
# Terraform state is local (inference/tf/terraform.tfstate) unless TF_STATE_BUCKET names an S3
# bucket: then the state is s3://$TF_STATE_BUCKET/$TF_STATE_KEY (default <project>/inference.tfstate)
# in TF_STATE_REGION (default the stack's region), encrypted, locked by an S3 lock file
# (use_lockfile, Terraform >= 1.10; no DynamoDB table). See inference/tf/README.md.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TF_DIR="$REPO_ROOT/inference/tf"
TFVARS="$TF_DIR/vars/inference.tfvars.json"
PY="${PY:-$REPO_ROOT/.venv/bin/python}"
ARGS="${ARGS:-}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
refuse() {
  printf '\033[31mREFUSING: %s\033[0m\n' "$*" >&2
  exit 2
}

load_secrets() {
  if [[ -f "$REPO_ROOT/setup/.secrets" ]]; then
    say "Loading credentials from setup/.secrets"
    set -a
    # shellcheck disable=SC1091
    source "$REPO_ROOT/setup/.secrets"
    set +a
  fi
}

# Refuse unless boto3 finds credentials AND STS accepts them; print who we are otherwise.
require_credentials() {
  load_secrets
  local who
  if ! who="$("$PY" - <<'PY' 2>&1
import sys
import boto3
from botocore.exceptions import BotoCoreError, ClientError

session = boto3.Session()
if session.get_credentials() is None:
    print("no AWS credentials found")
    sys.exit(1)
try:
    ident = session.client("sts").get_caller_identity()
except (BotoCoreError, ClientError) as exc:
    print(f"AWS rejected the credentials: {exc}")
    sys.exit(1)
print(f"account {ident['Account']} as {ident['Arn']}")
PY
)"; then
    refuse "$who. Set AWS_PROFILE (after 'aws sso login') or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_SESSION_TOKEN], or put them in setup/.secrets. Nothing was changed."
  fi
  say "Using AWS $who"
}

require_tool() {
  command -v "$1" >/dev/null 2>&1 || refuse "'$1' is not installed; $2"
}

# A key of the rendered tfvars ($2 when it is absent).
tfvar() {
  "$PY" - "$TFVARS" "$1" "${2:-}" <<'PY'
import json, sys
print(json.load(open(sys.argv[1])).get(sys.argv[2], sys.argv[3]))
PY
}

# With TF_STATE_BUCKET: the S3 backend's partial configuration (backend_s3.tf, untracked) and its
# settings (vars/s3.tfbackend), then init against them. Without it: local state.
terraform_init() {
  local backend_tf="$TF_DIR/backend_s3.tf" backend_config="$TF_DIR/vars/s3.tfbackend" key region
  if [[ -z "${TF_STATE_BUCKET:-}" ]]; then
    [[ ! -f "$backend_tf" ]] || refuse "inference/tf/backend_s3.tf (written by an earlier run with TF_STATE_BUCKET) keeps the state in S3: set TF_STATE_BUCKET again, or delete the file and run 'terraform -chdir=inference/tf init -migrate-state' to bring the state back to local. Nothing was changed."
    say "terraform init in inference/tf (local state: inference/tf/terraform.tfstate)"
    terraform -chdir="$TF_DIR" init -input=false
    return
  fi
  key="${TF_STATE_KEY:-$(tfvar project)/inference.tfstate}"
  region="${TF_STATE_REGION:-$(tfvar aws_region us-east-1)}"
  mkdir -p "$(dirname "$backend_config")"
  printf '# Written by setup/infra.sh (TF_STATE_BUCKET is set). Local state is the default.\nterraform {\n  backend "s3" {}\n}\n' >"$backend_tf"
  printf 'bucket       = "%s"\nkey          = "%s"\nregion       = "%s"\nencrypt      = true\nuse_lockfile = true\n' \
    "$TF_STATE_BUCKET" "$key" "$region" >"$backend_config"
  say "terraform init in inference/tf (state: s3://$TF_STATE_BUCKET/$key in $region, S3 lock file)"
  terraform -chdir="$TF_DIR" init -input=false -backend-config="$backend_config"
}

# Lambda's instruction set -> docker's platform.
image_platform() {
  case "$1" in
    x86_64) echo linux/amd64 ;;
    arm64) echo linux/arm64 ;;
    *) refuse "lambda_architecture must be x86_64 or arm64, got '$1'" ;;
  esac
}

# Build the Lambda image for the functions' architecture and push it. --provenance=false: BuildKit
# would otherwise push an OCI image index with an attestation manifest, which Lambda rejects.
build_and_push() {
  local image="$1" arch="$2" platform
  platform="$(image_platform "$arch")"
  say "Building and pushing $image ($arch, $platform)"
  docker build --platform "$platform" --provenance=false --build-arg LAMBDA_ARCH="$arch" \
    -f "$REPO_ROOT/inference/Dockerfile" -t "$image" "$REPO_ROOT"
  docker push "$image"
}

ecr_login() {
  say "Logging docker in to ${1%%/*}"
  "$PY" - "$1" <<'PY' | docker login --username AWS --password-stdin "${1%%/*}"
import base64, sys
import boto3
token = boto3.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
print(base64.b64decode(token).decode().split(":", 1)[1])
PY
}

approve_flag() {
  if [[ "${AUTO_APPROVE:-0}" == "1" ]]; then echo "-auto-approve"; fi
}

tf_output() {
  terraform -chdir="$TF_DIR" output -raw "$1"
}

cmd_setup() {
  local tag image_repo
  tag="$(date -u +%Y%m%d%H%M%S)"
  say "setup_inference_infra is about to:"
  echo "  1. check AWS credentials (refuse without them)"
  echo "  2. render inference/tf/vars/inference.tfvars.json from setup/conf (image_tag=$tag) ${ARGS:+with $ARGS}"
  echo "  3. terraform init, then create only the KMS key and the ECR repository (-target=module.ecr)"
  echo "  4. docker build -f inference/Dockerfile --platform <infra.lambda_architecture: linux/amd64 | linux/arm64>"
  echo "     --provenance=false and push the image as <repository>:$tag"
  require_credentials
  require_tool terraform "install Terraform >= 1.11"
  require_tool docker "building the Lambda image needs a Docker engine"
  # shellcheck disable=SC2086
  "$PY" "$REPO_ROOT/setup/render_tfvars.py" --out "$TFVARS" --image-tag "$tag" $ARGS
  terraform_init
  say "Creating the ECR repository (and its KMS key)"
  # shellcheck disable=SC2046
  terraform -chdir="$TF_DIR" apply -input=false -var-file="$TFVARS" -target=module.ecr $(approve_flag)
  image_repo="$(tf_output ecr_repository_url)"
  ecr_login "$image_repo"
  build_and_push "$image_repo:$tag" "$(tfvar lambda_architecture x86_64)"
  say "Done. Next: make provision_inference_infra"
}

cmd_provision() {
  say "provision_inference_infra is about to:"
  echo "  1. check AWS credentials (refuse without them)"
  echo "  2. terraform init and apply inference/tf with inference/tf/vars/inference.tfvars.json:"
  echo "     S3 buckets, KMS key, VPC + endpoints, RDS Postgres + secret, 4 Lambdas, state machine,"
  echo "     schedule, log groups and alarms (Terraform shows the plan and asks before applying)"
  require_credentials
  require_tool terraform "install Terraform >= 1.11"
  [[ -f "$TFVARS" ]] || refuse "$TFVARS is missing: run make setup_inference_infra first."
  terraform_init
  # shellcheck disable=SC2046
  terraform -chdir="$TF_DIR" apply -input=false -var-file="$TFVARS" $(approve_flag)
  say "Provisioned. State machine: $(tf_output state_machine_arn)"
}

cmd_clean() {
  say "clean_up_infra is about to DESTROY the inference stack:"
  echo "  1. check AWS credentials (refuse without them)"
  echo "  2. apply allow_destroy=true: buckets and ECR may be deleted with their contents,"
  echo "     RDS loses deletion protection (no final snapshot), the secret is deleted at once"
  echo "  3. terraform destroy everything in inference/tf's state (Terraform asks first)"
  require_credentials
  require_tool terraform "install Terraform >= 1.11"
  [[ -f "$TFVARS" ]] || refuse "$TFVARS is missing: nothing was provisioned from this checkout."
  terraform_init
  # shellcheck disable=SC2046
  terraform -chdir="$TF_DIR" apply -input=false -var-file="$TFVARS" -var allow_destroy=true $(approve_flag)
  # shellcheck disable=SC2046
  terraform -chdir="$TF_DIR" destroy -input=false -var-file="$TFVARS" -var allow_destroy=true $(approve_flag)
  say "Destroyed."
}

main() {
  case "${1:-}" in
    setup) cmd_setup ;;
    provision) cmd_provision ;;
    clean) cmd_clean ;;
    *)
      echo "usage: $0 setup|provision|clean" >&2
      exit 64
      ;;
  esac
}

# Sourced (tests/infra/test_terraform.py), it only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
