#!/usr/bin/env bash
# Chart check: render chart/kloak for the default values and meaningful combinations, validate the
# values against values.schema.json and every rendered object against the Kubernetes schemas of
# 1.28 through the newest kubernetes-validate ships, prove bad values are rejected, and keep
# deploy/kloak.yaml equal to the default render.
#
#   scripts/chart/check.sh            check (exit status non-zero on any failure)
#   scripts/chart/check.sh --update   regenerate deploy/kloak.yaml first, then check
#
# Installs what it needs: Debian packages (golang-go and Go library sources; see README.md) and a
# Python venv with jsonschema + kubernetes-validate under ${KLOAK_CACHE:-/var/cache/kloak}/venv.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART=$ROOT/chart/kloak
HERE=$ROOT/scripts/chart
DEPLOY=$ROOT/deploy/kloak.yaml
CACHE=${KLOAK_CACHE:-/var/cache/kloak}
VENV=$CACHE/venv
MIN_K8S=1.28
RELEASE=kloak
NAMESPACE=kloak-system

update=0
case "${1:-}" in
  --update) update=1 ;;
  "") ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- dependencies --------------------------------------------------------------------------
apt_packages=(golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev
  golang-gopkg-yaml.v3-dev python3-venv)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
# python3-venv only matters for the system python3; another python3 (pyenv) brings its own venv.
if [ "${#missing[@]}" -gt 0 ] && [[ " ${missing[*]} " == *" python3-venv "* ]] &&
  python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing=("${missing[@]/python3-venv/}")
fi
read -r -a missing <<<"${missing[*]:-}"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq &&
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null ||
    { fail "apt-get install ${missing[*]}"; finish; }
fi
mkdir -p "$CACHE" || { fail "cannot create $CACHE (set KLOAK_CACHE)"; finish; }
if ! "$VENV/bin/python" -c 'import jsonschema, kubernetes_validate, yaml' 2>/dev/null; then
  echo "creating $VENV (jsonschema, kubernetes-validate)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate jsonschema ||
    { fail "python venv with kubernetes-validate"; finish; }
fi
PY=$VENV/bin/python

# --- renderer --------------------------------------------------------------------------------
RENDER=$CACHE/chart-render
unformatted=$(gofmt -l "$HERE/render")
if [ -n "$unformatted" ]; then fail "gofmt: $unformatted"; else pass "renderer is gofmt-clean"; fi
if (cd "$HERE/render" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
  GOCACHE="$CACHE/go-build" go build -o "$RENDER" .); then
  pass "renderer builds (Go $(go env GOVERSION), GOPATH mode, Debian sprig)"
else
  fail "renderer build"
  finish
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

render() { # NAME ARGS... -> $WORK/NAME.yaml and $WORK/NAME.values.json
  local name=$1
  shift
  "$RENDER" --chart "$CHART" --release-name "$RELEASE" --namespace "$NAMESPACE" "$@" \
    --dump-values >"$WORK/$name.values.json" 2>"$WORK/$name.err" &&
    "$RENDER" --chart "$CHART" --release-name "$RELEASE" --namespace "$NAMESPACE" "$@" \
      >"$WORK/$name.yaml" 2>"$WORK/$name.err"
}

python_check() { # LABEL ARGS... : run validate.py, count its verdict, show its lines
  local label=$1
  shift
  local output
  output=$("$PY" "$HERE/validate.py" "$@" 2>&1)
  local status=$?
  sed -e '/^RESULT /d' -e 's/^/    /' <<<"$output"
  if [ $status -eq 0 ]; then pass "$label"; else fail "$label"; fi
}

