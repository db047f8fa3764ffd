//! (cfg(test)) A scripted Kubernetes API server on a `tower_test` mock, in the manner of
//! kube-rs's controller-rs example, extended with LIST and WATCH so the real `Controller` runs
//! against it. It keeps objects in memory, answers by method and path like the API server
//! would, keeps watch streams open, and records every request for assertions.
//! [`ApiServer::listen`] serves the same objects over loopback HTTP, for processes: the
//! operator binary and the real `kubectl` (see [`served`]).

mod served;

pub use served::{now as served_now, Caller};

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};

use crate::crd::ResumedOffset;
use crate::observation::{KafkaObservation, KafkaTarget, ObserveError, PartitionOffsets};
use crate::observe::Observer;
use crate::rewind::{RewindTo, Rewound};

/// One request as the API server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    pub at: tokio::time::Instant,
}

impl Recorded {
    pub fn is(&self, method: &Method, path: &str) -> bool {
        self.method == *method && self.path == path
    }
}

/// Where a path points: `/api/v1` or `/apis/<group>/<version>`, then the resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Loc {
    prefix: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Loc> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let s = |x: &&str| (*x).to_string();
    let loc = |namespace, plural: &&str, name: Option<&&str>, sub: Option<&&str>| Loc {
        prefix: prefix.clone(),
        namespace,
        plural: s(plural),
        name: name.map(s),
        sub: sub.map(s),
    };
    Some(match rest {
        [plural] => loc(None, plural, None, None),
        ["namespaces", ns, plural] => loc(Some(s(ns)), plural, None, None),
        ["namespaces", ns, plural, name] => loc(Some(s(ns)), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => loc(Some(s(ns)), plural, Some(name), Some(sub)),
        _ => return None,
    })
}

type WatchSender = mpsc::Sender<Result<Bytes, Infallible>>;

/// One open watch.
struct Watch {
    /// The namespace it covers (None: all).
    namespace: Option<String>,
    /// `fieldSelector=metadata.name=...`: the one object it covers (None: all).
    name: Option<String>,
    /// Hears every write, as from a real API server (an [`Caller::Admin`]'s `kubectl`);
    /// otherwise only what [`announced`] says, so tests decide when the operator hears what.
    every_write: bool,
    tx: WatchSender,
}

impl Watch {
    fn covers(&self, namespace: Option<&String>, obj: &Value) -> bool {
        (self.namespace.is_none() || self.namespace.as_ref() == namespace)
            && self
                .name
                .as_ref()
                .is_none_or(|n| obj["metadata"]["name"].as_str() == Some(n.as_str()))
    }
}

/// Open watches by (API prefix, plural).
type Watches = HashMap<(String, String), Vec<Watch>>;

#[derive(Default)]
struct State {
    /// Objects by (prefix, namespace, plural, name).
    objects: BTreeMap<(String, String, String, String), Value>,
    watchers: Watches,
    requests: Vec<Recorded>,
    resource_version: u64,
    /// Namespaces being deleted: creating anything in them is refused, as the API server's
    /// NamespaceLifecycle admission does.
    terminating: std::collections::BTreeSet<String>,
    /// Scripted failures: (method, path, status code, how many more times).
    failures: Vec<(Method, String, StatusCode, usize)>,
    /// The (group, resource, verb) of every request, as RBAC sees it.
    used: std::collections::BTreeSet<(String, String, String)>,
    /// Requests refused because `crate::rbac` does not declare them: "METHOD path".
    forbidden: Vec<String>,
}

/// A request as RBAC sees it: the API group, the resource with its subresource, the verb.
fn permission(method: &Method, query: &str, loc: &Loc) -> (String, String, String) {
    let group = loc
        .prefix
        .strip_prefix("/apis/")
        .and_then(|g| g.split('/').next())
        .unwrap_or("")
        .to_string();
    let resource = match &loc.sub {
        Some(sub) => format!("{}/{sub}", loc.plural),
        None => loc.plural.clone(),
    };
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let verb = match (method.as_str(), &loc.name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        (other, _) => other,
    };
    (group, resource, verb.to_string())
}

/// The scripted server; dropping it stops answering.
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    /// The loopback HTTP servers of [`ApiServer::listen`].
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        for l in self
            .listeners
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            l.abort();
        }
        // Ends the open watch streams, so their connections close too.
        if let Ok(mut st) = self.state.lock() {
            st.watchers.clear();
        }
    }
}

