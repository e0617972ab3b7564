# The gateway-api scenario of tests/e2e-node/run.sh (sourced; returns 1 with `no
# REASON`): a platform team's Gateway and an application team's HTTPRoutes and
# WebSocketPolicies on the real node, reached at the Gateway's own LoadBalancer
# address as a user reaches it (kube-proxy built here routes it; addresses from
# TEST-NET-1 by tests/conformance/lb-allocator.sh, as a cloud would hand them out).
# shellcheck shell=bash

GW_NS=gw            # the Gateway, the chat back end, its routes and policies
GW_GRACE=3          # the chat policy's drain.gracePeriod (seconds)
JWT_ISSUER=https://id.e2e.test

# kube-proxy in iptables mode in this network namespace, as tests/conformance/run.sh
# runs it, and the load-balancer allocator beside it.
gw_start_kube_proxy() {
  "${ROOT}/hack/k8s/kube-proxy.sh" "${STATE}" >"${STATE}/kube-proxy.log" 2>&1 &
  bg_pids+=($!)
  "${ROOT}/tests/conformance/lb-allocator.sh" 64 126 >"${STATE}/lb-allocator.log" 2>&1 &
  bg_pids+=($!)
}

# An Ed25519 key as a JWKS (the Secret the policy names) and tokens signed with it,
# by openssl: base64url, header.payload, signature over both.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
gw_jwt_key() {
  openssl genpkey -algorithm ed25519 -out "${STATE}/jwt.pem" 2>/dev/null
  local x
  x="$(openssl pkey -in "${STATE}/jwt.pem" -pubout -outform DER | tail -c 32 | b64url)"
  jq -cn --arg x "${x}" '{keys: [{kty: "OKP", crv: "Ed25519", kid: "e2e", alg: "EdDSA", use: "sig", x: $x}]}'
}
gw_token() { # SECONDS_VALID
  local now h p s
  now="$(date +%s)"
  h="$(printf '%s' '{"alg":"EdDSA","typ":"JWT","kid":"e2e"}' | b64url)"
  p="$(jq -cn --arg iss "${JWT_ISSUER}" --argjson now "${now}" --argjson v "$1" \
    '{iss: $iss, aud: "chat", sub: "e2e-user", iat: $now, exp: ($now + $v)}' | b64url)"
  # Ed25519 signs the whole message at once: openssl reads it from a file, not a pipe.
  printf '%s.%s' "${h}" "${p}" >"${STATE}/jwt.msg"
  s="$(openssl pkeyutl -sign -inkey "${STATE}/jwt.pem" -rawin -in "${STATE}/jwt.msg" | b64url)"
  printf '%s.%s.%s' "${h}" "${p}" "${s}"
}

gw_apply() {
  local jwks
  jwks="$(gw_jwt_key)"
  "${K[@]}" create namespace "${GW_NS}" >/dev/null 2>&1 || true
  "${K[@]}" -n "${GW_NS}" create secret generic jwks --from-literal=jwks.json="${jwks}" >/dev/null || return 1
  "${K[@]}" -n "${GW_NS}" apply -f - >/dev/null <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: wsgate
  listeners:
    - {name: http, port: 80, protocol: HTTP}
---
# The chat back end: Socket.IO (polling, then the upgrade) and its page, two replicas.
apiVersion: apps/v1
kind: Deployment
metadata: {name: chat}
spec:
  replicas: 2
  selector: {matchLabels: {app: chat}}
  template:
    metadata: {labels: {app: chat}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: chat
          image: localhost/wsgate-chat:e2e
          imagePullPolicy: Never
          ports: [{name: http, containerPort: 3000}]
          readinessProbe: {tcpSocket: {port: 3000}, periodSeconds: 1}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: chat}
spec:
  selector: {app: chat}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: kubernetes.io/ws}]
