//! `WebSocketPolicy` attachment (GEP-713): which policy applies to which HTTPRoute
//! or Gateway, what each policy's status says, and the `WebSocketRoute` settings
//! an HTTPRoute's tunnels get (its policy over its Gateway's, field by field, over
//! the defaults).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use serde_json::{json, Map, Value};

use super::api::{Gateway, HTTPRoute, CONTROLLER_NAME, GROUP};
use super::build::Key;
use crate::api::{
    AncestorRef, PolicyAncestorStatus, PolicyStatus, WebSocketPolicy, WebSocketPolicySpec,
    WebSocketRouteSpec,
};

/// A policy's target: its kind, the object, and the part of it (`sectionName`).
pub type Target = (String, Key, Option<String>);

/// The policies in force, by target.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    /// By target.
    pub by_target: BTreeMap<Target, Arc<WebSocketPolicySpec>>,
    /// Which policy is in force on each target, for reporting a merge that fails.
    pub owners: BTreeMap<Target, Key>,
}

impl Policies {
    /// What applies to a rule of `route` served on `listener` of `gateway`, from
    /// the widest to the narrowest (each overrides the ones before it field by
    /// field): the Gateway, its listener, the HTTPRoute, the rule.
    pub fn layers(
        &self,
        gateway: &Key,
        listener: &str,
        route: &Key,
        rule: Option<&str>,
    ) -> Vec<(&Target, &WebSocketPolicySpec)> {
        let mut targets = vec![
            ("Gateway", gateway, None),
            ("Gateway", gateway, Some(listener)),
            ("HTTPRoute", route, None),
        ];
        // A rule without a name has no section of its own.
        if let Some(rule) = rule {
            targets.push(("HTTPRoute", route, Some(rule)));
        }
        targets
            .into_iter()
            .filter_map(|(kind, key, section)| {
                let t = (kind.to_string(), key.clone(), section.map(str::to_string));
                self.by_target.get_key_value(&t)
            })
            .map(|(t, p)| (t, &**p))
            .collect()
    }
}

fn accepted(ok: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: "Accepted".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Attaches `policies` (oldest first wins a target) to the HTTPRoutes and Gateways
/// that exist; returns them and each policy's status.
pub fn attach(
    policies: &[WebSocketPolicy],
    routes: &[HTTPRoute],
    gateways: &[Gateway],
) -> (Policies, BTreeMap<Key, PolicyStatus>) {
    let mut sorted: Vec<&WebSocketPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.namespace(),
            p.name_any(),
        )
    });
    let exists = |kind: &str, key: &Key, section: Option<&str>| match kind {
        "HTTPRoute" => routes.iter().any(|r| {
            r.namespace().as_ref() == Some(&key.0)
                && r.name_any() == key.1
                && section.is_none_or(|s| r.spec.rules.iter().any(|x| x.name.as_deref() == Some(s)))
        }),
        _ => gateways.iter().any(|g| {
            g.namespace().as_ref() == Some(&key.0)
                && g.name_any() == key.1
                && section.is_none_or(|s| g.spec.listeners.iter().any(|l| l.name == s))
        }),
    };
    let mut out = Policies::default();
    let mut statuses = BTreeMap::new();
    for p in sorted {
        let ns = p.namespace().unwrap_or_default();
        let pkey = (ns.clone(), p.name_any());
        let generation = p.metadata.generation;
        let spec = Arc::new(p.spec.clone());
        let mut status = PolicyStatus::default();
        for t in &p.spec.target_refs {
            let target = (ns.clone(), t.name.clone());
            let section = t.section_name.as_deref();
            let what = match section {
                Some(s) => format!("{} {}/{} section {s}", t.kind, target.0, target.1),
                None => format!("{} {}/{}", t.kind, target.0, target.1),
            };
            let tkey: Target = (t.kind.clone(), target.clone(), t.section_name.clone());
            let condition =
                if t.group != GROUP || !matches!(t.kind.as_str(), "HTTPRoute" | "Gateway") {
                    accepted(
                        false,
                        "Invalid",
                        format!(
                            "targetRefs: {} {} is not an HTTPRoute or a Gateway of {GROUP}",
                            t.group, t.kind
                        ),
                        generation,
                    )
                } else if !exists(&t.kind, &target, section) {
                    let missing = match section {
                        Some(s) if t.kind == "HTTPRoute" => {
                            format!("{what} does not exist (no rule is named {s})")
                        }
                        Some(s) => format!("{what} does not exist (no listener is named {s})"),
                        None => format!("{what} does not exist"),
                    };
                    accepted(false, "TargetNotFound", missing, generation)
                } else if let Some(owner) = out.owners.get(&tkey).filter(|o| **o != pkey) {
                    accepted(
                        false,
                        "Conflicted",
                        format!(
                            "WebSocketPolicy {}/{} is older and applies to {what}",
                            owner.0, owner.1
                        ),
                        generation,
                    )
                } else {
                    out.owners.insert(tkey.clone(), pkey.clone());
                    out.by_target.insert(tkey, spec.clone());
                    accepted(true, "Accepted", format!("applies to {what}"), generation)
                };
            status.ancestors.push(PolicyAncestorStatus {
                ancestor_ref: AncestorRef {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    namespace: ns.clone(),
                    name: t.name.clone(),
                    section_name: t.section_name.clone(),
                },
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![condition],
            });
        }
        statuses.insert(pkey, status);
    }
    (out, statuses)
}

