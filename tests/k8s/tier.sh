#!/usr/bin/env bash
# The k8s tier: kloak on a real single-node Kubernetes cluster (scripts/k8s/up.sh), installed with the
# real Helm, admitting real pods, rewriting a real pod's TLS traffic.
#
#   a. the chart: helm lint; helm template equals deploy/kloak.yaml (object by object)
#   b. helm install (image built by scripts/k8s/image.sh, imported; dnsServers = the tier's DNS
#      server): certgen's hook Job patches the caBundle, webhook and agent become ready
#   c. a labelled Secret with hosts/port annotations gets its shadow with placeholders; one whose
#      value is too short gets none, and a Warning Event
#   d. the webhook: a pod in a labelled namespace is pointed at the shadow (env and volume) and sees
#      only placeholders; a pod in an unlabelled namespace is untouched; a pod referencing a Secret
#      whose shadow is not there is denied, naming the Secret
#   e. a real rewrite (also from a Guaranteed pod given the Secret by envFrom, a projected volume
#      and an init container, and from a long-running Python pod that imports ssl late): curl in
#      the pod calls api.kloak.test (allowed) and other.kloak.test by names
#      the cluster's DNS server resolves; the allowed server receives the real value, the other the
#      placeholder (ciphertext strategy on a lockdown kernel, on the host end of the pod's veth)
#   f. the agent restarted (kubectl rollout restart) during traffic: every request still rewritten,
#      no process left stopped
#   f2. a length-changing rotation: new placeholder, old one retired and still rewritten (grace)
#   g. /readyz, /metrics, `kloak doctor` inside the agent pod
#   g2. helm upgrade --wait to certgen as init container and requireHosts: placeholder kept, the
#      webhook admits with the new certificate, a Secret without hosts gets no shadow
#   g3. helm upgrade to a provided certificate (webhook.tls): its CA in the webhook configuration,
#      the webhook serving it
#   h. helm uninstall: webhook configuration, shadows and pinned state gone
#   i. teardown leaves nothing behind (scripts/k8s/down.sh)
#
# Needs root. Prints PASS/FAIL per check and ends with one line "N passed, N failed"; exits non-zero
# when any check failed or the cluster could not come up. KLOAK_K8S_KEEP=1 leaves the cluster up;
# KLOAK_K8S_LOG sets the agents' log filter (default info).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/k8s/lib.sh
. "$ROOT/scripts/k8s/lib.sh"
WORK=${E2E_WORK:-$ROOT/target/k8s}
RELEASE=kloak
KNS=kloak-system
ON=kloak-e2e      # labelled getkloak.io/enabled=true
OFF=kloak-plain   # not labelled
SECRET_VALUE=sk-live-0123456789abcdefXYZ
API_IP=10.250.0.11
OTHER_IP=10.250.0.12
PINS=/sys/fs/bpf/kloak/controller
KLOAK_K8S_LOG=${KLOAK_K8S_LOG:-info}

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() {
  local name=$1
  shift
  echo "FAIL $name: $*"
  failed=$((failed + 1))
}
summary() { echo "$passed passed, $failed failed"; }
# check NAME CMD...: PASS when CMD succeeds, else FAIL with its output.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(head -c 800 <<<"$out")"; fi
}
# fatal NAME DETAIL: a step everything after depends on failed: count it, tear down, stop (the
# result line stays the last line).
fatal() {
  fail "$1" "$2"
  echo "k8s tier: cannot continue after: $1" >&2
  if [ "$ARMED" = 1 ]; then
    trap - EXIT
    cleanup
  fi
  summary
  exit 1
}
ARMED=0

HELPER_PIDS=()
cleanup() {
  local pid
  for pid in "${HELPER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  if [ "${KLOAK_K8S_KEEP:-0}" = 1 ]; then
    echo "KLOAK_K8S_KEEP=1: cluster left up; remove it with scripts/k8s/down.sh" >&2
    return
  fi
  local start=$SECONDS
  if "$ROOT/scripts/k8s/down.sh" >"$WORK/down.log" 2>&1; then
    pass "i: teardown leaves nothing behind ($((SECONDS - start))s)"
  else
    fail "i: teardown" "$(tail -20 "$WORK/down.log")"
  fi
}

