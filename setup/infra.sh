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

terraform_init() {
  say "terraform init in inference/tf"
  terraform -chdir="$TF_DIR" init -input=false
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
  echo "  4. docker build -f inference/Dockerfile and push the image as <repository>:$tag"
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
  say "Logging docker in to ${image_repo%%/*}"
  "$PY" - "$image_repo" <<'PY' | docker login --username AWS --password-stdin "${image_repo%%/*}"
import base64, sys
import boto3
token = boto3.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
print(base64.b64decode(token).decode().split(":", 1)[1])
PY
  say "Building and pushing $image_repo:$tag"
  docker build -f "$REPO_ROOT/inference/Dockerfile" -t "$image_repo:$tag" "$REPO_ROOT"
  docker push "$image_repo:$tag"
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

case "${1:-}" in
  setup) cmd_setup ;;
  provision) cmd_provision ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 setup|provision|clean" >&2
    exit 64
    ;;
esac