/// The settings of a policy as a JSON object of the fields it sets.
fn fields(spec: &WebSocketPolicySpec) -> Map<String, Value> {
    let mut v = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    let obj = v.as_object_mut().map(std::mem::take).unwrap_or_default();
    obj.into_iter().filter(|(k, _)| k != "targetRefs").collect()
}

/// What an HTTPRoute rule's tunnels get: its policies (widest first, see
/// [`Policies::layers`]), each over the ones before it field by field, over a
/// `WebSocketRoute`'s defaults (with `proxyHttp` on and a placeholder backend: the
/// HTTPRoute says where requests go).
pub fn settings(layers: &[&WebSocketPolicySpec]) -> Result<WebSocketRouteSpec, String> {
    let mut merged = Map::new();
    merged.insert("backends".into(), json!([{"address": "192.0.2.255:9"}]));
    merged.insert("proxyHttp".into(), json!(true));
    for p in layers {
        merged.extend(fields(p));
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> (Vec<WebSocketPolicy>, Vec<HTTPRoute>, Vec<Gateway>) {
        let (mut p, mut r, mut g) = (vec![], vec![], vec![]);
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap(),
            )
            .unwrap();
            match v["kind"].as_str().unwrap() {
                "WebSocketPolicy" => p.push(serde_json::from_value(v).unwrap()),
                "HTTPRoute" => r.push(serde_json::from_value(v).unwrap()),
                "Gateway" => g.push(serde_json::from_value(v).unwrap()),
                k => panic!("{k}"),
            }
        }
        (p, r, g)
    }

    const OBJECTS: &str = r#"
kind: HTTPRoute
metadata: {name: chat, namespace: apps}
spec: {}
---
kind: Gateway
metadata: {name: edge, namespace: apps}
spec: {gatewayClassName: wsgate}
---
kind: WebSocketPolicy
metadata: {name: newer, namespace: apps, creationTimestamp: "2026-12-07T09:00:00Z", generation: 2}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat}]
  keepalive: {interval: 5s}