# --- setup: binaries, images, cluster, host-side servers -------------------------------------------
setup() {
  [ "$(id -u)" -eq 0 ] || fatal setup "needs root"
  rm -rf "$WORK" && mkdir -p "$WORK"
  local start=$SECONDS
  nice -n 10 "$ROOT/scripts/k8s/build.sh" >"$WORK/build.log" 2>&1 ||
    fatal "cluster binaries (scripts/k8s/build.sh)" "$(tail -20 "$WORK/build.log")"
  pass "cluster binaries ready ($((SECONDS - start))s; $K8S_KEY)"
  start=$SECONDS
  mapfile -t IMAGES < <("$ROOT/scripts/k8s/image.sh" "$WORK/images" kloak pause client python \
    2>"$WORK/image.log")
  [ "${#IMAGES[@]}" -eq 4 ] || fatal "images (scripts/k8s/image.sh)" "$(tail -20 "$WORK/image.log")"
  pass "OCI images built without Docker ($((SECONDS - start))s): $(sed -n 's/: .*//p' "$WORK/image.log" | tr '\n' ' ')"
  start=$SECONDS
  trap cleanup EXIT
  ARMED=1
  "$ROOT/scripts/k8s/up.sh" "${IMAGES[@]}" >"$WORK/up.log" 2>&1 ||
    fatal "cluster up (scripts/k8s/up.sh)" "$(tail -25 "$WORK/up.log")"
  pass "cluster up: Kubernetes $K8S_VERSION, one node ($((SECONDS - start))s)"
  servers_up || fatal "host-side DNS and TLS servers" "$(tail -5 "$WORK"/*.server.log 2>/dev/null)"
}

# A DNS server on the node address the kubelet gives pods as their resolver, and two TLS servers
# that record what they receive: one for the allowed host, one for another host.
servers_up() {
  inns ip addr add "$API_IP/32" dev node0 && inns ip addr add "$OTHER_IP/32" dev node0 || return 1
  "$ROOT/tests/fixtures/gen_cert.sh" "$WORK/certs" api.kloak.test other.kloak.test >/dev/null || return 1
  helper dns.server.log python3 "$ROOT/tests/fixtures/dns_server.py" --listen "$K8S_DNS_IP:53" \
    --record "api.kloak.test=$API_IP" --record "other.kloak.test=$OTHER_IP" || return 1
  local name
  for name in api other; do
    local ip=$API_IP
    [ "$name" = api ] || ip=$OTHER_IP
    helper "$name.server.log" python3 "$ROOT/tests/fixtures/tls_server.py" --listen "$ip:443" \
      --cert "$WORK/certs/server.pem" --key "$WORK/certs/server.key" --record "$WORK/$name.rec" ||
      return 1
  done
}

helper() { # LOG CMD...: CMD in the cluster's netns, in the background, until it prints "ready"
  local log=$WORK/$1 i
  shift
  nsenter --net="/run/netns/$K8S_NETNS" "$@" >"$log" 2>&1 &
  HELPER_PIDS+=($!)
  for ((i = 0; i < 40; i++)); do
    grep -qs "^ready" "$log" && return 0
    sleep 0.25
  done
  return 1
}

# --- a. the chart ----------------------------------------------------------------------------------
chart_checks() {
  check "a: helm lint" inns helm lint "$ROOT/chart/kloak"
  if inns helm template "$RELEASE" "$ROOT/chart/kloak" -n "$KNS" >"$WORK/helm-template.yaml" 2>"$WORK/helm-template.err"; then
    check "a: helm template equals deploy/kloak.yaml, object by object" \
      python3 "$ROOT/tests/k8s/same_objects.py" "$WORK/helm-template.yaml" "$ROOT/deploy/kloak.yaml"
  else
    fail "a: helm template" "$(cat "$WORK/helm-template.err")"
  fi
}

