# Monitoring scenarios of tests/e2e-node/run.sh (sourced): a real Prometheus and promtool.
# shellcheck shell=bash

PROM_ADDR=127.0.0.1:19090

prom_targets_up() { # N: at least N active targets, all up
  curl -fsS "http://${PROM_ADDR}/api/v1/targets?state=active" |
    jq -e --argjson n "$1" '.data.activeTargets | length >= $n and all(.health == "up")'
}

scenario_prometheus() {
  local dir="${STATE}/prometheus" name ip sidecar_ip f="${STATE}/prom-hold.jsonl"
  mkdir -p "${dir}"
  # The chart's own monitoring objects, rendered with the values this release runs with.
  {
    "${HELM}" template wsgate "${ROOT}/charts/wsgate" -n "${NS}" -f "${STATE}/values.yaml" \
      --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
      --show-only templates/servicemonitor.yaml --show-only templates/prometheusrule.yaml
    "${HELM}" template chat "${ROOT}/charts/wsgate" -n chat --set mode=sidecar --set sidecar.appPort=3000 \
      --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.interval=5s \
      --set metrics.serviceMonitor.scrapeTimeout=4s \
      --set 'sidecar.podSelector.app\.kubernetes\.io/name=chat' --show-only templates/servicemonitor.yaml
  } >"${dir}/monitors.yaml" || no "helm template of the monitoring objects failed"
  python3 "${HERE}/promconfig.py" "${KUBECONFIG}" "${dir}/rules.yaml" <"${dir}/monitors.yaml" >"${dir}/prometheus.yml" ||
    no "could not translate the ServiceMonitor/PodMonitor"
  "${PROM_DIR}/promtool" check config "${dir}/prometheus.yml" || no "promtool check config failed"
  "${PROM_DIR}/prometheus" --config.file="${dir}/prometheus.yml" --storage.tsdb.path="${dir}/data" \
    --web.listen-address="${PROM_ADDR}" --log.level=warn >"${dir}/prometheus.log" 2>&1 &
  bg_pids+=($!)
  local prom_pid=$!

  # Traffic that touches every series the dashboards show.
  read -r name ip < <(wsgate_pods | head -n1)
  read -r _ sidecar_ip < <("${K[@]}" -n chat get pods -l app.kubernetes.io/name=chat -o json |
    jq -r '.items[] | select(.metadata.deletionTimestamp == null) | "\(.metadata.name) \(.status.podIP)"' | head -n1)
  hold_start "${f}" "ws://${ip}:8080/echo" 4 || no "could not open tunnels"
  local hp=${HOLD_PID}
  hold_start "${f}.sidecar" "ws://${sidecar_ip}:8080/" 2 || no "could not open sidecar tunnels"
  local hp2=${HOLD_PID}
  "${PROBE[@]}" pings "ws://${ip}:8080/echo" 3 >/dev/null || no "pings client failed"
  local code
  code="$("${PROBE[@]}" deaf "ws://${ip}:8080/echo" 15)" || no "deaf client failed"
  log "a client that ignores pings got close ${code}"
  [[ "${code}" == 1001 ]] || no "a client that ignores pings got ${code}, expected 1001 (dead peer)"
  curl -sS -o /dev/null --max-time 5 "http://${ip}:8080/echo" || no "plain HTTP request failed"
  local p
  while read -r _ p; do "${PROBE[@]}" echo "ws://${p}:8080/echo" >/dev/null || no "echo via ${p} failed"; done < <(wsgate_pods)
  "${PROBE[@]}" echo "ws://${sidecar_ip}:8080/" >/dev/null || no "echo via the sidecar failed"

  wait_until 60 prom_targets_up 3 || no "targets not up: $(curl -fsS "http://${PROM_ADDR}/api/v1/targets" | jq -c '[.data.activeTargets[] | {job: .labels.job, health, lastError}]')"
  log "targets: $(curl -fsS "http://${PROM_ADDR}/api/v1/targets" | jq -c '[.data.activeTargets[] | "\(.labels.job) \(.labels.pod) \(.health)"]')"
  sleep 12 # a few more scrapes, so rates have two samples after the traffic
  python3 "${HERE}/dashq.py" "http://${PROM_ADDR}" "${ROOT}"/charts/wsgate/dashboards/*.json --rate-interval 1m ||
    no "dashboard queries without data (above)"
  # The alert rules load and evaluate without errors against real series.
  curl -fsS "http://${PROM_ADDR}/api/v1/rules" |
    jq -e '[.data.groups[].rules[]] | length > 0 and all(.health == "ok")' >/dev/null ||
    no "rules not healthy: $(curl -fsS "http://${PROM_ADDR}/api/v1/rules" | jq -c '[.data.groups[].rules[] | {name, health, lastError}]')"
  log "$(curl -fsS "http://${PROM_ADDR}/api/v1/rules" | jq -r '[.data.groups[].rules[]] | "\(length) alert rules loaded, all health ok"')"
  kill "${hp}" "${hp2}" "${prom_pid}" 2>/dev/null || true
  wait "${prom_pid}" 2>/dev/null || true
}

scenario_alerts() {
  local dir="${STATE}/alerts"
  mkdir -p "${dir}"
  "${HELM}" template wsgate "${ROOT}/charts/wsgate" -n "${NS}" --set metrics.prometheusRule.enabled=true \
    --show-only templates/prometheusrule.yaml |
    python3 -c 'import sys, yaml; yaml.safe_dump({"groups": yaml.safe_load(sys.stdin)["spec"]["groups"]}, sys.stdout, sort_keys=False)' \
    >"${dir}/wsgate-rules.yaml" || no "could not render the PrometheusRule"
  cp "${HERE}/alerts.test.yaml" "${dir}/"
  "${PROM_DIR}/promtool" check rules "${dir}/wsgate-rules.yaml" || no "promtool check rules failed"
  # Every alert of the rule file must have a test.
  local alert
  for alert in $(python3 -c 'import sys, yaml; print(" ".join(sorted({r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]})))' "${dir}/wsgate-rules.yaml"); do
    grep -q "alertname: ${alert}$" "${dir}/alerts.test.yaml" || no "alert ${alert} has no test in alerts.test.yaml"
  done
  # Per-route thresholds (the values tests/chart uses): each route judged by its own.
  "${HELM}" template wsgate "${ROOT}/charts/wsgate" -n "${NS}" -f "${ROOT}/tests/chart/values/monitoring.yaml" \
    --show-only templates/prometheusrule.yaml |
    python3 -c 'import sys, yaml; yaml.safe_dump({"groups": yaml.safe_load(sys.stdin)["spec"]["groups"]}, sys.stdout, sort_keys=False)' \
    >"${dir}/wsgate-rules-overrides.yaml" || no "could not render the PrometheusRule with overrides"
  cp "${HERE}/alerts-overrides.test.yaml" "${dir}/"
  "${PROM_DIR}/promtool" test rules "${dir}/alerts.test.yaml" "${dir}/alerts-overrides.test.yaml" || no "promtool test rules failed"
}
