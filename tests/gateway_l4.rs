//! Ports of the Gateway API v1.6 conformance tests (`conformance/tests/` in
//! kubernetes-sigs/gateway-api) for TLSRoute, TCPRoute, UDPRoute, BackendTLSPolicy and
//! frontend client-certificate validation: one test per upstream test, named after its
//! `ShortName` (`TCPRouteWeightedRouting` → `tcproute_weighted_routing`).
//!
//! Each runs the real `sluice` binary against the wire-level fake API server
//! (`support::kube_fake`) with the upstream test's manifests (as JSON, the Deployments
//! replaced by echo servers of `support::l4_echo` on 127.0.0.1 and EndpointSlices
//! naming them), and checks what the upstream test checks: the statuses the Lease
//! holder writes back, and the traffic. Gateway listener ports bind to Sluice
//! listeners by `public_port`, as a Service in front of Sluice would map them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::support::l4_echo::{tcp_test, tls_test, udp_ask, TcpEcho, UdpEcho, NAMESPACE};
use crate::support::{eventually, FakeKube, Gateway, TestCa, TestCert, TestUpstream};

const NS: &str = NAMESPACE;
const WEB_NS: &str = "gateway-conformance-web-backend";
const APP_NS: &str = "gateway-conformance-app-backend";
const CONTROLLER: &str = "sluice.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(20);

/// A Sluice listener for the test: its name, protocol and the port Gateways name.
struct L {
    name: &'static str,
    protocol: &'static str,
    port: u16,
}

const fn l(name: &'static str, protocol: &'static str, port: u16) -> L {
    L { name, protocol, port }
}

/// One ported test's world: the fake API server and the gateway.
struct World {
    fake: FakeKube,
    gw: Gateway,
}

impl World {
    /// Starts the fake with the GatewayClass, and Sluice with `listeners` (and a plain
    /// HTTP listener `web`, public port 80, and the Kubernetes source).
    async fn start(listeners: &[L], files: &[(&str, String)]) -> World {
        let fake = FakeKube::start().await;
        fake.apply(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "sluice"}, "spec": {"controllerName": CONTROLLER}}),
        );
        let mut yaml = String::from("listeners:\n- {name: web, listen: \"{{http}}\", public_port: 80}\n");
        for x in listeners {
            let (protocol, tls) = match x.protocol {
                "https" => ("http", ", tls: {certificates: []}"),
                p => (p, ""),
            };
            yaml.push_str(&format!(
                "- {{name: {}, listen: \"{{{{addr:{}}}}}\", protocol: {protocol}, public_port: {}{tls}}}\n",
                x.name, x.name, x.port
            ));
        }
        yaml.push_str(&format!(
            "kubernetes:\n  clusters: [{{name: local, kubeconfig: \"{{{{file:local.kubeconfig}}}}\"}}]\n  namespaces: [{NS}, {WEB_NS}, {APP_NS}]\n  debounce: 5ms\n"
        ));
        let mut b = Gateway::builder(&yaml).file("local.kubeconfig", fake.kubeconfig());
        for (name, contents) in files {
            b = b.file(name, contents.clone());
        }
        let gw = b.env("POD_NAME", "sluice-0").start().await;
        World { fake, gw }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.gw.port(listener)))
    }

    /// A Service `ns/name` with one port, and an EndpointSlice for `backend`.
    fn service(&self, ns: &str, name: &str, port: i32, protocol: &str, backend: SocketAddr) {
        self.fake.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "p", "port": port, "protocol": protocol}]}}));
        self.fake.apply(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": backend.port(), "protocol": protocol}],
            "endpoints": [{"addresses": [backend.ip().to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false}}]}),
        );
    }

    fn gateway(&self, name: &str, listeners: Value) {
        self.fake.apply(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"gatewayClassName": "sluice", "listeners": listeners}}),
        );
    }

    fn route(&self, kind: &str, name: &str, spec: Value) {
        self.fake
            .apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}));
    }

    /// A route created at `created` (the API server's `creationTimestamp`, which the
    /// fake leaves to the object).
    fn route_at(&self, kind: &str, name: &str, created: &str, spec: Value) {
        self.fake
            .apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created}, "spec": spec}));
    }

    fn get(&self, kind: &str, ns: &str, name: &str) -> Value {
        self.fake
            .get(
                &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
                "metadata": {"name": name, "namespace": ns}}),
            )
            .unwrap_or(Value::Null)
    }

    /// Sluice's condition `type_` of route `kind/name` for parent Gateway `gw`:
    /// `(status, reason)`.
    fn route_cond(&self, kind: &str, name: &str, gw: &str, type_: &str) -> (String, String) {
        let r = self.get(kind, NS, name);
        let parent = r["status"]["parents"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p["controllerName"] == CONTROLLER && p["parentRef"]["name"] == gw)
            })
            .cloned()
            .unwrap_or(Value::Null);
        cond_of(&parent["conditions"], type_)
    }

    async fn expect_route(&self, kind: &str, name: &str, gw: &str, type_: &str, status: &str, reason: &str) {
        let what = format!("{kind} {name} {type_}={status} ({reason}) on {gw}");
        eventually(WAIT, &what, || {
            let got = self.route_cond(kind, name, gw, type_);
            async move { got.0 == status && (reason.is_empty() || got.1 == reason) }
        })
        .await;
    }

    /// The status of listener `listener` of Gateway `gw`.
    fn listener(&self, gw: &str, listener: &str) -> Value {
        let g = self.get("Gateway", NS, gw);
        g["status"]["listeners"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["name"] == listener))
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn expect_listener(&self, gw: &str, listener: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, &format!("listener {gw}/{listener}'s status"), || {
            let ok = check(&self.listener(gw, listener));
            async move { ok }
        })
        .await;
        self.listener(gw, listener)
    }
}

/// `(status, reason)` of condition `type_` in a conditions list.
fn cond_of(conditions: &Value, type_: &str) -> (String, String) {
    conditions
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn has(l: &Value, type_: &str, status: &str, reason: &str) -> bool {
    let (s, r) = cond_of(&l["conditions"], type_);
    s == status && (reason.is_empty() || r == reason)
}

fn kinds(l: &Value) -> Vec<String> {
    l["supportedKinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kind"].as_str().map(str::to_string))
        .collect()
}

fn tcp_listener(name: &str, port: u16) -> Value {
    json!({"name": name, "protocol": "TCP", "port": port,
        "allowedRoutes": {"kinds": [{"kind": "TCPRoute", "group": "gateway.networking.k8s.io"}],
            "namespaces": {"from": "Same"}}})
}

fn udp_listener(name: &str, port: u16) -> Value {
    json!({"name": name, "protocol": "UDP", "port": port,
        "allowedRoutes": {"kinds": [{"kind": "UDPRoute", "group": "gateway.networking.k8s.io"}],
            "namespaces": {"from": "Same"}}})
}

fn passthrough_listener(name: &str, port: u16, hostname: Option<&str>) -> Value {
    let mut l = json!({"name": name, "protocol": "TLS", "port": port,
        "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]},
        "tls": {"mode": "Passthrough"}});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

fn backend(name: &str, port: i32) -> Value {
    json!({"name": name, "port": port})
}

/// Runs `f` until it answers `want` (a pod), within the wait.
async fn tcp_reaches(addr: SocketAddr, pod: &str) {
    eventually(
        WAIT,
        &format!("TCP through {addr} reaching {pod}"),
        || async move { tcp_test(addr).await.is_ok_and(|a| a.pod == pod) },
    )
    .await;
}

async fn udp_reaches(addr: SocketAddr, service: &str) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock = &sock;
    eventually(
        WAIT,
        &format!("UDP through {addr} reaching {service}"),
        || async move {
            udp_ask(
                sock,
                addr,
                "gateway-api-conformance-udp-echo",
                Duration::from_millis(500),
            )
            .await
            .is_some_and(|v| v["service"] == service && v["namespace"] == NS)
        },
    )
    .await;
}

// ---- TCPRoute --------------------------------------------------------------------