/// Installs `crd` as this scripted server's only kind. A real API server takes a CRD with a
/// format it does not know but warns (`unrecognized format "uint32"`) on every write of the
/// CRD and of each object; here that is an error, so no test runs on such a CRD.
///
/// # Errors
/// Each unknown format with its path, in the API server's words.
pub fn install_crd(crd: &Value) -> Result<(), String> {
    let unknown = crate::crd::unknown_formats(crd);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("unrecognized format in {}", unknown.join(", ")))
    }
}

/// A client whose every request goes to a new scripted server, which serves the operator's CRD.
pub fn start() -> (Client, ApiServer) {
    let crd = serde_json::to_value(crate::crd::definition()).expect("the CRD serializes");
    if let Err(e) = install_crd(&crd) {
        panic!("the scripted API server refuses the CRD: {e}");
    }
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    let state = Arc::new(Mutex::new(State::default()));
    let shared = state.clone();
    let task = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = axum::body::to_bytes(Body::new(body), 16 << 20)
                .await
                .unwrap_or_default();
            let response = answer(&shared, parts, &bytes, Caller::Operator);
            send.send_response(response);
        }
    });
    (
        Client::new(service, "default"),
        ApiServer {
            state,
            task,
            listeners: Mutex::default(),
        },
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response parts are valid")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

/// Answers one request as the API server would answer `caller`.
fn answer(
    state: &Mutex<State>,
    parts: http::request::Parts,
    bytes: &[u8],
    caller: Caller,
) -> Response<Body> {
    let body: Value = serde_json::from_slice(bytes)
        .or_else(|_| serde_yaml::from_slice(bytes))
        .unwrap_or(Value::Null);
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let mut st = state.lock().expect("fixture state lock");
    st.requests.push(Recorded {
        method: parts.method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
        at: tokio::time::Instant::now(),
    });
    if let Some(f) = st
        .failures
        .iter_mut()
        .find(|(m, p, _, left)| *m == parts.method && *p == path && *left > 0)
    {
        f.3 -= 1;
        if f.2 == StatusCode::TOO_MANY_REQUESTS {
            // As API priority and fairness refuses a request: it says when to come back.
            return json_response(
                f.2,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "reason": "TooManyRequests", "code": 429,
                        "message": "Too many requests, please try again later.",
                        "details": {"retryAfterSeconds": 1}}),
            );
        }
        return status(f.2, "InternalError", "scripted failure");
    }
    if let Some(r) = served::discovery(&path) {
        return r;
    }
    let Some(loc) = parse(&path).filter(|l| served::known(&l.prefix, &l.plural)) else {
        // What a real API server says of a path it has no resource for.
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if let Some(ns) = loc
        .namespace
        .as_ref()
        .filter(|ns| st.terminating.contains(*ns))
    {
        let name = loc.name.clone().unwrap_or_default();
        let exists =
            st.objects
                .contains_key(&(loc.prefix.clone(), ns.clone(), loc.plural.clone(), name));
        let creates = parts.method == Method::POST || (parts.method == Method::PATCH && !exists);
        if creates {
            let message = format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                loc.plural,
                loc.name.clone().unwrap_or_default()
            );
            return json_response(
                StatusCode::FORBIDDEN,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "reason": "Forbidden", "code": 403, "message": message,
                        "details": {"name": loc.name, "kind": loc.plural, "causes": [
                            {"reason": "NamespaceTerminating", "field": "metadata.namespace",
                             "message": format!("namespace {ns} is being terminated")}]}}),
            );
        }
    }
    let (group, resource, verb) = permission(&parts.method, &query, &loc);
    if caller == Caller::Operator && !crate::rbac::allows(&group, &resource, &verb) {
        st.forbidden.push(format!("{} {path}", parts.method));
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!("{verb} {resource} in group {group:?} is not in crate::rbac::RULES"),
        );
    }
    st.used.insert((group, resource, verb));
    let ns = loc.namespace.clone().unwrap_or_default();
    let key = |name: &str| {
        (
            loc.prefix.clone(),
            ns.clone(),
            loc.plural.clone(),
            name.to_string(),
        )
    };
    match (parts.method.clone(), loc.name.clone()) {
        (Method::GET, None)
            if query
                .split('&')
                .any(|q| q == "watch=true" || q == "watch=1") =>
        {
            let (tx, rx) = mpsc::channel(64);
            st.watchers
                .entry((loc.prefix.clone(), loc.plural.clone()))
                .or_default()
                .push(Watch {
                    namespace: loc.namespace.clone(),
                    name: served::selected_name(&query),
                    every_write: caller == Caller::Admin,
                    tx,
                });
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(rx))
                .expect("static response parts are valid")
        }
        (Method::GET, None) => {
            let items: Vec<Value> = if loc.prefix == "/api/v1" && loc.plural == "events" {
                // Core Events are the events.k8s.io ones seen through the older API, as the
                // API server keeps one store for both.
                st.objects
                    .iter()
                    .filter(|((p, n, pl, _), _)| {
                        p == "/apis/events.k8s.io/v1"
                            && pl == "events"
                            && (loc.namespace.is_none() || *n == ns)
                    })
                    .map(|(_, v)| served::core_event(v))
                    .collect()
            } else {
                st.objects
                    .iter()
                    .filter(|((p, n, pl, _), _)| {
                        *p == loc.prefix
                            && *pl == loc.plural
                            && (loc.namespace.is_none() || *n == ns)
                    })
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            let items = match served::field_selector(&query) {
                Ok(selector) => items
                    .into_iter()
                    .filter(|o| served::selects(&selector, o))
                    .collect::<Vec<_>>(),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
            };
            let rv = st.resource_version.to_string();
            if served::wants_table(&parts.headers) {
                return json_response(StatusCode::OK, &served::table(&loc.plural, &items, &rv));
            }
            let (api_version, kind) = served::list_kind(&loc.prefix, &loc.plural);
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match st.objects.get(&key(&name)) {
            Some(obj) if loc.sub.is_none() && served::wants_table(&parts.headers) => {
                let rv = st.resource_version.to_string();
                json_response(
                    StatusCode::OK,
                    &served::table(&loc.plural, std::slice::from_ref(obj), &rv),
                )
            }
            Some(obj) => json_response(StatusCode::OK, obj),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} {name} not found", loc.plural),
            ),
        },
        (Method::POST, None) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if st.objects.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{name} exists"),
                );
            }
            let mut body = body;
            // What the API server sets on every object it creates.
            body["metadata"]["creationTimestamp"] = json!(served::now());
            if loc.plural == "streamingjobs" {
                body["metadata"]["generation"] = json!(1);
            }
            let obj = st.store(key(&name), body);
            // A creation is a metadata write: the controller hears of new jobs.
            if announced(&loc.plural) || loc.plural == "streamingjobs" {
                st.notify(&loc, "ADDED", &obj);
            }
            json_response(StatusCode::CREATED, &obj)
        }
        (Method::PUT, Some(name)) => {
            let current = st
                .objects
                .get(&key(&name))
                .map(|o| o["metadata"]["resourceVersion"].clone());
            if current.is_some_and(|rv| rv != body["metadata"]["resourceVersion"]) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                );
            }
            let obj = st.store(key(&name), body);
            json_response(StatusCode::OK, &obj)
        }
        (Method::PATCH, Some(name))
            if parts
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/json-patch+json") =>
        {
            let Some(mut obj) = st.objects.get(&key(&name)).cloned() else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                );
            };
            // The API server's JSON patch takes a missing member for null in a test; the
            // json-patch crate does not, so such tests are checked here.
            let mut body = body;
            if let Some(ops) = body.as_array_mut() {
                ops.retain(|op| {
                    let path = op["path"].as_str().unwrap_or_default();
                    !(op["op"] == "test" && op["value"].is_null() && obj.pointer(path).is_none())
                });
            }
            let applied = serde_json::from_value::<json_patch::Patch>(body)
                .map_err(|e| e.to_string())
                .and_then(|p| json_patch::patch(&mut obj, &p).map_err(|e| e.to_string()));
            if let Err(e) = applied {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e);
            }
            // A deleting object whose last finalizer is gone goes away.
            let done = !obj["metadata"]["deletionTimestamp"].is_null()
                && obj["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
            let obj = st.store(key(&name), obj);
            if done {
                st.take(&key(&name));
            }
            st.notify(&loc, if done { "DELETED" } else { "MODIFIED" }, &obj);
            json_response(StatusCode::OK, &obj)
        }
        (Method::PATCH, Some(name)) => {
            let mut obj = st
                .objects
                .get(&key(&name))
                .cloned()
                .unwrap_or_else(|| json!({}));
            if loc.sub.as_deref() == Some("status") {
                // A JSON merge patch (RFC 7386), as the API server applies one: fields sent
                // win, null removes one, and what is not sent stays.
                json_patch::merge(&mut obj, &json!({"status": body["status"].clone()}));
            } else {
                // Server-side apply and merge patches: the fields sent win.
                merge(&mut obj, &body);
            }
            let existed = st.objects.contains_key(&key(&name));
            let obj = st.store(key(&name), obj);
            if loc.sub.is_none() && announced(&loc.plural) {
                st.notify(&loc, if existed { "MODIFIED" } else { "ADDED" }, &obj);
            }
            json_response(StatusCode::OK, &obj)
        }
        (Method::DELETE, Some(name)) => {
            let obj = st.delete(&loc, key(&name));
            json_response(StatusCode::OK, &obj)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not scripted",
        ),
    }
}

