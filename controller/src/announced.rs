//! The glue around [`ferrolb_controller_core::announced`]: watches every `NodeAnnouncement`
//! and the speakers' Leases, folds them with the Services of the index, and writes each
//! Service's `ferrolb.io/Announced` condition, while this replica leads (the writer's fence
//! refuses otherwise).
//!
//! ```text
//!   watch NodeAnnouncements ─┐                     Index (Services, leading?)
//!   watch speaker Leases ────┼─▶ LeaseClock, Fold ──────┴──▶ Planner::plan ──▶ Writer::set_conditions
//!   tick / Services changed ─┘
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_controller_core::announced::{Fold, LeaseClock, LeaseInfo, Planner};
use ferrolb_crds::speaker_lease;
use ferrolb_crds::{NodeAnnouncement, NodeAnnouncementSpec};
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};

use crate::index::Index;
use crate::metrics::Metrics;
use crate::writer::Writer;
use ferrolb_ops::relist::{Op, Relist};

/// The longest the controller waits between two looks (Lease expiry, split grace).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A speaker Lease as the fold reads it (`None`: not a speaker Lease).
pub fn lease_info(l: &Lease) -> Option<LeaseInfo> {
    let node = l
        .metadata
        .name
        .as_deref()?
        .strip_prefix(speaker_lease::PREFIX)?
        .to_owned();
    let spec = l.spec.as_ref();
    Some(LeaseInfo {
        node,
        renew: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        duration: Duration::from_secs(
            spec.and_then(|s| s.lease_duration_seconds)
                .and_then(|d| u64::try_from(d).ok())
                .unwrap_or(0),
        ),
        incarnation: l
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(speaker_lease::INCARNATION_ANNOTATION).cloned()),
    })
}

enum Change {
    Report(Event<NodeAnnouncement>),
    Lease(Event<Lease>),
}

/// Keeps the Announced conditions in step until `stop` becomes true. `services_changed` is
/// notified by the main loop after it applied Service events to the index.
pub async fn run(
    client: Client,
    lease_namespace: String,
    index: Arc<Mutex<Index>>,
    writer: Writer,
    metrics: Metrics,
    services_changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let wc = watcher::Config::default();
    let mut changes = stream::select_all([
        ferrolb_ops::watch::watch(Api::<NodeAnnouncement>::all(client.clone()), wc.clone())
            .modify(ferrolb_ops::watch::strip)
            .map(|r| r.map(Change::Report))
            .boxed(),
        ferrolb_ops::watch::watch(
            Api::<Lease>::namespaced(client.clone(), &lease_namespace),
            wc.labels(speaker_lease::SELECTOR),
        )
        .modify(ferrolb_ops::watch::strip)
        .map(|r| r.map(Change::Lease))
        .boxed(),
    ]);
    let mut report_list = Relist::<NodeAnnouncement>::default();
    let mut lease_list = Relist::<Lease>::default();
    let mut reports: BTreeMap<String, NodeAnnouncementSpec> = BTreeMap::new();
    let mut leases: BTreeMap<String, LeaseInfo> = BTreeMap::new();
    let (mut reports_synced, mut leases_synced) = (false, false);
    let mut clock = LeaseClock::default();
    let mut planner = Planner::default();
    let mut tick = tokio::time::interval(LOOK_AGAIN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            Some(change) = changes.next() => {
                let mut leases_changed = false;
                match change {
                    Ok(Change::Report(ev)) => match report_list.fold(ev) {
                        Op::Apply(o) => { reports.insert(name(&o), o.spec); }
                        Op::Delete(o) => { reports.remove(&name(&o)); }
                        Op::Reset(all) => {
                            reports = all.into_iter().map(|o| (name(&o), o.spec)).collect();
                            reports_synced = true;
                        }
                        Op::Wait => {}
                    },
                    Ok(Change::Lease(ev)) => {
                        leases_changed = true;
                        match lease_list.fold(ev) {
                            Op::Apply(o) => if let Some(l) = lease_info(&o) { leases.insert(l.node.clone(), l); },
                            Op::Delete(o) => if let Some(l) = lease_info(&o) { leases.remove(&l.node); },
                            Op::Reset(all) => {
                                leases = all.iter().filter_map(lease_info).map(|l| (l.node.clone(), l)).collect();
                                leases_synced = true;
                            }
                            Op::Wait => {}
                        }
                    }
                    Err(e) => {
                        metrics.api_error("watch");
                        tracing::warn!(error = %e, "watching NodeAnnouncements or speaker Leases failed; retrying");
                    }
                }
                if leases_changed {
                    clock.observe(leases.values().cloned(), std::time::Instant::now(), Timestamp::now());
                }
            }
            _ = services_changed.notified() => {}
            _ = tick.tick() => {}
        }
        if !(reports_synced && leases_synced) {
            continue;
        }
        let now = std::time::Instant::now();
        let speakers = clock.speakers(now);
        let fold = Fold::new(&reports, &speakers);
        let writes = {
            let idx = index.lock().expect("index lock");
            if !idx.leading() || !idx.synced() {
                continue;
            }
            planner.plan(&fold, idx.services(), idx.lb_class(), Timestamp::now(), now)
        };
        let results: Vec<_> = stream::iter(writes)
            .map(|w| {
                let writer = writer.clone();
                async move {
                    let r = writer.set_conditions(&w).await;
                    (w, r)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (w, r) in results {
            if let Err(e) = r {
                // 409 (the Service moved on), fenced, or a failure: decide again next round.
                planner.failed(&w.key);
                tracing::debug!(error = %e, service = %w.key, "Announced condition not written");
            }
        }
    }
}

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}
