//! A wire-level fake Kubernetes API server for the Kubernetes source's tests: the real
//! `kube` watcher inside `sluice` talks to it over HTTP/1.1 on 127.0.0.1.
//!
//! What it speaks, as kube 4.2's watcher uses it (list-then-watch, not streaming lists):
//! - `GET /api/v1/[namespaces/{ns}/]{services,secrets}`,
//!   `/apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices`,
//!   `/apis/networking.k8s.io/v1/[namespaces/{ns}/]ingresses`, `.../ingressclasses`,
//!   `/apis/sluice.dev/v1alpha1/[namespaces/{ns}/]sluicepolicies` (the CRD):
//!   a list with `metadata.resourceVersion`, paged by `limit` / `continue`, filtered by
//!   `labelSelector` (`k`, `!k`, `k=v`, `k!=v`) and `fieldSelector` (`path=v`);
//! - the same with `watch=true&resourceVersion=N`: a chunked JSON-lines stream that
//!   replays every change after `N`, then follows live changes (`ADDED`, `MODIFIED`,
//!   `DELETED`), with `BOOKMARK`s when `allowWatchBookmarks=true`; an `ERROR` event with
//!   a 410 `Expired` Status when `N` is older than the last [`FakeKube::expire`];
//! - [`FakeKube::drop_watches`] cuts every open watch mid-stream (the connection is
//!   aborted, not ended cleanly);
//! - `POST /api/v1/namespaces/{ns}/events`: recorded ([`FakeKube::events`]).
//! - the Gateway API (`/apis/gateway.networking.k8s.io/v1/...`: `gatewayclasses`,
//!   `gateways`, `httproutes`, `referencegrants`, `tlsroutes`, `tcproutes`, `udproutes`,
//!   `backendtlspolicies`) and `configmaps`, listed and watched like the rest; an
//!   apply keeps the object's `status` (it is a subresource) and bumps
//!   `metadata.generation` when the `spec` changed;
//! - `GET` of one object; the `status` subresource: `PATCH` (JSON merge patch) and `PUT`
//!   replace only `status`, bump the resourceVersion (a `MODIFIED` event) and are
//!   recorded with their `fieldManager` ([`FakeKube::status_writes`]);
//! - `coordination.k8s.io/v1` Leases: `GET`, `POST` (`409 AlreadyExists` when it
//!   exists), `PUT` with optimistic concurrency (`409 Conflict` when the body's
//!   `metadata.resourceVersion` is not the current one); [`FakeKube::get`] reads them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One change, as watches see it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    resource: String,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Expired.
    expired_below: u64,
    events: Vec<Value>,
    requests: Vec<String>,
    status_writes: Vec<StatusWrite>,
    uid: u64,
}

/// One write to a `status` subresource.
#[derive(Clone, Debug)]
pub struct StatusWrite {
    /// `PATCH` or `PUT`.
    pub method: String,
    /// The kind written (`HTTPRoute`).
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The `fieldManager` query parameter (empty when absent).
    pub field_manager: String,
    /// The request body.
    pub body: Value,
}

/// Kinds whose `status` is a subresource: an apply keeps it.
const STATUS_KINDS: &[&str] = &[
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "TLSRoute",
    "TCPRoute",
    "UDPRoute",
    "BackendTLSPolicy",
];

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
    )
}

