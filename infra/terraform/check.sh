#!/usr/bin/env bash
# Checks of infra/terraform: formatting, validation of the module and the example, the module's
# `terraform test` suite (mocked AWS provider, no credentials, no network), checkov, then an
# apply, inspection and destroy of the module against moto_server, a local AWS API emulator.
#
# Terraform never downloads providers here: it installs hashicorp/aws from a local plugin folder
# (the folder that contains registry.terraform.io/), given as BACKBEAT_TF_PLUGIN_DIR or found on
# this machine.
#
#   bash infra/terraform/check.sh            # or: make infra-check
#   BACKBEAT_TF_PLUGIN_DIR=/path/to/plugins bash infra/terraform/check.sh
set -euo pipefail

CHECKOV_VERSION="3.3.30"
MOTO_VERSION="5.2.5"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TF_ROOT="infra/terraform"
MODULE="modules/reverb-rollup-lambda"
EXAMPLE="examples/complete"
CHECKOV_VENV="$ROOT/.venv-checkov"
MOTO_VENV="$ROOT/.venv-moto"

cd "$ROOT"

started=$SECONDS
step() { printf '\n==> [%3ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

if ! command -v terraform >/dev/null 2>&1; then
  cat >&2 <<'EOF'

##############################################################################
##                                                                          ##
##   WARNING: `terraform` is not on PATH -- infra/terraform NOT CHECKED.    ##
##                                                                          ##
##   Formatting, validation, the module tests and checkov were skipped.     ##
##   Install Terraform >= 1.11 and run `make infra-check` again.            ##
##                                                                          ##
##############################################################################

EOF
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A user's CLI configuration (credentials helpers, network mirrors, a missing file) must not
# change what these checks do.
: >"$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"
export TF_IN_AUTOMATION=1
export CHECKPOINT_DISABLE=1
unset TF_DATA_DIR TF_PLUGIN_CACHE_DIR

find_plugin_dir() {
  local candidate found
  # Terraform's own implied local mirror folders first, then a bounded search of this filesystem.
  for candidate in \
    "${XDG_DATA_HOME:-$HOME/.local/share}/terraform/plugins" \
    "$HOME/.terraform.d/plugins" \
    /usr/local/share/terraform/plugins \
    /usr/share/terraform/plugins; do
    if compgen -G "$candidate/registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*" >/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  found="$(timeout 120 find / -xdev \
    \( -path /proc -o -path /sys -o -path '*/node_modules' -o -path '*/.git' \) -prune -o \
    -path '*/registry.terraform.io/hashicorp/aws/*' -name 'terraform-provider-aws*' -print -quit \
    2>/dev/null || true)"
  [[ -n "$found" ]] || return 1
  printf '%s\n' "${found%%/registry.terraform.io/*}"
}

if [[ -n "${BACKBEAT_TF_PLUGIN_DIR:-}" ]]; then
  TF_PLUGIN_DIR="$BACKBEAT_TF_PLUGIN_DIR"
else
  step "Looking for a local hashicorp/aws provider (set BACKBEAT_TF_PLUGIN_DIR to skip this)"
  TF_PLUGIN_DIR="$(find_plugin_dir)" || fail "no hashicorp/aws provider found on this machine.
Set BACKBEAT_TF_PLUGIN_DIR to the folder that contains registry.terraform.io/hashicorp/aws/<version>/<os_arch>/."
fi
compgen -G "$TF_PLUGIN_DIR/registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*" >/dev/null ||
  fail "BACKBEAT_TF_PLUGIN_DIR=$TF_PLUGIN_DIR holds no registry.terraform.io/hashicorp/aws provider."
echo "provider folder: $TF_PLUGIN_DIR"
terraform version | sed -n 1p  # sed reads to the end: no SIGPIPE under pipefail

step "terraform fmt -check -recursive $TF_ROOT infra/emulator"
terraform fmt -check -recursive -diff "$TF_ROOT"
terraform fmt -check -recursive -diff infra/emulator

# Init, validate and test a pristine copy, so neither a developer's .terraform folders and lock
# files nor leftovers of an earlier run can change the result.
tar -C "$ROOT/infra" --exclude=.terraform --exclude=.terraform.lock.hcl -cf - terraform | tar -C "$work" -xf -

tf_init() {
  terraform -chdir="$work/terraform/$1" init -backend=false -input=false -no-color \
    -plugin-dir "$TF_PLUGIN_DIR" >"$work/init.log" 2>&1 ||
    { cat "$work/init.log" >&2; fail "terraform init failed in $TF_ROOT/$1"; }
}

for dir in "$MODULE" "$EXAMPLE"; do
  step "terraform init + validate: $TF_ROOT/$dir"
  tf_init "$dir"
  terraform -chdir="$work/terraform/$dir" validate -no-color
done

step "terraform test: $TF_ROOT/$MODULE"
terraform -chdir="$work/terraform/$MODULE" test -no-color

step "checkov $CHECKOV_VERSION"
if [[ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null || true)" != "$CHECKOV_VERSION" ]]; then
  echo "installing checkov==$CHECKOV_VERSION into ${CHECKOV_VENV#"$ROOT/"} (one-time)"
  [[ -x "$CHECKOV_VENV/bin/python" ]] || python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
    >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; fail "could not install checkov==$CHECKOV_VERSION"; }
fi
# --skip-download: no calls to the vendor's platform; every check and waiver is local.
# No parse timeout: on a busy machine checkov would otherwise skip a slow file and still pass.
checkov_status=0
HCL_PARSE_TIMEOUT_SEC=0 "$CHECKOV_VENV/bin/checkov" -d "$TF_ROOT" --quiet --compact --skip-download \
  >"$work/checkov.log" 2>&1 || checkov_status=$?
cat "$work/checkov.log"
[[ $checkov_status -eq 0 ]] || fail "checkov reported failed checks"
! grep -q 'Parsing errors: [1-9]' "$work/checkov.log" || fail "checkov could not parse every file"

# Apply, inspect and destroy the module against moto_server, a local AWS API emulator: a module
# change that validates but cannot deploy fails here. The emulator runs on a loopback port and
# the provider talks to nothing else (infra/emulator/main.tf).
step "terraform apply + inspect + destroy against moto_server $MOTO_VERSION (local AWS API emulator)"
# The Lambda runtime is Python 3.11: the handler is imported from the zip with that version.
TOOL_PYTHON="$(command -v python3.11 || command -v python3)"
if [[ "$("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || true)" != "$MOTO_VERSION" ]]; then
  echo "installing moto[server]==$MOTO_VERSION into ${MOTO_VENV#"$ROOT/"} (one-time)"
  [[ -x "$MOTO_VENV/bin/python" ]] || "$TOOL_PYTHON" -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
    >"$work/pip-moto.log" 2>&1 || { cat "$work/pip-moto.log" >&2; fail "could not install moto[server]==$MOTO_VERSION"; }
fi
package="$work/reverb-rollup-lambda.zip"
"$TOOL_PYTHON" infra/terraform/package_lambda.py --output "$package" >"$work/package.log" 2>&1 ||
  { cat "$work/package.log" >&2; fail "could not build the Lambda package"; }
tail -n 1 "$work/package.log"
mkdir -p "$work/apply"
"$MOTO_VENV/bin/python" infra/emulator/apply_check.py \
  --plugin-dir "$TF_PLUGIN_DIR" --package "$package" --work "$work/apply" ||
  fail "the module did not apply, inspect and destroy cleanly against the emulator"

printf '\ninfra/terraform: all checks passed in %ss\n' "$((SECONDS - started))"