# --- b. install ------------------------------------------------------------------------------------
install() {
  local start=$SECONDS
  # raiseMemlock=false: root on these machines lacks CAP_SYS_RESOURCE, so runc cannot grant it.
  if ! inns helm install "$RELEASE" "$ROOT/chart/kloak" -n "$KNS" --create-namespace --timeout 3m \
    --set image.repository=localhost/kloak,image.tag=dev,image.pullPolicy=Never \
    --set controller.raiseMemlock=false \
    --set "dnsServers={$K8S_DNS_IP}" --set-string "logLevel=${KLOAK_K8S_LOG//,/\\,}" \
    >"$WORK/helm-install.log" 2>&1; then
    fail "b: helm install" "$(tail -20 "$WORK/helm-install.log")"
    diagnose
    return 1
  fi
  pass "b: helm install, certgen hook Job done ($((SECONDS - start))s)"
  local bundles
  bundles=$(kc get mutatingwebhookconfiguration "$RELEASE" \
    -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}' | grep -c .)
  if [ "$bundles" -eq 2 ]; then pass "b: caBundle patched into both webhook entries"; else
    fail "b: caBundle" "$bundles of 2 webhook entries have one"; fi
  check "b: webhook Deployment available" \
    kc -n "$KNS" rollout status deploy/"$RELEASE-webhook" --timeout=120s
  if kc -n "$KNS" rollout status ds/"$RELEASE-controller" --timeout=120s >"$WORK/rollout.log" 2>&1; then
    pass "b: agent DaemonSet ready ($((SECONDS - start))s since install)"
  else
    fail "b: agent DaemonSet ready" "$(cat "$WORK/rollout.log")"
    diagnose
    return 1
  fi
}

diagnose() { # what went wrong in kloak-system, for the log
  kc -n "$KNS" get pods -o wide
  kc -n "$KNS" get events --sort-by=.lastTimestamp | tail -15
  local pod
  for pod in $(kc -n "$KNS" get pods -o name); do
    echo "--- $pod"
    kc -n "$KNS" logs "$pod" --all-containers --tail=25
  done
} >&2 2>&1

# --- c. shadows ------------------------------------------------------------------------------------
secret_data() { # NS NAME KEY: the decoded value
  kc -n "$1" get secret "$2" -o "jsonpath={.data.$3}" 2>/dev/null | base64 -d
}

shadows() {
  kc create namespace "$ON" >/dev/null && kc label namespace "$ON" getkloak.io/enabled=true >/dev/null
  kc create namespace "$OFF" >/dev/null
  kc -n "$ON" create secret generic api-key --from-literal=token="$SECRET_VALUE" >/dev/null
  kc -n "$ON" annotate secret api-key getkloak.io/hosts=api.kloak.test getkloak.io/port=443 >/dev/null
  kc -n "$ON" label secret api-key getkloak.io/enabled=true >/dev/null
  local start=$SECONDS placeholder=""
  waitfor "shadow api-key-kloak" 30 kc -n "$ON" get secret api-key-kloak
  placeholder=$(secret_data "$ON" api-key-kloak token)
  if [[ $placeholder == kloak:* ]] && [ "${#placeholder}" -eq "${#SECRET_VALUE}" ]; then
    pass "c: shadow api-key-kloak holds a placeholder of the value's length ($((SECONDS - start))s)"
  else
    fail "c: shadow" "placeholder '${placeholder}' (value is ${#SECRET_VALUE} bytes)"
  fi
  PLACEHOLDER=$placeholder
  # A value under 12 bytes gets no shadow, and a Warning Event says why.
  kc -n "$ON" create secret generic short --from-literal=token=tooshort >/dev/null
  kc -n "$ON" label secret short getkloak.io/enabled=true >/dev/null
  if waitfor "Warning Event for Secret short" 30 sh -c \
    "nsenter --net=/run/netns/$K8S_NETNS kubectl -n $ON get events \
      --field-selector involvedObject.kind=Secret,involvedObject.name=short,type=Warning \
      -o jsonpath='{.items[*].message}' | grep -q 'at least 12 bytes'"; then
    pass "c: a too-short value gets no shadow and a Warning Event"
  else
    fail "c: too-short value" "events: $(kc -n "$ON" get events 2>&1 | tail -5)"
  fi
  kc -n "$ON" get secret short-kloak >/dev/null 2>&1 && fail "c: too-short value" "it got a shadow"
}