#[tokio::test]
async fn tcproute_invalid_backend_ref_nonexistent() {
    let w = World::start(&[l("tcp", "tcp", 9300)], &[]).await;
    w.gateway("tcp-gateway-invalid-backend", json!([tcp_listener("tcp", 9300)]));
    w.route(
        "TCPRoute",
        "tcp-route-invalid-backend-ref-nonexistent",
        json!({
        "parentRefs": [{"name": "tcp-gateway-invalid-backend", "sectionName": "tcp"}],
        "rules": [{"backendRefs": [backend("nonexistent-service", 8080)]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcp-route-invalid-backend-ref-nonexistent",
        "tcp-gateway-invalid-backend",
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    )
    .await;
    // No backend: the connection is closed.
    assert!(tcp_test(w.addr("tcp")).await.is_err());
}

#[tokio::test]
async fn tcproute_invalid_cross_namespace_backend_ref() {
    let w = World::start(&[l("tcp", "tcp", 9321)], &[]).await;
    let echo = TcpEcho::start("tcp-invalid-xns-backend").await;
    w.service(WEB_NS, "tcp-invalid-xns-backend", 3000, "TCP", echo.addr());
    w.gateway(
        "tcp-invalid-cross-namespace-backend-ref-gateway",
        json!([tcp_listener("tcp", 9321)]),
    );
    w.route("TCPRoute", "tcp-invalid-cross-namespace-backend-ref", json!({
        "parentRefs": [{"name": "tcp-invalid-cross-namespace-backend-ref-gateway", "sectionName": "tcp"}],
        "rules": [{"backendRefs": [{"name": "tcp-invalid-xns-backend", "namespace": WEB_NS, "port": 3000}]}]}));
    w.expect_route(
        "TCPRoute",
        "tcp-invalid-cross-namespace-backend-ref",
        "tcp-invalid-cross-namespace-backend-ref-gateway",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;
    assert!(
        tcp_test(w.addr("tcp")).await.is_err(),
        "no ReferenceGrant: no traffic"
    );
    assert_eq!(echo.accepted(), 0);
}

#[tokio::test]
async fn tcproute_invalid_non_tcp_listener() {
    let w = World::start(&[], &[]).await;
    w.gateway(
        "tcp-mixed-protocol-gateway",
        json!([{"name": "only-allow-http-routes", "protocol": "HTTP",
        "port": 80, "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}}]),
    );
    w.route(
        "TCPRoute",
        "tcp-route",
        json!({
        "parentRefs": [{"name": "tcp-mixed-protocol-gateway", "sectionName": "only-allow-http-routes"}],
        "rules": [{"backendRefs": [backend("tcp-echo-backend", 8080)]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcp-route",
        "tcp-mixed-protocol-gateway",
        "Accepted",
        "False",
        "NotAllowedByListeners",
    )
    .await;
    let l = w
        .expect_listener("tcp-mixed-protocol-gateway", "only-allow-http-routes", |l| {
            !l.is_null()
        })
        .await;
    assert_eq!(l["attachedRoutes"], 0, "{l}");
}

#[tokio::test]
async fn tcproute_multiple_routes_attachment() {
    let w = World::start(&[l("tcp", "tcp", 9310)], &[]).await;
    let (b1, b2) = (
        TcpEcho::start("tcp-attach-backend-1").await,
        TcpEcho::start("tcp-attach-backend-2").await,
    );
    w.service(NS, "tcp-attach-backend-1", 3000, "TCP", b1.addr());
    w.service(NS, "tcp-attach-backend-2", 3000, "TCP", b2.addr());
    w.gateway(
        "tcp-multi-route-attach-gateway",
        json!([tcp_listener("tcp", 9310)]),
    );
    let parent = json!([{"name": "tcp-multi-route-attach-gateway", "sectionName": "tcp"}]);
    w.route_at(
        "TCPRoute",
        "tcproute-attach-older",
        "2026-01-01T00:00:00Z",
        json!({"parentRefs": parent,
        "rules": [{"backendRefs": [backend("tcp-attach-backend-1", 3000)]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcproute-attach-older",
        "tcp-multi-route-attach-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    tcp_reaches(w.addr("tcp"), b1.pod()).await;
    w.route_at(
        "TCPRoute",
        "tcproute-attach-newer",
        "2026-01-01T00:00:01Z",
        json!({"parentRefs": parent,
        "rules": [{"backendRefs": [backend("tcp-attach-backend-2", 3000)]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcproute-attach-newer",
        "tcp-multi-route-attach-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    let l = w
        .expect_listener("tcp-multi-route-attach-gateway", "tcp", |l| {
            l["attachedRoutes"] == 2
        })
        .await;
    assert!(has(&l, "Accepted", "True", "Accepted"), "{l}");
    assert_eq!(kinds(&l), ["TCPRoute"]);
    for i in 0..100 {
        let a = tcp_test(w.addr("tcp")).await.unwrap();
        assert_eq!(a.pod, b1.pod(), "request {i} reached the newer route's backend");
    }
    assert_eq!(b2.accepted(), 0);
}

#[tokio::test]
async fn tcproute_parent_ref_attach_all() {
    let ports = [("one", 9310u16), ("two", 9311), ("three", 9312), ("four", 9313)];
    let ls: Vec<L> = ports.iter().map(|(n, p)| l(n, "tcp", *p)).collect();
    let w = World::start(&ls, &[]).await;
    let echo = TcpEcho::start("tcp-echo-attach-all").await;
    w.service(NS, "tcp-echo-attach-all", 3000, "TCP", echo.addr());
    w.gateway(
        "tcp-attach-all-gateway",
        Value::Array(ports.iter().map(|(n, p)| tcp_listener(n, *p)).collect()),
    );
    w.route(
        "TCPRoute",
        "tcp-route-attach-all",
        json!({"parentRefs": [{"name": "tcp-attach-all-gateway"}],
        "rules": [{"backendRefs": [backend("tcp-echo-attach-all", 3000)]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcp-route-attach-all",
        "tcp-attach-all-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    for (name, _) in ports {
        w.expect_listener("tcp-attach-all-gateway", name, |l| l["attachedRoutes"] == 1)
            .await;
        tcp_reaches(w.addr(name), echo.pod()).await;
    }
}

#[tokio::test]
async fn tcproute_parent_ref_port_and_section_name() {
    let w = World::start(
        &[l("a", "tcp", 9301), l("b", "tcp", 9302), l("c", "tcp", 9303)],
        &[],
    )
    .await;
    let one = TcpEcho::start("tcp-echo-one").await;
    let two = TcpEcho::start("tcp-echo-two").await;
    let three = TcpEcho::start("tcp-echo-three").await;
    for e in [&one, &two, &three] {
        w.service(NS, e.pod().rsplit_once('-').unwrap().0, 3000, "TCP", e.addr());
    }
    w.gateway(
        "tcp-multi-listener-gateway",
        json!([
            tcp_listener("by-port", 9301),
            tcp_listener("by-section", 9302),
            tcp_listener("by-section-and-port", 9303)
        ]),
    );
    let cases = [
        (
            "tcp-route-by-port",
            json!({"name": "tcp-multi-listener-gateway", "port": 9301}),
            "tcp-echo-one",
            "a",
            &one,
        ),
        (
            "tcp-route-by-section",
            json!({"name": "tcp-multi-listener-gateway", "sectionName": "by-section"}),
            "tcp-echo-two",
            "b",
            &two,
        ),
        (
            "tcp-route-by-section-and-port",
            json!({"name": "tcp-multi-listener-gateway", "sectionName": "by-section-and-port", "port": 9303}),
            "tcp-echo-three",
            "c",
            &three,
        ),
    ];
    for (route, parent, svc, _, _) in &cases {
        w.route(
            "TCPRoute",
            route,
            json!({"parentRefs": [parent], "rules": [{"backendRefs": [backend(svc, 3000)]}]}),
        );
    }
    for (route, _, _, listener, echo) in &cases {
        w.expect_route(
            "TCPRoute",
            route,
            "tcp-multi-listener-gateway",
            "Accepted",
            "True",
            "Accepted",
        )
        .await;
        tcp_reaches(w.addr(listener), echo.pod()).await;
    }
}

#[tokio::test]
async fn tcproute_reference_grant() {
    let w = World::start(&[l("tcp", "tcp", 9320)], &[]).await;
    let echo = TcpEcho::start("tcp-reference-grant-backend").await;
    w.service(WEB_NS, "tcp-reference-grant-backend", 3000, "TCP", echo.addr());
    let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"name": "tcp-reference-grant", "namespace": WEB_NS},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": NS}],
            "to": [{"group": "", "kind": "Service", "name": "tcp-reference-grant-backend"}]}});
    w.fake.apply(grant.clone());
    w.gateway("tcp-reference-grant-gateway", json!([tcp_listener("tcp", 9320)]));
    w.route("TCPRoute", "tcp-reference-grant", json!({
        "parentRefs": [{"name": "tcp-reference-grant-gateway", "sectionName": "tcp"}],
        "rules": [{"backendRefs": [{"name": "tcp-reference-grant-backend", "namespace": WEB_NS, "port": 3000}]}]}));
    w.expect_route(
        "TCPRoute",
        "tcp-reference-grant",
        "tcp-reference-grant-gateway",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    tcp_reaches(w.addr("tcp"), echo.pod()).await;
    w.fake.delete(&grant);
    w.expect_route(
        "TCPRoute",
        "tcp-reference-grant",
        "tcp-reference-grant-gateway",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;
    eventually(WAIT, "traffic refused once the grant is gone", || async {
        tcp_test(w.addr("tcp")).await.is_err()
    })
    .await;
}

/// Sends `n` one-shot requests through `ask` and counts the answers per backend.
async fn distribution<F, Fut>(n: usize, ask: F) -> BTreeMap<String, usize>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let who = ask().await.expect("an answer");
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn tcproute_weighted_routing() {
    let w = World::start(&[l("tcp", "tcp", 9330)], &[]).await;
    let v = [
        TcpEcho::start("tcp-backend-v1").await,
        TcpEcho::start("tcp-backend-v2").await,
        TcpEcho::start("tcp-backend-v3").await,
    ];
    for (i, e) in v.iter().enumerate() {
        w.service(NS, &format!("tcp-backend-v{}", i + 1), 3000, "TCP", e.addr());
    }
    w.gateway("tcp-weighted-gateway", json!([tcp_listener("tcp", 9330)]));
    w.route(
        "TCPRoute",
        "tcp-weighted-route",
        json!({"parentRefs": [{"name": "tcp-weighted-gateway", "sectionName": "tcp"}],
        "rules": [{"backendRefs": [
            {"name": "tcp-backend-v1", "port": 3000, "weight": 70},
            {"name": "tcp-backend-v2", "port": 3000, "weight": 30},
            {"name": "tcp-backend-v3", "port": 3000, "weight": 0}]}]}),
    );
    w.expect_route(
        "TCPRoute",
        "tcp-weighted-route",
        "tcp-weighted-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    tcp_reaches(w.addr("tcp"), v[0].pod()).await;
    let addr = w.addr("tcp");
    let counts = distribution(
        200,
        || async move { tcp_test(addr).await.ok().map(|a| a.service) },
    )
    .await;
    // Smooth weighted round robin: exact over whole periods, within one pick otherwise.
    let v1 = counts.get("tcp-backend-v1").copied().unwrap_or(0);
    let v2 = counts.get("tcp-backend-v2").copied().unwrap_or(0);
    assert!((138..=142).contains(&v1) && (58..=62).contains(&v2), "{counts:?}");
    assert_eq!(
        counts.get("tcp-backend-v3"),
        None,
        "weight 0 gets nothing: {counts:?}"
    );
}

// ---- UDPRoute --------------------------------------------------------------------

#[tokio::test]
async fn udproute_simple() {
    let w = World::start(&[l("dns", "udp", 5300)], &[]).await;
    let coredns = UdpEcho::start("coredns").await;
    w.service(NS, "coredns", 53, "UDP", coredns.addr());
    w.gateway("udp-gateway", json!([udp_listener("coredns", 5300)]));
    w.route(
        "UDPRoute",
        "udp-coredns",
        json!({"parentRefs": [{"name": "udp-gateway", "sectionName": "coredns"}],
        "rules": [{"backendRefs": [backend("coredns", 53)]}]}),
    );
    w.expect_route(
        "UDPRoute",
        "udp-coredns",
        "udp-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    udp_reaches(w.addr("dns"), "coredns").await;
}

#[tokio::test]
async fn udproute_invalid_backend_ref_nonexistent() {
    let w = World::start(&[l("udp", "udp", 5302)], &[]).await;
    w.gateway("udp-gateway-invalid-backend", json!([udp_listener("udp", 5302)]));
    w.route(
        "UDPRoute",
        "udp-route-invalid-backend-ref-nonexistent",
        json!({
        "parentRefs": [{"name": "udp-gateway-invalid-backend", "sectionName": "udp"}],
        "rules": [{"backendRefs": [backend("nonexistent-service", 8080)]}]}),
    );
    w.expect_route(
        "UDPRoute",
        "udp-route-invalid-backend-ref-nonexistent",
        "udp-gateway-invalid-backend",
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    )
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(udp_ask(&sock, w.addr("udp"), "x", Duration::from_millis(500))
        .await
        .is_none());
}

#[tokio::test]
async fn udproute_invalid_cross_namespace_backend_ref() {
    let w = World::start(&[l("udp", "udp", 5303)], &[]).await;
    let echo = UdpEcho::start("udp-invalid-xns-backend").await;
    w.service(WEB_NS, "udp-invalid-xns-backend", 8080, "UDP", echo.addr());
    w.gateway(
        "udp-invalid-cross-namespace-backend-ref-gateway",
        json!([udp_listener("udp", 5303)]),
    );
    w.route("UDPRoute", "udp-invalid-cross-namespace-backend-ref", json!({
        "parentRefs": [{"name": "udp-invalid-cross-namespace-backend-ref-gateway", "sectionName": "udp"}],
        "rules": [{"backendRefs": [{"name": "udp-invalid-xns-backend", "namespace": WEB_NS, "port": 8080}]}]}));
    w.expect_route(
        "UDPRoute",
        "udp-invalid-cross-namespace-backend-ref",
        "udp-invalid-cross-namespace-backend-ref-gateway",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(udp_ask(&sock, w.addr("udp"), "x", Duration::from_millis(500))
        .await
        .is_none());
}

#[tokio::test]
async fn udproute_multiple_routes_attachment() {
    let w = World::start(&[l("udp", "udp", 5301)], &[]).await;
    let (b1, b2) = (
        UdpEcho::start("udp-attach-backend-1").await,
        UdpEcho::start("udp-attach-backend-2").await,
    );
    w.service(NS, "udp-attach-backend-1", 8080, "UDP", b1.addr());
    w.service(NS, "udp-attach-backend-2", 8080, "UDP", b2.addr());
    w.gateway(
        "udp-multi-route-attach-gateway",
        json!([udp_listener("udp", 5301)]),
    );
    let parent = json!([{"name": "udp-multi-route-attach-gateway", "sectionName": "udp"}]);
    w.route_at(
        "UDPRoute",
        "udproute-attach-older",
        "2026-01-01T00:00:00Z",
        json!({"parentRefs": parent,
        "rules": [{"backendRefs": [backend("udp-attach-backend-1", 8080)]}]}),
    );
    udp_reaches(w.addr("udp"), "udp-attach-backend-1").await;
    w.route_at(
        "UDPRoute",
        "udproute-attach-newer",
        "2026-01-01T00:00:01Z",
        json!({"parentRefs": parent,
        "rules": [{"backendRefs": [backend("udp-attach-backend-2", 8080)]}]}),
    );
    for r in ["udproute-attach-older", "udproute-attach-newer"] {
        w.expect_route(
            "UDPRoute",
            r,
            "udp-multi-route-attach-gateway",
            "Accepted",
            "True",
            "Accepted",
        )
        .await;
    }
    w.expect_listener("udp-multi-route-attach-gateway", "udp", |l| {
        l["attachedRoutes"] == 2
    })
    .await;
    for i in 0..50 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let v = udp_ask(&sock, w.addr("udp"), "x", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(v["service"], "udp-attach-backend-1", "datagram {i}");
    }
}

#[tokio::test]
async fn udproute_not_allowed_by_listeners() {
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    w.gateway(
        "udproute-tls-only-gateway",
        json!([passthrough_listener("tls", 443, None)]),
    );
    w.route(
        "UDPRoute",
        "udproute-not-allowed-by-listeners",
        json!({
        "parentRefs": [{"name": "udproute-tls-only-gateway", "sectionName": "tls"}],
        "rules": [{"backendRefs": [backend("coredns", 53)]}]}),
    );
    w.expect_route(
        "UDPRoute",
        "udproute-not-allowed-by-listeners",
        "udproute-tls-only-gateway",
        "Accepted",
        "False",
        "NotAllowedByListeners",
    )
    .await;
    let l = w
        .expect_listener("udproute-tls-only-gateway", "tls", |l| !l.is_null())
        .await;
    assert_eq!(l["attachedRoutes"], 0);
}

#[tokio::test]
async fn udproute_parent_ref_attach_all_listeners() {
    let ports = [("udp-1", 5310u16), ("udp-2", 5311), ("udp-3", 5312)];
    let ls: Vec<L> = ports.iter().map(|(n, p)| l(n, "udp", *p)).collect();
    let w = World::start(&ls, &[]).await;
    let echo = UdpEcho::start("udp-echo-attach-all").await;
    w.service(NS, "udp-echo-attach-all", 8080, "UDP", echo.addr());
    w.gateway(
        "udp-attach-all-listeners-gateway",
        Value::Array(ports.iter().map(|(n, p)| udp_listener(n, *p)).collect()),
    );
    w.route(
        "UDPRoute",
        "udp-route-attach-all",
        json!({"parentRefs": [{"name": "udp-attach-all-listeners-gateway"}],
        "rules": [{"backendRefs": [backend("udp-echo-attach-all", 8080)]}]}),
    );
    w.expect_route(
        "UDPRoute",
        "udp-route-attach-all",
        "udp-attach-all-listeners-gateway",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    for (name, _) in ports {
        let l = w
            .expect_listener("udp-attach-all-listeners-gateway", name, |l| {
                l["attachedRoutes"] == 1
            })
            .await;
        assert!(
            has(&l, "Accepted", "True", "") && has(&l, "Programmed", "True", ""),
            "{l}"
        );
        udp_reaches(w.addr(name), "udp-echo-attach-all").await;
    }
}

#[tokio::test]
async fn udproute_parent_ref_port_and_section_name() {
    let w = World::start(
        &[l("a", "udp", 5320), l("b", "udp", 5321), l("c", "udp", 5322)],
        &[],
    )
    .await;
    let svcs = [
        "udp-echo-by-port",
        "udp-echo-by-section",
        "udp-echo-by-section-and-port",
    ];
    let mut echoes = Vec::new();
    for s in svcs {
        let e = UdpEcho::start(s).await;
        w.service(NS, s, 8080, "UDP", e.addr());
        echoes.push(e);
    }
    w.gateway(
        "udp-multi-listener-gateway",
        json!([
            udp_listener("by-port", 5320),
            udp_listener("by-section", 5321),
            udp_listener("by-section-and-port", 5322)
        ]),
    );
    let parents = [
        json!({"name": "udp-multi-listener-gateway", "port": 5320}),
        json!({"name": "udp-multi-listener-gateway", "sectionName": "by-section"}),
        json!({"name": "udp-multi-listener-gateway", "sectionName": "by-section-and-port", "port": 5322}),
    ];
    for (i, s) in svcs.iter().enumerate() {
        w.route(
            "UDPRoute",
            &format!("udp-route-{i}"),
            json!({"parentRefs": [parents[i]],
            "rules": [{"backendRefs": [backend(s, 8080)]}]}),
        );
    }
    for (i, (s, listener)) in svcs.iter().zip(["a", "b", "c"]).enumerate() {
        w.expect_route(
            "UDPRoute",
            &format!("udp-route-{i}"),
            "udp-multi-listener-gateway",
            "Accepted",
            "True",
            "Accepted",
        )
        .await;
        udp_reaches(w.addr(listener), s).await;
    }
}

#[tokio::test]
async fn udproute_reference_grant() {
    let w = World::start(&[l("udp", "udp", 5304)], &[]).await;
    let echo = UdpEcho::start("udp-reference-grant-backend").await;
    w.service(WEB_NS, "udp-reference-grant-backend", 8080, "UDP", echo.addr());
    let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"name": "udp-reference-grant", "namespace": WEB_NS},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "UDPRoute", "namespace": NS}],
            "to": [{"group": "", "kind": "Service", "name": "udp-reference-grant-backend"}]}});
    w.fake.apply(grant.clone());
    w.gateway("udp-reference-grant-gateway", json!([udp_listener("udp", 5304)]));
    w.route("UDPRoute", "udp-reference-grant", json!({
        "parentRefs": [{"name": "udp-reference-grant-gateway", "sectionName": "udp"}],
        "rules": [{"backendRefs": [{"name": "udp-reference-grant-backend", "namespace": WEB_NS, "port": 8080}]}]}));
    w.expect_route(
        "UDPRoute",
        "udp-reference-grant",
        "udp-reference-grant-gateway",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock = &sock;
    let addr = w.addr("udp");
    eventually(WAIT, "UDP reaching the cross-namespace backend", || async move {
        udp_ask(sock, addr, "x", Duration::from_millis(500))
            .await
            .is_some_and(|v| v["service"] == "udp-reference-grant-backend")
    })
    .await;
    w.fake.delete(&grant);
    w.expect_route(
        "UDPRoute",
        "udp-reference-grant",
        "udp-reference-grant-gateway",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;
}

#[tokio::test]
async fn udproute_weighted_routing() {
    let w = World::start(&[l("udp", "udp", 5330)], &[]).await;
    let mut echoes = Vec::new();
    for i in 1..=3 {
        let e = UdpEcho::start(&format!("udp-backend-v{i}")).await;
        w.service(NS, &format!("udp-backend-v{i}"), 8080, "UDP", e.addr());
        echoes.push(e);
    }
    w.gateway("udp-weighted-gateway", json!([udp_listener("udp", 5330)]));
    w.route(
        "UDPRoute",
        "udp-weighted-route",
        json!({"parentRefs": [{"name": "udp-weighted-gateway", "sectionName": "udp"}],
        "rules": [{"backendRefs": [
            {"name": "udp-backend-v1", "port": 8080, "weight": 70},
            {"name": "udp-backend-v2", "port": 8080, "weight": 30},
            {"name": "udp-backend-v3", "port": 8080, "weight": 0}]}]}),
    );
    udp_reaches(w.addr("udp"), "udp-backend-v1").await;
    let addr = w.addr("udp");
    // A session per client address: each new socket is a new pick.
    let counts = distribution(200, || async move {
        let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        udp_ask(
            &sock,
            addr,
            "gateway-api-conformance-udp-weight\n",
            Duration::from_secs(2),
        )
        .await
        .and_then(|v| v["service"].as_str().map(str::to_string))
    })
    .await;
    let v1 = counts.get("udp-backend-v1").copied().unwrap_or(0);
    let v2 = counts.get("udp-backend-v2").copied().unwrap_or(0);
    assert!((135..=145).contains(&v1) && (55..=65).contains(&v2), "{counts:?}");
    assert_eq!(counts.get("udp-backend-v3"), None, "{counts:?}");
}

// ---- TLSRoute --------------------------------------------------------------------

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn tls_secret(ns: &str, name: &str, cert: &TestCert) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "data": {"tls.crt": b64(cert.cert_pem.as_bytes()), "tls.key": b64(cert.key_pem.as_bytes())}})
}

fn ca_config_map(ns: &str, name: &str, ca_pem: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
        "data": {"ca.crt": ca_pem}})
}

fn tls_route_spec(gw: &str, hostnames: &[&str], backends: Value) -> Value {
    json!({"parentRefs": [{"name": gw, "namespace": NS}], "hostnames": hostnames,
        "rules": [{"backendRefs": backends}]})
}

/// A TLS connection for `sni` that never reaches a backend: refused at the handshake
/// or closed before the echo greets.
async fn tls_rejected(addr: SocketAddr, sni: &str, ca_pem: &str) {
    eventually(WAIT, &format!("TLS for {sni} rejected"), || async move {
        tls_test(addr, sni, ca_pem).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn tlsroute_simple_same_namespace() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    let backend_echo = TcpEcho::start_tls("tcp-backend", &ca.issue(&["abc.example.com"])).await;
    w.service(NS, "tcp-backend", 8443, "TCP", backend_echo.addr());
    w.gateway(
        "gateway-tlsroute",
        json!([passthrough_listener("https", 443, Some("*.example.com"))]),
    );
    w.route(
        "TLSRoute",
        "gateway-conformance-infra-test",
        tls_route_spec(
            "gateway-tlsroute",
            &["abc.example.com"],
            json!([backend("tcp-backend", 8443)]),
        ),
    );
    w.expect_route(
        "TLSRoute",
        "gateway-conformance-infra-test",
        "gateway-tlsroute",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    let addr = w.addr("tls");
    let ca_pem = ca.pem();
    let ca_pem = &ca_pem;
    eventually(WAIT, "TLS passthrough to tcp-backend", || async move {
        tls_test(addr, "abc.example.com", ca_pem)
            .await
            .is_ok_and(|a| a.service == "tcp-backend" && a.server_name == "abc.example.com")
    })
    .await;
}

#[tokio::test]
async fn tlsroute_terminate_simple_same_namespace() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[l("tls", "tls", 8443)], &[]).await;
    let plain = TcpEcho::start("tcp-backend").await;
    w.service(NS, "tcp-backend", 3000, "TCP", plain.addr());
    w.fake.apply(tls_secret(
        NS,
        "tls-terminate-checks-certificate",
        &ca.issue(&["tls.example.com"]),
    ));
    w.gateway("gateway-tlsroute-terminate", json!([{"name": "tlsterminate", "port": 8443, "protocol": "TLS",
        "hostname": "tls.example.com", "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]},
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "tls-terminate-checks-certificate"}]}}]));
    w.route(
        "TLSRoute",
        "tlsroute-terminated-test",
        tls_route_spec(
            "gateway-tlsroute-terminate",
            &["tls.example.com"],
            json!([backend("tcp-backend", 3000)]),
        ),
    );
    w.expect_route(
        "TLSRoute",
        "tlsroute-terminated-test",
        "gateway-tlsroute-terminate",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    let (addr, ca_pem) = (w.addr("tls"), ca.pem());
    let ca_pem = &ca_pem;
    eventually(WAIT, "TLS terminated to the plain tcp-backend", || async move {
        tls_test(addr, "tls.example.com", ca_pem)
            .await
            .is_ok_and(|a| a.service == "tcp-backend" && a.server_name.is_empty())
    })
    .await;
}

#[tokio::test]
async fn tlsroute_mixed_termination_same_namespace() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    let plain = TcpEcho::start("tcp-backend").await;
    let passthrough = TcpEcho::start_tls("tls-backend", &ca.issue(&["abc.example.com"])).await;
    w.service(NS, "tcp-backend", 3000, "TCP", plain.addr());
    w.service(NS, "tls-backend", 443, "TCP", passthrough.addr());
    w.fake.apply(tls_secret(
        NS,
        "tls-terminate-checks-certificate",
        &ca.issue(&["tls.example.com"]),
    ));
    w.gateway(
        "gateway-tlsroute-mixed-termination",
        json!([
        {"name": "tls-terminate", "port": 443, "protocol": "TLS", "hostname": "tls.example.com",
            "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [{"kind": "TLSRoute"}]},
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "tls-terminate-checks-certificate"}]}},
        passthrough_listener("tls-passthrough", 443, Some("abc.example.com"))]),
    );
    w.route(
        "TLSRoute",
        "gateway-conformance-mixed-terminateroute",
        json!({"parentRefs": [{"name": "gateway-tlsroute-mixed-termination", "sectionName": "tls-terminate"}],
            "hostnames": ["tls.example.com"], "rules": [{"backendRefs": [backend("tcp-backend", 3000)]}]}),
    );
    w.route("TLSRoute", "gateway-conformance-mixed-passthroughroute",
        json!({"parentRefs": [{"name": "gateway-tlsroute-mixed-termination", "sectionName": "tls-passthrough"}],
            "hostnames": ["abc.example.com"], "rules": [{"backendRefs": [backend("tls-backend", 443)]}]}));
    for listener in ["tls-terminate", "tls-passthrough"] {
        let l = w
            .expect_listener("gateway-tlsroute-mixed-termination", listener, |l| {
                l["attachedRoutes"] == 1
            })
            .await;
        assert!(has(&l, "Accepted", "True", "Accepted"), "{l}");
        assert_eq!(kinds(&l), ["TLSRoute"]);
    }
    let (addr, ca_pem) = (w.addr("tls"), ca.pem());
    let ca_pem = &ca_pem;
    eventually(WAIT, "both modes on one port", || async move {
        let t = tls_test(addr, "tls.example.com", ca_pem).await;
        let p = tls_test(addr, "abc.example.com", ca_pem).await;
        t.is_ok_and(|a| a.service == "tcp-backend" && a.server_name.is_empty())
            && p.is_ok_and(|a| a.service == "tls-backend" && a.server_name == "abc.example.com")
    })
    .await;
}

#[tokio::test]
async fn tlsroute_hostname_intersection() {
    // Upstream, each Gateway has an address of its own; here each has a port of its own.
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(
        &[
            l("x1", "tls", 4431),
            l("x2", "tls", 4432),
            l("x3", "tls", 4433),
            l("x4", "tls", 4434),
        ],
        &[],
    )
    .await;
    let b1 = TcpEcho::start_tls(
        "tls-backend",
        &ca.issue(&["abc.example.com", "other.example.com"]),
    )
    .await;
    let b2 = TcpEcho::start_tls(
        "tls-backend-2",
        &ca.issue(&["abc.example.com", "other.example.com"]),
    )
    .await;
    w.service(NS, "tls-backend", 443, "TCP", b1.addr());
    w.service(NS, "tls-backend-2", 443, "TCP", b2.addr());
    let gws = [
        ("gw-tlsroute-exact-hostname-x-1", 4431u16, Some("abc.example.com")),
        (
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            4432,
            Some("*.example.com"),
        ),
        ("gw-tlsroute-less-specific-wc-hostname-x-3", 4433, Some("*.com")),
        ("gw-tlsroute-empty-hostname-x-4", 4434, None),
    ];
    for (name, port, host) in gws {
        w.gateway(name, json!([passthrough_listener("listener", port, host)]));
    }
    let routes = [
        (
            "tlsroute-more-specific-wc-hostname-x-1",
            gws[0].0,
            "*.example.com",
            "tls-backend",
        ),
        (
            "tlsroute-exact-hostname-x-2",
            gws[1].0,
            "abc.example.com",
            "tls-backend",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-2",
            gws[1].0,
            "*.com",
            "tls-backend-2",
        ),
        (
            "tlsroute-exact-hostname-x-3",
            gws[2].0,
            "abc.example.com",
            "tls-backend",
        ),
        (
            "tlsroute-more-specific-wc-hostname-x-3",
            gws[2].0,
            "*.example.com",
            "tls-backend-2",
        ),
        (
            "tlsroute-exact-hostname-x-4",
            gws[3].0,
            "abc.example.com",
            "tls-backend",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-4",
            gws[3].0,
            "*.com",
            "tls-backend-2",
        ),
    ];
    for (i, (name, gw, host, svc)) in routes.iter().enumerate() {
        w.route_at(
            "TLSRoute",
            name,
            &format!("2026-01-01T00:00:0{i}Z"),
            tls_route_spec(gw, &[host], json!([backend(svc, 443)])),
        );
    }
    for (name, gw, _, _) in routes {
        w.expect_route("TLSRoute", name, gw, "Accepted", "True", "Accepted")
            .await;
    }
    let ca_pem = ca.pem();
    let expect = |listener: &'static str, sni: &'static str, svc: Option<&'static str>| {
        let (addr, ca_pem) = (w.addr(listener), ca_pem.clone());
        async move {
            let ca_pem = &ca_pem;
            eventually(WAIT, &format!("{listener}: {sni} → {svc:?}"), || async move {
                let got = tls_test(addr, sni, ca_pem).await;
                match svc {
                    Some(s) => got.is_ok_and(|a| a.service == s),
                    None => got.is_err(),
                }
            })
            .await;
        }
    };
    expect("x1", "abc.example.com", Some("tls-backend")).await;
    expect("x1", "non.matching.com", None).await;
    expect("x2", "abc.example.com", Some("tls-backend")).await;
    expect("x2", "other.example.com", Some("tls-backend-2")).await;
    expect("x2", "non.matching.com", None).await;
    expect("x3", "abc.example.com", Some("tls-backend")).await;
    expect("x3", "other.example.com", Some("tls-backend-2")).await;
    expect("x3", "non.matching.com", None).await;
    expect("x4", "abc.example.com", Some("tls-backend")).await;
    expect("x4", "other.example.com", Some("tls-backend-2")).await;
}

#[tokio::test]
async fn tlsroute_invalid_reference_grant() {
    let ca = TestCa::new("ca");
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    let echo = TcpEcho::start_tls("tls-backend", &ca.issue(&["abc.example.com"])).await;
    w.service(APP_NS, "tls-backend", 443, "TCP", echo.addr());
    // Grants that each get one thing wrong.
    let grant = |name: &str, ns: &str, from: Value, to: Value| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": name, "namespace": ns}, "spec": {"from": [from], "to": [to]}})
    };
    let from_ok = json!({"group": "gateway.networking.k8s.io", "kind": "TLSRoute", "namespace": NS});
    let to_ok = json!({"group": "", "kind": "Service", "name": "tls-backend"});
    w.fake.apply(grant(
        "reference-grant-wrong-namespace",
        NS,
        from_ok.clone(),
        to_ok.clone(),
    ));
    w.fake.apply(grant(
        "reference-grant-wrong-from-group",
        APP_NS,
        json!({"group": "not-the-group-youre-looking-for", "kind": "TLSRoute", "namespace": NS}),
        to_ok.clone(),
    ));
    w.fake.apply(grant(
        "reference-grant-wrong-from-kind",
        APP_NS,
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": NS}),
        to_ok.clone(),
    ));
    w.fake.apply(grant("reference-grant-wrong-from-namespace", APP_NS,
        json!({"group": "gateway.networking.k8s.io", "kind": "TLSRoute", "namespace": "not-the-namespace-youre-looking-for"}), to_ok.clone()));
    w.fake.apply(grant(
        "reference-grant-wrong-to-group",
        APP_NS,
        from_ok.clone(),
        json!({"group": "not-the-group-youre-looking-for", "kind": "Service", "name": "tls-backend"}),
    ));
    w.fake.apply(grant(
        "reference-grant-wrong-to-kind",
        APP_NS,
        from_ok.clone(),
        json!({"group": "", "kind": "Secret", "name": "tls-backend"}),
    ));
    w.fake.apply(grant(
        "reference-grant-wrong-to-name",
        APP_NS,
        from_ok.clone(),
        json!({"group": "", "kind": "Service", "name": "not-the-service-youre-looking-for"}),
    ));
    w.gateway(
        "gateway-tlsroute-referencegrant",
        json!([passthrough_listener("tls", 443, None)]),
    );
    w.route(
        "TLSRoute",
        "gateway-conformance-infra-test",
        json!({"parentRefs": [{"name": "gateway-tlsroute-referencegrant"}],
        "hostnames": ["abc.example.com"],
        "rules": [{"backendRefs": [{"name": "tls-backend", "namespace": APP_NS, "port": 443}]}]}),
    );
    w.expect_route(
        "TLSRoute",
        "gateway-conformance-infra-test",
        "gateway-tlsroute-referencegrant",
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    )
    .await;
    tls_rejected(w.addr("tls"), "abc.example.com", &ca.pem()).await;
    assert_eq!(echo.accepted(), 0);
}

#[tokio::test]
async fn tlsroute_invalid_backend_ref_nonexistent() {
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    w.gateway(
        "gateway-tlsroute-invalid-backend-ref-nonexistent",
        json!([passthrough_listener("tls", 443, None)]),
    );
    w.route(
        "TLSRoute",
        "invalid-backend-ref-nonexistent",
        tls_route_spec(
            "gateway-tlsroute-invalid-backend-ref-nonexistent",
            &["example.com"],
            json!([{"name": "nonexistent", "namespace": NS, "port": 443}]),
        ),
    );
    w.expect_route(
        "TLSRoute",
        "invalid-backend-ref-nonexistent",
        "gateway-tlsroute-invalid-backend-ref-nonexistent",
        "ResolvedRefs",
        "False",
        "BackendNotFound",
    )
    .await;
    tls_rejected(w.addr("tls"), "example.com", &TestCa::new("x").pem()).await;
}

#[tokio::test]
async fn tlsroute_invalid_backend_ref_unknown_kind() {
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    w.gateway(
        "gateway-tlsroute-invalid-backend-ref-unknown-kind",
        json!([passthrough_listener("tls", 443, None)]),
    );
    w.route(
        "TLSRoute",
        "invalid-backend-ref-unknown-kind",
        tls_route_spec(
            "gateway-tlsroute-invalid-backend-ref-unknown-kind",
            &["example.com"],
            json!([{"group": "unknownkind.example.com", "kind": "UnknownKind", "name": "x", "port": 443}]),
        ),
    );
    w.expect_route(
        "TLSRoute",
        "invalid-backend-ref-unknown-kind",
        "gateway-tlsroute-invalid-backend-ref-unknown-kind",
        "ResolvedRefs",
        "False",
        "InvalidKind",
    )
    .await;
    tls_rejected(w.addr("tls"), "example.com", &TestCa::new("x").pem()).await;
}

#[tokio::test]
async fn tlsroute_invalid_no_matching_listener() {
    let w = World::start(&[l("tls", "tls", 443), l("secure", "https", 8443)], &[]).await;
    let ca = TestCa::new("ca");
    w.fake.apply(tls_secret(
        NS,
        "tls-validity-checks-certificate",
        &ca.issue(&["example.com"]),
    ));
    w.gateway(
        "gateway-tlsroute-tls-passthrough-only",
        json!([passthrough_listener("tls-passthrough", 443, None)]),
    );
    w.gateway(
        "gateway-tlsroute-http-only",
        json!([{"name": "http", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Same"}}}]),
    );
    w.gateway("gateway-tlsroute-https-only", json!([{"name": "https", "port": 8443, "protocol": "HTTPS",
        "allowedRoutes": {"namespaces": {"from": "Same"}},
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "tls-validity-checks-certificate", "namespace": NS}]}}]));
    let spec = |gw: &str, section: Option<&str>| {
        let mut p = json!({"name": gw});
        if let Some(s) = section {
            p["sectionName"] = json!(s);
        }
        json!({"parentRefs": [p], "hostnames": ["example.com"], "rules": [{"backendRefs": [backend("tls-backend", 443)]}]})
    };
    w.route(
        "TLSRoute",
        "tlsroute-not-allowed-protocol-http",
        spec("gateway-tlsroute-http-only", None),
    );
    w.route(
        "TLSRoute",
        "tlsroute-not-allowed-protocol-https",
        spec("gateway-tlsroute-https-only", None),
    );
    w.route(
        "TLSRoute",
        "tlsroute-wrong-section-name",
        spec("gateway-tlsroute-tls-passthrough-only", Some("not-a-listener")),
    );
    w.expect_route(
        "TLSRoute",
        "tlsroute-not-allowed-protocol-http",
        "gateway-tlsroute-http-only",
        "Accepted",
        "False",
        "NotAllowedByListeners",
    )
    .await;
    w.expect_route(
        "TLSRoute",
        "tlsroute-not-allowed-protocol-https",
        "gateway-tlsroute-https-only",
        "Accepted",
        "False",
        "NotAllowedByListeners",
    )
    .await;
    w.expect_route(
        "TLSRoute",
        "tlsroute-wrong-section-name",
        "gateway-tlsroute-tls-passthrough-only",
        "Accepted",
        "False",
        "NoMatchingParent",
    )
    .await;
    w.expect_listener("gateway-tlsroute-http-only", "http", |l| {
        l["attachedRoutes"] == 0 && !l.is_null()
    })
    .await;
    w.expect_listener("gateway-tlsroute-https-only", "https", |l| {
        l["attachedRoutes"] == 0 && !l.is_null()
    })
    .await;
}

#[tokio::test]
async fn tlsroute_invalid_no_matching_listener_hostname() {
    let w = World::start(&[l("a", "tls", 4431), l("b", "tls", 4432)], &[]).await;
    w.gateway(
        "gateway-tls-exact-hostname",
        json!([passthrough_listener("tls", 4431, Some("www.example.com"))]),
    );
    w.gateway(
        "gateway-tls-wildcard-hostname",
        json!([passthrough_listener("tls", 4432, Some("*.example.com"))]),
    );
    w.route(
        "TLSRoute",
        "tlsroute-hostname-mismatch-1",
        tls_route_spec(
            "gateway-tls-exact-hostname",
            &["www.nomatch.com", "*.nomatch.com"],
            json!([backend("tls-backend", 443)]),
        ),
    );
    w.route(
        "TLSRoute",
        "tlsroute-hostname-mismatch-2",
        tls_route_spec(
            "gateway-tls-wildcard-hostname",
            &["www.nomatch.com", "*.nomatch.com"],
            json!([backend("tls-backend", 443)]),
        ),
    );
    w.expect_route(
        "TLSRoute",
        "tlsroute-hostname-mismatch-1",
        "gateway-tls-exact-hostname",
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    )
    .await;
    w.expect_route(
        "TLSRoute",
        "tlsroute-hostname-mismatch-2",
        "gateway-tls-wildcard-hostname",
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    )
    .await;
    for gw in ["gateway-tls-exact-hostname", "gateway-tls-wildcard-hostname"] {
        w.expect_listener(gw, "tls", |l| l["attachedRoutes"] == 0 && !l.is_null())
            .await;
    }
}

#[tokio::test]
async fn tlsroute_listener_passthrough_supported_kinds() {
    let w = World::start(&[l("tls", "tls", 443)], &[]).await;
    w.gateway(
        "gateway-tlsroute-passthrough-supported-kind",
        json!([{"name": "tls-passthrough", "port": 443,
        "protocol": "TLS", "allowedRoutes": {"kinds": [{"kind": "TLSRoute"}, {"kind": "TCPRoute"}]},
        "tls": {"mode": "Passthrough"}}]),
    );
    let l = w
        .expect_listener(
            "gateway-tlsroute-passthrough-supported-kind",
            "tls-passthrough",
            |l| has(l, "ResolvedRefs", "False", "InvalidRouteKinds"),
        )
        .await;
    assert_eq!(kinds(&l), ["TLSRoute"]);
    assert_eq!(l["attachedRoutes"], 0);
}

#[tokio::test]
async fn tlsroute_listener_terminate_supported_kinds() {
    let ca = TestCa::new("ca");
    let w = World::start(&[l("tls", "tls", 8443)], &[]).await;
    w.fake.apply(tls_secret(
        NS,
        "tls-terminate-checks-certificate",
        &ca.issue(&["tls.example.com"]),
    ));
    w.gateway(
        "gateway-tlsroute-terminate-supported",
        json!([{"name": "tls-terminate", "port": 8443,
        "protocol": "TLS", "allowedRoutes": {"kinds": [{"kind": "TLSRoute"}]},
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "tls-terminate-checks-certificate"}]}}]),
    );
    let l = w
        .expect_listener("gateway-tlsroute-terminate-supported", "tls-terminate", |l| {
            has(l, "Accepted", "True", "Accepted")
        })
        .await;
    assert_eq!(kinds(&l), ["TLSRoute"]);
    assert_eq!(l["attachedRoutes"], 0);
}

// ---- BackendTLSPolicy ------------------------------------------------------------

use crate::support::TlsUpstream;

fn http_gateway(w: &World, name: &str) {
    w.gateway(
        name,
        json!([{"name": "http", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Same"}}}]),
    );
}

/// An HTTPRoute on `gw` for `host` with one rule per `(path, service)`.
fn http_route(w: &World, name: &str, gw: &str, host: &str, rules: &[(&str, &str)]) {
    let rules: Vec<Value> = rules
        .iter()
        .map(|(path, svc)| {
            json!({"matches": [{"path": {"type": "Exact", "value": path}}],
            "backendRefs": [{"name": svc, "port": 443}]})
        })
        .collect();
    w.route(
        "HTTPRoute",
        name,
        json!({"parentRefs": [{"name": gw}], "hostnames": [host], "rules": rules}),
    );
}

fn policy(name: &str, svc: &str, section: Option<&str>, validation: Value) -> Value {
    let mut target = json!({"group": "", "kind": "Service", "name": svc});
    if let Some(s) = section {
        target["sectionName"] = json!(s);
    }
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"targetRefs": [target], "validation": validation}})
}

fn ca_ref(name: &str) -> Value {
    json!([{"group": "", "kind": "ConfigMap", "name": name}])
}

/// A Service on port 443 named `btls` in front of `up`.
fn tls_service(w: &World, name: &str, up: &TlsUpstream) {
    w.fake.apply(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "btls", "port": 443, "protocol": "TCP"}]}}),
    );
    w.fake.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "btls", "port": up.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
}

/// The policy's conditions for ancestor Gateway `gw`: `(type, status, reason)`.
fn policy_cond(w: &World, name: &str, gw: &str, type_: &str) -> (String, String) {
    let p = w.get("BackendTLSPolicy", NS, name);
    let a = p["status"]["ancestors"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["controllerName"] == CONTROLLER && x["ancestorRef"]["name"] == gw)
        })
        .cloned()
        .unwrap_or(Value::Null);
    cond_of(&a["conditions"], type_)
}

async fn expect_policy(w: &World, name: &str, gw: &str, type_: &str, status: &str, reason: &str) {
    eventually(
        WAIT,
        &format!("BackendTLSPolicy {name} {type_}={status} ({reason})"),
        || {
            let got = policy_cond(w, name, gw, type_);
            async move { got.0 == status && got.1 == reason }
        },
    )
    .await;
}

async fn get_status(w: &World, host: &str, path: &str) -> u16 {
    let client = crate::support::http_client();
    match client
        .get(format!("http://{}{path}", w.gw.http_addr()))
        .header("host", host)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn expect_status(w: &World, host: &str, path: &str, ok: impl Fn(u16) -> bool) {
    eventually(WAIT, &format!("GET {host}{path}"), || {
        let f = get_status(w, host, path);
        let ok = &ok;
        async move { ok(f.await) }
    })
    .await;
}

#[tokio::test]
async fn backendtlspolicy() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[], &[]).await;
    w.fake
        .apply(ca_config_map(NS, "tls-checks-ca-certificate", &ca.pem()));
    let good = TlsUpstream::start("backendtlspolicy-test", &ca.issue(&["abc.example.com"])).await;
    let mismatch = TlsUpstream::start("host-mismatch", &ca.issue(&["abc.example.com"])).await;
    let other_ca = TestCa::new("other");
    let cert_mismatch = TlsUpstream::start("cert-mismatch", &other_ca.issue(&["abc.example.com"])).await;
    let reconcile = TlsUpstream::start("reconcile", &other_ca.issue(&["abc.example.com"])).await;
    tls_service(&w, "backendtlspolicy-test", &good);
    tls_service(&w, "backendtlspolicy-host-mismatch-test", &mismatch);
    tls_service(&w, "backendtlspolicy-cert-mismatch-test", &cert_mismatch);
    tls_service(&w, "backendtlspolicy-reconcile-test", &reconcile);
    http_gateway(&w, "same-namespace");
    http_route(
        &w,
        "backendtlspolicy",
        "same-namespace",
        "abc.example.com",
        &[
            ("/backendtlspolicy", "backendtlspolicy-test"),
            (
                "/backendtlspolicy-host-mismatch",
                "backendtlspolicy-host-mismatch-test",
            ),
            (
                "/backendtlspolicy-cert-mismatch",
                "backendtlspolicy-cert-mismatch-test",
            ),
            (
                "/backendtlspolicy-reconcile-test",
                "backendtlspolicy-reconcile-test",
            ),
        ],
    );
    let v = |ca: &str, host: &str| json!({"caCertificateRefs": ca_ref(ca), "hostname": host});
    w.fake
        .apply(ca_config_map(NS, "tls-checks-other-ca", &other_ca.pem()));
    w.fake.apply(ca_config_map(NS, "reconcile-ca", &ca.pem()));
    w.fake.apply(policy(
        "normative-test",
        "backendtlspolicy-test",
        Some("btls"),
        v("tls-checks-ca-certificate", "abc.example.com"),
    ));
    w.fake.apply(policy(
        "host-mismatch",
        "backendtlspolicy-host-mismatch-test",
        Some("btls"),
        v("tls-checks-ca-certificate", "mismatch.example.com"),
    ));
    w.fake.apply(policy(
        "cert-mismatch",
        "backendtlspolicy-cert-mismatch-test",
        Some("btls"),
        v("tls-checks-ca-certificate", "abc.example.com"),
    ));
    w.fake.apply(policy(
        "reconcile-test",
        "backendtlspolicy-reconcile-test",
        Some("btls"),
        v("reconcile-ca", "abc.example.com"),
    ));
    for p in [
        "normative-test",
        "host-mismatch",
        "cert-mismatch",
        "reconcile-test",
    ] {
        expect_policy(&w, p, "same-namespace", "Accepted", "True", "Accepted").await;
        expect_policy(&w, p, "same-namespace", "ResolvedRefs", "True", "ResolvedRefs").await;
    }
    w.expect_route(
        "HTTPRoute",
        "backendtlspolicy",
        "same-namespace",
        "ResolvedRefs",
        "True",
        "",
    )
    .await;
    // Valid: re-encrypted with the policy's SNI.
    expect_status(&w, "abc.example.com", "/backendtlspolicy", |s| s == 200).await;
    assert!(good
        .handshakes()
        .iter()
        .all(|h| h.sni.as_deref() == Some("abc.example.com")));
    // The name the certificate does not carry, and a CA that did not sign it: refused.
    expect_status(&w, "abc.example.com", "/backendtlspolicy-host-mismatch", |s| {
        s >= 500
    })
    .await;
    expect_status(&w, "abc.example.com", "/backendtlspolicy-cert-mismatch", |s| {
        s >= 500
    })
    .await;
    // Changing the ConfigMap's CA is reconciled: the backend signed by the other CA
    // fails, then passes once the ConfigMap holds that CA.
    expect_status(&w, "abc.example.com", "/backendtlspolicy-reconcile-test", |s| {
        s >= 500
    })
    .await;
    w.fake.apply(ca_config_map(NS, "reconcile-ca", &other_ca.pem()));
    expect_status(&w, "abc.example.com", "/backendtlspolicy-reconcile-test", |s| {
        s == 200
    })
    .await;
}

#[tokio::test]
async fn backendtlspolicy_san_validation() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[], &[]).await;
    w.fake
        .apply(ca_config_map(NS, "tls-checks-ca-certificate", &ca.pem()));
    let cert = ca.issue_with_uris(&["abc.example.com"], &["spiffe://abc.example.com/test-identity"]);
    let cases = [
        (
            "san-dns",
            "backendtlspolicy-san-dns-test",
            json!([{"type": "Hostname", "hostname": "abc.example.com"}]),
            true,
        ),
        (
            "san-dns-mismatch",
            "backendtlspolicy-san-dns-mismatch-test",
            json!([{"type": "Hostname", "hostname": "dce.example.com"}]),
            false,
        ),
        (
            "san-uri",
            "backendtlspolicy-san-uri-test",
            json!([{"type": "URI", "uri": "spiffe://abc.example.com/test-identity"}]),
            true,
        ),
        (
            "san-uri-mismatch",
            "backendtlspolicy-san-uri-mismatch-test",
            json!([{"type": "URI", "uri": "spiffe://def.example.com/test-identity"}]),
            false,
        ),
        (
            "multiple-sans",
            "backendtlspolicy-multiple-sans-test",
            json!([{"type": "URI", "uri": "spiffe://abc.example.com/test-identity"}, {"type": "Hostname", "hostname": "abc.example.com"}]),
            true,
        ),
        (
            "multiple-mismatch-sans",
            "backendtlspolicy-multiple-mismatch-sans-test",
            json!([{"type": "URI", "uri": "spiffe://def.example.com/test-identity"}, {"type": "Hostname", "hostname": "def.example.com"}]),
            false,
        ),
    ];
    let mut ups = Vec::new();
    for (_, svc, _, _) in &cases {
        let up = TlsUpstream::start(svc, &cert).await;
        tls_service(&w, svc, &up);
        ups.push(up);
    }
    http_gateway(&w, "same-namespace");
    let rules: Vec<(String, &str)> = cases
        .iter()
        .map(|(p, svc, _, _)| (format!("/backendtlspolicy-{p}"), *svc))
        .collect();
    let rules_ref: Vec<(&str, &str)> = rules.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    http_route(
        &w,
        "backendtlspolicy-san-test",
        "same-namespace",
        "abc.example.com",
        &rules_ref,
    );
    for (name, svc, sans, _) in &cases {
        w.fake.apply(policy(
            name,
            svc,
            Some("btls"),
            json!({"caCertificateRefs": ca_ref("tls-checks-ca-certificate"),
            "hostname": "abc.example.com", "subjectAltNames": sans}),
        ));
    }
    for ((name, _, _, ok), (path, _)) in cases.iter().zip(&rules) {
        expect_policy(&w, name, "same-namespace", "Accepted", "True", "Accepted").await;
        if *ok {
            expect_status(&w, "abc.example.com", path, |s| s == 200).await;
        } else {
            expect_status(&w, "abc.example.com", path, |s| s >= 500).await;
        }
    }
}

