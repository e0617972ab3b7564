//! The statuses and attachments of [`super::build`], on manifests shaped like the
//! conformance suite's.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::api::*;
use super::build::*;

/// Inputs from a multi-document YAML of Gateway API objects; Services as
/// `kind: Service` documents with `spec.ports`, namespaces with their labels.
fn inputs(yaml: &str) -> Inputs {
    let mut i = Inputs::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        match v["kind"].as_str().unwrap() {
            "GatewayClass" => i.classes.push(serde_json::from_value(v).unwrap()),
            "Gateway" => i.gateways.push(serde_json::from_value(v).unwrap()),
            "HTTPRoute" => i.routes.push(serde_json::from_value(v).unwrap()),
            "ReferenceGrant" => i.grants.push(serde_json::from_value(v).unwrap()),
            "Namespace" => {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default();
                i.namespaces
                    .insert(v["metadata"]["name"].as_str().unwrap().into(), labels);
            }
            "Service" => {
                let key = (
                    v["metadata"]["namespace"].as_str().unwrap().to_string(),
                    v["metadata"]["name"].as_str().unwrap().to_string(),
                );
                let ports = v["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| ServicePort {
                        port: p["port"].as_u64().unwrap() as u16,
                        name: p["name"].as_str().map(Into::into),
                        app_protocol: p["appProtocol"].as_str().map(Into::into),
                    })
                    .collect();
                i.services.insert(key, ports);
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    i
}

const BASE: &str = r#"
kind: GatewayClass
metadata: {name: wsgate, generation: 1}
spec: {controllerName: wsgate.io/gateway-controller}
---
kind: GatewayClass
metadata: {name: other, generation: 1}
spec: {controllerName: example.com/other}
---
kind: Namespace
metadata: {name: infra, labels: {kubernetes.io/metadata.name: infra}}
---
kind: Namespace
metadata: {name: web, labels: {kubernetes.io/metadata.name: web, gateway-conformance: backend}}
---
kind: Service
metadata: {name: v1, namespace: infra}
spec:
  ports:
  - {name: http, port: 8080}
  - {name: h2c, port: 8081, appProtocol: kubernetes.io/h2c}
  - {name: ws, port: 8082, appProtocol: kubernetes.io/ws}
---
kind: Service
metadata: {name: web, namespace: web}
spec: {ports: [{port: 8080}]}
---
kind: Gateway
metadata: {name: same, namespace: infra, generation: 3}
spec:
  gatewayClassName: wsgate
  listeners:
  - {name: http, port: 80, protocol: HTTP}
"#;

fn status<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    kind: &str,
) -> (&'a str, &'a str) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions:?}"));
    (c.status.as_str(), c.reason.as_str())
}

fn gateway<'a>(out: &'a Output, name: &str) -> &'a GatewayPlan {
    out.gateways
        .iter()
        .find(|g| g.key.1 == name)
        .unwrap_or_else(|| panic!("no gateway {name}"))
}

fn route_parent<'a>(out: &'a Output, name: &str) -> &'a RouteParentStatus {
    &out.routes
        .iter()
        .find(|(k, _)| k.1 == name)
        .unwrap_or_else(|| panic!("no status for route {name}"))
        .1[0]
}

#[test]
fn only_classes_and_gateways_of_wsgate_are_taken() {
    let mut i = inputs(&format!(
        "{BASE}---\nkind: Gateway\nmetadata: {{name: theirs, namespace: infra}}\nspec: {{gatewayClassName: other, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}\n"
    ));
    i.addresses.insert(
        ("infra".into(), "same".into()),
        vec![GatewayAddress {
            type_: "IPAddress".into(),
            value: "192.0.2.40".into(),
        }],
    );
    let out = build(&i);
    assert_eq!(out.classes.keys().collect::<Vec<_>>(), ["wsgate"]);
    let class = &out.classes["wsgate"];
    assert_eq!(status(&class.conditions, "Accepted"), ("True", "Accepted"));
    assert_eq!(class.conditions[0].observed_generation, Some(1));
    assert_eq!(out.gateways.len(), 1);
    let gw = gateway(&out, "same");
    assert_eq!(
        status(&gw.status.conditions, "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        status(&gw.status.conditions, "Programmed"),
        ("True", "Programmed")
    );
    assert!(gw
        .status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(3)));
    assert_eq!(gw.status.addresses[0].value, "192.0.2.40");
}

