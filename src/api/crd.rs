//! The CustomResourceDefinition: the schema generated from the Rust types, plus the
//! CEL rules (`x-kubernetes-validations`) for what a schema alone cannot say, so
//! the API server refuses a bad route at `kubectl apply` time with the same rules
//! `crate::compile::validate` enforces.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use super::{WebSocketPolicy, WebSocketRoute};

fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// A duration rule: `timeout` above zero unless pings are off (it may be longer
/// than `interval`: pings repeat until one is answered or the timeout runs out).
fn keepalive_rule(what: &str) -> Value {
    rule(
        "!has(self.interval) || !has(self.timeout) || duration(self.interval) == duration('0s') || \
         duration(self.timeout) > duration('0s')",
        &format!("{what}timeout must be above 0 while pings are on"),
    )
}

fn add(schema: &mut Value, pointer: &str, key: &str, value: Value) {
    let node = schema
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("schema has {pointer}"));
    let obj = node.as_object_mut().expect("schema node is an object");
    match (obj.get_mut(key), value) {
        (Some(Value::Array(existing)), Value::Array(more)) => existing.extend(more),
        (_, v) => {
            obj.insert(key.to_owned(), v);
        }
    }
}

/// Gives every unsigned integer the maximum of its Rust type, so the API server
/// refuses what wsgate could not read (a `u32` of 2^32, a `u64` beyond what a
/// JSON float holds exactly) instead of storing a route that no replica parses.
fn cap_integers(v: &mut Value) {
    if let Value::Object(o) = v {
        let max = match o.get("format").and_then(Value::as_str) {
            Some("uint8") => Some(json!(u8::MAX)),
            Some("uint16") => Some(json!(u16::MAX)),
            Some("uint32") => Some(json!(u32::MAX)),
            // 2^53 - 1: the schema's numbers are JSON floats, and the largest
            // integer a float holds exactly (i64::MAX rounds up past int64 in Go).
            Some("uint64") => Some(json!(9_007_199_254_740_991u64)),
            _ => None,
        };
        if let Some(max) = max {
            o.entry("maximum").or_insert(max);
        }
        for child in o.values_mut() {
            cap_integers(child);
        }
    } else if let Value::Array(a) = v {
        a.iter_mut().for_each(cap_integers);
    }
}

/// Caps string lengths inside a schema so CEL cost estimation stays bounded.
fn cap_strings(v: &mut Value) {
    if let Value::Object(o) = v {
        if o.get("type") == Some(&json!("string")) && !o.contains_key("maxLength") {
            o.insert("maxLength".into(), json!(253));
        }
        for child in o.values_mut() {
            cap_strings(child);
        }
    } else if let Value::Array(a) = v {
        a.iter_mut().for_each(cap_strings);
    }
}

/// `limits` rates and `rebalance`: the rules `compile::validate` enforces.
fn rate_limit_and_rebalance_rules(crd: &mut Value, spec: &str) {
    let xv = "x-kubernetes-validations";
    add(
        crd,
        spec,
        xv,
        json!([rule(
            "!has(self.rebalance) || !has(self.loadBalancing) || !has(self.loadBalancing.policy) || self.loadBalancing.policy in ['RoundRobin', 'LeastConnections']",
            "rebalance is valid only with loadBalancing.policy RoundRobin or LeastConnections"
        )]),
    );
    add(
        crd,
        &format!("{spec}/properties/limits"),
        xv,
        json!([
            rule(
                "!has(self.burst) || self.burst == 0 || (has(self.messagesPerSecond) && self.messagesPerSecond > 0)",
                "limits.burst needs messagesPerSecond above 0"
            ),
            rule(
                "!has(self.burstBytes) || self.burstBytes == 0 || (has(self.bytesPerSecond) && self.bytesPerSecond > 0)",
                "limits.burstBytes needs bytesPerSecond above 0"
            )
        ]),
    );
    add(
        crd,
        &format!("{spec}/properties/rebalance"),
        xv,
        json!([
            rule(
                "!has(self.maxFraction) || (self.maxFraction > 0.0 && self.maxFraction <= 1.0)",
                "rebalance.maxFraction must be above 0 and at most 1"
            ),
            rule(
                "!has(self.over) || duration(self.over) > duration('0s')",
                "rebalance.over must be a duration above 0"
            )
        ]),
    );
}

