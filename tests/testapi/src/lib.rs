//! An in-memory stand-in for kube-apiserver, for FerroLB's integration tests and lab.
//! Test support only — never part of the product.
//!
//! It speaks the Kubernetes REST conventions kube-rs (client, watcher, reflector) relies on,
//! over plain HTTP with no authentication, for any group/version/resource:
//!
//! ```text
//! GET    /version  /api  /apis  /api/v1  /apis/{g}/{v}  /healthz        discovery (minimal)
//! GET    {base}/{plural}                       list (labelSelector, fieldSelector, limit, continue)
//! GET    {base}/{plural}?watch=true            watch (resourceVersion, allowWatchBookmarks,
//!                                               sendInitialEvents, timeoutSeconds)
//! POST   {base}/{plural}                       create (generateName, dryRun=All)
//! DELETE {base}/{plural}                       deletecollection (selectors)
//! GET    {base}/{plural}/{name}[/status]       get
//! PUT    {base}/{plural}/{name}[/status]       replace (409 on stale resourceVersion)
//! PATCH  {base}/{plural}/{name}[/status]       merge, strategic (as merge), JSON patch, apply
//! DELETE {base}/{plural}/{name}                delete (finalizers, preconditions)
//!   {base} = /api/v1[/namespaces/{ns}] or /apis/{group}/{version}[/namespaces/{ns}]
//! POST   /_testapi/{compact,close-watches,freeze,unfreeze,fail?n=&code=,reset-counts}
//! GET    /_testapi/counts                      test controls for out-of-process use (lab)
//! ```
//!
//! Faithful where FerroLB depends on it, and checked against a real kube-apiserver by
//! `tests/differential.rs`: Service status validation and defaulting (`service`), CRD
//! schemas once the CRD is registered (`schema`), `metadata.generation` only on kinds that
//! have one, 422 for server-side apply without `fieldManager`, 504 for reads at a future
//! resourceVersion.
//!
//! Simplifications versus the real server (each is also noted where it is implemented):
//! - scope is inferred from the path (`namespaces/{ns}/` = namespaced); objects are keyed by
//!   (group, version, plural, namespace, name), so versions of one group do not share storage;
//!   a cluster-wide path clears `metadata.namespace`; the system Namespaces (`default`,
//!   `kube-system`, `kube-public`, `kube-node-lease`) exist from the start, but others need
//!   not exist before objects are created in them (the real server answers 404);
//! - no per-kind defaulting or validation beyond metadata (names must be RFC 1123
//!   subdomains), except: a Service's status (ingress IPs, `ipMode` defaulted to VIP and
//!   checked, conditions stored with every field but not validated, as the real server,
//!   though `lastTransitionTime` is kept as written where the real one rewrites it in UTC
//!   seconds; leaving type LoadBalancer clears `status.loadBalancer`), and custom resources whose
//!   CRD was created here (pruning, schema defaults, OpenAPI validation — but no CEL rules,
//!   no ratcheting). Services get no clusterIP, ipFamilies, port protocols or nodePorts;
//!   on create, `.status` is dropped for resources with a status subresource (except
//!   Nodes) and Namespaces start `Active`;
//! - every resource has a `/status` subresource except events, leases, endpointslices,
//!   endpoints, secrets, configmaps, serviceaccounts and RBAC kinds;
//! - list/get `resourceVersion` newer than the store's answers 504 at once (the real
//!   server waits 3 s first); any other `resourceVersion`/`resourceVersionMatch` is
//!   ignored (current state is served); continued pages read current state but report
//!   the first page's RV;
//! - field selectors support `metadata.name`, `metadata.namespace` and a few per-kind fields;
//! - strategic merge patch is a plain merge patch (lists replaced, no `$patch` directives);
//! - server-side apply infers list semantics from field names (see `ssa`), keeps ownership
//!   in a side table and does not emit `metadata.managedFields`; conflict messages omit the
//!   "using {apiVersion}" part; an apply to a custom resource with fields its schema lacks
//!   is pruned (the real server answers 500);
//! - no create-on-update, unconditional updates are always allowed, no admission, no RBAC,
//!   no ownerReferences garbage collection; deleting a Namespace deletes its contents at once;
//! - writes that change nothing (no-ops) neither bump the RV nor emit an event, even when
//!   only field ownership changed;
//! - watch history is a bounded ring (default 10 000 events); `compact()` empties it.

mod patch;
mod path;
mod schema;
mod selector;
mod server;
mod service;
mod ssa;
mod status;
mod store;
mod util;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::Shared;
use crate::store::Store;