# --- d. the webhook --------------------------------------------------------------------------------
client_pod() { # NS NAME SECRET: a curl pod with SECRET as env API_KEY and as a file
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1}
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: client
      image: localhost/kloak-test/client:1
      imagePullPolicy: Never
      command: [sleep, "3600"]
      env:
        - name: API_KEY
          valueFrom: {secretKeyRef: {name: $3, key: token}}
      volumeMounts: [{name: key, mountPath: /etc/key, readOnly: true}]
  volumes:
    - name: key
      secret: {secretName: $3}
EOF
}

webhook() {
  if ! client_pod "$ON" client api-key | kc apply -f - >"$WORK/pod.log" 2>&1; then
    fail "d: pod in labelled namespace admitted" "$(cat "$WORK/pod.log")"
    return 1
  fi
  local refs
  refs=$(kc -n "$ON" get pod client -o \
    jsonpath='{.spec.containers[0].env[0].valueFrom.secretKeyRef.name} {.spec.volumes[0].secret.secretName} {.metadata.labels.getkloak\.io/enabled}')
  if [ "$refs" = "api-key-kloak api-key-kloak true" ]; then
    pass "d: webhook points env and volume at the shadow and labels the pod"
  else
    fail "d: webhook patch" "env, volume, label: $refs"
  fi
  if kc -n "$ON" wait pod/client --for=condition=Ready --timeout=60s >/dev/null 2>&1; then
    local env file
    env=$(kc -n "$ON" exec client -- sh -c 'echo "$API_KEY"')
    file=$(kc -n "$ON" exec client -- cat /etc/key/token)
    if [ "$env" = "$PLACEHOLDER" ] && [ "$file" = "$PLACEHOLDER" ]; then
      pass "d: the workload sees only the placeholder (env and file)"
    else
      fail "d: workload view" "env '$env', file '$file', placeholder '$PLACEHOLDER'"
    fi
  else
    fail "d: client pod Ready" "$(kc -n "$ON" describe pod client | tail -15)"
  fi
  kc -n "$OFF" create secret generic plain --from-literal=token=plain-value-123456 >/dev/null
  client_pod "$OFF" plain plain | kc apply -f - >/dev/null 2>&1
  refs=$(kc -n "$OFF" get pod plain -o \
    jsonpath='{.spec.containers[0].env[0].valueFrom.secretKeyRef.name} {.metadata.labels}')
  if [ "$refs" = "plain " ]; then pass "d: a pod in an unlabelled namespace is untouched"; else
    fail "d: unlabelled namespace" "got: $refs"; fi
  local denied
  if denied=$(client_pod "$ON" denied short | kc apply -f - 2>&1); then
    fail "d: a pod referencing a Secret without shadow is denied" "it was admitted"
  elif grep -q "Secret $ON/short" <<<"$denied"; then
    pass "d: a pod referencing a Secret without shadow is denied, naming it"
  else
    fail "d: denial message" "$denied"
  fi
}

# A Guaranteed pod (its cgroup sits straight under kubepods/pod<uid>, no QoS level) referencing the
# Secret every other way: envFrom, a projected volume, and an init container's env.
guaranteed_pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: guaranteed, namespace: $ON}
spec:
  terminationGracePeriodSeconds: 0
  initContainers:
    - name: init
      image: localhost/kloak-test/client:1
      imagePullPolicy: Never
      command: [sh, -c, 'test -n "\$API_KEY"']
      env:
        - name: API_KEY
          valueFrom: {secretKeyRef: {name: api-key, key: token}}
      resources: {limits: {cpu: 50m, memory: 32Mi}}
  containers:
    - name: client
      image: localhost/kloak-test/client:1
      imagePullPolicy: Never
      command: [sleep, "3600"]
      envFrom: [{prefix: FROM_, secretRef: {name: api-key}}]
      volumeMounts: [{name: projected, mountPath: /etc/projected, readOnly: true}]
      resources: {limits: {cpu: 100m, memory: 64Mi}}
  volumes:
    - name: projected
      projected: {sources: [{secret: {name: api-key}}]}