expect() { # NAME DESCRIPTION grep-pattern : the render of NAME contains the pattern
  if grep -qE -- "$3" "$WORK/$1.yaml"; then pass "$1: $2"; else fail "$1: $2 (no match for /$3/)"; fi
}
objects() { # NAME -> "Kind/name" per rendered object
  awk '/^---/{k="";n=""} /^kind: /{k=$2} /^  name: /{if(!n){n=$2; print k"/"n}}' "$WORK/$1.yaml"
}
expect_object() { # NAME DESCRIPTION Kind/name
  if objects "$1" | grep -qxF -- "$3"; then pass "$1: $2"; else fail "$1: $2 (no $3)"; fi
}
expect_no_object() {
  if objects "$1" | grep -qxF -- "$3"; then fail "$1: $2 (found $3)"; else pass "$1: $2"; fi
}
expect_not() {
  if grep -qE -- "$3" "$WORK/$1.yaml"; then fail "$1: $2 (unexpected /$3/)"; else pass "$1: $2"; fi
}

# --- good values: render, schema, Kubernetes schemas ----------------------------------------
cases=(default hardened certgen-init certgen-both servicemonitor custom-image provided-tls)
for name in "${cases[@]}"; do
  args=()
  case $name in
    default) ;;
    custom-image)
      args=(--values "$HERE/testdata/custom-image.yaml"
        --set image.repository=registry.example.com:5000/platform/kloak
        --set image.tag=v0.1.0-rc.1,image.pullPolicy=Always) ;;
    *) args=(--values "$HERE/testdata/$name.yaml") ;;
  esac
  if ! render "$name" "${args[@]}"; then
    fail "$name: render: $(cat "$WORK/$name.err")"
    continue
  fi
  pass "$name: renders $(grep -c '^kind:' "$WORK/$name.yaml") objects"
  python_check "$name: values match values.schema.json" \
    values "$CHART/values.schema.json" "$WORK/$name.values.json"
  python_check "$name: every object valid for Kubernetes $MIN_K8S to newest (strict)" \
    manifests "$MIN_K8S" "$WORK/$name.yaml"
done

# --- what the combinations must produce ------------------------------------------------------
if [ -f "$WORK/default.yaml" ]; then
  expect default "agent is hostPID with only the listed capabilities" \
    '^ *- (BPF|PERFMON|SYS_ADMIN|SYS_PTRACE|SYS_RESOURCE|KILL|NET_ADMIN)$'
  expect_not default "agent is not privileged" 'privileged: true'
  expect default "certgen hook Job runs post-install/post-upgrade" \
    'helm.sh/hook: post-install,post-upgrade'
  expect default "webhook entries fail closed" 'failurePolicy: Fail'
  expect default "webhook excludes its own namespace" "values: \\[\"$NAMESPACE\"\\]"
  expect_not default "caBundle is left to certgen" '^ *caBundle:'
  expect_object default "cluster-wide Secret access without watchNamespaces" ClusterRole/kloak-controller-secrets
  expect default "PodDisruptionBudget minAvailable 1" '^  minAvailable: 1$'
fi
if [ -f "$WORK/hardened.yaml" ]; then
  expect hardened "trusted DNS servers passed" '^ *- --dns-server=169\.254\.20\.10$'
  expect hardened "IPv6 DNS server passed" '^ *- --dns-server=fd00:10:96::a$'
  expect hardened "require-hosts passed" '^ *- --require-hosts$'
  expect hardened "watched namespaces passed" '^ *- --watch-namespace=agents$'
  expect hardened "observe mode passed" '^ *- --observe$'
  expect hardened "Secret access granted per namespace" '^  namespace: team-a$'
  expect_no_object hardened "no cluster-wide Secret access for the agent" ClusterRole/kloak-controller-secrets
  expect_no_object hardened "no cluster-wide Secret access for the webhook" ClusterRole/kloak-webhook
  expect_object hardened "the agent's Secret Role" Role/kloak-controller-secrets
fi
if [ -f "$WORK/certgen-init.yaml" ]; then
  expect certgen-init "webhook pods run certgen first" '^ *- --output-dir=/etc/kloak/tls$'
  expect_no_object certgen-init "no hook Job" Job/kloak-certgen
  expect_no_object certgen-init "no certgen ServiceAccount" ServiceAccount/kloak-certgen
