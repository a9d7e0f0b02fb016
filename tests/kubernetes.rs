//! The Kubernetes source over the wire: the real `kube` watcher inside `sluice` against
//! the fake API server of `support::kube_fake`, with real HTTP upstreams on 127.0.0.1
//! standing in for pods (one EndpointSlice per pod, as each listens on its own port).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{eventually, http_client, upstream_of, FakeKube, Gateway, TestUpstream};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(15);

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// The EndpointSlice of one pod of Service `svc`: the test upstream's address.
fn pod_slice(svc: &str, pod: &TestUpstream, ready: bool, terminating: bool) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{}", pod.name()), "namespace": NS,
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": pod.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [pod.addr().ip().to_string()],
            "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}}]})
}

fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}})
}

fn ingress(name: &str, class: &str, annotations: Value, rules: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"ingressClassName": class, "rules": rules}})
}

fn rule(host: &str, paths: &[(&str, &str, &str)]) -> Value {
    let paths: Vec<Value> = paths
        .iter()
        .map(|(path, kind, svc)| {
            json!({"path": path, "pathType": kind,
                "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
        })
        .collect();
    json!({"host": host, "http": {"paths": paths}})
}

fn config(clusters: &[(&str, u32)]) -> String {
    let list: Vec<String> = clusters
        .iter()
        .map(|(name, p)| {
            format!("{{name: {name}, kubeconfig: \"{{{{file:{name}.kubeconfig}}}}\", priority: {p}}}")
        })
        .collect();
    format!(
        "listeners: [{{name: web, listen: \"{{{{http}}}}\"}}]\nkubernetes:\n  clusters: [{}]\n  namespaces: [{NS}]\n  page_size: 1\n  debounce: 5ms\n",
        list.join(", ")
    )
}

async fn start(fakes: &[(&str, u32, &FakeKube)]) -> Gateway {
    let names: Vec<(&str, u32)> = fakes.iter().map(|(n, p, _)| (*n, *p)).collect();
    let mut b = Gateway::builder(&config(&names));
    for (name, _, fake) in fakes {
        b = b.file(&format!("{name}.kubeconfig"), fake.kubeconfig());
    }
    b.start().await
}

/// `(status, upstream)` of one request to `host` and `path`.
async fn get(
    client: &reqwest::Client,
    gw_url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let mut req = client.get(gw_url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(r) => Ok((r.status(), upstream_of(&r))),
        Err(e) => Err(e.to_string()),
    }
}

async fn answers(gw: &Gateway, host: &str, path: &str) -> (StatusCode, String) {
    get(&http_client(), &gw.http_url(path), host, &[]).await.unwrap()
}

#[tokio::test]
async fn ingress_routes_by_host_and_path_and_reports_unsupported_annotations() {
    let fake = FakeKube::start().await;
    let web = TestUpstream::start("web").await;
    let api = TestUpstream::start("api").await;
    let other = TestUpstream::start("other").await;
    fake.apply(ingress_class());
    for (svc, pod) in [("web", &web), ("api", &api), ("other", &other)] {
        fake.apply(service(svc));
        fake.apply(pod_slice(svc, pod, true, false));
    }
    fake.apply(ingress(
        "site",
        "sluice",
        json!({"nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x;",
               "nginx.ingress.kubernetes.io/proxy-read-timeout": "30"}),
        json!([
            rule("a.example", &[("/", "Prefix", "web"), ("/api", "Prefix", "api")]),
            rule("b.example", &[("/only", "Exact", "api")])
        ]),
    ));
    fake.apply(ingress(
        "not-ours",
        "nginx",
        json!({}),
        json!([rule("c.example", &[("/", "Prefix", "other")])]),
    ));
    let gw = start(&[("local", 0, &fake)]).await;
    eventually(WAIT, "the Ingress routes", || async {
        answers(&gw, "a.example", "/api/x").await == (StatusCode::OK, "api".into())
    })
    .await;
    assert_eq!(
        answers(&gw, "a.example", "/").await,
        (StatusCode::OK, "web".into())
    );
    assert_eq!(
        answers(&gw, "a.example", "/apix").await,
        (StatusCode::OK, "web".into())
    );
    assert_eq!(
        answers(&gw, "b.example", "/only").await,
        (StatusCode::OK, "api".into())
    );
    assert_eq!(
        answers(&gw, "b.example", "/only/more").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(answers(&gw, "c.example", "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(other.requests(), 0, "an Ingress of another class is not served");
    // The unsupported annotation is an Event on the Ingress (and nothing on the supported one).
    eventually(WAIT, "the UnsupportedAnnotation event", || async {
        fake.events().iter().any(|e| {
            e["reason"] == "UnsupportedAnnotation"
                && e["involvedObject"]["name"] == "site"
                && e["involvedObject"]["kind"] == "Ingress"
                && e["type"] == "Warning"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("configuration-snippet")
        })
    })
    .await;
    assert!(
        !fake
            .events()
            .iter()
            .any(|e| e["message"].as_str().unwrap_or("").contains("proxy-read-timeout")),
        "a supported annotation is not reported: {:?}",
        fake.events()
    );
    assert!(
        gw.logs().contains("configuration-snippet"),
        "the report is logged too"
    );
    // The lists were paged (page_size 1, three Services).
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/services?") && r.contains("continue=")),
        "no paged list: {requests:?}"
    );
    assert!(requests
        .iter()
        .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn canary_annotations_split_by_weight_and_override_by_header() {
    let fake = FakeKube::start().await;
    let pods = TestUpstream::start_many(&["stable", "cana", "canb", "canh"]).await;
    fake.apply(ingress_class());
    for pod in &pods {
        fake.apply(service(pod.name()));
        fake.apply(pod_slice(pod.name(), pod, true, false));
    }
    let root = |svc: &str| json!([rule("shop.example", &[("/", "Prefix", svc)])]);
    fake.apply(ingress("main", "sluice", json!({}), root("stable")));
    fake.apply(ingress(
        "canary-a",
        "sluice",
        json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "10"}),
        root("cana"),
    ));
    fake.apply(ingress(
        "canary-b",
        "sluice",
        json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "20"}),
        root("canb"),
    ));
    fake.apply(ingress(
        "canary-h",
        "sluice",
        json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-by-header": "x-canary"}),
        root("canh"),
    ));
    let gw = start(&[("local", 0, &fake)]).await;
    let client = http_client();
    let url = gw.http_url("/");
    eventually(WAIT, "the canary header route", || async {
        get(&client, &url, "shop.example", &[("x-canary", "always")]).await
            == Ok((StatusCode::OK, "canh".into()))
    })
    .await;
    // Two canaries on one host, by weight: 70 / 10 / 20 of 2000 requests, within 2 points.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..2000 {
        let (status, up) = get(&client, &url, "shop.example", &[]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *counts.entry(up).or_default() += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow: {counts:?}"
        );
    }
    for (name, share) in [("stable", 70.0), ("cana", 10.0), ("canb", 20.0)] {
        let got = *counts.get(name).unwrap_or(&0) as f64 / 20.0;
        assert!(
            (got - share).abs() <= 2.0,
            "{name}: {got}% of requests, expected {share}% ({counts:?})"
        );
    }
    assert_eq!(
        counts.get("canh"),
        None,
        "the header canary takes no weighted share"
    );
    // The header overrides: always → the canary, never → the main backend.
    for _ in 0..20 {
        assert_eq!(
            get(&client, &url, "shop.example", &[("x-canary", "always")])
                .await
                .unwrap(),
            (StatusCode::OK, "canh".into())
        );
        assert_eq!(
            get(&client, &url, "shop.example", &[("x-canary", "never")])
                .await
                .unwrap(),
            (StatusCode::OK, "stable".into())
        );
    }
}

/// What a background request loop saw.
#[derive(Default)]
struct Seen {
    answers: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Sends requests one after another until `stop` is set (at most 60 s).
fn drive(url: String, host: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let client = http_client();
        let mut seen = Seen::default();
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            match get(&client, &url, host, &[]).await {
                Ok((StatusCode::OK, up)) => seen.answers.push((Instant::now(), up)),
                Ok((s, up)) => seen.failures.push(format!("status {s} from {up}")),
                Err(e) => seen.failures.push(e),
            }
        }
        seen
    })
}

