//! The in-memory object store and every REST verb's semantics. Synchronous and free of I/O:
//! the HTTP shell locks it, calls one method, and wakes watchers when the RV moved.
//!
//! ```text
//!   objects: (group, version, plural, namespace, name) → object + field ownership
//!   rv:      one global counter; every write bumps it and appends one history event
//!   history: the last N events; a watch from RV r replays events after r, or gets
//!            410 Expired when r is older than the retained window
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::patch::{self, PatchError};
use crate::path::{Gvr, ResourcePath};
use crate::selector::{FieldSelector, LabelSelector, is_dns_subdomain};
use crate::ssa::{self, ManagerKey, Ownership, Scope};
use crate::status::{ApiError, Res};
use crate::util::{Rng, rfc3339};
use crate::{schema, service};

/// A verb's successful outcome: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// HTTP status code.
    pub code: u16,
    /// Response body.
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { code: 200, body }
    }
}

/// The HTTP methods the store serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    /// GET (get or list).
    Get,
    /// POST (create).
    Post,
    /// PUT (replace).
    Put,
    /// PATCH.
    Patch,
    /// DELETE (delete or deletecollection).
    Delete,
}

/// One non-watch request, already routed.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The verb.
    pub verb: Verb,
    /// The resource path.
    pub path: &'a ResourcePath,
    /// Decoded query parameters.
    pub query: &'a HashMap<String, String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
    /// Wall-clock time for timestamps.
    pub now: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    gvr: Gvr,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Entry {
    object: Arc<Value>,
    owners: Ownership,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
struct HistoryEvent {
    rv: u64,
    key: Key,
    ty: EventType,
    object: Arc<Value>,
    prev: Option<Arc<Value>>,
}

/// Which objects a list or watch sees.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    gvr: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// Builds the filter for a collection path and its `labelSelector` / `fieldSelector`.
    pub fn new(path: &ResourcePath, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            query.get("fieldSelector").map_or("", String::as_str),
            &path.gvr.plural,
        )
        .map_err(ApiError::bad_request)?;
        Ok(Self {
            gvr: path.gvr.clone(),
            namespace: path.namespace.clone(),
            name: path.name.clone(),
            labels,
            fields,
        })
    }

    fn has_selectors(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }

    fn in_scope(&self, key: &Key) -> bool {
        key.gvr == self.gvr
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
            && self.name.as_ref().is_none_or(|n| *n == key.name)
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels
            .matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
            && self.fields.matches(obj)
    }
}

/// Built-in Kind names for well-known plurals.
fn builtin_kind(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "services" => "Service",
        "endpoints" => "Endpoints",
        "endpointslices" => "EndpointSlice",
        "nodes" => "Node",
        "namespaces" => "Namespace",
        "leases" => "Lease",
        "events" => "Event",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "pods" => "Pod",
        "serviceaccounts" => "ServiceAccount",
        "customresourcedefinitions" => "CustomResourceDefinition",
        "ipaddresspools" => "IPAddressPool",
        "l2advertisements" => "L2Advertisement",
        _ => return None,
    })
}

/// Capitalised singular guess for unknown plurals (`widgets` → `Widget`).
fn guess_kind(plural: &str) -> String {
    let singular = if let Some(s) = plural.strip_suffix("ies") {
        format!("{s}y")
    } else if ["sses", "xes", "ches", "shes"]
        .iter()
        .any(|suf| plural.ends_with(suf))
    {
        plural[..plural.len() - 2].to_string()
    } else {
        plural.strip_suffix('s').unwrap_or(plural).to_string()
    };
    let mut c = singular.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Everything except metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: the body must be a JSON object",
        ));
    }
    Ok(v)
}

fn field_manager(query: &HashMap<String, String>) -> String {
    query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

fn dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

/// The in-memory API state.
#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Entry>,
    kinds: HashMap<Gvr, String>,
    rv: u64,
    history: VecDeque<HistoryEvent>,
    /// Every event with an RV above this one is still in `history`.
    history_start: u64,
    history_limit: usize,
    rng: Rng,
}

