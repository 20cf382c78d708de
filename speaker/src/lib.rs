//! The FerroLB speaker: on every node, elects one node per LoadBalancer IP and, where
//! this node wins, answers ARP/NDP for it and sends gratuitous ARP / unsolicited NA.
//!
//! ```text
//!   watch Nodes, Services, EndpointSlices, pools, advertisements, speaker Leases
//!        │                         heartbeats (liveness::udp) ──▶ live speakers + interfaces
//!        ▼                                         │
//!   world.rs ──▶ core::World ──▶ core::desired ──▶ Table ──┬──▶ local_announcements ──▶ DataPlane
//!                                                          └──▶ status::report ──▶ NodeAnnouncement <node>
//!                                      (the controller folds every node's into the Announced condition)
//! ```
//!
//! Pure: [`core`] (eligibility, election), [`wire`] (ARP/NDP codecs), [`status`] and
//! [`world`] decisions, the liveness detector and codec. Glue: this module, [`dataplane`]
//! sockets and netlink, [`liveness::udp`], [`membership`].

pub mod bpf;
mod cache;
pub mod core;
pub mod dataplane;
pub mod health;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod scope;
pub mod status;
pub mod step;
pub mod wire;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::cache::{Caches, Change, LeaseClock};
use crate::dataplane::{DataPlane, DataPlaneConfig, LinkWatcher};
use crate::metrics::Metrics;

/// How the speaker runs (the binary fills it from flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// The `spec.loadBalancerClass` served besides "no class".
    pub lb_class: String,
    /// Announce from nodes labelled exclude-from-external-load-balancers too.
    pub ignore_exclude_lb: bool,
    /// Interface name patterns never used (`veth*` …).
    pub exclude_interfaces: Vec<String>,
    /// Namespace of the speaker Leases.
    pub lease_namespace: String,
    /// How often the speaker Lease is renewed.
    pub lease_renew: Duration,
    /// Heartbeat settings.
    pub liveness: liveness::LivenessConfig,
    /// The address peers send heartbeats to (published in our Lease).
    pub advertise: SocketAddr,
    /// Data-plane tunables.
    pub dataplane: DataPlaneConfig,
    /// Probe this node's kube-proxy health checks for its Local Services and publish the
    /// failing ones ([`health`]); off, nothing is probed or published (peers' still count).
    pub kube_proxy_health_check: bool,
}