---
# A back end that will go away (the drain), one replica of the echo image.
apiVersion: apps/v1
kind: Deployment
metadata: {name: gone}
spec:
  replicas: 1
  selector: {matchLabels: {app: gone}}
  template:
    metadata: {labels: {app: gone}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: echo
          image: docker.io/library/wsgate-echo:${VERSION}
          imagePullPolicy: Never
          args: ["0.0.0.0:9001"]
          ports: [{name: ws, containerPort: 9001}]
          readinessProbe: {tcpSocket: {port: 9001}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: gone}
spec:
  selector: {app: gone}
  ports: [{name: ws, port: 9001, targetPort: ws}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: chat}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /socket.io}}, {path: {type: Exact, value: /}}]
      backendRefs: [{name: chat, port: 80}]
    # The echo Service of the e2e namespace: allowed by a ReferenceGrant there (below).
    # Its request timeout ends at the 101: the tunnels below outlive it many times.
    - matches: [{path: {type: PathPrefix, value: /echo}}]
      backendRefs: [{name: echo, namespace: ${APP}, port: 9001}]
      timeouts: {request: 1s}
    - matches: [{path: {type: PathPrefix, value: /gone}}]
      backendRefs: [{name: gone, port: 9001}]
    # A named rule: the secure policy below targets it alone (sectionName).
    - name: secure
      matches: [{path: {type: PathPrefix, value: /secure}}]
      backendRefs: [{name: echo, namespace: ${APP}, port: 9001}]
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketPolicy
metadata: {name: chat}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat}]
  loadBalancing: {policy: Cookie, cookie: {name: wsgate-affinity, ttl: 1h}}
  keepalive: {interval: 2s, timeout: 1s}
  drain: {gracePeriod: ${GW_GRACE}s}
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketPolicy
metadata: {name: secure}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat, sectionName: secure}]
  auth:
    jwt:
      issuer: ${JWT_ISSUER}
      audiences: [chat]
      jwks: {secretName: jwks, key: jwks.json}
      tokenFrom: [{query: access_token}]
EOF
}

gw_grant() {
  "${K[@]}" -n "${APP}" apply -f - >/dev/null <<EOF
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gw-routes}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: ${GW_NS}}]
  to: [{group: "", kind: Service, name: echo}]
EOF
}

gw_cond() { # KIND NAME TYPE: "status reason" of that condition (own, per parent or per ancestor)
  "${K[@]}" -n "${GW_NS}" get "$1" "$2" -o json |
    jq -r --arg t "$3" '[(.status.conditions // []), (.status.parents // [] | map(.conditions) | add // []),
      (.status.ancestors // [] | map(.conditions) | add // [])] | add | map(select(.type == $t))[0] | "\(.status) \(.reason)"'
}
gw_is() { [[ "$(gw_cond "$1" "$2" "$3")" == "$4"* ]]; }
gw_address() { "${K[@]}" -n "${GW_NS}" get gateway edge -o jsonpath='{.status.addresses[0].value}'; }
http_code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$@"; }
upgrade_code() { # [CURL_ARG...] URL: the status of a WebSocket upgrade request
  http_code -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "$@"
}
# For wait_until, which retries a command: the request is made on each try.
upgrade_code_is() { # WANT [CURL_ARG...] URL
  local want="$1"
  shift
  [[ "$(upgrade_code "$@")" == "${want}" ]]
}

# The page's script in headless Chromium: Socket.IO from the page (polling, then
# the upgrade) and a plain `new WebSocket` to the echo rule.
GW_BROWSER_SCRIPT='(async () => {
  const sio = await new Promise((resolve, reject) => {
    const s = io({transports: ["polling", "websocket"], reconnection: false});
    let up = false, on = false, sent = false;
    const go = () => {
      if (!up || !on || sent) return;
      sent = true;
      s.timeout(5000).emit("echo", "from chromium", (err, r) => err ? reject(String(err)) : resolve(r));
    };
    s.io.on("open", () => s.io.engine.on("upgrade", () => { up = true; go(); }));
    s.on("connect", () => { on = true; go(); });
    s.on("connect_error", (e) => reject("connect_error " + e.message));
    setTimeout(() => reject("Socket.IO timed out"), 15000);
  });
  const ws = await new Promise((resolve, reject) => {
    const w = new WebSocket("ws://" + location.host + "/echo");
    w.onopen = () => w.send("from chromium");
    w.onmessage = (e) => { resolve(e.data); w.close(); };
    w.onerror = () => reject("WebSocket error");
    setTimeout(() => reject("WebSocket timed out"), 10000);
  });
  return {sio, ws, page: document.body.innerText.trim()};
})()'