EOF
}

guaranteed() {
  if ! guaranteed_pod | kc apply -f - >"$WORK/guaranteed.log" 2>&1; then
    fail "d: Guaranteed pod admitted" "$(cat "$WORK/guaranteed.log")"
    return 1
  fi
  local refs
  refs=$(kc -n "$ON" get pod guaranteed -o jsonpath='{.status.qosClass} {.spec.initContainers[0].env[0].valueFrom.secretKeyRef.name} {.spec.containers[0].envFrom[0].secretRef.name} {.spec.volumes[0].projected.sources[0].secret.name}')
  if [ "$refs" = "Guaranteed api-key-kloak api-key-kloak api-key-kloak" ]; then
    pass "d: Guaranteed pod: init container env, envFrom and projected volume pointed at the shadow"
  else
    fail "d: Guaranteed pod patch" "QoS and references: $refs"
  fi
  if ! kc -n "$ON" wait pod/guaranteed --for=condition=Ready --timeout=60s >/dev/null 2>&1; then
    fail "d: Guaranteed pod Ready" "$(kc -n "$ON" describe pod guaranteed | tail -10)"
    return 1
  fi
  local i got="" before
  before=$(carried "$WORK/api.rec" | wc -l)
  for ((i = 1; i <= 10; i++)); do
    kc -n "$ON" exec guaranteed -- sh -c "curl -sk --http1.1 --max-time 5 -o /dev/null \
      -H \"Authorization: Bearer \$FROM_token\" https://api.kloak.test/" >/dev/null 2>&1
    got=$(carried "$WORK/api.rec" | tail -n +"$((before + 1))" | tail -1)
    [ "$got" = real ] && break
    sleep 2
  done
  if [ "$got" = real ]; then
    pass "e: a Guaranteed pod (cgroup under kubepods/pod<uid>) gets the real value (attempt $i)"
  else
    fail "e: Guaranteed pod rewrite" "carried: $(carried "$WORK/api.rec" | tail -n +"$((before + 1))" | tr '\n' ' ')"
  fi
}

# A Python workload as the pod's own long-running process: it imports ssl (dlopen of the image's
# libssl) seconds after it started, then calls the allowed host every second.
python_workload() {
  client_pod "$ON" pyagent api-key |
    sed -e 's|localhost/kloak-test/client:1|localhost/kloak-test/python:1|' -e '/command: \[sleep/d' |
    kc apply -f - >/dev/null 2>&1
  local i got=""
  for ((i = 1; i <= 30; i++)); do
    got=$(carried "$WORK/api.rec" "X-Client: python" | tail -1)
    [ "$got" = real ] && break
    sleep 1
  done
  if [ "$got" = real ]; then
    pass "e: a long-running Python pod (ssl imported after start) gets the real value ($(carried "$WORK/api.rec" "X-Client: python" | sort | uniq -c | tr -s ' \n' ' '))"
  else
    fail "e: Python pod" "carried: $(carried "$WORK/api.rec" "X-Client: python" | tr '\n' ' ');" \
      "log: $(kc -n "$ON" logs pyagent --tail=3 2>&1)"
  fi
  # Left running, so its requests cross the agent's restart too (a pod being deleted loses its
  # binding at once: its last requests would carry the placeholder, by design).
}

# --- e. a real rewrite -----------------------------------------------------------------------------
# carried RECORD [MARKER]: one word per request the server recorded (only those containing MARKER,
# when given): real, placeholder, both or none.
carried() {
  python3 -c '
import base64, json, sys
secret, placeholder, marker = sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4].encode()
for line in open(sys.argv[1]):
    data = base64.b64decode(json.loads(line)["data_b64"])
    if marker in data:
        print({(True, False): "real", (False, True): "placeholder", (True, True): "both",
               (False, False): "none"}[(secret in data, placeholder in data)])' \
    "$1" "$SECRET_VALUE" "$PLACEHOLDER" "${2:-}"
}

curl_in_pod() { # HOST: one HTTP/1.1 request with the Authorization header from the env
  kc -n "$ON" exec client -- sh -c \
    "curl -sk --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer \$API_KEY\" https://$1/"
}