/// The kinds whose every write is announced to watches, as the API server does: the ones
/// the operator reads from watch-fed stores. Jobs are announced only for metadata writes
/// (creation, finalizers, deletion), so tests decide when the controller hears of anything
/// else about them; a watch that hears every write (`kubectl`'s) hears those too.
fn announced(plural: &str) -> bool {
    matches!(
        plural,
        "statefulsets" | "configmaps" | "services" | "poddisruptionbudgets" | "pods"
    )
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl State {
    /// Deletes like the API server: an object with finalizers is only marked, and its
    /// watchers told, so the finalizers' owners can finish first.
    fn delete(&mut self, loc: &Loc, key: (String, String, String, String)) -> Value {
        let finalized = self.objects.get(&key).is_some_and(|o| {
            o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        });
        if !finalized {
            let gone = self.take(&key).unwrap_or(Value::Null);
            if !gone.is_null() && announced(&loc.plural) {
                self.notify(loc, "DELETED", &gone);
            }
            return gone;
        }
        let mut obj = self.objects[&key].clone();
        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let obj = self.store(key, obj);
        self.notify(loc, "MODIFIED", &obj);
        obj
    }

    /// Tells open watches of `loc`'s kind about `obj`: every write of the [`announced`]
    /// kinds, and of jobs only metadata writes (finalizers, deletion).
    fn notify(&mut self, loc: &Loc, kind: &str, obj: &Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        for w in self
            .watchers
            .get_mut(&(loc.prefix.clone(), loc.plural.clone()))
            .into_iter()
            .flatten()
        {
            if !w.every_write && w.covers(loc.namespace.as_ref(), obj) {
                let _ = w.tx.try_send(Ok(line.clone()));
            }
        }
    }

    /// Tells the watches that hear every write (a real API server's) about one.
    fn tell_every_write(
        &mut self,
        key: &(String, String, String, String),
        kind: &str,
        obj: &Value,
    ) {
        let (prefix, ns, plural, _) = key;
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        let ns = Some(ns.clone()).filter(|n| !n.is_empty());
        for w in self
            .watchers
            .get_mut(&(prefix.clone(), plural.clone()))
            .into_iter()
            .flatten()
        {
            if w.every_write && w.covers(ns.as_ref(), obj) {
                let _ = w.tx.try_send(Ok(line.clone()));
            }
        }
    }

    fn store(&mut self, key: (String, String, String, String), mut obj: Value) -> Value {
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.resource_version));
        }
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.tell_every_write(&key, kind, &obj);
        self.objects.insert(key, obj.clone());
        obj
    }

    /// Removes an object, telling the watches that hear every write.
    fn take(&mut self, key: &(String, String, String, String)) -> Option<Value> {
        let gone = self.objects.remove(key)?;
        self.tell_every_write(key, "DELETED", &gone);
        Some(gone)
    }
}