# examples/gateway-api/chat.yaml as a user applies it (in namespace gw-example, its
# image the local one): the Gateway answers for chat.example.com only.
gw_example() {
  python3 - "${ROOT}/examples/gateway-api/chat.yaml" "${VERSION}" >"${STATE}/gw-example.yaml" <<'PY' || no "could not adapt the example"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
for d in docs:
    # The sidecar scenario has a namespace chat already.
    if d and d["kind"] == "Namespace":
        d["metadata"]["name"] = "gw-example"
    elif d:
        d["metadata"]["namespace"] = "gw-example"
    if d and d["kind"] == "Deployment":
        for c in d["spec"]["template"]["spec"]["containers"]:
            c["imagePullPolicy"] = "Never"
            c["image"] = f"docker.io/library/wsgate-echo:{sys.argv[2]}"
print(yaml.safe_dump_all([d for d in docs if d]))
PY
  "${K[@]}" apply -f "${STATE}/gw-example.yaml" >/dev/null || no "kubectl apply of examples/gateway-api/chat.yaml failed"
  "${K[@]}" -n gw-example rollout status deploy/chat --timeout=90s >/dev/null || no "the example's chat Deployment not available"
  local ex
  for _ in $(seq 1 150); do
    ex="$("${K[@]}" -n gw-example get gateway edge -o json | jq -r 'select(any(.status.conditions[]?; .type == "Programmed" and .status == "True")) | .status.addresses[0].value')"
    [[ -n "${ex}" ]] && break
    sleep 0.2
  done
  [[ -n "${ex}" ]] || no "the example's Gateway not Programmed: $("${K[@]}" -n gw-example get gateway edge -o jsonpath='{.status}')"
  wait_until 20 gw_example_policy_accepted || no "the example's WebSocketPolicy: $(gw_example_policy)"
  local c path
  for path in /ws /socket.io/; do
    # A 101 leaves curl waiting for the tunnel to end: --max-time ends it.
    wait_until 15 upgrade_code_is 101 --max-time 2 -H 'Host: chat.example.com' "http://${ex}${path}" ||
      no "the example: an upgrade to chat.example.com${path} at ${ex} got $(upgrade_code --max-time 2 -H 'Host: chat.example.com' "http://${ex}${path}")"
  done
  c="$(upgrade_code -H 'Host: other.example.com' "http://${ex}/ws")"
  [[ "${c}" == 404 ]] || no "the example: another host got ${c} (want 404)"
  log "examples/gateway-api/chat.yaml: Gateway edge at ${ex}, policy Accepted; upgrades to chat.example.com /ws and /socket.io/ 101, another host 404"
}
gw_example_policy() {
  "${K[@]}" -n gw-example get websocketpolicy chat -o json | jq -r '[.status.ancestors[]?.conditions[]? | select(.type == "Accepted")][0] | "\(.status) \(.reason)"'
}
gw_example_policy_accepted() { [[ "$(gw_example_policy)" == "True Accepted" ]]; }