#[tokio::test]
async fn backendtlspolicy_invalid_ca_certificate_ref() {
    let ca = TestCa::new("ca");
    let w = World::start(&[], &[]).await;
    let up = TlsUpstream::start("backendtlspolicy-invalid-ca", &ca.issue(&["abc.example.com"])).await;
    http_gateway(&w, "same-namespace");
    // One policy naming a ConfigMap that does not exist, one a ConfigMap without a CA.
    w.fake.apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "no-ca", "namespace": NS},
        "data": {"something.else": "x"}}),
    );
    let cases = [
        ("nonexistent-ca-certificate-map", "nonexistent"),
        ("malformed-ca-certificate-map", "no-ca"),
    ];
    let rules: Vec<(String, String)> = cases
        .iter()
        .map(|(p, _)| (format!("/backendtlspolicy-{p}"), format!("svc-{p}")))
        .collect();
    for (_, svc) in &rules {
        tls_service(&w, svc, &up);
    }
    let rules_ref: Vec<(&str, &str)> = rules.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    http_route(
        &w,
        "backendtlspolicy-invalid-ca",
        "same-namespace",
        "abc.example.com",
        &rules_ref,
    );
    for ((name, cm), (_, svc)) in cases.iter().zip(&rules) {
        w.fake.apply(policy(
            name,
            svc,
            None,
            json!({"caCertificateRefs": ca_ref(cm), "hostname": "abc.example.com"}),
        ));
    }
    for ((name, _), (path, _)) in cases.iter().zip(&rules) {
        expect_policy(
            &w,
            name,
            "same-namespace",
            "Accepted",
            "False",
            "NoValidCACertificate",
        )
        .await;
        expect_policy(
            &w,
            name,
            "same-namespace",
            "ResolvedRefs",
            "False",
            "InvalidCACertificateRef",
        )
        .await;
        expect_status(&w, "abc.example.com", path, |s| (500..=503).contains(&s)).await;
    }
    assert!(
        up.handshakes().is_empty(),
        "no handshake completed: {:?}",
        up.handshakes()
    );
}

