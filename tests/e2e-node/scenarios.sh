# Scenarios of tests/e2e-node/run.sh (sourced; each returns 1 with `no REASON`).
# shellcheck shell=bash

DRAIN=10     # --drain-timeout of the release (seconds)
PRESTOP=2    # lifecycle.preStopSleepSeconds
GRACE=4      # the route's drain.gracePeriod (seconds)

# ---- image ----------------------------------------------------------------------
scenario_image() {
  local x="${STATE}/image" cfg m df
  mkdir -p "${x}/oci" "${x}/rootfs"
  tar -xf "${IMAGES}/wsgate.oci.tar" -C "${x}/oci"
  m="$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "${x}/oci/index.json")"
  cfg="${x}/oci/blobs/sha256/$(jq -r '.config.digest | sub("sha256:"; "")' "${x}/oci/blobs/sha256/${m}")"
  tar -xf "${x}/oci/blobs/sha256/$(jq -r '.layers[0].digest | sub("sha256:"; "")' "${x}/oci/blobs/sha256/${m}")" -C "${x}/rootfs"
  df="$(awk '/^FROM /{s=""} {s=s $0 "\n"} END{printf "%s", s}' "${ROOT}/Dockerfile")"
  local user ep cmd ports
  user="$(sed -n 's/^USER  *//p' <<<"${df}")"; ep="$(sed -n 's/^ENTRYPOINT  *//p' <<<"${df}")"
  cmd="$(sed -n 's/^CMD  *//p' <<<"${df}")"; ports="$(sed -n 's/^EXPOSE  *//p' <<<"${df}")"
  jq -e --arg u "${user}" --argjson ep "${ep}" --argjson cmd "${cmd}" \
    '.config.User == $u and .config.Entrypoint == $ep and .config.Cmd == $cmd' "${cfg}" >/dev/null ||
    no "image config $(jq -c .config "${cfg}") differs from the Dockerfile (USER ${user}, ENTRYPOINT ${ep}, CMD ${cmd})"
  local p
  for p in ${ports}; do jq -e --arg p "${p}/tcp" '.config.ExposedPorts | has($p)' "${cfg}" >/dev/null || no "port ${p} not exposed"; done
  [[ -e "${x}/rootfs/bin/sh" || -e "${x}/rootfs/usr/bin/sh" || -e "${x}/rootfs/bin/bash" ]] && no "the image has a shell"
  readelf -S "${x}/rootfs/wsgate" | grep -c '\.debug_info' >/dev/null && no "the image's binary carries debug info"
  readelf -S "${x}/rootfs/wsgate" | grep -c '\.symtab' >/dev/null && no "the image's binary carries a symbol table"
  readelf -S "${IMAGES}/wsgate.debug" | grep -c '\.debug_info' >/dev/null || no "wsgate.debug holds no .debug_info"
  readelf --string-dump=.gnu_debuglink "${x}/rootfs/wsgate" | grep -c 'wsgate\.debug' >/dev/null || no "no .gnu_debuglink to wsgate.debug"
  log "$(jq -c '.config | {User, Entrypoint, Cmd, ExposedPorts}' "${cfg}")"
  log "sizes: $(tr '\n' ' ' <"${IMAGES}/SIZES")"
}

# ---- install ------------------------------------------------------------------------
write_values() {
  cat >"${STATE}/values.yaml" <<EOF
image: {pullPolicy: Never}
replicaCount: 2
drainTimeoutSeconds: ${DRAIN}
lifecycle: {preStopSleepSeconds: ${PRESTOP}}
# No kube-proxy and no load balancer here: clients dial pod IPs.
service: {type: ClusterIP}
# No kube-proxy, so the kubernetes Service's ClusterIP leads nowhere: point the
# in-cluster config at the apiserver on the node's address instead.
extraEnv:
  - {name: KUBERNETES_SERVICE_HOST, value: "192.0.2.1"}
  - {name: KUBERNETES_SERVICE_PORT, value: "${APISERVER_PORT}"}
metrics:
  serviceMonitor: {interval: 5s, scrapeTimeout: 4s}
# The echo route has no hostnames (a catch-all): its namespace must be allowed one.
catchAllNamespaces: [${APP}]
EOF
}