impl Store {
    /// An empty store retaining at most `history_limit` watch events.
    pub fn new(history_limit: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            kinds: HashMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_start: 1,
            history_limit: history_limit.max(1),
            rng: Rng::from_entropy(),
        }
    }

    /// The Namespaces a real API server's bootstrap creates (`default`, `kube-system`,
    /// `kube-public`, `kube-node-lease`): clients such as the controller may wait for a
    /// Service's Namespace before acting on it, and on a real cluster it always exists.
    pub fn create_system_namespaces(&mut self) {
        let path = match crate::path::parse("/api/v1/namespaces") {
            crate::path::Route::Resource(rp) => rp,
            _ => unreachable!("a resource path"),
        };
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name},
            })
            .to_string();
            self.handle(&Request {
                verb: Verb::Post,
                path: &path,
                query: &HashMap::new(),
                content_type: Some("application/json"),
                body: body.as_bytes(),
                now: SystemTime::now(),
            })
            .expect("a system namespace is created in an empty store");
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forgets all watch history: a watch from any RV older than now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_start = self.rv;
    }

    /// The Kind for a resource: learnt from stored objects, a built-in table, or a guess.
    pub fn kind(&self, gvr: &Gvr) -> String {
        self.kinds
            .get(gvr)
            .cloned()
            .or_else(|| builtin_kind(&gvr.plural).map(str::to_string))
            .unwrap_or_else(|| guess_kind(&gvr.plural))
    }

    /// Every resource the store has seen, with its Kind and whether it was used namespaced.
    pub fn known_resources(&self) -> Vec<(Gvr, String, bool)> {
        let mut out: BTreeMap<Gvr, bool> = BTreeMap::new();
        for k in self.objects.keys() {
            *out.entry(k.gvr.clone()).or_default() |= !k.namespace.is_empty();
        }
        for g in self.kinds.keys() {
            out.entry(g.clone()).or_default();
        }
        out.into_iter()
            .map(|(g, ns)| {
                let kind = self.kind(&g);
                (g, kind, ns)
            })
            .collect()
    }

    /// A copy of one object, for test assertions.
    pub fn object(&self, path: &ResourcePath) -> Option<Value> {
        let key = Self::key(path, path.name.as_deref()?);
        self.objects.get(&key).map(|e| (*e.object).clone())
    }

    fn key(path: &ResourcePath, name: &str) -> Key {
        Key {
            gvr: path.gvr.clone(),
            namespace: path.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
        }
    }

    fn res(gvr: &Gvr) -> Res<'_> {
        Res {
            group: &gvr.group,
            plural: &gvr.plural,
        }
    }

    /// Serves one non-watch request.
    pub fn handle(&mut self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let p = req.path;
        match p.subresource.as_deref() {
            None => {}
            Some("status") if p.gvr.has_status() => {}
            Some(_) => return Err(ApiError::no_route()),
        }
        match (req.verb, p.name.as_deref()) {
            (Verb::Get, _) if self.too_new(req.query) => Err(ApiError::too_large_resource_version(
                req.query["resourceVersion"].parse().unwrap_or_default(),
                self.rv,
            )),
            (Verb::Get, None) => self.list(p, req.query),
            (Verb::Get, Some(name)) => self.get(p, name),
            (Verb::Post, None) => self.create(req),
            (Verb::Put, Some(name)) => self.replace(req, name),
            (Verb::Patch, Some(name)) => self.patch(req, name),
            (Verb::Delete, Some(name)) => self.delete(req, name),
            (Verb::Delete, None) => self.delete_collection(req),
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// A get or list asks for a resourceVersion this server has not reached (the real one
    /// answers 504 "Too large resource version" once its watch cache gave up waiting).
    fn too_new(&self, query: &HashMap<String, String>) -> bool {
        query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .is_some_and(|rv| rv > self.rv)
    }

    fn get(&self, p: &ResourcePath, name: &str) -> Result<Reply, ApiError> {
        self.objects
            .get(&Self::key(p, name))
            .map(|e| Reply::ok((*e.object).clone()))
            .ok_or_else(|| ApiError::not_found(Self::res(&p.gvr), name))
    }

    fn matching(
        &self,
        filter: &Filter,
        after: Option<&Key>,
    ) -> impl Iterator<Item = (&Key, &Entry)> {
        let start = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(Key {
                gvr: filter.gvr.clone(),
                namespace: filter.namespace.clone().unwrap_or_default(),
                name: String::new(),
            }),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.gvr == filter.gvr)
            .filter(|(k, e)| filter.in_scope(k) && filter.matches(&e.object))
    }

    fn list_body(
        &self,
        gvr: &Gvr,
        rv: u64,
        items: Vec<Value>,
        cont: Option<String>,
        remaining: Option<usize>,
    ) -> Value {
        let mut md = json!({ "resourceVersion": rv.to_string() });
        if let Some(c) = cont {
            md["continue"] = json!(c);
        }
        if let Some(r) = remaining {
            md["remainingItemCount"] = json!(r);
        }
        json!({
            "kind": format!("{}List", self.kind(gvr)),
            "apiVersion": gvr.api_version(),
            "metadata": md,
            "items": items,
        })
    }

    /// list: selectors, `limit` + `continue` pagination in (namespace, name) order.
    /// Simplification: `resourceVersion`/`resourceVersionMatch` are accepted and ignored —
    /// every page is served from the current state, and continued pages report the RV of
    /// the first page (as the real server does), so a watch from it replays what changed.
    fn list(&self, p: &ResourcePath, query: &HashMap<String, String>) -> Result<Reply, ApiError> {
        let filter = Filter::new(p, query)?;
        let limit = match query.get("limit").map(String::as_str) {
            None | Some("") => 0,
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?,
        };
        let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (rv, ns, name) = decode_continue(token)?;
                let key = Key {
                    gvr: p.gvr.clone(),
                    namespace: ns,
                    name,
                };
                (rv, Some(key))
            }
            None => (self.rv, None),
        };
        let mut items = Vec::new();
        let mut iter = self.matching(&filter, after.as_ref());
        let mut last = None;
        for (k, e) in iter.by_ref() {
            items.push((*e.object).clone());
            last = Some(k);
            if limit > 0 && items.len() == limit {
                break;
            }
        }
        let rest = iter.count();
        let (cont, remaining) = match last {
            Some(k) if rest > 0 => (
                Some(encode_continue(list_rv, &k.namespace, &k.name)),
                (!filter.has_selectors()).then_some(rest),
            ),
            _ => (None, None),
        };
        Ok(Reply::ok(
            self.list_body(&p.gvr, list_rv, items, cont, remaining),
        ))
    }

    /// Sets apiVersion/kind from the path when missing; rejects a mismatching apiVersion or kind.
    fn fill_type_meta(&mut self, gvr: &Gvr, obj: &mut Value) -> Result<(), ApiError> {
        let api_version = gvr.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != api_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => obj["apiVersion"] = json!(api_version),
        }
        let expected = self
            .kinds
            .get(gvr)
            .cloned()
            .or_else(|| builtin_kind(&gvr.plural).map(str::to_string));
        match (
            obj.get("kind")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty()),
            expected,
        ) {
            (Some(k), Some(e)) if k != e => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({e})"
                )));
            }
            (Some(k), _) => {
                let k = k.to_string();
                self.kinds.entry(gvr.clone()).or_insert(k);
            }
            (None, e) => obj["kind"] = json!(e.unwrap_or_else(|| self.kind(gvr))),
        }
        Ok(())
    }

    /// Namespace of the body vs the path: namespaced paths fill it in (a mismatch is a 400),
    /// cluster-wide paths clear it (as the real server does for cluster-scoped kinds).
    fn fix_namespace(path: &ResourcePath, obj: &mut Value) -> Result<(), ApiError> {
        let md = meta_mut(obj);
        match &path.namespace {
            Some(ns) => {
                if let Some(body_ns) = md.get("namespace").and_then(Value::as_str)
                    && !body_ns.is_empty()
                    && body_ns != ns
                {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                md.insert("namespace".into(), json!(ns));
            }
            None => {
                md.remove("namespace");
            }
        }
        Ok(())
    }

    /// The body's name must match the URL's (filled in when missing).
    fn fix_name(obj: &mut Value, name: &str) -> Result<(), ApiError> {
        let md = meta_mut(obj);
        match md.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            ))),
            _ => {
                md.insert("name".into(), json!(name));
                Ok(())
            }
        }
    }

    /// Server-set metadata and defaults for a new object (uid, timestamps, generation).
    fn prepare_new(&mut self, gvr: &Gvr, obj: &mut Value, now: SystemTime) {
        // Simplification: per-kind defaulting and validation only where `admit` says; status
        // is dropped on create for resources with a status subresource (Nodes keep theirs,
        // as kubelet registration relies on) and Namespaces start Active.
        if gvr.has_status()
            && gvr.plural != "nodes"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if gvr.is_namespaces() {
            obj["status"] = json!({ "phase": "Active" });
        }
        let uid = self.rng.uuid();
        let md = meta_mut(obj);
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            md.remove(f);
        }
        md.insert("uid".into(), json!(uid));
        md.insert("creationTimestamp".into(), json!(rfc3339(now)));
        if gvr.tracks_generation() {
            md.insert("generation".into(), json!(1));
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn set_rv(obj: &mut Value, rv: u64) {
        meta_mut(obj).insert("resourceVersion".into(), json!(rv.to_string()));
    }

    fn record(&mut self, ty: EventType, key: &Key, object: Arc<Value>, prev: Option<Arc<Value>>) {
        self.history.push_back(HistoryEvent {
            rv: self.rv,
            key: key.clone(),
            ty,
            object,
            prev,
        });
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.rv;
            }
        }
    }

    fn validate_name(&self, gvr: &Gvr, obj: &Value, name: &str) -> Result<(), ApiError> {
        if is_dns_subdomain(name) {
            return Ok(());
        }
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        Err(ApiError::invalid(
            Self::res(gvr),
            kind,
            name,
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }

    /// The schema of a custom resource whose CRD is stored here (`{plural}.{group}`).
    fn crd_schema(&self, gvr: &Gvr) -> Option<&Value> {
        if gvr.group.is_empty() {
            return None;
        }
        let key = Key {
            gvr: Gvr {
                group: "apiextensions.k8s.io".into(),
                version: "v1".into(),
                plural: "customresourcedefinitions".into(),
            },
            namespace: String::new(),
            name: format!("{}.{}", gvr.plural, gvr.group),
        };
        schema::schema_for(&self.objects.get(&key)?.object, &gvr.version)
    }

    /// What the real server does to a written object before storing it, for the kinds
    /// where FerroLB depends on it: Service status rules (`service`) and the schema of a
    /// registered CRD (`schema`), `spec.loadBalancerClass` and Event note sizes. `new` is
    /// the composed object; `old` is `None` on create.
    /// Simplification: no other kind is defaulted or validated beyond metadata.
    fn admit(
        &self,
        req: &Request<'_>,
        name: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        let p = req.path;
        let status_write = p.subresource.as_deref() == Some("status");
        let kind = new
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut causes = Vec::new();
        if p.gvr.group.is_empty() && p.gvr.plural == "services" {
            if status_write {
                if let Some(e) = service::decode_error(new, req.verb == Verb::Patch) {
                    return Err(e);
                }
                service::normalize_status(new);
                causes = service::validate_status(new);
            } else {
                causes = service::validate_spec(new);
                if old.is_some() {
                    service::clear_lb_status_unless_lb(new);
                }
            }
        } else if p.gvr.group == "events.k8s.io" && p.gvr.plural == "events" {
            causes = service::validate_event(new);
        } else if let Some(schema) = self.crd_schema(&p.gvr) {
            schema::prune_and_default(schema, new);
            causes = schema::validate(schema, new, status_write);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_causes(&p.gvr.group, &kind, name, causes))
        }
    }

    fn create(&mut self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let p = req.path;
        let mut obj = parse_object(req.body)?;
        self.fill_type_meta(&p.gvr, &mut obj)?;
        Self::fix_namespace(p, &mut obj)?;
        let res = Self::res(&p.gvr);
        let name = match meta_str(&obj, "name") {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName") {
                Some(prefix) => {
                    let prefix = prefix.to_string();
                    let mut n = format!("{prefix}{}", self.rng.suffix(5));
                    while self.objects.contains_key(&Self::key(p, &n)) {
                        n = format!("{prefix}{}", self.rng.suffix(5));
                    }
                    meta_mut(&mut obj).insert("name".into(), json!(n));
                    n
                }
                None => {
                    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
                    return Err(ApiError::invalid(
                        res,
                        &kind,
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        self.validate_name(&p.gvr, &obj, &name)?;
        let key = Self::key(p, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        self.prepare_new(&p.gvr, &mut obj, req.now);
        self.admit(req, &name, None, &mut obj)?;
        if dry_run(req.query) {
            return Ok(Reply {
                code: 201,
                body: obj,
            });
        }
        let mut owners = Ownership::default();
        owners.record_update(&manager_key(field_manager(req.query), p), None, &obj);
        Ok(Reply {
            code: 201,
            body: self.insert_new(key, obj, owners),
        })
    }

    fn insert_new(&mut self, key: Key, mut obj: Value, owners: Ownership) -> Value {
        let rv = self.next_rv();
        Self::set_rv(&mut obj, rv);
        let object = Arc::new(obj.clone());
        self.record(EventType::Added, &key, object.clone(), None);
        self.objects.insert(key, Entry { object, owners });
        obj
    }

    fn existing(&self, p: &ResourcePath, name: &str) -> Result<(Key, Entry), ApiError> {
        let key = Self::key(p, name);
        match self.objects.get(&key) {
            Some(e) => Ok((key, e.clone())),
            None => Err(ApiError::not_found(Self::res(&p.gvr), name)),
        }
    }

    fn check_rv(p: &ResourcePath, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
        match meta_str(new, "resourceVersion") {
            Some(rv) if Some(rv) != meta_str(old, "resourceVersion") => {
                Err(ApiError::conflict(Self::res(&p.gvr), name))
            }
            _ => Ok(()),
        }
    }

    /// Combines the stored object with a proposed new one according to the subresource:
    /// `/status` takes only `.status`; the main resource keeps the stored `.status` when the
    /// resource has a status subresource. Server-owned metadata is always kept.
    fn compose(p: &ResourcePath, old: &Value, proposed: Value) -> Value {
        let mut out = if p.subresource.as_deref() == Some("status") {
            let mut out = old.clone();
            match proposed.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            out
        } else {
            let mut out = proposed;
            if p.gvr.has_status()
                && let Some(m) = out.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => {
                        m.insert("status".into(), s.clone());
                    }
                    None => {
                        m.remove("status");
                    }
                }
            }
            out
        };
        let old_md = meta(old).cloned().unwrap_or_default();
        let md = meta_mut(&mut out);
        md.remove("managedFields");
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "generation",
            "name",
            "namespace",
        ] {
            match old_md.get(f) {
                Some(v) => md.insert(f.to_string(), v.clone()),
                None => md.remove(f),
            };
        }
        out
    }

    /// Stores an update of `key` from `old` to `new` (already composed): no-op detection,
    /// generation bump, finalizer-driven deletion, ownership, RV and watch event.
    fn commit_update(
        &mut self,
        key: Key,
        old: &Entry,
        mut new: Value,
        owners: Ownership,
        dry: bool,
    ) -> Result<Reply, ApiError> {
        if key.gvr.tracks_generation() && spec_part(&new) != spec_part(&old.object) {
            let generation = meta(&old.object)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if new == *old.object {
            if !dry && let Some(e) = self.objects.get_mut(&key) {
                e.owners = owners;
            }
            return Ok(Reply::ok(new));
        }
        if dry {
            return Ok(Reply::ok(new));
        }
        let rv = self.next_rv();
        Self::set_rv(&mut new, rv);
        let object = Arc::new(new.clone());
        if meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp")) && !has_finalizers(&new)
        {
            self.objects.remove(&key);
            self.record(EventType::Deleted, &key, object, None);
        } else {
            self.record(
                EventType::Modified,
                &key,
                object.clone(),
                Some(old.object.clone()),
            );
            self.objects.insert(key, Entry { object, owners });
        }
        Ok(Reply::ok(new))
    }

    fn replace(&mut self, req: &Request<'_>, name: &str) -> Result<Reply, ApiError> {
        let p = req.path;
        let mut body = parse_object(req.body)?;
        self.fill_type_meta(&p.gvr, &mut body)?;
        Self::fix_name(&mut body, name)?;
        Self::fix_namespace(p, &mut body)?;
        let (key, old) = self.existing(p, name)?;
        Self::check_rv(p, name, &old.object, &body)?;
        // Simplification: no create-on-update, unconditional updates (no RV) are allowed.
        let mut new = Self::compose(p, &old.object, body);
        self.admit(req, name, Some(&old.object), &mut new)?;
        let mut owners = old.owners.clone();
        owners.record_update(
            &manager_key(field_manager(req.query), p),
            Some(&old.object),
            &new,
        );
        self.commit_update(key, &old, new, owners, dry_run(req.query))
    }

    fn patch(&mut self, req: &Request<'_>, name: &str) -> Result<Reply, ApiError> {
        let p = req.path;
        let ct = req
            .content_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if ct == "application/apply-patch+yaml" {
            return self.apply(req, name);
        }
        let doc: Value = serde_json::from_slice(req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let (key, old) = self.existing(p, name)?;
        let mut patched = (*old.object).clone();
        match ct.as_str() {
            // Simplification: strategic merge patch is a plain merge patch (lists replaced).
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                if !doc.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut patched, &doc);
            }
            "application/json-patch+json" => {
                patch::json_patch(&mut patched, &doc).map_err(|e| match e {
                    PatchError::Malformed(m) => ApiError::bad_request(m),
                    PatchError::Failed(m) => ApiError::unprocessable(format!(
                        "the server rejected our request due to an error in our request: {m}"
                    )),
                })?;
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        if !patched.is_object() {
            return Err(ApiError::bad_request(
                "the patched object is not a JSON object",
            ));
        }
        Self::check_rv(p, name, &old.object, &patched)?;
        if meta_str(&patched, "name") != Some(name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&patched, "name").unwrap_or_default()
            )));
        }
        if meta_str(&patched, "namespace") != meta_str(&old.object, "namespace") {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        self.fill_type_meta(&p.gvr, &mut patched)?;
        let mut new = Self::compose(p, &old.object, patched);
        self.admit(req, name, Some(&old.object), &mut new)?;
        let mut owners = old.owners.clone();
        owners.record_update(
            &manager_key(field_manager(req.query), p),
            Some(&old.object),
            &new,
        );
        self.commit_update(key, &old, new, owners, dry_run(req.query))
    }

    /// Server-side apply (`application/apply-patch+yaml`).
    fn apply(&mut self, req: &Request<'_>, name: &str) -> Result<Reply, ApiError> {
        let p = req.path;
        let Some(manager) = req.query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::apply_needs_field_manager());
        };
        let force = req.query.get("force").is_some_and(|f| f == "true");
        let mut config: Value = match serde_json::from_slice(req.body) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(req.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                serde_saphyr::from_str(text)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            }
        };
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "an apply configuration must be an object",
            ));
        }
        for f in ["apiVersion", "kind"] {
            if config
                .get(f)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "invalid object type: {f} must be set in an apply configuration"
                )));
            }
        }
        self.fill_type_meta(&p.gvr, &mut config)?;
        Self::fix_name(&mut config, name)?;
        Self::fix_namespace(p, &mut config)?;
        let status_sub = p.subresource.as_deref() == Some("status");
        let scope = match (status_sub, p.gvr.has_status()) {
            (true, _) => Scope::StatusOnly,
            (false, true) => Scope::NotStatus,
            (false, false) => Scope::All,
        };
        // The real server ignores the parts of an apply configuration outside the subresource.
        if let Some(m) = config.as_object_mut() {
            match scope {
                Scope::NotStatus => {
                    m.remove("status");
                }
                Scope::StatusOnly => m.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                }),
                Scope::All => {}
            }
        }
        let me = ManagerKey {
            manager: manager.clone(),
            subresource: p.subresource.clone().unwrap_or_default(),
        };
        let key = Self::key(p, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if status_sub {
                return Err(ApiError::not_found(Self::res(&p.gvr), name));
            }
            self.validate_name(&p.gvr, &config, name)?;
            let (mut obj, owners) = ssa::apply(
                &json!({}),
                &config,
                &me,
                force,
                &Ownership::default(),
                scope,
            )
            .map_err(|c| conflicts_error(&c))?;
            self.prepare_new(&p.gvr, &mut obj, req.now);
            self.admit(req, name, None, &mut obj)?;
            if dry_run(req.query) {
                return Ok(Reply {
                    code: 201,
                    body: obj,
                });
            }
            return Ok(Reply {
                code: 201,
                body: self.insert_new(key, obj, owners),
            });
        };
        Self::check_rv(p, name, &old.object, &config)?;
        if let Some(md) = config.get_mut("metadata").and_then(Value::as_object_mut) {
            md.remove("resourceVersion");
        }
        let (result, owners) = ssa::apply(&old.object, &config, &me, force, &old.owners, scope)
            .map_err(|c| conflicts_error(&c))?;
        let mut new = Self::compose(p, &old.object, result);
        self.admit(req, name, Some(&old.object), &mut new)?;
        self.commit_update(key, &old, new, owners, dry_run(req.query))
    }

    fn delete(&mut self, req: &Request<'_>, name: &str) -> Result<Reply, ApiError> {
        let p = req.path;
        if p.subresource.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        let (key, old) = self.existing(p, name)?;
        if !req.body.is_empty() {
            let opts: Value = serde_json::from_slice(req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
            let pre = |f: &str| {
                opts.pointer(&format!("/preconditions/{f}"))
                    .and_then(Value::as_str)
            };
            if let Some(uid) = pre("uid")
                && Some(uid) != meta_str(&old.object, "uid")
            {
                return Err(ApiError::conflict_msg(
                    Self::res(&p.gvr),
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old.object, "uid").unwrap_or_default()
                    ),
                ));
            }
            if let Some(rv) = pre("resourceVersion")
                && Some(rv) != meta_str(&old.object, "resourceVersion")
            {
                return Err(ApiError::conflict_msg(
                    Self::res(&p.gvr),
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old.object, "resourceVersion").unwrap_or_default()
                    ),
                ));
            }
        }
        if dry_run(req.query) {
            return Ok(Reply::ok((*old.object).clone()));
        }
        Ok(Reply::ok(self.delete_key(&key, &old, req.now)))
    }

    /// Deletes one object (or marks it for deletion when it has finalizers).
    /// Simplification: deleting a Namespace deletes its contents at once (no Terminating
    /// phase); ownerReferences garbage collection is not implemented.
    fn delete_key(&mut self, key: &Key, old: &Entry, now: SystemTime) -> Value {
        if has_finalizers(&old.object) {
            if meta(&old.object).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return (*old.object).clone();
            }
            let mut new = (*old.object).clone();
            let md = meta_mut(&mut new);
            md.insert("deletionTimestamp".into(), json!(rfc3339(now)));
            md.insert("deletionGracePeriodSeconds".into(), json!(0));
            let rv = self.next_rv();
            Self::set_rv(&mut new, rv);
            let object = Arc::new(new.clone());
            self.record(
                EventType::Modified,
                key,
                object.clone(),
                Some(old.object.clone()),
            );
            self.objects.insert(
                key.clone(),
                Entry {
                    object,
                    owners: old.owners.clone(),
                },
            );
            return new;
        }
        let rv = self.next_rv();
        let mut gone = (*old.object).clone();
        Self::set_rv(&mut gone, rv);
        self.objects.remove(key);
        self.record(EventType::Deleted, key, Arc::new(gone.clone()), None);
        if key.gvr.is_namespaces() {
            let contents: Vec<(Key, Entry)> = self
                .objects
                .iter()
                .filter(|(k, _)| k.namespace == key.name)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            for (k, e) in contents {
                self.delete_key(&k, &e, now);
            }
        }
        gone
    }

    fn delete_collection(&mut self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let filter = Filter::new(req.path, req.query)?;
        let victims: Vec<(Key, Entry)> = self
            .matching(&filter, None)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let dry = dry_run(req.query);
        let items: Vec<Value> = victims
            .iter()
            .map(|(k, e)| {
                if dry {
                    (*e.object).clone()
                } else {
                    self.delete_key(k, e, req.now)
                }
            })
            .collect();
        Ok(Reply::ok(self.list_body(
            &req.path.gvr,
            self.rv,
            items,
            None,
            None,
        )))
    }

    fn event_line(out: &mut Vec<u8>, ty: &str, object: &Value) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
            object: &'a Value,
        }
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &Line { ty, object });
        out.push(b'\n');
    }

    /// Starts a watch. `from` is `None` for an unset/"0" resourceVersion or with
    /// `sendInitialEvents`: then every current match is sent as ADDED first.
    /// Returns the initial lines and the cursor RV, or 410 Expired for a too-old RV.
    pub fn watch_init(
        &self,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<(Vec<u8>, u64), ApiError> {
        let mut out = Vec::new();
        match from {
            None => {
                for (_, e) in self.matching(filter, None) {
                    Self::event_line(&mut out, "ADDED", &e.object);
                }
                Ok((out, self.rv))
            }
            Some(rv) => self.events_since(rv, filter),
        }
    }

    /// Serialised events after `cursor` that `filter` sees, and the new cursor.
    /// A selector watcher sees an object that stops matching as DELETED, one that starts
    /// matching as ADDED (real server behaviour).
    pub fn events_since(&self, cursor: u64, filter: &Filter) -> Result<(Vec<u8>, u64), ApiError> {
        if cursor < self.history_start {
            return Err(ApiError::expired(cursor, self.history_start));
        }
        let mut out = Vec::new();
        let first = self.history.partition_point(|e| e.rv <= cursor);
        for ev in self.history.range(first..) {
            if !filter.in_scope(&ev.key) {
                continue;
            }
            let now_matches = filter.matches(&ev.object);
            match ev.ty {
                EventType::Added if now_matches => Self::event_line(&mut out, "ADDED", &ev.object),
                EventType::Deleted if now_matches => {
                    Self::event_line(&mut out, "DELETED", &ev.object);
                }
                EventType::Modified => {
                    let was = ev.prev.as_deref().is_some_and(|p| filter.matches(p));
                    match (was, now_matches) {
                        (true, true) => Self::event_line(&mut out, "MODIFIED", &ev.object),
                        (false, true) => Self::event_line(&mut out, "ADDED", &ev.object),
                        (true, false) => {
                            let mut last = ev.prev.as_deref().cloned().unwrap_or_default();
                            Self::set_rv(&mut last, ev.rv);
                            Self::event_line(&mut out, "DELETED", &last);
                        }
                        (false, false) => {}
                    }
                }
                _ => {}
            }
        }
        Ok((out, self.rv.max(cursor)))
    }

    /// A BOOKMARK line at `rv`, optionally marking the end of initial events.
    pub fn bookmark_line(&self, gvr: &Gvr, rv: u64, initial_end: bool) -> Vec<u8> {
        let mut md = json!({ "resourceVersion": rv.to_string() });
        if initial_end {
            md["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let obj =
            json!({ "kind": self.kind(gvr), "apiVersion": gvr.api_version(), "metadata": md });
        let mut out = Vec::new();
        Self::event_line(&mut out, "BOOKMARK", &obj);
        out
    }

    /// An ERROR line carrying a Status (e.g. 410 Expired).
    pub fn error_line(err: &ApiError) -> Vec<u8> {
        let mut out = Vec::new();
        Self::event_line(&mut out, "ERROR", &err.to_status());
        out
    }
}

fn manager_key(manager: String, p: &ResourcePath) -> ManagerKey {
    ManagerKey {
        manager,
        subresource: p.subresource.clone().unwrap_or_default(),
    }
}

fn conflicts_error(c: &[ssa::Conflict]) -> ApiError {
    let pairs: Vec<(String, String)> = c
        .iter()
        .map(|c| (c.manager.clone(), ssa::format_path(&c.path)))
        .collect();
    ApiError::apply_conflict(&pairs)
}

/// Opaque continue token: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"ns/name"}`,
/// shaped like the real server's.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    B64.encode(
        json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}") }).to_string(),
    )
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = B64.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let (ns, name) = v
        .get("start")
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('/'))
        .ok_or_else(bad)?;
    Ok((rv, ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{Route, parse};

    struct T {
        store: Store,
    }

    impl T {
        fn new() -> Self {
            Self {
                store: Store::new(100),
            }
        }

        fn call(
            &mut self,
            verb: Verb,
            url: &str,
            ct: Option<&str>,
            body: Value,
        ) -> Result<Reply, ApiError> {
            let (path, q) = url.split_once('?').unwrap_or((url, ""));
            let query: HashMap<String, String> =
                form_urlencoded::parse(q.as_bytes()).into_owned().collect();
            let Route::Resource(rp) = parse(path) else {
                panic!("not a resource path: {path}");
            };
            let body = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            self.store.handle(&Request {
                verb,
                path: &rp,
                query: &query,
                content_type: ct,
                body: &body,
                now: SystemTime::UNIX_EPOCH,
            })
        }

        fn ok(&mut self, verb: Verb, url: &str, ct: Option<&str>, body: Value) -> Value {
            match self.call(verb, url, ct, body) {
                Ok(r) => r.body,
                Err(e) => panic!("{verb:?} {url}: {e:?}"),
            }
        }

        fn err(&mut self, verb: Verb, url: &str, ct: Option<&str>, body: Value) -> ApiError {
            self.call(verb, url, ct, body).expect_err(url)
        }
    }

    const SVCS: &str = "/api/v1/namespaces/default/services";
    const MERGE: Option<&str> = Some("application/merge-patch+json");
    const APPLY: Option<&str> = Some("application/apply-patch+yaml");

    fn svc(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    }

    #[test]
    fn create_fills_metadata_and_rejects_duplicates() {
        let mut t = T::new();
        let s = t.ok(Verb::Post, SVCS, None, svc("a", json!({})));
        assert_eq!(s["kind"], "Service");
        assert_eq!(s["apiVersion"], "v1");
        assert_eq!(s["metadata"]["namespace"], "default");
        assert!(
            s["metadata"].get("generation").is_none(),
            "Services carry no generation"
        );
        assert_eq!(s["metadata"]["creationTimestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(s["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(s["metadata"]["resourceVersion"], "2");
        let e = t.err(Verb::Post, SVCS, None, svc("a", json!({})));
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = t.err(Verb::Post, SVCS, None, json!({"spec": {}}));
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        let e = t.err(
            Verb::Post,
            SVCS,
            None,
            json!({"metadata": {"name": "b", "namespace": "other"}}),
        );
        assert_eq!(e.code, 400);
        let g = t.ok(
            Verb::Post,
            SVCS,
            None,
            json!({"metadata": {"generateName": "gen-"}}),
        );
        let n = g["metadata"]["name"].as_str().unwrap();
        assert!(n.starts_with("gen-") && n.len() == 9, "{n}");
        let dry = t.ok(
            Verb::Post,
            &format!("{SVCS}?dryRun=All"),
            None,
            svc("dry", json!({})),
        );
        assert_eq!(dry["metadata"]["name"], "dry");
        assert_eq!(
            t.err(Verb::Get, &format!("{SVCS}/dry"), None, Value::Null)
                .code,
            404
        );
    }

    #[test]
    fn replace_checks_rv_and_guards_status() {
        let mut t = T::new();
        let s = t.ok(Verb::Post, SVCS, None, svc("a", json!({})));
        let rv = s["metadata"]["resourceVersion"].clone();
        let mut st = s.clone();
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}});
        let s2 = t.ok(Verb::Put, &format!("{SVCS}/a/status"), None, st);
        assert_eq!(
            s2["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.1"
        );

        // Stale RV → Conflict with the real message.
        let e = t.err(Verb::Put, &format!("{SVCS}/a"), None, s.clone());
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on services \"a\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_ne!(rv, s2["metadata"]["resourceVersion"]);

        // Main PUT cannot touch status.
        let mut upd = s2.clone();
        upd["spec"]["ports"][0]["port"] = json!(81);
        upd["status"] = json!({});
        let s3 = t.ok(Verb::Put, &format!("{SVCS}/a"), None, upd);
        assert_eq!(
            s3["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.1"
        );
        assert_eq!(s3["metadata"]["uid"], s["metadata"]["uid"]);

        // No-op update keeps the RV.
        let s4 = t.ok(Verb::Put, &format!("{SVCS}/a"), None, s3.clone());
        assert_eq!(
            s4["metadata"]["resourceVersion"],
            s3["metadata"]["resourceVersion"]
        );

        // Resources without status have no /status.
        t.ok(
            Verb::Post,
            "/api/v1/namespaces/default/configmaps",
            None,
            json!({"metadata": {"name": "c"}}),
        );
        let e = t.err(
            Verb::Get,
            "/api/v1/namespaces/default/configmaps/c/status",
            None,
            Value::Null,
        );
        assert_eq!(e.code, 404);
    }

    #[test]
    fn patches() {
        let mut t = T::new();
        t.ok(Verb::Post, SVCS, None, svc("a", json!({"x": "1"})));
        let s = t.ok(
            Verb::Patch,
            &format!("{SVCS}/a"),
            MERGE,
            json!({"metadata": {"labels": {"y": "2", "x": null}}, "status": {"bogus": 1}}),
        );
        assert_eq!(s["metadata"]["labels"], json!({"y": "2"}));
        assert!(s.get("status").is_none(), "main patch cannot set status");
        let s = t.ok(
            Verb::Patch,
            &format!("{SVCS}/a/status"),
            MERGE,
            json!({"status": {"ok": true}, "spec": {"type": "X"}}),
        );
        assert_eq!(s["status"]["ok"], true);
        assert_eq!(
            s["spec"]["type"], "LoadBalancer",
            "status patch cannot set spec"
        );
        let e = t.err(
            Verb::Patch,
            &format!("{SVCS}/a"),
            MERGE,
            json!({"metadata": {"resourceVersion": "1"}}),
        );
        assert_eq!(e.code, 409);
        let s = t.ok(
            Verb::Patch,
            &format!("{SVCS}/a"),
            Some("application/json-patch+json"),
            json!([{"op": "add", "path": "/spec/ports/-", "value": {"port": 443}}]),
        );
        assert_eq!(s["spec"]["ports"][1]["port"], 443);
        let e = t.err(
            Verb::Patch,
            &format!("{SVCS}/a"),
            Some("application/json-patch+json"),
            json!([{"op": "test", "path": "/spec/ports/0/port", "value": 1}]),
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            t.err(Verb::Patch, &format!("{SVCS}/zz"), MERGE, json!({}))
                .code,
            404
        );
        assert_eq!(
            t.err(
                Verb::Patch,
                &format!("{SVCS}/a"),
                Some("text/plain"),
                json!({})
            )
            .code,
            415
        );
    }

    #[test]
    fn apply_tracks_managers() {
        let mut t = T::new();
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let url = "/api/v1/namespaces/default/configmaps/c";
        let e = t.err(Verb::Patch, url, APPLY, cfg.clone());
        assert_eq!(
            (e.code, e.reason),
            (422, "Invalid"),
            "fieldManager required"
        );
        assert_eq!(
            e.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let c = t
            .call(
                Verb::Patch,
                &format!("{url}?fieldManager=a"),
                APPLY,
                cfg.clone(),
            )
            .unwrap();
        assert_eq!(c.code, 201);
        let mut other = cfg.clone();
        other["data"]["k"] = json!("w");
        let e = t.err(
            Verb::Patch,
            &format!("{url}?fieldManager=b"),
            APPLY,
            other.clone(),
        );
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"a\": .data.k"
        );
        let c = t.ok(
            Verb::Patch,
            &format!("{url}?fieldManager=b&force=true"),
            APPLY,
            other,
        );
        assert_eq!(c["data"]["k"], "w");
        // A merge patch by `m` makes `m` the owner: a later apply by `a` conflicts with it.
        t.ok(
            Verb::Patch,
            &format!("{url}?fieldManager=m"),
            MERGE,
            json!({"data": {"j": "1"}}),
        );
        let mut cfg2 = cfg.clone();
        cfg2["data"] = json!({"j": "2"});
        let e = t.err(Verb::Patch, &format!("{url}?fieldManager=a"), APPLY, cfg2);
        assert!(
            e.message.contains("conflict with \"m\": .data.j"),
            "{}",
            e.message
        );
        // YAML bodies are accepted.
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: b\n";
        let query = HashMap::from([("fieldManager".to_string(), "y".to_string())]);
        let Route::Resource(rp) = parse("/api/v1/namespaces/default/configmaps/y") else {
            panic!()
        };
        let r = t
            .store
            .handle(&Request {
                verb: Verb::Patch,
                path: &rp,
                query: &query,
                content_type: APPLY,
                body: yaml.as_bytes(),
                now: SystemTime::UNIX_EPOCH,
            })
            .unwrap();
        assert_eq!(r.body["data"]["a"], "b");
    }

    #[test]
    fn list_selectors_and_pages() {
        let mut t = T::new();
        for i in 0..5 {
            let tier = if i % 2 == 0 { "even" } else { "odd" };
            t.ok(
                Verb::Post,
                SVCS,
                None,
                svc(&format!("s{i}"), json!({"tier": tier})),
            );
        }
        t.ok(
            Verb::Post,
            "/api/v1/namespaces/other/services",
            None,
            svc("o", json!({})),
        );
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let all = t.ok(Verb::Get, "/api/v1/services", None, Value::Null);
        assert_eq!(all["kind"], "ServiceList");
        assert_eq!(names(&all).len(), 6);
        let even = t.ok(
            Verb::Get,
            &format!("{SVCS}?labelSelector=tier%3Deven"),
            None,
            Value::Null,
        );
        assert_eq!(names(&even), ["s0", "s2", "s4"]);
        let named = t.ok(
            Verb::Get,
            "/api/v1/services?fieldSelector=metadata.namespace%3Dother",
            None,
            Value::Null,
        );
        assert_eq!(names(&named), ["o"]);
        assert_eq!(
            t.err(
                Verb::Get,
                &format!("{SVCS}?labelSelector=a%20in"),
                None,
                Value::Null
            )
            .code,
            400
        );
        assert_eq!(
            t.err(
                Verb::Get,
                &format!("{SVCS}?fieldSelector=spec.x%3D1"),
                None,
                Value::Null
            )
            .code,
            400
        );

        let p1 = t.ok(Verb::Get, &format!("{SVCS}?limit=2"), None, Value::Null);
        assert_eq!(names(&p1), ["s0", "s1"]);
        assert_eq!(p1["metadata"]["remainingItemCount"], 3);
        let c = p1["metadata"]["continue"].as_str().unwrap().to_string();
        t.ok(Verb::Delete, &format!("{SVCS}/s2"), None, Value::Null);
        let p2 = t.ok(
            Verb::Get,
            &format!("{SVCS}?limit=2&continue={c}"),
            None,
            Value::Null,
        );
        assert_eq!(names(&p2), ["s3", "s4"]);
        assert_eq!(
            p2["metadata"]["resourceVersion"],
            p1["metadata"]["resourceVersion"]
        );
        assert!(p2["metadata"].get("continue").is_none());
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut t = T::new();
        let mut s = svc("f", json!({}));
        s["metadata"]["finalizers"] = json!(["example.com/x"]);
        t.ok(Verb::Post, SVCS, None, s);
        let d = t.ok(Verb::Delete, &format!("{SVCS}/f"), None, Value::Null);
        assert!(d["metadata"]["deletionTimestamp"].is_string());
        t.ok(Verb::Get, &format!("{SVCS}/f"), None, Value::Null);
        t.ok(
            Verb::Patch,
            &format!("{SVCS}/f"),
            MERGE,
            json!({"metadata": {"finalizers": null}}),
        );
        assert_eq!(
            t.err(Verb::Get, &format!("{SVCS}/f"), None, Value::Null)
                .code,
            404
        );
    }

    #[test]
    fn delete_preconditions_and_namespace_cascade() {
        let mut t = T::new();
        t.ok(
            Verb::Post,
            "/api/v1/namespaces",
            None,
            json!({"metadata": {"name": "ns1"}}),
        );
        t.ok(
            Verb::Post,
            "/api/v1/namespaces/ns1/services",
            None,
            svc("a", json!({})),
        );
        let e = t.err(
            Verb::Delete,
            "/api/v1/namespaces/ns1/services/a",
            None,
            json!({"preconditions": {"uid": "nope"}}),
        );
        assert_eq!(e.code, 409);
        t.ok(Verb::Delete, "/api/v1/namespaces/ns1", None, Value::Null);
        assert_eq!(
            t.err(
                Verb::Get,
                "/api/v1/namespaces/ns1/services/a",
                None,
                Value::Null
            )
            .code,
            404
        );
    }

    #[test]
    fn watch_history_selectors_and_expiry() {
        let mut t = T::new();
        let start = t.store.resource_version();
        t.ok(Verb::Post, SVCS, None, svc("a", json!({"app": "x"})));
        t.ok(
            Verb::Patch,
            &format!("{SVCS}/a"),
            MERGE,
            json!({"metadata": {"labels": {"app": "y"}}}),
        );
        t.ok(
            Verb::Patch,
            &format!("{SVCS}/a"),
            MERGE,
            json!({"metadata": {"labels": {"app": "x"}}}),
        );
        t.ok(Verb::Delete, &format!("{SVCS}/a"), None, Value::Null);
        let Route::Resource(rp) = parse(SVCS) else {
            panic!()
        };
        let q = HashMap::from([("labelSelector".to_string(), "app=x".to_string())]);
        let f = Filter::new(&rp, &q).unwrap();
        let (lines, cursor) = t.store.events_since(start, &f).unwrap();
        let types: Vec<String> = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(types, ["ADDED", "DELETED", "ADDED", "DELETED"]);
        assert_eq!(cursor, t.store.resource_version());
        t.store.compact();
        let e = t.store.events_since(start, &f).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        assert!(t.store.events_since(cursor, &f).is_ok());
    }

    const POOLS: &str = "/apis/ferrolb.io/v1alpha1/ipaddresspools";

    /// Registers a CRD for `ipaddresspools.ferrolb.io` with a small schema.
    fn register_pool_crd(t: &mut T) {
        t.ok(
            Verb::Post,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            None,
            json!({
                "metadata": {"name": "ipaddresspools.ferrolb.io"},
                "spec": {"group": "ferrolb.io", "scope": "Cluster",
                    "names": {"kind": "IPAddressPool", "plural": "ipaddresspools"},
                    "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object", "required": ["spec"],
                            "properties": {
                                "spec": {"type": "object", "required": ["addresses"], "properties": {
                                    "addresses": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                    "autoAssign": {"type": "boolean", "default": true}}},
                                "status": {"type": "object", "properties": {
                                    "assignedIPv4": {"type": "integer", "default": 0},
                                    "observedGeneration": {"type": "integer"}}}}}}}]}
            }),
        );
    }

    #[test]
    fn registered_crds_prune_default_and_validate() {
        let mut t = T::new();
        let body = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "p"}, "spec": {"addresses": ["203.0.113.0/28"], "bogus": 1}});
        // Before the CRD exists, objects are stored as sent.
        let raw = t.ok(Verb::Post, POOLS, None, body.clone());
        assert_eq!(raw["spec"]["bogus"], 1);
        assert!(raw["spec"].get("autoAssign").is_none());
        t.ok(Verb::Delete, &format!("{POOLS}/p"), None, Value::Null);

        register_pool_crd(&mut t);
        let p = t.ok(Verb::Post, POOLS, None, body);
        assert_eq!(
            p["spec"],
            json!({"addresses": ["203.0.113.0/28"], "autoAssign": true})
        );
        assert_eq!(p["metadata"]["generation"], 1);
        let s = t.ok(
            Verb::Patch,
            &format!("{POOLS}/p/status"),
            MERGE,
            json!({"status": {"observedGeneration": 1, "x": 1}}),
        );
        assert_eq!(
            s["status"],
            json!({"assignedIPv4": 0, "observedGeneration": 1})
        );
        assert_eq!(s["metadata"]["generation"], 1, "status leaves generation");
        let e = t.err(
            Verb::Patch,
            &format!("{POOLS}/p"),
            MERGE,
            json!({"spec": {"autoAssign": "yes"}}),
        );
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "IPAddressPool.ferrolb.io \"p\" is invalid: spec.autoAssign: Invalid value: \"string\": spec.autoAssign in body must be of type boolean: \"string\""
        );
        let e = t.err(
            Verb::Post,
            POOLS,
            None,
            json!({"metadata": {"name": "q"}, "spec": {"addresses": []}}),
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["field"],
            "spec.addresses"
        );
        // A spec change bumps generation; removing a defaulted field brings the default back.
        let p = t.ok(
            Verb::Patch,
            &format!("{POOLS}/p"),
            MERGE,
            json!({"spec": {"autoAssign": false}}),
        );
        assert_eq!(p["metadata"]["generation"], 2);
        let rv = p["metadata"]["resourceVersion"].clone();
        let p = t.ok(
            Verb::Patch,
            &format!("{POOLS}/p"),
            MERGE,
            json!({"spec": {"autoAssign": null}}),
        );
        assert_eq!(
            (
                p["spec"]["autoAssign"].clone(),
                p["metadata"]["generation"].clone()
            ),
            (json!(true), json!(3))
        );
        assert_ne!(p["metadata"]["resourceVersion"], rv);
    }

    #[test]
    fn service_status_is_defaulted_and_validated() {
        let mut t = T::new();
        t.ok(Verb::Post, SVCS, None, svc("a", json!({})));
        let st = |ingress: Value| json!({"status": {"loadBalancer": {"ingress": ingress}}});
        let s = t.ok(
            Verb::Patch,
            &format!("{SVCS}/a/status"),
            MERGE,
            st(json!([{"ip": "203.0.113.1"}])),
        );
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.1", "ipMode": "VIP"}])
        );
        let e = t.err(
            Verb::Patch,
            &format!("{SVCS}/a/status"),
            MERGE,
            st(json!([{"ip": "not-an-ip"}])),
        );
        assert_eq!(
            e.message,
            "Service \"a\" is invalid: status.loadBalancer.ingress[0].ip: Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 203.0.113.7 or 2001:db8::ffff)"
        );
        assert_eq!(
            e.to_status()["details"],
            json!({"name": "a", "kind": "Service", "causes": [{
                "reason": "FieldValueInvalid", "field": "status.loadBalancer.ingress[0].ip",
                "message": "Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 203.0.113.7 or 2001:db8::ffff)"}]})
        );
        // The stored object did not change.
        let s = t.ok(Verb::Get, &format!("{SVCS}/a"), None, Value::Null);
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.1"
        );
        // Leaving type LoadBalancer clears the load-balancer status.
        let s = t.ok(
            Verb::Patch,
            &format!("{SVCS}/a"),
            MERGE,
            json!({"spec": {"type": "ClusterIP"}}),
        );
        assert_eq!(s["status"]["loadBalancer"], json!({}));
        let e = t.err(
            Verb::Patch,
            &format!("{SVCS}/a/status"),
            MERGE,
            st(json!([{"ip": "203.0.113.1"}])),
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["reason"],
            "FieldValueForbidden"
        );
    }

    #[test]
    fn reads_at_a_future_resource_version() {
        let mut t = T::new();
        t.ok(Verb::Post, SVCS, None, svc("a", json!({})));
        let future = t.store.resource_version() + 10;
        for url in [
            format!("{SVCS}?resourceVersion={future}"),
            format!("{SVCS}/a?resourceVersion={future}"),
        ] {
            let e = t.err(Verb::Get, &url, None, Value::Null);
            assert_eq!((e.code, e.reason, e.retry_after), (504, "Timeout", Some(1)));
            assert_eq!(
                e.message,
                format!(
                    "Timeout: Too large resource version: {future}, current: {}",
                    t.store.resource_version()
                )
            );
        }
        t.ok(
            Verb::Get,
            &format!("{SVCS}?resourceVersion=0"),
            None,
            Value::Null,
        );
        // A watch from the future waits silently, as the real one: no error, and events
        // below the requested RV are never sent.
        let Route::Resource(rp) = parse(SVCS) else {
            panic!()
        };
        let f = Filter::new(&rp, &HashMap::new()).unwrap();
        t.ok(Verb::Delete, &format!("{SVCS}/a"), None, Value::Null);
        let (lines, cursor) = t.store.events_since(future, &f).unwrap();
        assert!(lines.is_empty());
        assert_eq!(cursor, future);
    }

    #[test]
    fn kinds() {
        assert_eq!(guess_kind("widgets"), "Widget");
        assert_eq!(guess_kind("policies"), "Policy");
        assert_eq!(guess_kind("addresses"), "Address");
        assert_eq!(builtin_kind("endpointslices"), Some("EndpointSlice"));
    }
}