rewrite() {
  # The agent binds the pod's cgroups and hooks curl at exec: retry a few times while it catches up.
  local i got=""
  for ((i = 1; i <= 15; i++)); do
    curl_in_pod api.kloak.test >/dev/null 2>&1
    got=$(carried "$WORK/api.rec" | tail -1)
    [ "$got" = real ] && break
    sleep 2
  done
  if [ "$got" = real ]; then
    pass "e: api.kloak.test (allowed) received the real value (attempt $i)"
  else
    fail "e: allowed host" "requests carried: $(carried "$WORK/api.rec" | tr '\n' ' ')"
    kc -n "$KNS" logs ds/"$RELEASE-controller" --tail=40 >&2
  fi
  curl_in_pod other.kloak.test >/dev/null 2>&1
  got=$(carried "$WORK/other.rec" | tr '\n' ' ')
  if [ "$got" = "placeholder " ]; then
    pass "e: other.kloak.test (not allowed) received the placeholder"
  else
    fail "e: other host" "requests carried: $got"
  fi
}

# --- f. agent restart under traffic ----------------------------------------------------------------
restart_under_traffic() {
  local before after loop python_before python_after
  before=$(carried "$WORK/api.rec" "User-Agent: curl" | wc -l)
  python_before=$(carried "$WORK/api.rec" "X-Client: python" | wc -l)
  kc -n "$ON" exec client -- sh -c 'i=0; while [ $i -lt 40 ]; do
      curl -sk --http1.1 --max-time 5 -o /dev/null -H "Authorization: Bearer $API_KEY" https://api.kloak.test/
      sleep 0.5; i=$((i + 1)); done' >/dev/null 2>&1 &
  loop=$!
  sleep 2
  kc -n "$KNS" rollout restart ds/"$RELEASE-controller" >/dev/null
  check "f: agent restarted (rollout restart) during traffic" \
    kc -n "$KNS" rollout status ds/"$RELEASE-controller" --timeout=120s
  wait "$loop"
  after=$(carried "$WORK/api.rec" "User-Agent: curl" | tail -n +"$((before + 1))" | sort | uniq -c | tr -s ' \n' ' ')
  python_after=$(carried "$WORK/api.rec" "X-Client: python" | tail -n +"$((python_before + 1))" |
    sort | uniq -c | tr -s ' \n' ' ')
  if [[ $after =~ ^\ ?[0-9]+\ real\ ?$ ]] && [[ $python_after =~ ^\ ?[0-9]+\ real\ ?$ ]]; then
    pass "f: every request during the restart got the real value (curl:$after, Python:$python_after)"
  else
    fail "f: requests during the restart" "curl carried:$after; Python carried:$python_after"
  fi
  local stopped
  stopped=$(kc -n "$ON" exec client -- sh -c 'grep -l "^State:.*T" /proc/[0-9]*/status' 2>/dev/null)
  if [ -z "$stopped" ]; then pass "f: no process left stopped"; else
    fail "f: stopped processes" "$stopped"; fi
}

# --- f2. a rotation that changes the value's length -------------------------------------------------
# A new placeholder is minted, the old one is listed as retired, and a pod still holding the old one
# (the client's env) keeps getting the old value during the grace period: a placeholder only ever
# carries a value of its own length, and the old value is what that pod was given.
rotation() {
  local value=sk-live-rotated-0123456789abcdefXYZ now retired before got
  kc -n "$ON" create secret generic api-key --from-literal=token="$value" --dry-run=client -o yaml |
    kc -n "$ON" apply -f - >/dev/null 2>&1
  waitfor "rotated shadow" 30 sh -c "test \"\$(nsenter --net=/run/netns/$K8S_NETNS kubectl -n $ON \
    get secret api-key-kloak -o jsonpath='{.data.token}' | base64 -d | wc -c)\" -eq ${#value}"
  now=$(secret_data "$ON" api-key-kloak token)
  retired=$(kc -n "$ON" get secret api-key-kloak -o jsonpath='{.metadata.annotations.getkloak\.io/retired}')
  if [[ $now == kloak:* ]] && [ "${#now}" -eq "${#value}" ] && [ "$now" != "$PLACEHOLDER" ] &&
    [ -n "$retired" ]; then
    pass "f2: a length-changing rotation mints a new placeholder and retires the old one"
  else
    fail "f2: rotation" "placeholder '$now' (${#now} bytes, value ${#value}), retired '$retired'"
  fi
  before=$(carried "$WORK/api.rec" "User-Agent: curl" | wc -l)
  curl_in_pod api.kloak.test >/dev/null 2>&1
  # SECRET_VALUE and PLACEHOLDER are still the old pair here: what the pod holds and should carry.
  got=$(carried "$WORK/api.rec" "User-Agent: curl" | tail -n +"$((before + 1))" | tr '\n' ' ')
  if [ "$got" = "real " ]; then
    pass "f2: a pod holding the retired placeholder still gets its (old) real value in the grace period"
  else
    fail "f2: retired placeholder" "the request carried: $got"
  fi
  SECRET_VALUE=$value
  PLACEHOLDER=$now
}

