//! The FerroLB controller: allocates external IPs for LoadBalancer Services from
//! IPAddressPools and publishes them in `status.loadBalancer.ingress`.
//!
//! ```text
//!   watch pools, L2Advertisements, Services, Namespaces
//!        │ events
//!        ▼
//!   Index (pure: caches + Allocator) ──reconcile──▶ [Update] ──▶ Writer ──▶ status patches, Events
//!        ▲ start/stop_leading                                       │ each call: Fence valid now?
//!   lease::spawn ── leading? ── Fence (valid until last renewal + renew deadline) ─┘
//! ```
//!
//! The allocator ([`allocator`]) and the state machine ([`index`]) are pure; this module
//! wires them to kube-runtime watchers, the leader lease and the writer.
//!
//! Handover: a replica that wins the lease re-lists every kind (quorum reads) before it
//! leads, so its view includes every write of the previous term — which ended before the
//! lease could change hands: a graceful leader releases only after its writes stopped, a
//! crashed or frozen one stopped writing at its renew deadline ([`lease`]).

pub mod announced;
pub mod lease;
pub mod metrics;
pub mod secret;
pub mod writer;

/// The pure core (allocator, index), in its own crate so Cargo keeps it free of I/O.
pub use ferrolb_controller_core::{allocator, index, pool, service};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use ferrolb_ops::relist::{Op, Relist};
use kube::runtime::WatchStreamExt;

use crate::index::Index;
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::writer::Writer;

/// How the controller runs (the binary fills it from flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// The `spec.loadBalancerClass` served besides "no class".
    pub lb_class: String,
    /// Namespace of the leader Lease.
    pub lease_namespace: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Election timing.
    pub timing: lease::Timing,
}

/// The API clients of one controller.
#[derive(Clone)]
pub struct Clients {
    /// Watches and the leader Lease.
    pub api: Client,
    /// Status writes and Events. Best bound to `fence` at the transport
    /// (`ferrolb_ops::client::fenced_client(fence.gate())`), so that not even a call decided
    /// just before the process froze leaves it after the lease ran out.
    pub writes: Client,
    /// The fence the election keeps and the writer obeys.
    pub fence: Arc<Fence>,
}

impl Clients {
    /// One client for everything (the writer still checks the fence before every call).
    pub fn shared(client: Client) -> Self {
        Self {
            api: client.clone(),
            writes: client,
            fence: Arc::default(),
        }
    }
}

/// One watched object change, from any of the four watchers (moved once; size is moot).
#[allow(clippy::large_enum_variant)]
enum Change {
    Pool(Event<IPAddressPool>),
    Advertisement(Event<L2Advertisement>),
    Service(Event<Service>),
    Namespace(Event<Namespace>),
}

/// The re-list buffers of the four watchers.
#[derive(Default)]
struct Relists {
    pools: Relist<IPAddressPool>,
    advertisements: Relist<L2Advertisement>,
    services: Relist<Service>,
    namespaces: Relist<Namespace>,
}

fn name<K: kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or_default()
}

/// Applies one change (Services also to the metrics' view of them); returns which kind
/// (0..4) it completed a re-list of, if any.
fn apply_change(
    index: &mut Index,
    relist: &mut Relists,
    change: Change,
    metrics: &Metrics,
    lb_class: &str,
) -> Option<usize> {
    match change {
        Change::Pool(ev) => match relist.pools.fold(ev) {
            Op::Apply(o) => index.apply_pool(o),
            Op::Delete(o) => index.delete_pool(name(&o)),
            Op::Reset(l) => {
                index.reset_pools(l);
                return Some(0);
            }
            Op::Wait => {}
        },
        Change::Advertisement(ev) => match relist.advertisements.fold(ev) {
            Op::Apply(o) => index.apply_advertisement(o),
            Op::Delete(o) => index.delete_advertisement(name(&o)),
            Op::Reset(l) => {
                index.reset_advertisements(l);
                return Some(1);
            }
            Op::Wait => {}
        },
        Change::Service(ev) => match relist.services.fold(ev) {
            Op::Apply(o) => {
                metrics.service_changed(lb_class, &o);
                index.apply_service(o)
            }
            Op::Delete(o) => {
                let key = service::key_of(&o);
                metrics.service_deleted(&key);
                index.delete_service(&key)
            }
            Op::Reset(l) => {
                metrics.services_reset(lb_class, &l);
                index.reset_services(l);
                return Some(2);
            }
            Op::Wait => {}
        },
        Change::Namespace(ev) => match relist.namespaces.fold(ev) {
            Op::Apply(o) => index.apply_namespace(o),
            Op::Delete(o) => index.delete_namespace(name(&o)),
            Op::Reset(l) => {
                index.reset_namespaces(l);
                return Some(3);
            }
            Op::Wait => {}
        },
    }
    None
}