fi
if [ -f "$WORK/certgen-both.yaml" ]; then
  expect certgen-both "hook Job kept" '^kind: Job$'
  expect certgen-both "init container kept" '^ *- --output-dir=/etc/kloak/tls$'
  expect_not certgen-both "PodDisruptionBudget disabled" '^kind: PodDisruptionBudget$'
fi
if [ -f "$WORK/servicemonitor.yaml" ]; then
  expect servicemonitor "ServiceMonitor rendered" '^kind: ServiceMonitor$'
  expect servicemonitor "metrics port follows controller.metricsPort" '^ *- --metrics-addr=0\.0\.0\.0:9464$'
fi
if [ -f "$WORK/provided-tls.yaml" ]; then
  expect provided-tls "the provided Secret is served" '^ *secretName: webhook-cert$'
  expect provided-tls "its caBundle in both webhook entries" '^ *caBundle: LS0tLS1CRUdJTi0tLS0t$'
  expect provided-tls "cert-manager's CA injector annotation" '^ *cert-manager.io/inject-ca-from: kloak-system/kloak-webhook$'
  expect_no_object provided-tls "no certgen hook Job" Job/kloak-certgen
  expect_no_object provided-tls "no certgen RBAC" ClusterRole/kloak-certgen
  expect_not provided-tls "no certgen init container" '^ *- --output-dir=/etc/kloak/tls$'
fi
if [ -f "$WORK/custom-image.yaml" ]; then
  expect custom-image "image from --set" '^ *image: registry\.example\.com:5000/platform/kloak:v0\.1\.0-rc\.1$'
  expect custom-image "pull secret" '^ *- name: registry-credentials$'
  expect custom-image "fullnameOverride prefixes names" '^  name: acme-kloak-webhook$'
fi

# --- the validators really reject -------------------------------------------------------------
for bad in "$HERE"/testdata/bad-*.yaml; do
  name=$(basename "$bad" .yaml)
  if ! render "$name" --values "$bad"; then
    fail "$name: render: $(cat "$WORK/$name.err")"
    continue
  fi
  python_check "$name: rejected by values.schema.json ($(sed -n 's/^# expect: //p' "$bad"))" \
    values "$CHART/values.schema.json" "$WORK/$name.values.json" --expect-reject
done
if [ -f "$WORK/default.yaml" ]; then
  # A control: a misspelt field and a mistyped value must fail the Kubernetes schema check.
  sed -e 's/^      hostPID: true/      hostPid: true/' -e 's/^  replicas: 2$/  replicas: "2"/' \
    "$WORK/default.yaml" >"$WORK/broken.yaml"
  if "$PY" "$HERE/validate.py" manifests "$MIN_K8S" "$WORK/broken.yaml" >"$WORK/broken.out" 2>&1; then
    fail "control: a broken manifest passed the Kubernetes schema check"
  elif grep -q "'hostPid' was unexpected" "$WORK/broken.out" &&
    grep -q "'2' is not of type 'integer'" "$WORK/broken.out"; then
    pass "control: kubernetes-validate rejects an unknown field and a wrong type"
  else
    fail "control: unexpected output: $(head -c 600 "$WORK/broken.out")"
  fi
fi

# --- deploy/kloak.yaml in sync ---------------------------------------------------------------
if [ -f "$WORK/default.yaml" ]; then
  if [ $update -eq 1 ]; then
    mkdir -p "$(dirname "$DEPLOY")"
    cp "$WORK/default.yaml" "$DEPLOY"
    echo "updated ${DEPLOY#"$ROOT"/}"
  fi
  if cmp -s "$DEPLOY" "$WORK/default.yaml"; then
    pass "deploy/kloak.yaml equals the default render"
  else
    diff -u "$DEPLOY" "$WORK/default.yaml" --label deploy/kloak.yaml --label rendered | head -200
    fail "deploy/kloak.yaml is out of date: run scripts/chart/check.sh --update"
  fi
fi

finish