/// The CRD with its validation rules.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(WebSocketRoute::crd()).expect("CRD serializes");
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";
    let s = crd.pointer_mut(spec).expect("spec schema").clone();
    let mut s = s;
    cap_strings(&mut s);
    cap_integers(&mut s);
    *crd.pointer_mut(spec).expect("spec schema") = s;
    let v = |k: &str| "x-kubernetes-validations".to_owned() + k;
    let xv = v("");
    add(
        &mut crd,
        &format!("{spec}/properties/path"),
        &xv,
        json!([rule(
            "self.value.startsWith('/')",
            "path.value must start with /"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/backends"),
        "minItems",
        json!(1),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/backends"),
        "maxItems",
        json!(64),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/hostnames"),
        "maxItems",
        json!(32),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/allowedOrigins"),
        "maxItems",
        json!(64),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/subprotocols"),
        "maxItems",
        json!(32),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/hostnames/items"),
        "pattern",
        json!(
            r"^(\*\.)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$"
        ),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/backends/items"),
        &xv,
        json!([rule(
            "has(self.service) != has(self.address)",
            "set exactly one of service and address"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/loadBalancing"),
        &xv,
        json!([rule(
            "!has(self.policy) || self.policy != 'ConsistentHash' || has(self.hashOn)",
            "hashOn is required when policy is ConsistentHash"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/loadBalancing/properties/hashOn"),
        &xv,
        json!([rule(
            "(has(self.clientIP) && self.clientIP ? 1 : 0) + (has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.query) ? 1 : 0) == 1",
            "set exactly one of clientIP, header, cookie, query"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/keepalive"),
        &xv,
        json!([keepalive_rule("keepalive.")]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/keepalive/properties/backend"),
        &xv,
        json!([keepalive_rule("keepalive.backend.")]),
    );
    for d in ["connect", "handshake"] {
        add(
            &mut crd,
            &format!("{spec}/properties/timeouts"),
            &xv,
            json!([rule(
                &format!("!has(self.{d}) || duration(self.{d}) > duration('0s')"),
                &format!("timeouts.{d} must be above 0")
            )]),
        );
    }
    add(
        &mut crd,
        &format!("{spec}/properties/passiveHealth"),
        &xv,
        json!([rule(
            "!has(self.maxFails) || self.maxFails == 0 || !has(self.failTimeout) || duration(self.failTimeout) > duration('0s')",
            "passiveHealth.failTimeout must be above 0 when maxFails is above 0"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/tls"),
        &xv,
        json!([rule(
            "has(self.secretName) || (has(self.certFile) && has(self.keyFile))",
            "tls needs secretName (or certFile and keyFile in standalone mode)"
        )]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/backendTLS"),
        &xv,
        json!([
            rule(
                "has(self.certFile) == has(self.keyFile)",
                "certFile and keyFile go together"
            ),
            rule(
                "!(has(self.caFile) && has(self.caCertificateRefs))",
                "set caCertificateRefs (controller mode) or caFile (standalone mode), not both"
            ),
            rule(
                "!(has(self.clientCertificateRef) && has(self.certFile))",
                "set clientCertificateRef (controller mode) or certFile/keyFile (standalone mode), not both"
            ),
        ]),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/backendTLS/properties/caCertificateRefs"),
        "maxItems",
        json!(8),
    );
    // clientAccess: the API server refuses an entry wsgate cannot read, so a bad
    // list never replaces the one in force (Kubernetes' CEL IP/CIDR library).
    for list in ["allow", "deny"] {
        let at = format!("{spec}/properties/clientAccess/properties/{list}");
        add(&mut crd, &at, "maxItems", json!(5000));
        add(
            &mut crd,
            &format!("{at}/items"),
            &xv,
            json!([rule(
                "isCIDR(self) || isIP(self)",
                "must be a CIDR (like 10.0.0.0/8) or an IP address"
            )]),
        );
    }
    let jwt = format!("{spec}/properties/auth/properties/jwt");
    add(
        &mut crd,
        &format!("{jwt}/properties/issuer"),
        "minLength",
        json!(1),
    );
    add(
        &mut crd,
        &format!("{jwt}/properties/jwks"),
        &xv,
        json!([
            rule(
                "(has(self.secretName) ? 1 : 0) + (has(self.configMapName) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                "set exactly one of secretName, configMapName, file, uri"
            ),
            rule(
                "!(has(self.secretName) || has(self.configMapName)) || has(self.key)",
                "key is required with secretName or configMapName"
            ),
            rule(
                "!has(self.uri) || self.uri.startsWith('http://') || self.uri.startsWith('https://')",
                "uri must be an http:// or https:// URL"
            ),
            rule(
                "!has(self.refresh) || (has(self.uri) && duration(self.refresh) > duration('0s'))",
                "refresh applies to uri and must be above 0"
            ),
        ]),
    );
    add(
        &mut crd,
        &format!("{jwt}/properties/tokenFrom/items"),
        &xv,
        json!([
            rule(
                "(has(self.header) ? 1 : 0) + (has(self.query) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.subprotocol) ? 1 : 0) == 1",
                "set exactly one of header, query, cookie, subprotocol"
            ),
            rule("!has(self.prefix) || has(self.header)", "prefix only applies to header"),
        ]),
    );
    for (list, max) in [("tokenFrom", 8), ("claimsToHeaders", 16), ("audiences", 32)] {
        add(
            &mut crd,
            &format!("{jwt}/properties/{list}"),
            "maxItems",
            json!(max),
        );
    }
    add(
        &mut crd,
        &format!("{jwt}/properties/tokenFrom"),
        "minItems",
        json!(1),
    );
    // Every duration must also parse as one (the pattern checks the shape only).
    for (path, fields) in [
        ("keepalive", &["interval", "timeout"][..]),
        ("keepalive/properties/backend", &["interval", "timeout"][..]),
        (
            "timeouts",
            &["connect", "handshake", "idle", "maxLifetime"][..],
        ),
        ("drain", &["gracePeriod"][..]),
        ("passiveHealth", &["failTimeout"][..]),
        ("loadBalancing/properties/cookie", &["ttl"][..]),
        ("auth/properties/jwt", &["clockSkew"][..]),
        ("auth/properties/jwt/properties/jwks", &["refresh"][..]),
        ("fleetLimits/properties/messageBudget", &["window"][..]),
    ] {
        for f in fields {
            add(
                &mut crd,
                &format!("{spec}/properties/{path}/properties/{f}"),
                &xv,
                json!([rule(
                    &format!(
                        "duration(self) >= duration('0s') && duration(self) <= duration('{}')",
                        super::duration::MAX_TEXT
                    ),
                    &format!(
                        "{f} must be a duration such as 500ms, 30s or 1h, at most {}",
                        super::duration::MAX_TEXT
                    )
                )]),
            );
        }
    }
    add(
        &mut crd,
        &format!("{spec}/properties/limits/properties/maxConnections"),
        "maximum",
        json!(1_000_000_000),
    );
    rate_limit_and_rebalance_rules(&mut crd, spec);
    serde_json::from_value(crd).expect("patched CRD is still a CRD")
}

/// The `WebSocketPolicy` CRD: the route fields' bounds and the rules between them
/// that hold for a policy alone (the rest is checked when the controller merges a
/// policy into its HTTPRoutes' settings: `Accepted=False`, reason `Invalid`).
pub fn policy_crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(WebSocketPolicy::crd()).expect("CRD serializes");
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";
    let s = crd.pointer_mut(spec).expect("spec schema");
    cap_strings(s);
    cap_integers(s);
    add(
        &mut crd,
        &format!("{spec}/properties/targetRefs"),
        "minItems",
        json!(1),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/targetRefs"),
        "maxItems",
        json!(16),
    );
    add(
        &mut crd,
        &format!("{spec}/properties/targetRefs/items"),
        "x-kubernetes-validations",
        json!([rule(
            "self.group == 'gateway.networking.k8s.io' && self.kind in ['HTTPRoute', 'Gateway']",
            "a targetRef is an HTTPRoute or a Gateway of gateway.networking.k8s.io"
        )]),
    );
    rate_limit_and_rebalance_rules(&mut crd, spec);
    serde_json::from_value(crd).expect("patched CRD is still a CRD")
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_policy_crd_is_current() {
        let checked_in = include_str!("../../crds/websocketpolicy.yaml");
        assert!(
            checked_in == crate::policy_crd_yaml(),
            "crds/websocketpolicy.yaml is stale: run `make crd`"
        );
    }

    #[test]
    fn checked_in_crd_is_current() {
        let checked_in = include_str!("../../crds/websocketroute.yaml");
        assert!(
            checked_in == crate::crd_yaml(),
            "crds/websocketroute.yaml is stale: run `make crd` (or `wsgate crd > crds/websocketroute.yaml`)"
        );
    }
}