/// The four watchers as one stream. Every (re-)list is a quorum read (`MostRecent`), never
/// the API server's possibly stale cache.
fn watch_all(client: &Client) -> BoxStream<'static, Result<Change, watcher::Error>> {
    let wc = watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    stream::select_all([
        ferrolb_ops::watch::watch(Api::<IPAddressPool>::all(client.clone()), wc.clone())
            .map(|r| r.map(Change::Pool))
            .boxed(),
        ferrolb_ops::watch::watch(Api::<L2Advertisement>::all(client.clone()), wc.clone())
            .map(|r| r.map(Change::Advertisement))
            .boxed(),
        // Reduced as each object arrives, so even a re-list of every Service of the cluster
        // never holds full objects (the index would reduce them anyway).
        ferrolb_ops::watch::watch(Api::<Service>::all(client.clone()), wc.clone())
            .modify(|s: &mut Service| *s = service::slim(std::mem::take(s)))
            .map(|r| r.map(Change::Service))
            .boxed(),
        ferrolb_ops::watch::watch(Api::<Namespace>::all(client.clone()), wc)
            .modify(ferrolb_ops::watch::strip)
            .map(|r| r.map(Change::Namespace))
            .boxed(),
    ])
    .boxed()
}

/// Runs the controller until `stop` becomes true; a leader releases its Lease on the way
/// out, once its writes have stopped. One client for everything: see [`run_with`].
pub async fn run(
    client: Client,
    config: Config,
    index: Arc<Mutex<Index>>,
    metrics: Metrics,
    health: Arc<ferrolb_ops::Health>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_with(
        Clients::shared(client),
        config,
        index,
        metrics,
        health,
        stop,
    )
    .await
}