scenario_install() {
  write_values
  # The Gateway API's CRDs first, as in most clusters: the chart then adds the GatewayClass.
  "${K[@]}" apply --server-side -f "${GWAPI_CRDS}/" >/dev/null || no "Gateway API CRD apply failed"
  "${K[@]}" wait --for=condition=Established crd --all --timeout=60s >/dev/null || no "Gateway API CRDs not Established"
  "${K[@]}" apply --server-side -f "${ROOT}/charts/wsgate/crds/" >/dev/null || no "CRD apply failed"
  "${HELM}" --kubeconfig "${KUBECONFIG}" install wsgate "${ROOT}/charts/wsgate" -n "${NS}" --create-namespace \
    -f "${STATE}/values.yaml" --wait --timeout 180s || {
    "${K[@]}" -n "${NS}" get pods -o wide; "${K[@]}" -n "${NS}" describe pods | tail -n 40
    no "helm install --wait failed"
  }
  "${K[@]}" get gatewayclass wsgate >/dev/null || no "the chart made no GatewayClass wsgate"
  local pods name ip pid st
  mapfile -t pods < <(wsgate_pods)
  [[ ${#pods[@]} -eq 2 ]] || no "expected 2 Ready pods, got ${#pods[@]}"
  for p in "${pods[@]}"; do
    read -r name ip <<<"${p}"
    pid="$(container_pid "${NS}" "${name}" wsgate)"
    [[ -n "${pid}" ]] || no "no container process for ${name}"
    st="/proc/${pid}/status"
    grep -Eq '^Uid:\s+65532\s+65532\s+65532\s+65532$' "${st}" || no "${name}: $(grep ^Uid "${st}")"
    grep -Eq '^Gid:\s+65532\s+65532\s+65532\s+65532$' "${st}" || no "${name}: $(grep ^Gid "${st}")"
    grep -Eq '^CapEff:\s+0+$' "${st}" || no "${name}: $(grep ^CapEff "${st}")"
    grep -Eq '^CapBnd:\s+0+$' "${st}" || no "${name}: $(grep ^CapBnd "${st}")"
    grep -Eq '^NoNewPrivs:\s+1$' "${st}" || no "${name}: allowPrivilegeEscalation not in force"
    grep -Eq '^Seccomp:\s+2$' "${st}" || no "${name}: no seccomp filter ($(grep ^Seccomp "${st}"))"
    # mountinfo field 5 is the mount point, field 6 its options.
    awk '$5 == "/" {print $6}' "/proc/${pid}/mountinfo" | grep -Ec '(^|,)ro(,|$)' >/dev/null || no "${name}: root filesystem is writable"
    [[ "$(tr '\0' ' ' <"/proc/${pid}/cmdline")" == "/wsgate run "* ]] || no "${name}: runs $(tr '\0' ' ' <"/proc/${pid}/cmdline")"
    curl -fsS --max-time 3 "http://${ip}:9090/readyz" >/dev/null || no "${name}: /readyz on ${ip}:9090 not 200"
    log "${name} ${ip}: pid ${pid}, uid/gid 65532, no capabilities, NoNewPrivs, seccomp filter, read-only /"
  done
}

# ---- echo ---------------------------------------------------------------------------
apply_echo() {
  "${K[@]}" create namespace "${APP}" >/dev/null 2>&1 || true
  "${K[@]}" -n "${APP}" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: echo
          image: docker.io/library/wsgate-echo:${VERSION}
          imagePullPolicy: Never
          args: ["0.0.0.0:9001"]
          ports: [{name: ws, containerPort: 9001}]
          readinessProbe: {tcpSocket: {port: 9001}, periodSeconds: 2}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: ws, port: 9001, targetPort: ws}]
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: echo}
spec:
  path: {type: PathPrefix, value: /echo}
  backends: [{service: {name: echo, port: ws}}]
  keepalive: {interval: 2s, timeout: 1s}
  drain: {gracePeriod: ${GRACE}s}
  proxyHttp: true
EOF
}

route_programmed() {
  [[ "$("${K[@]}" -n "${APP}" get websocketroute echo -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status}')" == True ]]
}

websocat_echo() { # URL
  local got
  got="$( (printf 'hello from websocat\n'; sleep 3) | timeout 10 "${WEBSOCAT}" "$1" | head -n1)"
  [[ "${got}" == "hello from websocat" ]]
}