#[tokio::test]
async fn backendtlspolicy_invalid_kind() {
    let ca = TestCa::new("ca");
    let w = World::start(&[], &[]).await;
    let up = TlsUpstream::start("invalid-kind", &ca.issue(&["abc.example.com"])).await;
    tls_service(&w, "backendtlspolicy-test", &up);
    http_gateway(&w, "same-namespace");
    http_route(
        &w,
        "backendtlspolicy-invalid-kind",
        "same-namespace",
        "abc.example.com",
        &[("/backendtlspolicy-invalid-kind", "backendtlspolicy-test")],
    );
    w.fake.apply(policy("invalid-kind", "backendtlspolicy-test", None,
        json!({"caCertificateRefs": [{"group": "", "kind": "InvalidKind", "name": "tls-checks-ca-certificate"}],
            "hostname": "abc.example.com"})));
    expect_policy(
        &w,
        "invalid-kind",
        "same-namespace",
        "Accepted",
        "False",
        "NoValidCACertificate",
    )
    .await;
    expect_policy(
        &w,
        "invalid-kind",
        "same-namespace",
        "ResolvedRefs",
        "False",
        "InvalidKind",
    )
    .await;
    expect_status(&w, "abc.example.com", "/backendtlspolicy-invalid-kind", |s| {
        (500..=503).contains(&s)
    })
    .await;
}