/// Runs the speaker until `stop` becomes true, then hands its IPs over: peers are told
/// at once (LEAVING heartbeats) and the responders stop.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    health: Arc<ferrolb_ops::Health>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let me = config.node.clone();
    let links = LinkWatcher::start(config.exclude_interfaces.clone()).await?;
    let plane = Arc::new(DataPlane::new(config.dataplane.clone()));
    metrics.attach_dataplane(plane.clone());
    let _follow = plane.follow_links(links.subscribe());

    // Our usable interfaces, for the heartbeats, and whether a responder can open on one.
    let first = links.links();
    let (ifaces_tx, ifaces_rx) = watch::channel(dataplane::usable(&first));
    let (answer_tx, mut answer_rx) = watch::channel(dataplane::can_answer(&first));
    // Our interfaces' MACs, published in our Lease (peers tell our frames from a stranger's).
    let (macs_tx, macs_rx) = watch::channel(dataplane::macs(&first));
    let mut links_rx = links.subscribe();
    // The report names the interfaces that answer (narrowed like the data plane's).
    let mut report_links = links.subscribe();
    let _ifaces = tokio::spawn(async move {
        while links_rx.changed().await.is_ok() {
            let l = links_rx.borrow_and_update().clone();
            let u = dataplane::usable(&l);
            ifaces_tx.send_if_modified(|old| std::mem::replace(old, u.clone()) != u);
            let a = dataplane::can_answer(&l);
            answer_tx.send_if_modified(|old| std::mem::replace(old, a.clone()) != a);
            let m = dataplane::macs(&l);
            macs_tx.send_if_modified(|old| std::mem::replace(old, m.clone()) != m);
        }
    });
    let (peers_tx, peers_rx) = watch::channel(BTreeMap::new());
    // Ready: caches synced and a responder can open. Until then peers do not count us.
    let (ready_tx, ready_rx) = watch::channel(false);
    let (live, mut alive_rx) =
        liveness::Liveness::spawn(config.liveness.clone(), peers_rx, ifaces_rx, ready_rx)?;
    let mut rejoins = live.rejoins();
    let departures = live.departures();
    let mut not_serving = live.not_serving();
    let live = Arc::new(live);
    metrics.attach_liveness(live.clone());
    // The Local Services whose kube-proxy health check fails here (health.rs), published
    // in our Lease; the checker probes the targets the main loop derives from the caches.
    let (unhealthy_tx, unhealthy_rx) = watch::channel(BTreeSet::new());
    let (targets_tx, targets_rx) = watch::channel(BTreeMap::new());
    let _checker = config.kube_proxy_health_check.then(|| {
        health::spawn(
            health::CheckerConfig::new(config.advertise.ip()),
            targets_rx,
            unhealthy_tx,
        )
    });
    // The caches' (generation, services_changed) the targets were last derived from.
    let mut targets_of: Option<(u64, u64)> = None;
    let _membership = membership::spawn(
        client.clone(),
        config.lease_namespace.clone(),
        me.clone(),
        membership::Published {
            heartbeat: config.advertise,
            incarnation: config.liveness.incarnation,
            pubkey: live.public_key(),
        },
        macs_rx.clone(),
        unhealthy_rx,
        config.lease_renew,
    );
    // IPs not answered (another host uses them, or probing first): reported so
    // (status::withheld), not announced.
    let mut withheld = plane.withheld();

    // Each object is converted to what the speaker keeps of it as it arrives (cache.rs):
    // no watched object is held whole, not even while a re-list is buffered. Small list
    // pages bound what a (re-)list holds at once: a page is parsed whole before its
    // objects are converted, and a Node with its image list is several KiB.
    let wc = watcher::Config::default();
    let changes = stream::select_all([
        ferrolb_ops::watch::watch(Api::<Node>::all(client.clone()), wc.clone().page_size(50))
            .map(|r| r.map(Change::node))
            .boxed(),
        ferrolb_ops::watch::watch(
            Api::<Service>::all(client.clone()),
            wc.clone().page_size(100),
        )
        .map(|r| r.map(Change::service))
        .boxed(),
        ferrolb_ops::watch::watch(
            Api::<EndpointSlice>::all(client.clone()),
            wc.clone().page_size(100),
        )
        .map(|r| r.map(Change::slice))
        .boxed(),
        ferrolb_ops::watch::watch(Api::<IPAddressPool>::all(client.clone()), wc.clone())
            .map(|r| r.map(Change::pool))
            .boxed(),
        ferrolb_ops::watch::watch(Api::<L2Advertisement>::all(client.clone()), wc.clone())
            .map(|r| r.map(Change::advertisement))
            .boxed(),
        // Speaker Leases only: other Leases in that namespace (leader election, …) renew
        // every few seconds and concern no speaker.
        ferrolb_ops::watch::watch(
            Api::<Lease>::namespaced(client.clone(), &config.lease_namespace),
            wc.labels(ferrolb_crds::speaker_lease::SELECTOR),
        )
        .map(|r| r.map(Change::lease))
        .boxed(),
    ]);
    let mut changes = std::pin::pin!(changes);
    let mut caches = Caches::new(&config.lb_class);

    // This node's report (NodeAnnouncement); the writer always works on the newest one.
    let incarnation = config.liveness.incarnation;
    let (report_tx, report_rx) = watch::channel(Arc::new(status::report(
        &core::Table::default(),
        &me,
        None,
        incarnation,
        Some(liveness::NotServing::NotReady),
        &BTreeMap::new(),
    )));
    let _writer = tokio::spawn(status::writer(
        client.clone(),
        me.clone(),
        report_rx,
        metrics.clone(),
    ));
    let mut serving: Option<liveness::NotServing> = Some(liveness::NotServing::NotReady);
    // Every speaker Lease but ours; the heartbeat engine gets those in our scope.
    let mut peers: BTreeMap<String, liveness::PeerAddr> = BTreeMap::new();
    // Whom we heartbeat (scope.rs): everyone until the caches sync, then the nodes that may
    // be candidates with us, recomputed when the World's Nodes, pools or advertisements change.
    let mut scope = scope::Scope::everyone();
    let mut scope_topology: Option<u64> = None;
    let mut heartbeats = scope::Heartbeats::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The decisions (warm-up, election, takeover, announce again, report): step.rs.
    let mut decider = step::Decider::new(me.clone(), incarnation, config.liveness.warmup());
    let mut wake_at: Option<tokio::time::Instant> = None;

    let mut lease_clock = LeaseClock::default();
    loop {
        let mut alive_changed = false;
        let mut lease_check = false;
        let mut rejoined_after_isolation = false;
        let mut relink = false;
        tokio::select! {
            Some(change) = changes.next() => {
                let mut next = Some(change);
                for _ in 0..1000 {
                    match next.take() {
                        Some(Ok(c)) => {
                            let lease_change = matches!(c, Change::Lease(_));
                            if caches.apply(c) && lease_change {
                                lease_clock.observe(caches.leases.items.values(), tokio::time::Instant::now());
                                lease_check = true;
                            }
                        }
                        Some(Err(e)) => {
                            metrics.api_error("watch");
                            tracing::warn!(error = %e, "watch failed; keeping the last view (fail-static)");
                        }
                        None => break,
                    }
                    next = changes.next().now_or_never().flatten();
                }
            }
            r = alive_rx.changed() => {
                if r.is_err() { break }
                alive_changed = true;
            }
            Ok(()) = rejoins.changed() => {
                rejoins.borrow_and_update();
                rejoined_after_isolation = true;
            }
            Ok(()) = not_serving.changed() => {
                let why = *not_serving.borrow_and_update();
                serving = why;
                health.set_ready(why.is_none());
                metrics.set_cut_off(why.is_some_and(|w| w != liveness::NotServing::NotReady));
            }
            Ok(()) = report_links.changed() => {
                report_links.borrow_and_update();
                relink = true;
            }
            Ok(()) = withheld.changed() => {
                let w = withheld.borrow_and_update();
                metrics.set_withheld(w.conflicts.keys().chain(w.probing.keys()).copied().collect());
                relink = true;
            }
            Ok(()) = answer_rx.changed() => {
                if let Err(why) = &*answer_rx.borrow_and_update() {
                    tracing::warn!(%why, "cannot answer ARP/NDP: not eligible to announce");
                }
            }
            _ = tick.tick() => lease_check = true,
            _ = sleep_until(wake_at), if wake_at.is_some_and(|t| t > tokio::time::Instant::now()) => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { break }
            }
        }
        if lease_check {
            peers = lease_clock.peers(
                caches.leases.items.values(),
                &me,
                tokio::time::Instant::now(),
            );
            plane.set_fleet(world::fleet(
                caches.leases.items.values(),
                &me,
                &macs_rx.borrow(),
            ));
        }
        let started = tokio::time::Instant::now();
        let alive = alive_rx.borrow_and_update().clone();
        let synced = caches.synced();
        let topology = caches.topology;
        let inputs = (caches.generation, caches.services_changed);
        if config.kube_proxy_health_check && synced && targets_of != Some(inputs) {
            targets_of = Some(inputs);
            let t = caches.health_targets(&me);
            if targets_tx.send_if_modified(|old| std::mem::replace(old, t.clone()) != t) {
                tracing::info!(services = t.len(), "kube-proxy health checks changed");
            }
        }
        // The world is kept current event by event (cache.rs); this only sets its speakers.
        let world = synced.then(|| caches.current_world(&alive, config.ignore_exclude_lb));
        let mut scope_changed = false;
        if let Some(w) = world
            && scope_topology != Some(topology)
        {
            scope_topology = Some(topology);
            let next = scope::Scope::of(w, &me);
            if next != scope {
                scope = next;
                scope_changed = true;
            }
        }
        if lease_check || scope_changed {
            let to = heartbeats.peers(&peers, &scope, started.into_std());
            if scope_changed {
                tracing::info!(
                    peers = to.len(),
                    everyone = scope.is_everyone(),
                    "heartbeat scope changed"
                );
            }
            peers_tx.send_if_modified(|old| std::mem::replace(old, to.clone()) != to);
        }
        let acts = decider.step(
            &step::Inputs {
                synced,
                can_answer: answer_rx.borrow().is_ok(),
                world,
                alive: &alive,
                not_serving: serving,
                peers: &peers,
                scope: &scope,
                alive_changed,
                rejoined_after_isolation,
            },
            started.into_std(),
        );
        ready_tx.send_if_modified(|old| std::mem::replace(old, acts.ready) != acts.ready);
        wake_at = acts.wake_at.map(tokio::time::Instant::from_std);
        if let Some(want) = acts.announce {
            let total = want.len();
            let p = plane.clone();
            // The first gratuitous ARP / unsolicited NA of each new IP is sent in here.
            let fresh = acts.fresh;
            tokio::task::spawn_blocking(move || p.set_announcements(want, fresh)).await?;
            let announced_at = std::time::Instant::now();
            tracing::info!(
                gained = acts.gained,
                lost = acts.lost,
                total,
                "announcements changed"
            );
            if acts.takeover {
                // From the departed peer's last sign of life (the longest any client of
                // its IPs went unanswered), else from when we learned of it.
                let since = {
                    let last = departures.borrow();
                    acts.departed
                        .iter()
                        .filter_map(|n| last.get(n))
                        .min()
                        .copied()
                };
                let since = since.unwrap_or_else(|| started.into_std());
                metrics.takeover(
                    acts.gained as u64,
                    announced_at.saturating_duration_since(since),
                );
            }
        }
        if acts.announce_again {
            let p = plane.clone();
            tokio::task::spawn_blocking(move || p.announce_again()).await?;
            tracing::info!(
                total = decider.announced().len(),
                "a peer rejoined; announcing again"
            );
        }
        if let Some(table) = &acts.table {
            metrics.set_table(table, &me);
        }
        relink |= acts.report.is_some();
        if relink && let Some(report) = decider.reported() {
            let narrowed = status::on_link(report.clone(), &me, &report_links.borrow());
            let narrowed = status::withheld(narrowed, &me, &withheld.borrow());
            report_tx.send_if_modified(|old| {
                let changed = **old != narrowed;
                if changed {
                    *old = Arc::new(narrowed);
                }
                changed
            });
        }
    }

    tracing::info!("stopping: handing announcements over");
    health.set_ready(false);
    // Stop answering first (withdrawn IPs are not answered once set_announcements
    // returns), then tell the peers: they take over a moment after we went quiet, never
    // while we still answer. The responder threads are joined afterwards.
    let p = plane.clone();
    tokio::task::spawn_blocking(move || {
        p.set_announcements(Default::default(), Default::default())
    })
    .await?;
    live.leave().await;
    // Say so in this node's report (bounded: the API server may be what is failing).
    let leaving = decider.leaving();
    report_tx.send_replace(Arc::new(leaving.clone()));
    let wrote = tokio::time::timeout(
        Duration::from_secs(2),
        status::apply(&client, &me, None, &leaving),
    )
    .await;
    if !matches!(wrote, Ok(Ok(()))) {
        tracing::warn!(
            "could not write the leaving NodeAnnouncement; the controller relies on peers and the Lease"
        );
    }
    let p = plane.clone();
    tokio::task::spawn_blocking(move || p.shutdown()).await?;
    Ok(())
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}