impl ApiServer {
    /// Stores `obj` as if created earlier; it shows up in LISTs and GETs, and in the watches
    /// of the kinds the operator caches (as a change the API server announces).
    pub fn insert(&self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_string();
        let loc = parse(&format!("{collection}/{name}")).expect("a namespaced collection path");
        let mut st = self.state.lock().expect("fixture state lock");
        let ns = loc.namespace.clone().unwrap_or_default();
        let key = (loc.prefix.clone(), ns, loc.plural.clone(), name);
        let existed = st.objects.contains_key(&key);
        st.resource_version += 1;
        let mut obj = obj;
        // A watch event needs one (a watcher restarts on an object without it); a version
        // the test gave stays.
        if obj["metadata"]["resourceVersion"].is_null() {
            obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        }
        st.tell_every_write(&key, if existed { "MODIFIED" } else { "ADDED" }, &obj);
        st.objects.insert(key, obj.clone());
        if announced(&loc.plural) {
            st.notify(&loc, if existed { "MODIFIED" } else { "ADDED" }, &obj);
        }
    }

    /// Marks `ns` as being deleted: from now on nothing new may be created in it.
    pub fn terminate_namespace(&self, ns: &str) {
        let mut st = self.state.lock().expect("fixture state lock");
        st.terminating.insert(ns.to_string());
    }