#[tokio::test]
async fn backendtlspolicy_conflict_resolution() {
    let ca = TestCa::new("ca");
    let w = World::start(&[], &[]).await;
    w.fake
        .apply(ca_config_map(NS, "tls-checks-ca-certificate", &ca.pem()));
    let up = TlsUpstream::start("conflict", &ca.issue(&["other.example.com"])).await;
    for svc in [
        "conflicted-without-section-name",
        "conflicted-with-section-name",
        "not-conflicted",
    ] {
        tls_service(&w, svc, &up);
    }
    http_gateway(&w, "same-namespace");
    http_route(
        &w,
        "backendtlspolicy-conflict",
        "same-namespace",
        "abc.example.com",
        &[
            (
                "/backendtlspolicy-conflicted-without-section-name",
                "conflicted-without-section-name",
            ),
            (
                "/backendtlspolicy-conflicted-with-section-name",
                "conflicted-with-section-name",
            ),
            ("/backendtlspolicy-not-conflicted", "not-conflicted"),
        ],
    );
    let v = |host: &str| json!({"caCertificateRefs": ca_ref("tls-checks-ca-certificate"), "hostname": host});
    let at = |mut p: Value, t: &str| {
        p["metadata"]["creationTimestamp"] = json!(t);
        p
    };
    w.fake.apply(at(
        policy(
            "conflicted-without-section-name-1",
            "conflicted-without-section-name",
            None,
            v("other.example.com"),
        ),
        "2026-01-01T00:00:00Z",
    ));
    w.fake.apply(at(
        policy(
            "conflicted-without-section-name-2",
            "conflicted-without-section-name",
            None,
            v("wrong.example.com"),
        ),
        "2026-01-01T00:00:01Z",
    ));
    w.fake.apply(at(
        policy(
            "conflicted-with-section-name-1",
            "conflicted-with-section-name",
            Some("btls"),
            v("other.example.com"),
        ),
        "2026-01-01T00:00:00Z",
    ));
    w.fake.apply(at(
        policy(
            "conflicted-with-section-name-2",
            "conflicted-with-section-name",
            Some("btls"),
            v("wrong.example.com"),
        ),
        "2026-01-01T00:00:01Z",
    ));
    w.fake.apply(at(
        policy(
            "not-conflicted-with-section-name",
            "not-conflicted",
            Some("btls"),
            v("other.example.com"),
        ),
        "2026-01-01T00:00:00Z",
    ));
    w.fake.apply(at(
        policy(
            "not-conflicted-without-section-name",
            "not-conflicted",
            None,
            v("wrong.example.com"),
        ),
        "2026-01-01T00:00:01Z",
    ));
    for p in [
        "conflicted-without-section-name-1",
        "conflicted-with-section-name-1",
        "not-conflicted-with-section-name",
        "not-conflicted-without-section-name",
    ] {
        expect_policy(&w, p, "same-namespace", "Accepted", "True", "Accepted").await;
    }
    for p in [
        "conflicted-without-section-name-2",
        "conflicted-with-section-name-2",
    ] {
        expect_policy(&w, p, "same-namespace", "Accepted", "False", "Conflicted").await;
    }
    // The accepted policies apply (their hostname, other.example.com, is the backend's):
    // the section-name policy wins over the one without.
    for path in [
        "/backendtlspolicy-conflicted-without-section-name",
        "/backendtlspolicy-conflicted-with-section-name",
        "/backendtlspolicy-not-conflicted",
    ] {
        expect_status(&w, "abc.example.com", path, |s| s == 200).await;
    }
}