---
kind: WebSocketPolicy
metadata: {name: older, namespace: apps, creationTimestamp: "2026-12-07T08:00:00Z"}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}
  allowedOrigins: [https://chat.example.com]
---
kind: WebSocketPolicy
metadata: {name: defaults, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  allowedOrigins: [https://any.example.com]
  subprotocols: [chat.v1]
"#;

    fn reason(s: &PolicyStatus, i: usize) -> (&str, &str, Option<i64>) {
        let c = &s.ancestors[i].conditions[0];
        (c.status.as_str(), c.reason.as_str(), c.observed_generation)
    }

    #[test]
    fn the_oldest_policy_wins_a_target_and_the_others_say_why_not() {
        let (p, r, g) = objects(OBJECTS);
        let (policies, statuses) = attach(&p, &r, &g);
        let key = |n: &str| ("apps".to_string(), n.to_string());
        assert_eq!(
            reason(&statuses[&key("older")], 0),
            ("True", "Accepted", None)
        );
        assert_eq!(reason(&statuses[&key("older")], 1).1, "TargetNotFound");
        assert_eq!(
            reason(&statuses[&key("newer")], 0),
            ("False", "Conflicted", Some(2))
        );
        assert_eq!(reason(&statuses[&key("defaults")], 0).1, "Accepted");
        let target = |kind: &str, n: &str| (kind.to_string(), key(n), None);
        assert_eq!(
            policies.by_target[&target("HTTPRoute", "chat")]
                .allowed_origins
                .as_deref(),
            Some(&["https://chat.example.com".to_string()][..])
        );
        assert!(policies.by_target.contains_key(&target("Gateway", "edge")));
    }

    #[test]
    fn a_policy_on_a_rule_or_a_listener_narrows_the_wider_ones() {
        let (p, r, g) = objects(
            r#"
kind: HTTPRoute
metadata: {name: chat, namespace: apps}
spec:
  rules:
  - {name: secure}
  - {}
---
kind: Gateway
metadata: {name: edge, namespace: apps}
spec: {gatewayClassName: wsgate, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
kind: WebSocketPolicy
metadata: {name: route, namespace: apps, creationTimestamp: "2026-12-07T08:00:00Z"}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat}]
  allowedOrigins: [https://chat.example.com]
  subprotocols: [chat.v1]
---
kind: WebSocketPolicy
metadata: {name: rule, namespace: apps, creationTimestamp: "2026-12-07T09:00:00Z"}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat, sectionName: secure}
  - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: chat, sectionName: nope}
  allowedOrigins: [https://secure.example.com]
---
kind: WebSocketPolicy
metadata: {name: listener, namespace: apps}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: http}
  - {group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: https}
  keepalive: {interval: 7s}
"#,
        );
        let (policies, statuses) = attach(&p, &r, &g);
        let key = |n: &str| ("apps".to_string(), n.to_string());
        // A rule's policy does not conflict with its route's: it is narrower.
        assert_eq!(reason(&statuses[&key("rule")], 0).1, "Accepted");
        let missing = &statuses[&key("rule")].ancestors[1];
        assert_eq!(missing.conditions[0].reason, "TargetNotFound");
        assert!(missing.conditions[0]
            .message
            .contains("no rule is named nope"));
        assert_eq!(missing.ancestor_ref.section_name.as_deref(), Some("nope"));
        assert_eq!(reason(&statuses[&key("listener")], 0).1, "Accepted");
        assert_eq!(reason(&statuses[&key("listener")], 1).1, "TargetNotFound");

        let merged = |rule: Option<&str>| {
            let layers = policies.layers(&key("edge"), "http", &key("chat"), rule);
            settings(&layers.iter().map(|(_, p)| *p).collect::<Vec<_>>()).unwrap()
        };
        let secure = merged(Some("secure"));
        assert_eq!(
            secure.allowed_origins,
            ["https://secure.example.com"],
            "the rule's policy wins"
        );
        assert_eq!(secure.subprotocols, ["chat.v1"], "the route's fills in");
        assert_eq!(
            secure.keepalive.interval.0.as_secs(),
            7,
            "the listener's fills in"
        );
        let other = merged(None);
        assert_eq!(
            other.allowed_origins,
            ["https://chat.example.com"],
            "an unnamed rule gets the route's"
        );
        assert_eq!(other.keepalive.interval.0.as_secs(), 7);
    }

    #[test]
    fn a_routes_policy_overrides_its_gateways_field_by_field() {
        let (p, r, g) = objects(OBJECTS);
        let (policies, _) = attach(&p, &r, &g);
        let key = |n: &str| ("apps".to_string(), n.to_string());
        let layers = policies.layers(&key("edge"), "http", &key("chat"), None);
        let spec = settings(&layers.iter().map(|(_, p)| *p).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            spec.allowed_origins,
            ["https://chat.example.com"],
            "the route's policy wins"
        );
        assert_eq!(
            spec.subprotocols,
            ["chat.v1"],
            "the Gateway's fills what the route's leaves out"
        );
        assert!(spec.proxy_http);
        let none = settings(&[]).unwrap();
        assert_eq!(
            none.keepalive,
            WebSocketRouteSpec::default().keepalive,
            "no policy: the defaults"
        );
    }

    #[test]
    fn the_documented_example_is_a_valid_policy() {
        let doc = include_str!("../../docs/gateway-api.md");
        let yaml = doc
            .split("```yaml")
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains("kind: WebSocketPolicy"))
            .expect("docs/gateway-api.md shows a WebSocketPolicy");
        let p: WebSocketPolicy = serde_yaml::from_str(yaml).expect("the example parses");
        let spec = settings(&[&p.spec]).expect("the example compiles into settings");
        assert_eq!(spec.allowed_origins, ["https://chat.example.com"]);
        assert_eq!(spec.limits.max_connections_per_client_ip, 20);
        assert!(
            crate::compile::validate(&spec).is_empty(),
            "{:?}",
            crate::compile::validate(&spec)
        );
    }
}