    /// The object at `path` (e.g. a StatefulSet's) as the server stores it now.
    pub fn object(&self, path: &str) -> Option<Value> {
        let loc = parse(path)?;
        let st = self.state.lock().expect("fixture state lock");
        let name = loc.name?;
        st.objects
            .get(&(
                loc.prefix,
                loc.namespace.unwrap_or_default(),
                loc.plural,
                name,
            ))
            .cloned()
    }

    /// Removes an object, as if it went away by itself (a pod that exited).
    pub fn remove(&self, collection: &str, name: &str) {
        let loc = parse(&format!("{collection}/{name}")).expect("a namespaced collection path");
        let mut st = self.state.lock().expect("fixture state lock");
        st.resource_version += 1;
        let ns = loc.namespace.clone().unwrap_or_default();
        let gone = st.take(&(loc.prefix.clone(), ns, loc.plural.clone(), name.to_string()));
        if let Some(obj) = gone.filter(|_| announced(&loc.plural)) {
            st.notify(&loc, "DELETED", &obj);
        }
    }

    /// Deletes an object as a user would (`kubectl delete`).
    pub fn delete(&self, collection: &str, name: &str) {
        let loc = parse(&format!("{collection}/{name}")).expect("a namespaced collection path");
        let mut st = self.state.lock().expect("fixture state lock");
        let key = (
            loc.prefix.clone(),
            loc.namespace.clone().unwrap_or_default(),
            loc.plural.clone(),
            name.to_string(),
        );
        st.delete(&loc, key);
    }

    /// Sends a watch event to every open watch of `collection`'s kind (in any namespace the
    /// watch covers), waiting up to 5 s for one to be open.
    pub async fn push_event(&self, collection: &str, kind: &str, obj: Value) {
        let loc = parse(collection).expect("a collection path");
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        for _ in 0..500 {
            let senders: Vec<WatchSender> = {
                let st = self.state.lock().expect("fixture state lock");
                st.watchers
                    .get(&(loc.prefix.clone(), loc.plural.clone()))
                    .into_iter()
                    .flatten()
                    .filter(|w| {
                        !w.every_write && (w.namespace.is_none() || w.namespace == loc.namespace)
                    })
                    .map(|w| w.tx.clone())
                    .collect()
            };
            if !senders.is_empty() {
                for mut tx in senders {
                    let _ = futures::SinkExt::send(&mut tx, Ok(line.clone())).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nobody watches {collection}");
    }

    /// Answers the next `times` requests of `method` to `path` with `code`.
    pub fn fail(&self, method: Method, path: &str, code: StatusCode, times: usize) {
        let mut st = self.state.lock().expect("fixture state lock");
        st.failures.push((method, path.to_string(), code, times));
    }

    /// Requests refused so far because the declared RBAC rules do not allow them.
    pub fn forbidden(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("fixture state lock")
            .forbidden
            .clone()
    }

    /// The (group, resource, verb) of every request allowed so far.
    pub fn used(&self) -> std::collections::BTreeSet<(String, String, String)> {
        self.state.lock().expect("fixture state lock").used.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .lock()
            .expect("fixture state lock")
            .requests
            .clone()
    }

    /// Waits until `done` holds for the requests so far; panics with them after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                    .collect();
                panic!("timed out; requests so far:\n{}", seen.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A valid job manifest as the API server would return it (uid, generation set) after the
/// operator's first pass added its finalizer.
pub fn job(name: &str, generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "StreamingJob",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "generation": generation, "resourceVersion": "1",
                     "finalizers": [crate::cleanup::DRAIN_FINALIZER]},
        "spec": spec,
    })
}

/// The spec of a small valid job.
pub fn spec() -> Value {
    json!({
        "batchInterval": "5s",
        "source": {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["lines"]}, "format": "text"},
        "pipeline": [
            {"id": "words", "flatMap": "value.split(' ')"},
            {"id": "by-word", "keyBy": "item"},
            {"id": "counts", "aggregate": {"count": {}}}
        ],
        "sink": {"kafka": {"topic": "word-counts"}},
        "workers": {"partitionsPerWorker": 4, "min": 2, "max": 6}
    })
}

/// An [`Observer`] that answers with the broker's answers given as data: `None` is a broker
/// that cannot be reached. [`DataObserver::set`] changes the answer, e.g. to grow a topic.
pub struct DataObserver {
    answer: Mutex<Option<KafkaObservation>>,
    /// What each call was asked, in order.
    pub asked: Mutex<Vec<KafkaTarget>>,
    /// Where each worker's `/progress` listens, by ordinal (in place of the pod's DNS name).
    pub workers: Mutex<Vec<String>>,
    /// Each rewind asked for, in order; it is answered with the explicit offsets asked, or
    /// with every observed partition at its log start (earliest) or end (anything else).
    pub rewinds: Mutex<Vec<RewindTo>>,
    /// How long each Kafka read takes, as a broker's timeout does.
    pub delay: Mutex<Duration>,
}

impl DataObserver {
    pub fn new(answer: Option<KafkaObservation>) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(answer),
            asked: Mutex::default(),
            workers: Mutex::default(),
            rewinds: Mutex::default(),
            delay: Mutex::default(),
        })
    }

    pub fn set(&self, answer: Option<KafkaObservation>) {
        *self.answer.lock().expect("fixture lock") = answer;
    }
}