/// [`run`] with separate clients for watching and writing.
pub async fn run_with(
    clients: Clients,
    config: Config,
    index: Arc<Mutex<Index>>,
    metrics: Metrics,
    health: Arc<ferrolb_ops::Health>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut changes = watch_all(&clients.api);
    let (mut leading, election) = lease::spawn(
        clients.api.clone(),
        &config.lease_namespace,
        &config.lease_name,
        config.identity.clone(),
        config.timing.clone(),
        clients.fence.clone(),
        stop.clone(),
    );
    let writer = Writer::new(
        clients.writes,
        config.identity.clone(),
        metrics.clone(),
        clients.fence.clone(),
        &config.timing,
    );
    // The Announced conditions, folded from the speakers' NodeAnnouncements.
    let services_changed = Arc::new(tokio::sync::Notify::new());
    let _announced = AbortOnDrop(tokio::spawn(announced::run(
        clients.api.clone(),
        config.lease_namespace.clone(),
        index.clone(),
        writer.clone(),
        metrics.clone(),
        services_changed.clone(),
        stop.clone(),
    )));
    let mut relist = Relists::default();
    // While Some: this replica won the lease and waits for these kinds' fresh re-lists
    // before it leads (pools, advertisements, Services, namespaces).
    let mut relisting: Option<[bool; 4]> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { break }
            }
            r = leading.changed() => {
                if r.is_err() { break }
                let now_leading = *leading.borrow_and_update();
                if now_leading {
                    // Won the lease (perhaps lost and won again since the last look): re-list
                    // everything (quorum reads, after the win) so the caches hold every write
                    // of the previous term before the first write of this one. Until then the
                    // index does not lead.
                    tracing::info!("won the leader lease; re-listing before leading");
                    index.lock().expect("index lock").stop_leading();
                    changes = watch_all(&clients.api);
                    relist = Relists::default();
                    relisting = Some([false; 4]);
                } else {
                    relisting = None;
                    index.lock().expect("index lock").stop_leading();
                    metrics.set_leader(false);
                }
            }
            Some(change) = changes.next() => {
                let mut idx = index.lock().expect("index lock");
                let mut next = Some(change);
                // Drain whatever else is ready so a burst becomes one reconcile round.
                for _ in 0..1000 {
                    match next.take() {
                        Some(Ok(c)) => {
                            if let (Some(kind), Some(seen)) =
                                (apply_change(&mut idx, &mut relist, c, &metrics, &config.lb_class), relisting.as_mut())
                            {
                                seen[kind] = true;
                            }
                        }
                        Some(Err(e)) => {
                            metrics.api_error("watch");
                            tracing::warn!(error = %e, "watch failed; the watcher retries with backoff");
                        }
                        None => break,
                    }
                    next = changes.next().now_or_never().flatten();
                }
                if relisting.is_some_and(|seen| seen.iter().all(|s| *s)) {
                    relisting = None;
                    tracing::info!(identity = %config.identity, "caches re-listed; leading");
                    idx.start_leading();
                    metrics.set_leader(true);
                }
                health.set_ready(idx.synced());
                services_changed.notify_one();
            }
            _ = tick.tick() => {}
        }
        let updates = index
            .lock()
            .expect("index lock")
            .reconcile(Timestamp::now());
        if updates.is_empty() {
            continue;
        }
        // Each update is fenced by the writer: once the lease is lost, expired or being
        // released, the rest of the batch is refused and left for the next term.
        let results: Vec<_> = stream::iter(updates)
            .map(|u| {
                let writer = writer.clone();
                async move {
                    let r = writer.apply(&u).await;
                    (u, r)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut idx = index.lock().expect("index lock");
        let mut fenced = 0;
        for (u, r) in results {
            if let (
                index::Update::Service {
                    condition: Some(c), ..
                },
                Ok(()),
            ) = (&u, &r)
            {
                metrics.allocation(c.status == "True", &c.reason);
            }
            match r {
                Ok(()) => {}
                Err(writer::Error::Fenced(_)) => {
                    fenced += 1;
                    idx.write_failed(&u);
                }
                Err(writer::Error::Api(e))
                    if ferrolb_ops::retry::classify(&e) == ferrolb_ops::retry::Class::Permanent =>
                {
                    // 403, 422 and the like: resending every round cannot help.
                    tracing::warn!(error = %e, update = ?update_name(&u), "status write refused; retrying with backoff");
                    idx.write_rejected(&u, Timestamp::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, update = ?update_name(&u), "status write failed; will retry");
                    idx.write_failed(&u);
                }
            }
        }
        if fenced > 0 {
            tracing::info!(
                writes = fenced,
                "not the writer any more; left the rest of the batch"
            );
        }
    }
    // The election releases the lease once the writes in flight ended (bounded there).
    let t = &config.timing;
    let bound = t.lease_duration + 3 * t.call_timeout();
    if tokio::time::timeout(bound, election).await.is_err() {
        tracing::warn!("the election did not end in time");
    }
    Ok(())
}

/// Aborts the task when dropped (the Announced loop ends with the controller's run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn update_name(u: &index::Update) -> String {
    match u {
        index::Update::Service { key, .. } | index::Update::ServiceConditions { key, .. } => {
            format!("service {key}")
        }
        index::Update::Pool { name, .. } => format!("pool {name}"),
        index::Update::Advertisement { name, .. } => format!("l2advertisement {name}"),
    }
}