#[test]
fn a_gateway_without_an_address_is_accepted_but_not_programmed() {
    let out = build(&inputs(BASE));
    let gw = gateway(&out, "same");
    assert_eq!(
        status(&gw.status.conditions, "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        status(&gw.status.conditions, "Programmed"),
        ("False", "AddressNotAssigned")
    );
}

#[test]
fn unsupported_protocols_and_route_kinds_are_reported_per_listener() {
    let out = build(&inputs(&format!(
        r#"{BASE}---
kind: Gateway
metadata: {{name: only-bad, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners: [{{name: invalid, port: 80, protocol: UDP}}]
---
kind: Gateway
metadata: {{name: mixed, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
  - {{name: invalid, port: 81, protocol: UDP}}
---
kind: Gateway
metadata: {{name: kinds, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{kinds: [{{kind: InvalidRoute}}, {{kind: HTTPRoute}}]}}}}
"#
    )));
    let bad = gateway(&out, "only-bad");
    assert_eq!(
        status(&bad.status.conditions, "Accepted"),
        ("False", "ListenersNotValid")
    );
    assert_eq!(
        status(&bad.status.listeners[0].conditions, "Accepted"),
        ("False", "UnsupportedProtocol")
    );
    assert!(bad.status.listeners[0].supported_kinds.is_empty());
    let mixed = gateway(&out, "mixed");
    assert_eq!(
        status(&mixed.status.conditions, "Accepted"),
        ("True", "ListenersNotValid")
    );
    assert_eq!(mixed.listeners.len(), 1, "only the valid listener serves");
    let kinds = gateway(&out, "kinds");
    let l = &kinds.status.listeners[0];
    assert_eq!(
        status(&l.conditions, "ResolvedRefs"),
        ("False", "InvalidRouteKinds")
    );
    assert_eq!(
        l.supported_kinds,
        [RouteGroupKind {
            group: Some(GROUP.into()),
            kind: "HTTPRoute".into()
        }]
    );
}

#[test]
fn a_route_attaches_where_its_namespace_and_hostname_are_allowed() {
    let out = build(&inputs(&format!(
        r#"{BASE}---
kind: Gateway
metadata: {{name: hosts, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners:
  - {{name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}}
  - {{name: wild, port: 80, protocol: HTTP, hostname: "*.wildcard.io"}}
  - name: selected
    port: 8080
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{gateway-conformance: backend}}}}}}}}
---
kind: HTTPRoute
metadata: {{name: ok, namespace: infra}}
spec:
  parentRefs: [{{name: hosts}}]
  hostnames: [foo.example.com, "a.wildcard.io", "*.wildcard.io", bar.example.com]
  rules: [{{backendRefs: [{{name: v1, port: 8080}}]}}]
---
kind: HTTPRoute
metadata: {{name: nohost, namespace: infra}}
spec:
  parentRefs: [{{name: hosts, sectionName: foo}}]
  hostnames: [not-accepted.test.com]
  rules: [{{backendRefs: [{{name: v1, port: 8080}}]}}]
---
kind: HTTPRoute
metadata: {{name: nosection, namespace: infra}}
spec:
  parentRefs: [{{name: hosts, sectionName: missing}}]
---
kind: HTTPRoute
metadata: {{name: cross, namespace: web}}
spec:
  parentRefs: [{{name: same, namespace: infra}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
---
kind: HTTPRoute
metadata: {{name: selected, namespace: web}}
spec:
  parentRefs: [{{name: hosts, namespace: infra}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#
    )));
    assert_eq!(
        status(&route_parent(&out, "ok").conditions, "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        status(&route_parent(&out, "ok").conditions, "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    assert_eq!(
        status(&route_parent(&out, "nohost").conditions, "Accepted"),
        ("False", "NoMatchingListenerHostname")
    );
    assert_eq!(
        status(&route_parent(&out, "nosection").conditions, "Accepted"),
        ("False", "NoMatchingParent")
    );
    assert_eq!(
        status(&route_parent(&out, "cross").conditions, "Accepted"),
        ("False", "NotAllowedByListeners")
    );
    assert_eq!(
        status(&route_parent(&out, "selected").conditions, "Accepted"),
        ("True", "Accepted")
    );
    let gw = gateway(&out, "hosts");
    let attached: Vec<i32> = gw
        .status
        .listeners
        .iter()
        .map(|l| l.attached_routes)
        .collect();
    assert_eq!(
        attached,
        [1, 1, 1],
        "foo and wild: ok; selected: only the route from the selected namespace"
    );
    let foo = &gw.listeners[0];
    assert_eq!(foo.rules[0].hostnames, ["foo.example.com"]);
    let wild = &gw.listeners[1];
    assert_eq!(wild.rules[0].hostnames, ["*.wildcard.io", "a.wildcard.io"]);
}

#[test]
fn unusable_backends_are_kept_for_their_500s_and_named_in_resolved_refs() {
    let out = build(&inputs(&format!(
        r#"{BASE}---
kind: HTTPRoute
metadata: {{name: kind, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{group: unknown.example.com, kind: Unknown, name: x, port: 1}}]}}]
---
kind: HTTPRoute
metadata: {{name: missing, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{name: nope, port: 8080}}]}}]
---
kind: HTTPRoute
metadata: {{name: cross, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{name: web, namespace: web, port: 8080, weight: 3}}, {{name: v1, port: 8080}}]}}]
---
kind: HTTPRoute
metadata: {{name: h2c, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{name: v1, port: 8081}}]}}]
---
kind: HTTPRoute
metadata: {{name: ws, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{name: v1, port: 8082}}]}}]
"#
    )));
    for (route, reason) in [
        ("kind", "InvalidKind"),
        ("missing", "BackendNotFound"),
        ("cross", "RefNotPermitted"),
        ("h2c", "UnsupportedProtocol"),
    ] {
        let c = &route_parent(&out, route).conditions;
        assert_eq!(status(c, "ResolvedRefs"), ("False", reason), "{route}");
        assert_eq!(
            status(c, "Accepted"),
            ("True", "Accepted"),
            "{route}: an unresolved ref does not stop attachment"
        );
    }
    assert_eq!(
        status(&route_parent(&out, "ws").conditions, "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    let l = &gateway(&out, "same").listeners[0];
    let cross = l.rules.iter().find(|r| r.route.1 == "cross").unwrap();
    assert_eq!(cross.backends[0], BackendPlan::Invalid { weight: 3 });
    assert!(matches!(
        cross.backends[1],
        BackendPlan::Service { weight: 1, .. }
    ));
}

#[test]
fn a_reference_grant_permits_exactly_what_it_names() {
    let yaml = |to_name: &str| {
        format!(
            r#"{BASE}---
kind: HTTPRoute
metadata: {{name: cross, namespace: infra}}
spec:
  parentRefs: [{{name: same}}]
  rules: [{{backendRefs: [{{name: web, namespace: web, port: 8080}}]}}]
---
kind: ReferenceGrant
metadata: {{name: grant, namespace: web}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}}]
  to: [{{group: "", kind: Service{to_name}}}]
"#
        )
    };
    let all = build(&inputs(&yaml("")));
    assert_eq!(
        status(&route_parent(&all, "cross").conditions, "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    let named = build(&inputs(&yaml(", name: web")));
    assert_eq!(
        status(&route_parent(&named, "cross").conditions, "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    let other = build(&inputs(&yaml(", name: another")));
    assert_eq!(
        status(&route_parent(&other, "cross").conditions, "ResolvedRefs"),
        ("False", "RefNotPermitted")
    );
}

#[test]
fn https_listeners_need_a_usable_permitted_certificate() {
    let mut i = inputs(&format!(
        r#"{BASE}---
kind: Gateway
metadata: {{name: tls, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners:
  - {{name: missing, port: 443, protocol: HTTPS, hostname: a.example, tls: {{certificateRefs: [{{name: nope}}]}}}}
  - {{name: kind, port: 443, protocol: HTTPS, hostname: b.example, tls: {{certificateRefs: [{{kind: ConfigMap, group: "", name: cm}}]}}}}
  - {{name: cross, port: 443, protocol: HTTPS, hostname: c.example, tls: {{certificateRefs: [{{name: cert, namespace: web}}]}}}}
  - {{name: malformed, port: 443, protocol: HTTPS, hostname: d.example, tls: {{certificateRefs: [{{name: bad}}]}}}}
"#
    ));
    i.certificates
        .insert(("infra".into(), "bad".into()), Err("no private key".into()));
    let out = build(&i);
    let gw = gateway(&out, "tls");
    let reasons: Vec<_> = gw
        .status
        .listeners
        .iter()
        .map(|l| status(&l.conditions, "ResolvedRefs"))
        .collect();
    assert_eq!(
        reasons,
        [
            ("False", "InvalidCertificateRef"),
            ("False", "InvalidCertificateRef"),
            ("False", "RefNotPermitted"),
            ("False", "InvalidCertificateRef")
        ]
    );
    assert!(gw
        .status
        .listeners
        .iter()
        .all(|l| status(&l.conditions, "Programmed").0 == "False"));
}

#[test]
fn listeners_on_one_port_conflict_on_the_same_hostname_or_another_protocol() {
    let out = build(&inputs(&format!(
        r#"{BASE}---
kind: Gateway
metadata: {{name: clash, namespace: infra}}
spec:
  gatewayClassName: wsgate
  listeners:
  - {{name: a, port: 80, protocol: HTTP, hostname: x.example}}
  - {{name: b, port: 80, protocol: HTTP, hostname: x.example}}
  - {{name: c, port: 80, protocol: HTTP, hostname: y.example}}
"#
    )));
    let l = &gateway(&out, "clash").status.listeners;
    assert_eq!(
        status(&l[0].conditions, "Conflicted"),
        ("True", "HostnameConflict")
    );
    assert_eq!(
        status(&l[1].conditions, "Conflicted"),
        ("True", "HostnameConflict")
    );
    assert_eq!(
        status(&l[2].conditions, "Conflicted"),
        ("False", "NoConflicts")
    );
}

#[test]
fn rules_are_ordered_as_the_specification_ranks_them() {
    let out = build(&inputs(&format!(
        r#"{BASE}---
kind: HTTPRoute
metadata: {{name: b-newer, namespace: infra, creationTimestamp: "2026-12-07T08:00:00Z"}}
spec:
  parentRefs: [{{name: same}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
  - matches: [{{path: {{type: Exact, value: /v2}}}}]
---
kind: HTTPRoute
metadata: {{name: a-older, namespace: infra, creationTimestamp: "2026-12-07T07:00:00Z"}}
spec:
  parentRefs: [{{name: same}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{path: {{type: PathPrefix, value: /v2}}, headers: [{{name: v, value: "1"}}]}}]
  - {{}}
"#
    )));
    let order: Vec<(String, usize, Option<String>)> = gateway(&out, "same").listeners[0]
        .rules
        .iter()
        .map(|r| {
            (
                r.route.1.clone(),
                r.rule,
                r.matches.path.as_ref().and_then(|p| p.type_.clone()),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("b-newer".into(), 1, Some("Exact".into())),
            ("a-older".into(), 0, Some("PathPrefix".into())), // with a header match
            ("a-older".into(), 0, Some("PathPrefix".into())),
            ("b-newer".into(), 0, Some("PathPrefix".into())),
            ("a-older".into(), 1, None),
        ]
    );
    assert_eq!(
        gateway(&out, "same").listeners[0].rules[1]
            .matches
            .headers
            .len(),
        1
    );
}

#[test]
fn hostnames_intersect_as_the_specification_says() {
    assert_eq!(intersect(None, &[]), Some(vec![]));
    assert_eq!(
        intersect(Some("*.example.com"), &[]),
        Some(vec!["*.example.com".into()])
    );
    assert_eq!(
        intersect(Some("*.example.com"), &["a.b.example.com".into()]),
        Some(vec!["a.b.example.com".into()])
    );
    assert_eq!(
        intersect(Some("foo.example.com"), &["*.example.com".into()]),
        Some(vec!["foo.example.com".into()])
    );
    assert_eq!(
        intersect(Some("example.com"), &["*.example.com".into()]),
        None
    );
    assert_eq!(
        intersect(Some("*.example.com"), &["*.foo.example.com".into()]),
        Some(vec!["*.foo.example.com".into()])
    );
}

/// `make conformance` claims exactly what the GatewayClass status says wsgate
/// supports: the two lists are written twice and must not drift apart.
#[test]
fn the_conformance_run_claims_what_the_gatewayclass_says() {
    let script = include_str!("../../tests/conformance/run.sh");
    let line = script
        .lines()
        .find(|l| l.starts_with("SUPPORTED_FEATURES="))
        .expect("tests/conformance/run.sh sets SUPPORTED_FEATURES");
    let list = line
        .split(":-")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .expect("SUPPORTED_FEATURES=\"${SUPPORTED_FEATURES:-...}\"");
    let mut claimed: Vec<&str> = list.split(',').collect();
    let mut supported = super::SUPPORTED_FEATURES.to_vec();
    claimed.sort_unstable();
    supported.sort_unstable();
    assert_eq!(claimed, supported);
}