# --- g. operations ---------------------------------------------------------------------------------
operations() {
  local agent
  agent=$(kc -n "$KNS" get pods -l app.kubernetes.io/component=controller -o name | head -1)
  check "g: /readyz" inns curl -sf "http://$K8S_NODE_IP:9090/readyz"
  inns curl -sf "http://$K8S_NODE_IP:9090/metrics" >"$WORK/metrics.txt"
  if grep -q '^kloak_' "$WORK/metrics.txt"; then
    pass "g: /metrics ($(grep -c '^kloak_' "$WORK/metrics.txt") kloak_ samples)"
  else
    fail "g: /metrics" "$(head -c 400 "$WORK/metrics.txt")"
  fi
  if kc -n "$KNS" exec "$agent" -- kloak doctor >"$WORK/doctor.txt" 2>&1; then
    pass "g: kloak doctor in the agent pod"
  else
    fail "g: kloak doctor in the agent pod" "$(tail -15 "$WORK/doctor.txt")"
  fi
  # S1: the real value is in no log.
  if kc -n "$KNS" logs "$agent" 2>/dev/null | grep -qF "$SECRET_VALUE"; then
    fail "g: agent log" "holds the real value"
  else
    pass "g: the real value is in no agent log"
  fi
}

# --- g2. upgrade to the other certificate mode and requireHosts --------------------------------------
# certgen as the webhook's init container (works with --wait), and --require-hosts: the agents and
# the webhook roll, the placeholder stays, the webhook serves the init container's certificate.
upgrade() {
  local start=$SECONDS
  if ! inns helm upgrade "$RELEASE" "$ROOT/chart/kloak" -n "$KNS" --reuse-values --wait --timeout 3m \
    --set certgen.mode=initContainer,requireHosts=true >"$WORK/helm-upgrade.log" 2>&1; then
    fail "g2: helm upgrade --wait (certgen.mode=initContainer, requireHosts=true)" \
      "$(tail -20 "$WORK/helm-upgrade.log")"
    diagnose
    return 1
  fi
  pass "g2: helm upgrade --wait to certgen.mode=initContainer, requireHosts=true ($((SECONDS - start))s)"
  local now
  now=$(secret_data "$ON" api-key-kloak token)
  if [ "$now" = "$PLACEHOLDER" ]; then pass "g2: the placeholder survived the upgrade"; else
    fail "g2: placeholder after upgrade" "was '$PLACEHOLDER', now '$now'"; fi
  local out
  if out=$(client_pod "$ON" after-upgrade api-key | kc apply -f - 2>&1) &&
    [ "$(kc -n "$ON" get pod after-upgrade -o jsonpath='{.spec.volumes[0].secret.secretName}')" = api-key-kloak ]; then
    pass "g2: the webhook admits with the init container's certificate"
  else
    fail "g2: admission after upgrade" "$out"
  fi
  kc -n "$ON" create secret generic nohosts --from-literal=token=sk-live-no-hosts-0123456 >/dev/null
  kc -n "$ON" label secret nohosts getkloak.io/enabled=true >/dev/null
  if waitfor "hosts_required Event" 30 sh -c \
    "nsenter --net=/run/netns/$K8S_NETNS kubectl -n $ON get events \
      --field-selector involvedObject.kind=Secret,involvedObject.name=nohosts,type=Warning \
      -o jsonpath='{.items[*].message}' | grep -q require-hosts" &&
    ! kc -n "$ON" get secret nohosts-kloak >/dev/null 2>&1; then
    pass "g2: requireHosts: a Secret without hosts gets no shadow, and a Warning Event"
  else
    fail "g2: requireHosts" "shadow: $(kc -n "$ON" get secret nohosts-kloak -o name 2>&1)"
  fi
}