scenario_echo() {
  apply_echo || no "applying the echo backend failed"
  "${K[@]}" -n "${APP}" rollout status deploy/echo --timeout=90s || no "echo Deployment not available"
  wait_until 30 route_programmed || no "route not Programmed: $("${K[@]}" -n "${APP}" get wsr echo -o jsonpath='{.status}')"
  local p name ip
  while read -r name ip; do
    wait_until 10 websocat_echo "ws://${ip}:8080/echo" || no "websocat echo through ${name} (${ip}) failed"
    "${PROBE[@]}" echo "ws://${ip}:8080/echo" || no "Python websockets echo through ${name} failed"
    log "${name} ${ip}: websocat text echo, Python text+binary echo"
  done < <(wsgate_pods)
}

scenario_keepalive() {
  local name ip n
  read -r name ip < <(wsgate_pods | head -n1)
  n="$("${PROBE[@]}" pings "ws://${ip}:8080/echo" 7)" || no "idle client failed"
  log "an idle client saw ${n} pings in 7 s (interval 2s) through ${name}"
  ((n >= 2)) || no "only ${n} pings in 7 s with a 2 s interval"
}

# ---- lease ----------------------------------------------------------------------------
scenario_lease() {
  local holder pods gen obs
  holder="$("${K[@]}" -n "${NS}" get lease wsgate -o jsonpath='{.spec.holderIdentity}')" || no "no Lease wsgate"
  pods="$(wsgate_pods | awk '{print $1}' | tr '\n' ' ')"
  [[ " ${pods} " == *" ${holder} "* ]] || no "Lease holder '${holder}' is not one of the pods (${pods})"
  gen="$("${K[@]}" -n "${APP}" get wsr echo -o jsonpath='{.metadata.generation}')"
  obs="$("${K[@]}" -n "${APP}" get wsr echo -o jsonpath='{.status.conditions[?(@.type=="Programmed")].observedGeneration}')"
  route_programmed || no "route status not Programmed=True"
  [[ "${gen}" == "${obs}" ]] || no "status observedGeneration ${obs} != generation ${gen}"
  log "Lease holder ${holder} of ${pods}; route Programmed=True at generation ${gen}"
}

# ---- backend gone ------------------------------------------------------------------------
# hold_start FILE URL N: background clients; waits until they are all open.
hold_start() {
  "${PROBE[@]}" hold "$2" "$3" --max-seconds 200 >"$1" 2>"$1.err" &
  bg_pids+=($!)
  HOLD_PID=$!
  wait_until 20 grep -q '"ready"' "$1"
}
closes() { grep -c '"close"' "$1" || true; }
closed_at_least() { (( $(closes "$1") >= $2 )); }

# GET on a wsgate pod's admin listener, which the chart keeps on the pod's loopback
# (127.0.0.1:9091): from the node, inside the pod's network namespace.
admin_get() { # POD PATH
  local pid
  pid="$(container_pid "${NS}" "$1" wsgate)" || return 1
  nsenter -t "${pid}" -n curl -fsS --max-time 5 "http://127.0.0.1:9091$2"
}