impl Observer for DataObserver {
    fn kafka(&self, target: &KafkaTarget) -> Result<KafkaObservation, ObserveError> {
        self.asked
            .lock()
            .expect("fixture lock")
            .push(target.clone());
        // Called on a blocking thread, as librdkafka's calls are.
        std::thread::sleep(*self.delay.lock().expect("fixture lock"));
        self.answer
            .lock()
            .expect("fixture lock")
            .clone()
            .ok_or(ObserveError::Kafka {
                op: "topic metadata",
                source: KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            })
    }

    fn rewind(&self, _target: &KafkaTarget, to: &RewindTo) -> Result<Rewound, ObserveError> {
        self.rewinds.lock().expect("fixture lock").push(to.clone());
        let answer = self
            .answer
            .lock()
            .expect("fixture lock")
            .clone()
            .unwrap_or_default();
        let offset = |(topic, partition, offset): (String, i32, i64)| ResumedOffset {
            topic,
            partition,
            offset: Some(offset),
        };
        Ok(match to {
            // Checked as the real observer checks them, against the partitions it reports.
            RewindTo::Offsets(list) => {
                let checked = crate::rewind::check_offsets(list, &answer.partitions)
                    .map_err(ObserveError::RewindRefused)?;
                Rewound {
                    offsets: checked.offsets.into_iter().map(offset).collect(),
                    capped: checked.capped,
                }
            }
            _ => Rewound {
                offsets: answer
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let at = if *to == RewindTo::Earliest {
                            p.log_start
                        } else {
                            p.end
                        };
                        offset((p.topic, p.partition, at))
                    })
                    .collect(),
                capped: Vec::new(),
            },
        })
    }

    fn worker_address(&self, _namespace: &str, _job: &str, ordinal: u32) -> String {
        let workers = self.workers.lock().expect("fixture lock");
        // A worker without an address: a port nothing listens on (the discard port).
        workers
            .get(ordinal as usize)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:9".into())
    }
}

/// One topic's partitions, each as (log start, end, committed).
pub fn topic(name: &str, parts: &[(i64, i64, Option<i64>)]) -> KafkaObservation {
    KafkaObservation {
        topics: vec![(name.to_string(), u32::try_from(parts.len()).unwrap())],
        partitions: parts
            .iter()
            .enumerate()
            .map(|(p, &(log_start, end, committed))| PartitionOffsets {
                topic: name.to_string(),
                partition: i32::try_from(p).unwrap(),
                log_start,
                end,
                committed,
                offset_for_time: None,
                next_timestamp: None,
                log_start_timestamp: None,
            })
            .collect(),
        stages: Vec::new(),
        read_at_millis: None,
    }
}