/// Tunables of a [`TestApi`]; `Default` suits tests.
#[derive(Debug, Clone)]
pub struct TestApiConfig {
    /// Interval between BOOKMARK events on watches with `allowWatchBookmarks=true` (1 s).
    pub bookmark_interval: Duration,
    /// Watch events retained for resuming watches; older RVs get 410 Expired (10 000).
    pub history_limit: usize,
}

impl Default for TestApiConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            history_limit: 10_000,
        }
    }
}

/// Write requests received, by verb (counted on arrival, whatever their outcome).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// POST requests.
    pub create: u64,
    /// PUT requests.
    pub update: u64,
    /// PATCH requests.
    pub patch: u64,
    /// DELETE requests.
    pub delete: u64,
}

impl WriteCounts {
    /// All write requests together.
    pub fn total(&self) -> u64 {
        self.create + self.update + self.patch + self.delete
    }
}

/// A running fake API server; dropping it (or [`TestApi::shutdown`]) stops serving.
pub struct TestApi {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApi")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl TestApi {
    /// Serves plain HTTP on `addr` (port 0 picks a free port) with default settings.
    pub async fn start(addr: SocketAddr) -> std::io::Result<TestApi> {
        Self::start_with(addr, TestApiConfig::default()).await
    }

    /// Serves plain HTTP on `addr` with the given settings.
    pub async fn start_with(addr: SocketAddr, config: TestApiConfig) -> std::io::Result<TestApi> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut store = Store::new(config.history_limit);
        store.create_system_namespaces();
        let rv = store.resource_version();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            config,
            rv_tx: watch::Sender::new(rv),
            frozen: watch::Sender::new(false),
            close_gen: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            fail: Mutex::new((0, 500)),
            requests: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            patches: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            addr,
        });
        let accept = tokio::spawn(server::accept_loop(listener, shared.clone()));
        tracing::info!(%addr, "ferrolb-testapi listening");
        Ok(TestApi {
            shared,
            accept: Some(accept),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The base URL clients should use, e.g. `http://127.0.0.1:40123`
    /// (an unspecified bind address is reached through loopback).
    pub fn url(&self) -> String {
        let mut a = self.shared.addr;
        match a.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => a.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(ip) if ip.is_unspecified() => a.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            _ => {}
        }
        format!("http://{a}")
    }

    /// A kubeconfig (context `ferrolb-testapi`, no auth) pointing at this server.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: ferrolb-testapi\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: ferrolb-testapi\n  user: {{}}\n\
             contexts:\n\
             - name: ferrolb-testapi\n  context:\n    cluster: ferrolb-testapi\n    user: ferrolb-testapi\n    namespace: default\n\
             current-context: ferrolb-testapi\n\
             preferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`TestApi::kubeconfig_yaml`] to `path` atomically (temp file + rename),
    /// creating parent directories.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.kubeconfig_yaml())?;
        std::fs::rename(&tmp, path)
    }

    /// Stops accepting, closes every connection and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(h) = self.accept.take() {
            let _ = h.await;
        }
    }

    /// Forgets all watch history: a watch from any older resourceVersion gets 410 Gone
    /// (open watches keep streaming, as after an etcd compaction).
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch stream cleanly (as an apiserver restart would); clients
    /// re-watch from the last resourceVersion they saw.
    pub fn close_watches(&self) {
        self.shared.close_gen.send_modify(|g| *g += 1);
    }

    /// The next `n` non-watch requests fail with `status_code` and a matching Status
    /// (429 carries `Retry-After: 1`). Replaces any pending injection.
    pub fn fail_next(&self, n: u32, status_code: u16) {
        self.shared.set_fail(n, status_code);
    }

    /// While frozen, requests hang and open watches deliver nothing (an unreachable server).
    pub fn set_frozen(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }

    /// All API requests received (including reads and watches; not `/_testapi/` controls).
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Write requests received, by verb.
    pub fn write_counts(&self) -> WriteCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WriteCounts {
            create: l(&self.shared.creates),
            update: l(&self.shared.updates),
            patch: l(&self.shared.patches),
            delete: l(&self.shared.deletes),
        }
    }

    /// Zeroes the request and write counters (e.g. after test setup).
    pub fn reset_counts(&self) {
        for c in [
            &self.shared.requests,
            &self.shared.creates,
            &self.shared.updates,
            &self.shared.patches,
            &self.shared.deletes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// A stored object by API path (e.g. `/api/v1/namespaces/default/services/web`),
    /// read directly, bypassing HTTP, freezing and fault injection.
    pub fn object(&self, api_path: &str) -> Option<serde_json::Value> {
        match path::parse(api_path) {
            path::Route::Resource(rp) => self.shared.store().object(&rp),
            _ => None,
        }
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}