/// The fake API server. Dropping it stops it.
pub struct FakeKube {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    drops: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The list resource of an object, from its `apiVersion` and `kind`.
fn resource_of(obj: &Value) -> String {
    let api = obj["apiVersion"].as_str().unwrap_or("v1");
    let plural = match obj["kind"].as_str().unwrap_or("") {
        "Ingress" => "ingresses",
        "IngressClass" => "ingressclasses",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        "Secret" => "secrets",
        "SluicePolicy" => "sluicepolicies",
        "Event" => "events",
        "GatewayClass" => "gatewayclasses",
        "Gateway" => "gateways",
        "HTTPRoute" => "httproutes",
        "ReferenceGrant" => "referencegrants",
        "TLSRoute" => "tlsroutes",
        "TCPRoute" => "tcproutes",
        "UDPRoute" => "udproutes",
        "BackendTLSPolicy" => "backendtlspolicies",
        "ConfigMap" => "configmaps",
        "Lease" => "leases",
        other => panic!("the fake does not serve kind {other}"),
    };
    format!("{api}/{plural}")
}

fn meta(obj: &Value, field: &str) -> String {
    obj["metadata"][field].as_str().unwrap_or("").to_string()
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            url_decode_pairs(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj` passes a label selector (`a,b=c,d!=e,!f`).
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim().trim_end_matches('=')].as_str() == Some(v.trim().trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

/// Whether `obj` passes a field selector (`path=v,...`, dotted paths).
fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let Some((path, v)) = term.split_once('=') else {
            return true;
        };
        let mut cur = obj;
        for seg in path.split('.') {
            cur = &cur[seg];
        }
        cur.as_str() == Some(v)
    })
}

/// What a request's path names: the resource (`networking.k8s.io/v1/ingresses`) and the
/// namespace (empty for all).
fn parse_path(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural, ..] => Some((format!("{api}/{plural}"), ns.to_string())),
        [plural] => Some((format!("{api}/{plural}"), String::new())),
        _ => None,
    }
}

/// The object a request's path names, if it names one: (resource, namespace, name,
/// subresource).
fn parse_object_path(path: &str) -> Option<(String, String, String, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (res, ns, name, sub) = match rest {
        ["namespaces", ns, plural, name, sub @ ..] => (format!("{api}/{plural}"), ns.to_string(), name, sub),
        [plural, name, sub @ ..] if *plural != "namespaces" => {
            (format!("{api}/{plural}"), String::new(), name, sub)
        }
        _ => return None,
    };
    Some((res, ns, name.to_string(), sub.first().map(|s| s.to_string())))
}

/// Stores `obj` under `key` with a new resourceVersion and tells the watches.
fn store(
    s: &mut State,
    changes: &broadcast::Sender<Change>,
    key: (String, String, String),
    mut obj: Value,
    kind: &'static str,
) -> Value {
    s.rv += 1;
    let rv = s.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.objects.insert(key.clone(), obj.clone());
    let change = Change {
        rv,
        kind,
        resource: key.0,
        object: obj.clone(),
    };
    s.history.push(change.clone());
    let _ = changes.send(change);
    obj
}

/// GET of one object, PUT, PATCH of `status`, POST of a Lease.
async fn handle_object(
    req: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    changes: &broadcast::Sender<Change>,
    (resource, ns, name, sub): (String, String, String, Option<String>),
) -> Response<Body> {
    let method = req.method().clone();
    let q = query(req.uri());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = (resource.clone(), ns.clone(), name.clone());
    let mut s = state.lock().unwrap();
    let Some(current) = s.objects.get(&key).cloned() else {
        return status_body(404, "NotFound", &format!("{resource} {ns}/{name} not found"));
    };
    match (method.as_str(), sub.as_deref()) {
        ("GET", _) => full(200, current),
        ("PATCH" | "PUT", Some("status")) => {
            s.status_writes.push(StatusWrite {
                method: method.to_string(),
                kind: kind_of(&resource).to_string(),
                namespace: ns.clone(),
                name: name.clone(),
                field_manager: q.get("fieldManager").cloned().unwrap_or_default(),
                body: body.clone(),
            });
            let mut obj = current;
            if method == hyper::Method::PATCH {
                let mut st = obj["status"].clone();
                merge_patch(&mut st, &body["status"]);
                obj["status"] = st;
            } else {
                obj["status"] = body["status"].clone();
            }
            full(200, store(&mut s, changes, key, obj, "MODIFIED"))
        }
        ("PUT", None) => {
            if meta(&body, "resourceVersion") != meta(&current, "resourceVersion") {
                return status_body(
                    409,
                    "Conflict",
                    &format!("the object has been modified: {resource} {ns}/{name}"),
                );
            }
            let mut obj = body;
            obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
            obj["metadata"]["namespace"] = json!(ns);
            obj["metadata"]["name"] = json!(name);
            full(200, store(&mut s, changes, key, obj, "MODIFIED"))
        }
        _ => status_body(405, "MethodNotAllowed", "not served by the fake"),
    }
}

fn full(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(body.to_string()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap()
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl FakeKube {
    /// Starts a fake API server on 127.0.0.1.
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            ..State::default()
        }));
        let (changes, _) = broadcast::channel(4096);
        let (drops, _) = watch::channel(0u64);
        let (st, ch, dr) = (state.clone(), changes.clone(), drops.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, ch, dr) = (st.clone(), ch.clone(), dr.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, ch, dr) = (st.clone(), ch.clone(), dr.clone());
                        async move { Ok::<_, Infallible>(handle(req, st, ch, dr).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeKube {
            addr,
            state,
            changes,
            drops,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: fake\n  user: {{token: test-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Writes [`FakeKube::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.kubeconfig()).unwrap();
    }