scenario_backend_gone() {
  local name ip f="${STATE}/backend-gone.jsonl" conns victim victim_ip other_ip n_victim n_other t0 hp
  read -r name ip < <(wsgate_pods | head -n1)
  hold_start "${f}" "ws://${ip}:8080/echo" 12 || no "could not open 12 tunnels: $(cat "${f}.err")"
  hp=${HOLD_PID}
  conns="$(admin_get "${name}" /connections)" || no "no /connections"
  # The pod's own address serves metrics and probes only.
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://${ip}:9090/connections")" == 404 ]] ||
    no "/connections answered on ${ip}:9090: the admin listener must stay on loopback"
  mapfile -t backends < <(jq -r '[.[] | select(.route == "echo") | .backend | sub(":[0-9]+$"; "")] | group_by(.) | map("\(.[0]) \(length)") | .[]' <<<"${conns}")
  [[ ${#backends[@]} -eq 2 ]] || no "tunnels not spread over both backends: ${backends[*]}"
  read -r victim_ip n_victim <<<"${backends[0]}"
  read -r other_ip n_other <<<"${backends[1]}"
  victim="$("${K[@]}" -n "${APP}" get pods -o json | jq -r --arg ip "${victim_ip}" '.items[] | select(.status.podIP == $ip) | .metadata.name')"
  [[ -n "${victim}" ]] || no "no echo pod has IP ${victim_ip}"
  t0="$(date +%s.%N)"
  "${K[@]}" -n "${APP}" delete pod "${victim}" --wait=false >/dev/null || no "delete failed"
  log "deleted ${victim} (${victim_ip}, ${n_victim} tunnels); ${other_ip} holds ${n_other}"
  wait_until $((GRACE + 20)) closed_at_least "${f}" "${n_victim}" || true
  sleep 3 # anything else that would close, closes now
  [[ "$(closes "${f}")" -eq "${n_victim}" ]] || no "$(closes "${f}") tunnels closed, expected ${n_victim}: $(grep close "${f}" | head -n 20)"
  jq -se --argjson t0 "${t0}" --argjson g "${GRACE}" \
    '[.[] | select(.event == "close")] | all(.code == 1001 and .t >= $t0 + $g - 0.5)' "${f}" >/dev/null ||
    no "closes not all 1001 after the ${GRACE}s grace period: $(jq -sc --argjson t0 "${t0}" '[.[] | select(.event=="close") | {code, after: (.t - $t0)}]' "${f}")"
  log "closes (code, seconds after delete): $(jq -sc --argjson t0 "${t0}" '[.[] | select(.event=="close") | [.code, ((.t - $t0) * 10 | round / 10)]]' "${f}")"
  local still
  still="$(admin_get "${name}" /connections | jq --arg b "${other_ip}" '[.[] | select(.backend | startswith($b + ":"))] | length')"
  [[ "${still}" -eq "${n_other}" ]] || no "${still} tunnels left on ${other_ip}, expected ${n_other}"
  kill "${hp}" 2>/dev/null || true
  "${K[@]}" -n "${APP}" rollout status deploy/echo --timeout=60s >/dev/null || no "echo did not recover"
}

# ---- sidecar --------------------------------------------------------------------------------
scenario_sidecar() {
  "${K[@]}" create namespace chat >/dev/null 2>&1 || true
  # examples/sidecar/sidecar.yaml as a user applies it, with this repo's images
  # (no registry here) and one replica.
  python3 - "${ROOT}/examples/sidecar/sidecar.yaml" "${VERSION}" >"${STATE}/sidecar.yaml" <<'EOF' || no "could not adapt the example"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
for d in docs:
    if d["kind"] != "Deployment":
        continue
    d["spec"]["replicas"] = 1
    for c in d["spec"]["template"]["spec"]["containers"]:
        c["imagePullPolicy"] = "Never"
        if c["name"] == "app":
            c["image"] = f"docker.io/library/wsgate-echo:{sys.argv[2]}"
            # The example's tcpSocket readiness probe dials the pod IP.
            c["args"] = ["0.0.0.0:3000"]
            c.pop("env", None)
print(yaml.safe_dump_all(docs))
EOF
  "${K[@]}" -n chat apply -f "${STATE}/sidecar.yaml" >/dev/null || no "kubectl apply of examples/sidecar failed"
  "${K[@]}" -n chat rollout status deploy/chat --timeout=90s || no "chat Deployment not available"
  local ip name
  read -r name ip < <("${K[@]}" -n chat get pods -l app.kubernetes.io/name=chat -o json |
    jq -r '.items[] | select(.metadata.deletionTimestamp == null) | "\(.metadata.name) \(.status.podIP)"' | head -n1)
  wait_until 10 websocat_echo "ws://${ip}:8080/" || no "websocat echo through the sidecar failed"
  "${PROBE[@]}" echo "ws://${ip}:8080/" || no "Python echo through the sidecar failed"
  curl -fsS "http://${ip}:9090/metrics" >"${STATE}/sidecar-metrics.txt" || no "no /metrics on ${ip}:9090"
  grep -E '^wsgate_connections_total\{' "${STATE}/sidecar-metrics.txt" | grep 'namespace="default"' | grep -c 'route="chat"' >/dev/null ||
    no "the sidecar's metrics show no tunnel on route chat: $(grep wsgate_connections_total "${STATE}/sidecar-metrics.txt" | head -n 3)"
  log "${name} ${ip}: app + wsgate containers; echo through wsgate on :8080"
}

# ---- poison pill (issue 18, H3) --------------------------------------------------
# A route no wsgate can read (service.port 70000), stored by a CRD without the
# port bound as an older CRD admitted it; then a wsgate pod deleted: its
# replacement is Ready within 10 s, serves the echo route, and the pill gets
# Accepted=False naming the field.
scenario_poison_pill() {
  local crd=websocketroutes.wsgate.io pill=e2e-pill old old_ip new="" ip="" i name pip created readyt secs msg
  "${K[@]}" create namespace "${pill}" >/dev/null 2>&1 || true
  local route="apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: port, namespace: ${pill}}
spec:
  hostnames: [port.pill.test]
  backends: [{service: {name: x, port: 70000}}]"
  "${K[@]}" apply -f - <<<"${route}" >/dev/null 2>&1 && no "kubectl apply admitted service.port 70000"
  "${K[@]}" get crd "${crd}" -o json |
    jq 'del(.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.backends.items.properties.service.properties.port.maximum)' |
    "${K[@]}" replace -f - >/dev/null || no "cannot loosen the CRD"
  for ((i = 0; i < 50; i++)); do
    "${K[@]}" apply -f - <<<"${route}" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "${K[@]}" -n "${pill}" get wsr port >/dev/null 2>&1 || no "the loosened CRD did not store the pill"
  "${K[@]}" apply --server-side --force-conflicts -f "${ROOT}/charts/wsgate/crds/" >/dev/null || no "cannot restore the CRD"
  local before
  before=" $(wsgate_pods | cut -d' ' -f1 | tr '\n' ' ') "
  read -r old old_ip < <(wsgate_pods | head -n1)
  [[ -n "${old}" ]] || no "no Ready wsgate pod"
  "${K[@]}" -n "${NS}" delete pod "${old}" --wait=false >/dev/null || no "cannot delete ${old}"
  for ((i = 0; i < 300; i++)); do
    while read -r name pip; do
      [[ -n "${name}" && "${before}" != *" ${name} "* ]] && { new="${name}" ip="${pip}"; }
    done < <(wsgate_pods)
    [[ -n "${new}" ]] && break
    sleep 0.2
  done
  [[ -n "${new}" ]] || no "no replacement pod became Ready within 60 s of deleting ${old}"
  created="$("${K[@]}" -n "${NS}" get pod "${new}" -o jsonpath='{.metadata.creationTimestamp}')"
  readyt="$("${K[@]}" -n "${NS}" get pod "${new}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastTransitionTime}')"
  secs=$(($(date -d "${readyt}" +%s) - $(date -d "${created}" +%s)))
  ((secs <= 10)) || no "${new} Ready ${secs}s after it was created"
  websocat_echo "ws://${ip}:8080/echo" || no "the replacement ${new} does not serve the echo route"
  for ((i = 0; i < 150; i++)); do
    msg="$("${K[@]}" -n "${pill}" get wsr port -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status} {.status.conditions[?(@.type=="Accepted")].reason}: {.status.conditions[?(@.type=="Accepted")].message}')"
    [[ "${msg}" == "False Invalid: spec.backends[0].service.port"* ]] && break
    sleep 0.2
  done
  [[ "${msg}" == "False Invalid: spec.backends[0].service.port"* ]] || no "the pill's Accepted condition: ${msg}"
  local restarts
  restarts="$(curl -fsS "http://${ip}:9090/metrics" | awk '/^wsgate_controller_watch_restarts_total/ {s += $2} END {print s + 0}')"
  [[ "${restarts}" == 0 ]] || no "${new}: wsgate_controller_watch_restarts_total ${restarts}"
  "${K[@]}" -n "${pill}" delete wsr port >/dev/null
  log "kubectl apply refused port 70000; stored by a loosened CRD; ${old} deleted → ${new} Ready ${secs}s after creation, echoes; pill: ${msg}; watch restarts 0"
}

# ---- rollout --------------------------------------------------------------------------------------
scenario_rollout() {
  local pods p name ip i t_del t_gone all_gone
  mapfile -t pods < <(wsgate_pods)
  declare -A files holds del gone
  for p in "${pods[@]}"; do
    read -r name ip <<<"${p}"
    files[${name}]="${STATE}/rollout-${name}.jsonl"
    hold_start "${files[${name}]}" "ws://${ip}:8080/echo" 6 || no "could not open tunnels to ${name}"
    holds[${name}]=${HOLD_PID}
  done
  "${K[@]}" -n "${NS}" rollout restart deploy/wsgate >/dev/null || no "rollout restart failed"
  local t_start=${SECONDS}
  while ((SECONDS - t_start < 150)); do
    all_gone=1
    for name in "${!files[@]}"; do
      [[ -n "${gone[${name}]:-}" ]] && continue
      all_gone=0
      if ! t_del="$("${K[@]}" -n "${NS}" get pod "${name}" -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null)"; then
        gone[${name}]="$(date +%s.%N)"
      elif [[ -n "${t_del}" && -z "${del[${name}]:-}" ]]; then
        del[${name}]="$(date +%s.%N)"
      fi
    done
    ((all_gone)) && break
    sleep 0.2
  done
  ((all_gone)) || no "old pods still there after 150 s"
  "${K[@]}" -n "${NS}" rollout status deploy/wsgate --timeout=90s >/dev/null || no "rollout did not complete"
  for name in "${!files[@]}"; do
    local f="${files[${name}]}" summary
    [[ "$(closes "${f}")" -eq 6 ]] || no "${name}: $(closes "${f}") of 6 clients saw a close"
    summary="$(jq -sc --argjson d "${del[${name}]:-0}" --argjson g "${gone[${name}]}" '[.[] | select(.event == "close")] |
      {codes: (map(.code) | unique), first: ((map(.t) | min) - $d), last: ((map(.t) | max) - $d),
       gone: ($g - $d), spread: ((map(.t) | max) - (map(.t) | min))}' "${f}")"
    log "${name}: ${summary} (seconds after the pod got its deletionTimestamp)"
    jq -e '.codes == [1001]' <<<"${summary}" >/dev/null || no "${name}: close codes $(jq -c .codes <<<"${summary}")"
    jq -e --argjson p "${PRESTOP}" '.first >= $p - 1' <<<"${summary}" >/dev/null || no "${name}: first close before the preStop sleep ended"
    jq -e --argjson d "${DRAIN}" '.spread >= $d * 0.5 and .spread <= $d + 1' <<<"${summary}" >/dev/null || no "${name}: closes not spread over the ${DRAIN}s drain window"
    jq -e '.last < .gone' <<<"${summary}" >/dev/null || no "${name}: the pod went away before its last client got a close"
    kill "${holds[${name}]}" 2>/dev/null || true
  done
  while read -r name ip; do
    "${PROBE[@]}" echo "ws://${ip}:8080/echo" || no "new pod ${name} does not serve"
    log "new pod ${name} ${ip} serves"
  done < <(wsgate_pods)
}

# ---- pdb ---------------------------------------------------------------------------------------------
evict() { # POD
  "${K[@]}" create --raw "/api/v1/namespaces/${NS}/pods/$1/eviction" -f - <<EOF
{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "$1", "namespace": "${NS}"}}
EOF
}

pdb_allows_one() { [[ "$("${K[@]}" -n "${NS}" get pdb wsgate -o jsonpath='{.status.disruptionsAllowed}')" == 1 ]]; }

scenario_pdb() {
  local pods a b out
  "${K[@]}" -n "${NS}" rollout status deploy/wsgate --timeout=90s >/dev/null || no "deployment not available"
  wait_until 30 pdb_allows_one ||
    no "PDB never allowed a disruption: $("${K[@]}" -n "${NS}" get pdb wsgate -o jsonpath='{.status}')"
  mapfile -t pods < <(wsgate_pods | awk '{print $1}')
  a="${pods[0]}" b="${pods[1]}"
  out="$(evict "${a}" 2>&1)" || no "first eviction refused: ${out}"
  out="$(evict "${b}" 2>&1)" && no "second eviction allowed while ${a} is down"
  grep -qi "disruption budget" <<<"${out}" || no "second eviction failed for another reason: ${out}"
  log "evicted ${a}; ${b} refused: $(grep -io "cannot evict.*budget[^.]*" <<<"${out}" | head -n1)"
  "${K[@]}" -n "${NS}" rollout status deploy/wsgate --timeout=90s >/dev/null || no "deployment did not recover"
}

# ---- tracing -------------------------------------------------------------------------
# Jaeger v2 in a pod (OTLP in, memory storage, the query API), wsgate upgraded to
# export to it; a client's traceparent starts the trace.
scenario_tracing() {
  "${K[@]}" -n "${APP}" apply -f - >/dev/null <<'EOF2' || no "applying Jaeger failed"
apiVersion: v1
kind: ConfigMap
metadata: {name: jaeger}
data:
  jaeger.yaml: |
    service:
      extensions: [jaeger_storage, jaeger_query]
      pipelines:
        traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
      telemetry: {metrics: {level: none}}
    extensions:
      jaeger_storage: {backends: {mem: {memory: {max_traces: 10000}}}}
      jaeger_query: {storage: {traces: mem}, http: {endpoint: "0.0.0.0:16686"}, grpc: {endpoint: "0.0.0.0:16685"}}
    receivers:
      otlp: {protocols: {http: {endpoint: "0.0.0.0:4318"}}}
    processors: {batch: {timeout: 100ms}}
    exporters: {jaeger_storage_exporter: {trace_storage: mem}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: jaeger}
spec:
  replicas: 1
  selector: {matchLabels: {app: jaeger}}
  template:
    metadata: {labels: {app: jaeger}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: jaeger
          image: localhost/jaeger:e2e
          imagePullPolicy: Never
          args: ["--config", "file:/etc/jaeger/jaeger.yaml"]
          ports: [{containerPort: 4318}, {containerPort: 16686}]
          readinessProbe: {tcpSocket: {port: 16686}, periodSeconds: 1}
          volumeMounts: [{name: config, mountPath: /etc/jaeger}]
      volumes: [{name: config, configMap: {name: jaeger}}]
EOF2
  "${K[@]}" -n "${APP}" rollout status deploy/jaeger --timeout=90s || no "Jaeger not available"
  local jip name ip trace parent got
  jip="$("${K[@]}" -n "${APP}" get pods -l app=jaeger -o jsonpath='{.items[0].status.podIP}')"
  [[ -n "${jip}" ]] || no "no Jaeger pod IP"
  "${HELM}" --kubeconfig "${KUBECONFIG}" upgrade wsgate "${ROOT}/charts/wsgate" -n "${NS}" -f "${STATE}/values.yaml" \
    --set "tracing.endpoint=http://${jip}:4318" --set tracing.samplingRatio=1 --wait --timeout 180s >/dev/null ||
    no "helm upgrade with tracing values failed"
  "${K[@]}" -n "${NS}" rollout status deploy/wsgate --timeout=120s >/dev/null || no "wsgate rollout not finished"
  wait_until 30 route_programmed || no "route not Programmed after the upgrade"
  read -r name ip < <(wsgate_pods | head -n1)
  trace="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  parent="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  got="$( (printf 'traced\n'; sleep 1) | timeout 10 "${WEBSOCAT}" "ws://${ip}:8080/echo" -H="traceparent: 00-${trace}-${parent}-01" | head -n1)"
  [[ "${got}" == traced ]] || no "echo through ${name} failed (${got})"
  local spans=""
  for _ in $(seq 1 60); do
    spans="$(curl -fsS --max-time 2 "http://${jip}:16686/api/v3/traces/${trace}" 2>/dev/null)" &&
      jq -e '[.result.resourceSpans[].scopeSpans[].spans[].name] | index("wsgate.tunnel")' <<<"${spans}" >/dev/null && break
    sleep 0.5
  done
  jq -e '[.result.resourceSpans[].scopeSpans[].spans[].name] | index("wsgate.tunnel")' <<<"${spans}" >/dev/null ||
    no "no wsgate.tunnel span for trace ${trace} in Jaeger: ${spans:0:300}"
  local server pod node
  server="$(jq -r --arg p "${parent}" '[.result.resourceSpans[].scopeSpans[].spans[] | select(.kind == 2)][0] | "\(.name) \(.parentSpanId)"' <<<"${spans}")"
  [[ "${server}" == "GET echo ${parent}" ]] || no "SERVER span: ${server} (want GET echo with parent ${parent})"
  pod="$(jq -r '.result.resourceSpans[0].resource.attributes[] | select(.key == "k8s.pod.name") | .value.stringValue' <<<"${spans}")"
  node="$(jq -r '.result.resourceSpans[0].resource.attributes[] | select(.key == "k8s.node.name") | .value.stringValue' <<<"${spans}")"
  [[ "${pod}" == "${name}" && "${node}" == wsgate-node ]] || no "resource k8s.pod.name=${pod} k8s.node.name=${node} (want ${name}, wsgate-node)"
  log "trace ${trace} in Jaeger (pod ${jip}): GET echo (parent ${parent}), GET, wsgate.tunnel; resource pod ${pod}, node ${node}"
}