scenario_gateway_api() {
  gw_start_kube_proxy
  # The echo scenario's back end (in ${APP}) serves the cross-namespace rules.
  apply_echo || no "applying the echo backend failed"
  "${K[@]}" -n "${APP}" rollout status deploy/echo --timeout=90s >/dev/null || no "echo Deployment not available"
  gw_apply || no "applying the Gateway, the chat back end, the routes and the policies failed"
  "${K[@]}" -n "${GW_NS}" rollout status deploy/chat --timeout=90s >/dev/null || no "the chat back end not available"
  "${K[@]}" -n "${GW_NS}" rollout status deploy/gone --timeout=90s >/dev/null || no "the gone back end not available"
  wait_until 60 gw_is gateway edge Programmed True ||
    no "Gateway not Programmed: $("${K[@]}" -n "${GW_NS}" get gateway edge -o jsonpath='{.status}')"
  local addr base
  addr="$(gw_address)"
  [[ "${addr}" == 192.0.2.* ]] || no "the Gateway's address ${addr} is not from the load-balancer pool"
  base="${addr}:80"
  log "Gateway edge Programmed at ${addr} ($("${K[@]}" -n "${NS}" get svc -l gateway.wsgate.io/name=edge -o jsonpath='{.items[0].metadata.name} {.items[0].spec.ports[0].port}->{.items[0].spec.ports[0].targetPort}'))"

  # A cross-namespace backendRef before its ReferenceGrant: RefNotPermitted, 500.
  wait_until 30 gw_is httproute chat ResolvedRefs "False RefNotPermitted" ||
    no "HTTPRoute chat ResolvedRefs: $(gw_cond httproute chat ResolvedRefs) (want False RefNotPermitted)"
  wait_until 15 upgrade_code_is 500 "http://${base}/echo" ||
    no "an upgrade to /echo without the ReferenceGrant: $(upgrade_code "http://${base}/echo") (want 500)"
  log "before the ReferenceGrant: ResolvedRefs False RefNotPermitted, /echo answers 500"
  gw_grant || no "applying the ReferenceGrant failed"
  wait_until 30 gw_is httproute chat ResolvedRefs "True" || no "HTTPRoute chat ResolvedRefs: $(gw_cond httproute chat ResolvedRefs)"
  wait_until 30 gw_is websocketpolicy chat Accepted True || no "WebSocketPolicy chat: $(gw_cond websocketpolicy chat Accepted)"
  wait_until 30 gw_is websocketpolicy secure Accepted True || no "WebSocketPolicy secure: $(gw_cond websocketpolicy secure Accepted)"
  wait_until 20 websocat_echo "ws://${base}/echo" || no "websocat echo through the Gateway failed"
  "${PROBE[@]}" echo "ws://${base}/echo" || no "Python websockets echo through the Gateway failed"
  log "after it: ResolvedRefs True, websocat and Python websockets echo at ws://${base}/echo"

  # Socket.IO from Node: the handshake and polls, then the upgrade, all on the
  # replica the affinity cookie names (another replica would not know the sid).
  local i out names=()
  for i in $(seq 1 8); do
    out="$(NODE_PATH="${WSGATE_CACHE}/peers-node/node_modules" timeout 20 node "${ROOT}/tests/peers/socketio-client.js" "http://${base}/")" ||
      no "socket.io-client ${i} through the Gateway: $(tail -n 3 <<<"${out}")"
    jq -se '(map(select(.event == "engine-open"))[0].transport == "polling") and
      (map(select(.event == "upgrade"))[0].transport == "websocket") and
      (map(select(.event == "ack"))[0] | .transport == "websocket" and .msg == "hello through wsgate")' <<<"${out}" >/dev/null ||
      no "socket.io-client ${i}: ${out}"
    names+=("$(jq -sr 'map(select(.event == "ack"))[0].name' <<<"${out}")")
  done
  local distinct
  distinct="$(printf '%s\n' "${names[@]}" | sort -u | wc -l)"
  ((distinct == 2)) || no "8 Socket.IO clients reached ${distinct} of the 2 chat replicas: ${names[*]}"
  log "8 socket.io-clients: polling, then the upgrade, echo acked; replicas: $(printf '%s\n' "${names[@]}" | sort | uniq -c | tr -s ' \n' ' ')"

  # Headless Chromium loads the page through the Gateway, runs Socket.IO there and
  # a plain browser WebSocket.
  out="$(NODE_PATH="${WSGATE_CACHE}/peers-node/node_modules" timeout 60 node "${ROOT}/tests/peers/browser.js" \
    "$(command -v chromium)" "http://${base}/" "${GW_BROWSER_SCRIPT}")" || no "Chromium through the Gateway: ${out:0:600}"
  jq -se 'map(select(.event == "result"))[0].value | .ws == "from chromium" and .sio.msg == "from chromium"
    and .sio.transport == "websocket" and (.page | startswith("served by chat-"))' <<<"${out}" >/dev/null ||
    no "Chromium's result: ${out:0:600}"
  log "Chromium: $(jq -sc 'map(select(.event == "result"))[0].value' <<<"${out}")"

  # The policy's keepalive: an idle client sees pings and its tunnel stays usable.
  local n
  n="$("${PROBE[@]}" pings "ws://${base}/echo" 7)" || no "an idle client through the Gateway failed"
  ((n >= 2)) || no "an idle client saw ${n} pings in 7 s (the policy's interval is 2s)"
  log "an idle client saw ${n} pings in 7 s (policy keepalive 2s)"

  # The secure rule's auth.jwt (its own policy, over the route's): no token 401; a
  # token valid 4 s: Close 1008 at exp. The route's other rules took no token above.
  wait_until 20 upgrade_code_is 401 "http://${base}/secure" ||
    no "an upgrade to /secure without a token: $(upgrade_code "http://${base}/secure") (want 401)"
  local f="${STATE}/gw-jwt.jsonl" t_exp
  t_exp=$(($(date +%s) + 4))
  hold_start "${f}" "ws://${base}/secure?access_token=$(gw_token 4)" 1 || no "a valid token refused: $(cat "${f}.err")"
  wait_until 15 closed_at_least "${f}" 1 || no "no close after the token's exp"
  jq -se --argjson exp "${t_exp}" '[.[] | select(.event == "close")][0] | .code == 1008 and .t >= $exp - 1' "${f}" >/dev/null ||
    no "at exp: $(grep close "${f}") (want 1008 at or after ${t_exp})"
  log "/secure: no token 401; a token valid 4 s: $(jq -sc --argjson exp "${t_exp}" '[.[] | select(.event == "close")][0] | {code, after_exp: ((.t - $exp) * 10 | round / 10)}' "${f}")"

  # The tunnels are the HTTPRoute's in /connections and in the per-route metrics.
  local g="${STATE}/gw-gone.jsonl" e="${STATE}/gw-stay.jsonl" name ip conns=0 metrics=0 t0
  hold_start "${g}" "ws://${base}/gone" 6 || no "could not open 6 tunnels to /gone: $(cat "${g}.err")"
  local gone_pid=${HOLD_PID}
  hold_start "${e}" "ws://${base}/echo" 4 || no "could not open 4 tunnels to /echo: $(cat "${e}.err")"
  local stay_pid=${HOLD_PID}
  while read -r name ip; do
    conns=$((conns + $(admin_get "${name}" /connections | jq --arg ns "${GW_NS}" '[.[] | select(.namespace == $ns and .route == "httproute/chat")] | length')))
    metrics=$((metrics + $(curl -fsS "http://${ip}:9090/metrics" | awk -v ns="${GW_NS}" '/^wsgate_connections_active\{/ && index($0, "namespace=\"" ns "\"") && index($0, "route=\"httproute/chat\"") {s += $2} END {print s + 0}')))
  done < <(wsgate_pods)
  ((conns == 10)) || no "/connections of both pods list ${conns} tunnels of HTTPRoute ${GW_NS}/chat (want 10)"
  ((metrics == 10)) || no "wsgate_connections_active{namespace=${GW_NS},route=httproute/chat} sums to ${metrics} (want 10)"
  log "10 tunnels of HTTPRoute ${GW_NS}/chat in /connections and wsgate_connections_active"

  # The backend removed: its tunnels get Close 1001 after the policy's grace period;
  # the route's other tunnels stay.
  t0="$(date +%s.%N)"
  "${K[@]}" -n "${GW_NS}" scale deploy/gone --replicas=0 >/dev/null || no "scaling gone to 0 failed"
  wait_until $((GW_GRACE + 20)) closed_at_least "${g}" 6 || no "$(closes "${g}") of 6 tunnels to /gone closed"
  jq -se --argjson t0 "${t0}" --argjson g "${GW_GRACE}" '[.[] | select(.event == "close")] | all(.code == 1001 and .t >= $t0 + $g - 0.5)' "${g}" >/dev/null ||
    no "closes not all 1001 after the ${GW_GRACE}s grace: $(jq -sc --argjson t0 "${t0}" '[.[] | select(.event == "close") | {code, after: (.t - $t0)}]' "${g}")"
  [[ "$(closes "${e}")" -eq 0 ]] || no "tunnels to /echo closed when /gone's backend went: $(grep close "${e}")"
  local open_s
  open_s="$(jq -s --argjson now "$(date +%s.%N)" '[.[] | select(.event == "ready")][0] | $now - .t | floor' "${e}")"
  ((open_s >= 2)) || no "the /echo tunnels were open only ${open_s} s"
  log "gone's backend scaled to 0: closes (code, seconds after) $(jq -sc --argjson t0 "${t0}" '[.[] | select(.event == "close") | [.code, ((.t - $t0) * 10 | round / 10)]]' "${g}"); /echo's 4 tunnels stay, open ${open_s} s with their rule's request timeout at 1 s"
  kill "${gone_pid}" "${stay_pid}" 2>/dev/null || true

  gw_example
}