    /// Creates or replaces an object (by apiVersion, kind, namespace, name), giving it a
    /// new resourceVersion (and a uid when new). Returns the resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let resource = resource_of(&obj);
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let key = (resource.clone(), meta(&obj, "namespace"), meta(&obj, "name"));
        let old_uid = s.objects.get(&key).map(|o| meta(o, "uid"));
        let uid = match old_uid {
            Some(u) => u,
            None => {
                s.uid += 1;
                format!("00000000-0000-0000-0000-{:012}", s.uid)
            }
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["uid"] = json!(uid);
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let old = s.objects.get(&key).cloned();
        let generation = match &old {
            Some(o) if o["spec"] == obj["spec"] => o["metadata"]["generation"].as_i64().unwrap_or(1),
            Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => obj["metadata"]["generation"].as_i64().unwrap_or(1),
        };
        obj["metadata"]["generation"] = json!(generation);
        if STATUS_KINDS.contains(&obj["kind"].as_str().unwrap_or("")) {
            match old.as_ref().map(|o| o["status"].clone()) {
                Some(st) if !st.is_null() => obj["status"] = st,
                _ => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        s.objects.insert(key, obj.clone());
        let change = Change {
            rv,
            kind,
            resource,
            object: obj,
        };
        s.history.push(change.clone());
        let _ = self.changes.send(change);
        rv
    }

    /// Deletes an object like `obj` (apiVersion, kind, namespace, name).
    pub fn delete(&self, obj: &Value) {
        let resource = resource_of(obj);
        let mut s = self.state.lock().unwrap();
        let key = (resource.clone(), meta(obj, "namespace"), meta(obj, "name"));
        let Some(mut old) = s.objects.remove(&key) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            kind: "DELETED",
            resource,
            object: old,
        };
        s.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Forgets the history up to now: a watch resuming from an older resourceVersion
    /// gets a 410 Expired ERROR event, and open watches are cut so they resume.
    pub fn expire(&self) {
        {
            let mut s = self.state.lock().unwrap();
            s.expired_below = s.rv + 1;
            s.history.clear();
        }
        self.drop_watches();
    }

    /// Cuts every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// The Events POSTed so far.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// The writes to `status` subresources so far, in order.
    pub fn status_writes(&self) -> Vec<StatusWrite> {
        self.state.lock().unwrap().status_writes.clone()
    }

    /// The stored object like `like` (apiVersion, kind, namespace, name), if any.
    pub fn get(&self, like: &Value) -> Option<Value> {
        let key = (resource_of(like), meta(like, "namespace"), meta(like, "name"));
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    drops: watch::Sender<u64>,
) -> Response<Body> {
    let uri = req.uri().clone();
    let method = req.method().clone();
    state.lock().unwrap().requests.push(format!(
        "{method} {}",
        uri.path_and_query().map_or("", |p| p.as_str())
    ));
    if let Some(obj) = parse_object_path(uri.path()) {
        return handle_object(req, &state, &changes, obj).await;
    }
    let Some((resource, ns)) = parse_path(uri.path()) else {
        return full(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    if method == hyper::Method::POST && resource.ends_with("/leases") {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut s = state.lock().unwrap();
        let key = (resource.clone(), ns.clone(), meta(&obj, "name"));
        if s.objects.contains_key(&key) {
            return status_body(409, "AlreadyExists", &format!("leases {} already exists", key.2));
        }
        s.uid += 1;
        obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", s.uid));
        obj["metadata"]["namespace"] = json!(ns);
        obj["apiVersion"] = json!("coordination.k8s.io/v1");
        obj["kind"] = json!("Lease");
        return full(201, store(&mut s, &changes, key, obj, "ADDED"));
    }
    if method == hyper::Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut s = state.lock().unwrap();
        s.rv += 1;
        s.uid += 1;
        let name = format!("{}{:x}", meta(&obj, "generateName"), s.uid);
        obj["metadata"]["name"] = json!(if meta(&obj, "name").is_empty() {
            name
        } else {
            meta(&obj, "name")
        });
        obj["metadata"]["namespace"] = json!(ns);
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Event");
        s.events.push(obj.clone());
        return full(201, obj);
    }
    let q = query(&uri);
    let labels = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let matches = {
        let (resource, ns, labels, fields) = (resource.clone(), ns.clone(), labels.clone(), fields.clone());
        move |res: &str, obj: &Value| {
            res == resource
                && (ns.is_empty() || meta(obj, "namespace") == ns)
                && labels_match(obj, &labels)
                && fields_match(obj, &fields)
        }
    };
    if q.get("watch").map(String::as_str) == Some("true") || q.get("watch").map(String::as_str) == Some("1") {
        let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1024);
        let mut live = changes.subscribe();
        let mut drop_rx = drops.subscribe();
        drop_rx.borrow_and_update();
        let (replay, expired, kind_list) = {
            let s = state.lock().unwrap();
            let expired = from != 0 && from < s.expired_below;
            let replay: Vec<Change> = s
                .history
                .iter()
                .filter(|c| c.rv > from && matches(&c.resource, &c.object))
                .cloned()
                .collect();
            (replay, expired, resource.clone())
        };
        let api_version = kind_list.rsplit_once('/').map_or("v1", |(a, _)| a).to_string();
        let st = state.clone();
        tokio::spawn(async move {
            if expired {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410});
                let _ = tx.send(Ok(Frame::data(line("ERROR", &status)))).await;
                return;
            }
            let mut last = from;
            for c in replay {
                last = last.max(c.rv);
                if tx.send(Ok(Frame::data(line(c.kind, &c.object)))).await.is_err() {
                    return;
                }
            }
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    c = live.recv() => match c {
                        Ok(c) if c.rv > last && matches(&c.resource, &c.object) => {
                            last = c.rv;
                            if tx.send(Ok(Frame::data(line(c.kind, &c.object)))).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(std::io::Error::other("lagged"))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = drop_rx.changed() => {
                        let _ = tx.send(Err(std::io::Error::other("connection dropped on purpose"))).await;
                        return;
                    }
                    _ = tick.tick(), if bookmarks => {
                        // Everything up to the current resourceVersion is in `live` already
                        // (changes are sent under the lock): deliver it, then bookmark.
                        let mut pending = Vec::new();
                        let rv = {
                            let s = st.lock().unwrap();
                            while let Ok(c) = live.try_recv() { pending.push(c); }
                            s.rv
                        };
                        for c in pending {
                            if c.rv > last && matches(&c.resource, &c.object) {
                                last = c.rv;
                                if tx.send(Ok(Frame::data(line(c.kind, &c.object)))).await.is_err() { return; }
                            }
                        }
                        let kind = kind_of(&kind_list);
                        let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.max(last).to_string()}});
                        if tx.send(Ok(Frame::data(line("BOOKMARK", &bm)))).await.is_err() { return; }
                    }
                }
            }
        });
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap();
    }
    // A list.
    let s = state.lock().unwrap();
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|((res, _, _), obj)| matches(res, obj))
        .map(|(_, o)| o.clone())
        .collect();
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    // A continue token is "<resourceVersion>:<offset>": later pages are of the same snapshot
    // in a real server; here the offset into the current list is enough for the tests.
    let (rv, offset) = match q.get("continue").and_then(|c| c.split_once(':')) {
        Some((rv, off)) => (rv.parse().unwrap_or(s.rv), off.parse().unwrap_or(0)),
        None => (s.rv, 0usize),
    };
    let page: Vec<Value> = items.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + page.len();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if next < items.len() {
        metadata["continue"] = json!(format!("{rv}:{next}"));
    }
    let api_version = resource.rsplit_once('/').map_or("v1", |(a, _)| a);
    full(
        200,
        json!({"kind": format!("{}List", kind_of(&resource)), "apiVersion": api_version, "metadata": metadata, "items": page}),
    )
}

fn kind_of(resource: &str) -> &'static str {
    match resource.rsplit('/').next().unwrap_or("") {
        "ingresses" => "Ingress",
        "ingressclasses" => "IngressClass",
        "services" => "Service",
        "endpointslices" => "EndpointSlice",
        "secrets" => "Secret",
        "gatewayclasses" => "GatewayClass",
        "gateways" => "Gateway",
        "httproutes" => "HTTPRoute",
        "referencegrants" => "ReferenceGrant",
        "tlsroutes" => "TLSRoute",
        "tcproutes" => "TCPRoute",
        "udproutes" => "UDPRoute",
        "backendtlspolicies" => "BackendTLSPolicy",
        "configmaps" => "ConfigMap",
        "leases" => "Lease",
        "sluicepolicies" => "SluicePolicy",
        _ => "Event",
    }
}