#[tokio::test]
async fn endpoint_slice_change_moves_traffic_without_a_failed_request() {
    let fake = FakeKube::start().await;
    let p1 = TestUpstream::start("p1").await;
    let p2 = TestUpstream::start("p2").await;
    fake.apply(ingress_class());
    fake.apply(service("app"));
    fake.apply(pod_slice("app", &p1, true, false));
    fake.apply(ingress(
        "app",
        "sluice",
        json!({}),
        json!([rule("app.example", &[("/", "Prefix", "app")])]),
    ));
    let gw = start(&[("local", 0, &fake)]).await;
    eventually(WAIT, "p1 serving", || async {
        answers(&gw, "app.example", "/").await == (StatusCode::OK, "p1".into())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let task = drive(gw.http_url("/"), "app.example", stop.clone());
    eventually(WAIT, "the loop running", || async { p1.requests() > 20 }).await;
    // A rollout step: p2 becomes ready, p1 terminates (still serving: it drains).
    let changed = Instant::now();
    fake.apply(pod_slice("app", &p2, true, false));
    fake.apply(pod_slice("app", &p1, false, true));
    eventually(WAIT, "p2 serving", || async { p2.requests() > 0 }).await;
    eventually(WAIT, "p1 drained", || async {
        let (p1_before, p2_before) = (p1.requests(), p2.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
        p2.requests() > p2_before + 5 && p1.requests() == p1_before
    })
    .await;
    fake.delete(&pod_slice("app", &p1, false, true));
    let p2_count = p2.requests();
    eventually(WAIT, "more requests after the delete", || async {
        p2.requests() > p2_count + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = task.await.unwrap();
    assert!(
        seen.failures.is_empty(),
        "failed requests during the change: {:?}",
        seen.failures
    );
    let first_p2 = seen
        .answers
        .iter()
        .find(|(_, up)| up == "p2")
        .map(|(t, _)| t.duration_since(changed))
        .expect("p2 answered");
    println!("endpoint change serving after {} ms", first_p2.as_millis());
    assert!(first_p2 < Duration::from_secs(1), "the change took {first_p2:?}");
}

#[tokio::test]
async fn the_same_service_in_two_clusters_fails_over_and_back() {
    let local = FakeKube::start().await;
    let remote = FakeKube::start().await;
    let l = TestUpstream::start("l").await;
    let r = TestUpstream::start("r").await;
    for (fake, pod) in [(&local, &l), (&remote, &r)] {
        fake.apply(ingress_class());
        fake.apply(service("app"));
        fake.apply(pod_slice("app", pod, true, false));
        fake.apply(ingress(
            "app",
            "sluice",
            json!({}),
            json!([rule("app.example", &[("/", "Prefix", "app")])]),
        ));
    }
    let gw = start(&[("local", 0, &local), ("remote", 1, &remote)]).await;
    let only_from = |name: &'static str| {
        let url = gw.http_url("/");
        async move {
            let client = http_client();
            for _ in 0..10 {
                if get(&client, &url, "app.example", &[]).await != Ok((StatusCode::OK, name.to_string())) {
                    return false;
                }
            }
            true
        }
    };
    eventually(WAIT, "the local cluster serving", || only_from("l")).await;
    assert_eq!(r.requests(), 0, "the remote cluster is only for failover");
    // The local pods fail (their EndpointSlice says not ready): the remote cluster serves.
    local.apply(pod_slice("app", &l, false, false));
    eventually(WAIT, "failover to the remote cluster", || only_from("r")).await;
    // And back.
    local.apply(pod_slice("app", &l, true, false));
    eventually(WAIT, "back to the local cluster", || only_from("l")).await;
}

#[tokio::test]
async fn recovers_after_a_dropped_watch_and_a_410_without_missing_a_change() {
    let fake = FakeKube::start().await;
    let p1 = TestUpstream::start("p1").await;
    let p2 = TestUpstream::start("p2").await;
    fake.apply(ingress_class());
    fake.apply(service("app"));
    fake.apply(pod_slice("app", &p1, true, false));
    fake.apply(ingress(
        "app",
        "sluice",
        json!({}),
        json!([rule("app.example", &[("/", "Prefix", "app")])]),
    ));
    let gw = start(&[("local", 0, &fake)]).await;
    let serves = |name: &'static str| {
        let url = gw.http_url("/");
        async move {
            let client = http_client();
            for _ in 0..6 {
                if get(&client, &url, "app.example", &[]).await != Ok((StatusCode::OK, name.to_string())) {
                    return false;
                }
            }
            true
        }
    };
    eventually(WAIT, "p1 serving", || serves("p1")).await;
    // The watch drops, and the change happens while it is down: the watcher resumes from
    // its last resourceVersion and sees it.
    fake.drop_watches();
    fake.delete(&pod_slice("app", &p1, true, false));
    fake.apply(pod_slice("app", &p2, true, false));
    eventually(WAIT, "p2 serving after the dropped watch", || serves("p2")).await;
    // The history is compacted (410 Expired on resume) and a change happens meanwhile:
    // the watcher lists again and sees it.
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| r.contains("/endpointslices?") && !r.contains("watch=true"))
        .count();
    fake.expire();
    fake.delete(&pod_slice("app", &p2, true, false));
    fake.apply(pod_slice("app", &p1, true, false));
    eventually(WAIT, "p1 serving after the 410", || serves("p1")).await;
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| r.contains("/endpointslices?") && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "no re-list after the 410");
}