# --- g3. a provided certificate (what cert-manager users point at) ---------------------------------
provided_tls() {
  local dir=$WORK/provided-tls svc="$RELEASE-webhook.$KNS.svc"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=provided-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$svc" \
      -keyout "$dir/tls.key" 2>/dev/null |
    openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -days 2 -out "$dir/tls.crt" \
      -extfile <(echo "subjectAltName=DNS:$svc") 2>/dev/null &&
    kc -n "$KNS" create secret tls provided-tls --cert="$dir/tls.crt" --key="$dir/tls.key" >/dev/null ||
    { fail "g3: a provided certificate" "openssl or kubectl create secret tls failed"; return 1; }
  local bundle
  bundle=$(base64 -w0 "$dir/ca.pem")
  # --force-conflicts: Helm 4 applies server-side, and certgen (field manager kloak) owns the
  # caBundle it patched; taking it over is the point of this upgrade.
  if ! inns helm upgrade "$RELEASE" "$ROOT/chart/kloak" -n "$KNS" --reuse-values --wait --timeout 3m \
    --force-conflicts --set webhook.tls.secretName=provided-tls --set-string "webhook.tls.caBundle=$bundle" \
    >"$WORK/helm-upgrade-tls.log" 2>&1; then
    fail "g3: helm upgrade to a provided certificate" "$(tail -20 "$WORK/helm-upgrade-tls.log")"
    diagnose
    return 1
  fi
  local bundles
  bundles=$(kc get mutatingwebhookconfiguration "$RELEASE" \
    -o jsonpath='{range .webhooks[*]}{.clientConfig.caBundle}{"\n"}{end}' | grep -cxF "$bundle")
  if [ "$bundles" -eq 2 ]; then pass "g3: the provided CA is the caBundle of both webhook entries"; else
    fail "g3: provided caBundle" "$bundles of 2 entries carry it"; fi
  local out
  if out=$(client_pod "$ON" provided-tls api-key | kc apply -f - 2>&1) &&
    [ "$(kc -n "$ON" get pod provided-tls -o jsonpath='{.spec.volumes[0].secret.secretName}')" = api-key-kloak ]; then
    pass "g3: the webhook serves the provided certificate and admits"
  else
    fail "g3: admission with the provided certificate" "$out"
  fi
}

# --- h. uninstall ----------------------------------------------------------------------------------
uninstall() {
  check "h: helm uninstall" inns helm uninstall "$RELEASE" -n "$KNS" --wait --timeout 2m
  if kc get mutatingwebhookconfiguration "$RELEASE" >/dev/null 2>&1; then
    fail "h: webhook configuration" "still there"
  else
    pass "h: webhook configuration gone"
  fi
  local shadows
  shadows=$(kc get secrets -A -l getkloak.io/managed=true -o name)
  if [ -z "$shadows" ]; then pass "h: no shadow Secret left"; else
    fail "h: shadows left after uninstall" "$shadows"; fi
  if [ -z "$(ls -A "$PINS" 2>/dev/null)" ]; then pass "h: no pinned state left ($PINS)"; else
    fail "h: pinned state left" "$(ls "$PINS" | head -5 | tr '\n' ' ')"
  fi
}

main() {
  setup
  chart_checks
  if install; then
    shadows
    webhook
    rewrite
    guaranteed
    python_workload
    restart_under_traffic
    rotation
    operations
    upgrade
    provided_tls
    uninstall
  fi
  cleanup
  trap - EXIT
  summary
  [ "$failed" -eq 0 ]
}

main "$@"