// ---- Frontend client certificates --------------------------------------------------

/// An HTTPS GET of `https://<host>:<port>/` through listener `listener`, trusting
/// `server_ca`, with the client certificate `client` if any: the status and upstream,
/// or an error.
async fn https_get(
    w: &World,
    listener: &str,
    host: &str,
    server_ca: &str,
    client: Option<&TestCert>,
) -> Result<(u16, String), String> {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap())
        .resolve(host, w.addr(listener))
        .timeout(Duration::from_secs(5));
    if let Some(c) = client {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{}{}", c.cert_pem, c.key_pem).as_bytes())
                .map_err(|e| e.to_string())?,
        );
    }
    let r = b
        .build()
        .unwrap()
        .get(format!("https://{host}:{}/", w.addr(listener).port()))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok((r.status().as_u16(), crate::support::upstream_of(&r)))
}

struct Frontend {
    w: World,
    server_ca: TestCa,
    default_client: TestCert,
    per_port_client: TestCert,
    _ups: Vec<TestUpstream>,
}

/// The world of the frontend-validation tests: HTTPS listeners on 443 and 8443 (the
/// latter for `second-example.org`), HTTPRoutes to infra-backend-v1 and -v2, CAs in
/// ConfigMaps for the default and the per-port validation, with `mode`.
async fn frontend(mode: Option<&str>) -> Frontend {
    let w = World::start(&[l("s443", "https", 443), l("s8443", "https", 8443)], &[]).await;
    let server_ca = TestCa::new("server");
    let default_ca = TestCa::new("default-clients");
    let per_port_ca = TestCa::new("per-port-clients");
    w.fake.apply(tls_secret(
        NS,
        "tls-validity-checks-certificate",
        &server_ca.issue(&["example.org", "second-example.org"]),
    ));
    w.fake.apply(ca_config_map(
        NS,
        "tls-validity-checks-ca-certificate",
        &default_ca.pem(),
    ));
    w.fake.apply(ca_config_map(
        NS,
        "tls-validity-checks-per-port-ca-certificate",
        &per_port_ca.pem(),
    ));
    let ups = TestUpstream::start_many(&["infra-backend-v1", "infra-backend-v2"]).await;
    for u in &ups {
        w.fake.apply(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": u.name(), "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 8080}]}}),
        );
        w.fake.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-1", u.name()), "namespace": NS, "labels": {"kubernetes.io/service-name": u.name()}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": u.addr().port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    }
    let validation = |cm: &str| {
        let mut v = json!({"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": cm}]});
        if let Some(m) = mode {
            v["mode"] = json!(m);
        }
        v
    };
    let cert_ref =
        json!([{"group": "", "kind": "Secret", "name": "tls-validity-checks-certificate", "namespace": NS}]);
    w.fake.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "client-validation", "namespace": NS},
        "spec": {"gatewayClassName": "sluice",
            "tls": {"frontend": {"default": {"validation": validation("tls-validity-checks-ca-certificate")},
                "perPort": [{"port": 8443, "tls": {"validation": validation("tls-validity-checks-per-port-ca-certificate")}}]}},
            "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS", "allowedRoutes": {"namespaces": {"from": "Same"}},
                    "tls": {"certificateRefs": cert_ref}},
                {"name": "https-with-hostname", "port": 8443, "hostname": "second-example.org", "protocol": "HTTPS",
                    "allowedRoutes": {"namespaces": {"from": "Same"}}, "tls": {"certificateRefs": cert_ref}}]}}));
    w.route("HTTPRoute", "client-certificate-validation-https-test", json!({"parentRefs": [{"name": "client-validation"}],
        "hostnames": ["example.org"], "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}));
    w.route(
        "HTTPRoute",
        "client-certificate-validation-https-test-no-hostname",
        json!({
        "parentRefs": [{"name": "client-validation", "sectionName": "https-with-hostname"}],
        "rules": [{"backendRefs": [{"name": "infra-backend-v2", "port": 8080}]}]}),
    );
    Frontend {
        default_client: default_ca.issue_client("default-client", &[], &[]),
        per_port_client: per_port_ca.issue_client("per-port-client", &[], &[]),
        server_ca,
        w,
        _ups: ups,
    }
}

#[tokio::test]
async fn gateway_frontend_client_certificate_validation() {
    let f = frontend(None).await;
    let ca = f.server_ca.pem();
    let ok = |r: Result<(u16, String), String>, up: &str| r.is_ok_and(|(s, u)| s == 200 && u == up);
    eventually(WAIT, "the default validation passes its client", || async {
        ok(
            https_get(&f.w, "s443", "example.org", &ca, Some(&f.default_client)).await,
            "infra-backend-v1",
        )
    })
    .await;
    assert!(
        https_get(&f.w, "s443", "example.org", &ca, Some(&f.per_port_client))
            .await
            .is_err()
    );
    assert!(https_get(&f.w, "s443", "example.org", &ca, None).await.is_err());
    eventually(WAIT, "the per-port validation passes its client", || async {
        ok(
            https_get(&f.w, "s8443", "second-example.org", &ca, Some(&f.per_port_client)).await,
            "infra-backend-v2",
        )
    })
    .await;
    assert!(
        https_get(&f.w, "s8443", "second-example.org", &ca, Some(&f.default_client))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn gateway_frontend_client_certificate_validation_insecure_fallback() {
    let f = frontend(Some("AllowInsecureFallback")).await;
    eventually(WAIT, "InsecureFrontendValidationMode on the Gateway", || async {
        let g = f.w.get("Gateway", NS, "client-validation");
        let c = cond_of(&g["status"]["conditions"], "InsecureFrontendValidationMode");
        c == ("True".to_string(), "ConfigurationChanged".to_string())
    })
    .await;
    let ca = f.server_ca.pem();
    for (listener, host, up) in [
        ("s443", "example.org", "infra-backend-v1"),
        ("s8443", "second-example.org", "infra-backend-v2"),
    ] {
        for client in [Some(&f.default_client), Some(&f.per_port_client), None] {
            eventually(
                WAIT,
                &format!("{host} passes with {:?}", client.map(|c| c.der.len())),
                || async {
                    https_get(&f.w, listener, host, &ca, client)
                        .await
                        .is_ok_and(|(s, u)| s == 200 && u == up)
                },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn gateway_invalid_frontend_client_certificate_validation() {
    let w = World::start(
        &[
            l("s443", "https", 443),
            l("s7443", "https", 7443),
            l("s8443", "https", 8443),
        ],
        &[],
    )
    .await;
    let server_ca = TestCa::new("server");
    let clients = TestCa::new("clients");
    w.fake.apply(tls_secret(
        NS,
        "tls-validity-checks-certificate",
        &server_ca.issue(&["example.org"]),
    ));
    w.fake.apply(ca_config_map(
        NS,
        "tls-validity-checks-ca-certificate",
        &clients.pem(),
    ));
    let cert_ref = json!([{"group": "", "kind": "Secret", "name": "tls-validity-checks-certificate"}]);
    let listener = |name: &str, port: u16| {
        json!({"name": name, "port": port, "protocol": "HTTPS",
        "allowedRoutes": {"namespaces": {"from": "Same"}}, "tls": {"certificateRefs": cert_ref}})
    };
    w.fake.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gateway-with-invalid-client-cert-validation", "namespace": NS},
        "spec": {"gatewayClassName": "sluice",
            "tls": {"frontend": {"default": {"validation": {"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "tls-validity-checks-ca-certificate"}]}},
                "perPort": [
                    {"port": 7443, "tls": {"validation": {"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "non-exisitng-cm"}]}}},
                    {"port": 8443, "tls": {"validation": {"caCertificateRefs": [{"kind": "Service", "group": "", "name": "infra-backend-v2"}]}}}]}},
            "listeners": [listener("https", 443), listener("https-unresolved", 7443), listener("https-invalid-kind", 8443)]}}));
    let gw = "gateway-with-invalid-client-cert-validation";
    // The Secret and the ConfigMap may be seen after the Gateway: wait for the final state.
    let l = w
        .expect_listener(gw, "https", |l| {
            has(l, "Accepted", "True", "") && has(l, "ResolvedRefs", "True", "")
        })
        .await;
    assert!(has(&l, "Programmed", "True", ""), "{l}");
    let l = w
        .expect_listener(gw, "https-unresolved", |l| {
            has(l, "ResolvedRefs", "False", "InvalidCACertificateRef")
        })
        .await;
    assert!(
        has(&l, "Accepted", "False", "NoValidCACertificate") && has(&l, "Programmed", "False", ""),
        "{l}"
    );
    let l = w
        .expect_listener(gw, "https-invalid-kind", |l| {
            has(l, "ResolvedRefs", "False", "InvalidCACertificateKind")
        })
        .await;
    assert!(
        has(&l, "Accepted", "False", "NoValidCACertificate") && has(&l, "Programmed", "False", ""),
        "{l}"
    );
}

#[tokio::test]
async fn gateway_frontend_invalid_default_client_certificate_validation() {
    let w = World::start(&[l("s443", "https", 443)], &[]).await;
    let server_ca = TestCa::new("server");
    w.fake.apply(tls_secret(
        NS,
        "tls-validity-checks-certificate",
        &server_ca.issue(&["example.org"]),
    ));
    let ups = TestUpstream::start_many(&["infra-backend-v1"]).await;
    w.fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "infra-backend-v1", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 8080}]}}));
    w.fake.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "infra-backend-v1-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "infra-backend-v1"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": ups[0].addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
    w.fake.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "invalid-default-client-validation-config", "namespace": NS},
        "spec": {"gatewayClassName": "sluice",
            "tls": {"frontend": {"default": {"validation": {"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "does-not-exist"}]}}}},
            "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS", "allowedRoutes": {"namespaces": {"from": "Same"}},
                    "tls": {"certificateRefs": [{"group": "", "kind": "Secret", "name": "tls-validity-checks-certificate", "namespace": NS}]}},
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}));
    w.route("HTTPRoute", "invalid-default-client-validation-config", json!({
        "parentRefs": [{"name": "invalid-default-client-validation-config"}],
        "hostnames": ["example.org"], "rules": [{"backendRefs": [{"name": "infra-backend-v1", "port": 8080}]}]}));
    let gw = "invalid-default-client-validation-config";
    let l = w
        .expect_listener(gw, "http", |l| has(l, "Accepted", "True", ""))
        .await;
    assert!(
        has(&l, "ResolvedRefs", "True", "") && has(&l, "Programmed", "True", ""),
        "{l}"
    );
    expect_status(&w, "example.org", "/", |s| s == 200).await;
    let l = w
        .expect_listener(gw, "https", |l| {
            has(l, "ResolvedRefs", "False", "InvalidCACertificateRef")
        })
        .await;
    assert!(
        has(&l, "Accepted", "False", "NoValidCACertificate") && has(&l, "Programmed", "False", ""),
        "{l}"
    );
    assert!(https_get(&w, "s443", "example.org", &server_ca.pem(), None)
        .await
        .is_err());
}

// ---- Beyond the suite: the discovery plane under load ----------------------------------

#[tokio::test]
async fn an_endpointslice_change_moves_new_tcp_connections_with_no_failed_one() {
    let w = World::start(&[l("tcp", "tcp", 9400)], &[]).await;
    let (a, b) = (TcpEcho::start("svc").await, TcpEcho::start("svc").await);
    w.service(NS, "svc", 3000, "TCP", a.addr());
    w.gateway("gw", json!([tcp_listener("tcp", 9400)]));
    w.route(
        "TCPRoute",
        "r",
        json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [backend("svc", 3000)]}]}),
    );
    let addr = w.addr("tcp");
    tcp_reaches(addr, a.pod()).await;

    // Connections one after another, each checked, until told to stop (bounded in count
    // and time).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (st, sn) = (stop.clone(), seen.clone());
    let client = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut failures = Vec::new();
        for i in 0..5000 {
            if st.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            match tcp_test(addr).await {
                Ok(answer) => sn.lock().unwrap().push(answer.pod),
                Err(e) => failures.push(format!("connection {i}: {e}")),
            }
        }
        failures
    });
    eventually(WAIT, "traffic flowing to the first pod", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 50 }
    })
    .await;
    // The EndpointSlice now names the second pod only (the first keeps running, as a
    // terminating pod finishes what it has).
    w.service(NS, "svc", 3000, "TCP", b.addr());
    let b_pod = b.pod().to_string();
    let moved = |seen: &[String]| seen.iter().filter(|p| **p == b_pod).count();
    eventually(WAIT, "new connections reaching the second pod", || {
        let n = moved(&seen.lock().unwrap());
        async move { n >= 50 }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = client.await.unwrap();
    assert!(failures.is_empty(), "failed connections: {failures:?}");
    let seen = seen.lock().unwrap().clone();
    let first_b = seen.iter().position(|p| *p == b.pod()).unwrap();
    assert!(
        seen[first_b..].iter().all(|p| *p == b.pod()),
        "after the change every new connection went to the new pod"
    );
    assert!(seen[..first_b].iter().all(|p| *p == a.pod()));
}

#[tokio::test]
async fn backendtlspolicy_observed_generation_bump() {
    let ca = TestCa::new("tls-checks-ca");
    let w = World::start(&[], &[]).await;
    w.fake
        .apply(ca_config_map(NS, "tls-checks-ca-certificate", &ca.pem()));
    let up = TlsUpstream::start("observed-generation-bump", &ca.issue(&["abc.example.com"])).await;
    tls_service(&w, "backendtlspolicy-test", &up);
    http_gateway(&w, "same-namespace");
    http_route(
        &w,
        "backendtlspolicy",
        "same-namespace",
        "abc.example.com",
        &[("/backendtlspolicy", "backendtlspolicy-test")],
    );
    let validation =
        |host: &str| json!({"caCertificateRefs": ca_ref("tls-checks-ca-certificate"), "hostname": host});
    w.fake.apply(policy(
        "observed-generation-bump",
        "backendtlspolicy-test",
        Some("btls"),
        validation("abc.example.com"),
    ));
    // Every condition of Sluice's ancestor carries the policy's current generation.
    let latest = |w: &World| {
        let p = w.get("BackendTLSPolicy", NS, "observed-generation-bump");
        let generation = p["metadata"]["generation"].clone();
        let conditions = p["status"]["ancestors"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["controllerName"] == CONTROLLER))
            .map(|a| a["conditions"].clone())
            .unwrap_or(Value::Null);
        let ok = conditions
            .as_array()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["observedGeneration"] == generation));
        (ok, generation)
    };
    eventually(WAIT, "the policy's conditions at its generation", || {
        let ok = latest(&w).0;
        async move { ok }
    })
    .await;
    let original = latest(&w).1;
    w.fake.apply(policy(
        "observed-generation-bump",
        "backendtlspolicy-test",
        Some("btls"),
        validation("foo.example.com"),
    ));
    expect_policy(
        &w,
        "observed-generation-bump",
        "same-namespace",
        "Accepted",
        "True",
        "Accepted",
    )
    .await;
    eventually(WAIT, "the conditions at the new generation", || {
        let (ok, g) = latest(&w);
        let bumped = g != original;
        async move { ok && bumped }
    })
    .await;
}
