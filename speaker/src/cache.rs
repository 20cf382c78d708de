//! The speaker's caches of watched objects, and how they become the core's [`World`].
//!
//! ```text
//!   watch events (Change) ──▶ Caches (one Cache per kind, re-list aware) ──world()──▶ core::World
//!   speaker Leases ──▶ LeaseClock (renewals seen on our clock) ──peers()──▶ liveness members
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::watcher::Event;

use ferrolb_ops::relist::{Op, Relist};

use crate::core::{self, World};
use crate::{liveness, world};

/// Every watched kind, as one stream item (moved once, so the size spread is harmless).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Change {
    Node(Event<Node>),
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Pool(Event<IPAddressPool>),
    Advertisement(Event<L2Advertisement>),
    Lease(Event<Lease>),
}

/// A cache of one kind keyed by `ns/name`, replaced whole when a re-list completes.
pub(crate) struct Cache<K> {
    pub(crate) items: BTreeMap<String, K>,
    relist: Relist<K>,
    pub(crate) synced: bool,
}

impl<K: Resource> Cache<K> {
    pub(crate) fn new() -> Self {
        Self {
            items: BTreeMap::new(),
            relist: Relist::default(),
            synced: false,
        }
    }

    fn key(o: &K) -> String {
        let m = o.meta();
        match &m.namespace {
            Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
            None => m.name.clone().unwrap_or_default(),
        }
    }

    /// Applies a watcher event; true when the cache changed.
    pub(crate) fn apply(&mut self, ev: Event<K>) -> bool {
        match self.relist.fold(ev) {
            Op::Wait => false,
            Op::Reset(list) => {
                self.items = list.into_iter().map(|o| (Self::key(&o), o)).collect();
                self.synced = true;
                true
            }
            Op::Apply(o) => {
                self.items.insert(Self::key(&o), o);
                true
            }
            Op::Delete(o) => self.items.remove(&Self::key(&o)).is_some(),
        }
    }
}

/// Everything watched.
pub(crate) struct Caches {
    /// Pools as last parsed successfully: an edit that breaks a pool's addresses keeps
    /// its IPs announced, as the controller keeps them assigned.
    pub(crate) good_pools: BTreeMap<String, core::Pool>,
    pub(crate) nodes: Cache<Node>,
    pub(crate) services: Cache<Service>,
    pub(crate) slices: Cache<EndpointSlice>,
    pub(crate) pools: Cache<IPAddressPool>,
    pub(crate) advertisements: Cache<L2Advertisement>,
    pub(crate) leases: Cache<Lease>,
}

impl Caches {
    pub(crate) fn synced(&self) -> bool {
        self.nodes.synced
            && self.services.synced
            && self.slices.synced
            && self.pools.synced
            && self.advertisements.synced
            && self.leases.synced
    }

    pub(crate) fn apply(&mut self, c: Change) -> bool {
        match c {
            Change::Node(e) => self.nodes.apply(e),
            Change::Service(e) => self.services.apply(e),
            Change::Slice(e) => self.slices.apply(e),
            Change::Pool(e) => {
                let changed = self.pools.apply(e);
                if changed {
                    let mut good = BTreeMap::new();
                    for (name, p) in &self.pools.items {
                        match world::pool(p).or_else(|| self.good_pools.get(name).cloned()) {
                            Some(parsed) => {
                                good.insert(name.clone(), parsed);
                            }
                            None => {
                                tracing::warn!(pool = %name, "pool addresses invalid; nothing to announce from it")
                            }
                        }
                    }
                    self.good_pools = good;
                }
                changed
            }
            Change::Advertisement(e) => self.advertisements.apply(e),
            Change::Lease(e) => self.leases.apply(e),
        }
    }

    /// The core's view, given the speakers that may announce.
    pub(crate) fn world(
        &self,
        alive: &liveness::AliveView,
        lb_class: &str,
        ignore_exclude_lb: bool,
    ) -> World {
        let mut w = World {
            ignore_exclude_lb,
            ..Default::default()
        };
        for n in self.nodes.items.values() {
            w.apply_node(world::node(n));
        }
        for (node, live) in alive {
            w.apply_speaker(core::Speaker {
                node: node.clone(),
                interfaces: live.interfaces.clone(),
                settling: live.settling,
            });
        }
        for p in self.good_pools.values() {
            w.apply_pool(p.clone());
        }
        for a in self.advertisements.items.values() {
            match world::advertisement(a) {
                Ok(a) => w.apply_advertisement(a),
                Err(e) => tracing::debug!(error = %e, "ignoring invalid L2Advertisement"),
            }
        }
        let mut slices: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
        for s in self.slices.items.values() {
            if let Some(k) = world::slice_service_key(s) {
                slices.entry(k).or_default().push(s);
            }
        }
        for (key, s) in &self.services.items {
            let mine = slices.get(key).map(Vec::as_slice).unwrap_or_default();
            if let Some(svc) = world::service(s, lb_class, mine.iter().copied()) {
                w.apply_service(svc);
            }
        }
        w
    }
}

/// When this speaker saw each speaker Lease renewed, on its own clock: a Lease is fresh
/// while its last renewal was seen less than its duration ago. Comparing a peer's
/// renewTime with our wall clock would make a skewed clock look like a dead peer.
#[derive(Default)]
pub(crate) struct LeaseClock {
    /// Lease name → (renewTime as written, when we saw it change).
    seen: HashMap<String, (Option<String>, tokio::time::Instant)>,
}

impl LeaseClock {
    /// Notes the renewals in `leases` at `now`, forgetting Leases that are gone.
    pub(crate) fn observe<'a>(
        &mut self,
        leases: impl IntoIterator<Item = &'a Lease>,
        now: tokio::time::Instant,
    ) {
        let mut next = HashMap::new();
        for l in leases {
            let name = l.metadata.name.clone().unwrap_or_default();
            let renew = l
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string());
            let at = match self.seen.remove(&name) {
                Some((old, at)) if old == renew => at,
                _ => now,
            };
            next.insert(name, (renew, at));
        }
        self.seen = next;
    }

    /// The peers of `leases`, each marked fresh or stale at `now`.
    pub(crate) fn peers<'a>(
        &self,
        leases: impl IntoIterator<Item = &'a Lease> + Clone,
        me: &str,
        now: tokio::time::Instant,
    ) -> BTreeMap<String, liveness::PeerAddr> {
        let durations: HashMap<String, Duration> = leases
            .clone()
            .into_iter()
            .filter_map(|l| {
                let secs = l.spec.as_ref()?.lease_duration_seconds?;
                let name = l.metadata.name.clone()?;
                Some((name, Duration::from_secs(u64::try_from(secs).unwrap_or(0))))
            })
            .collect();
        let mut peers = world::peers(leases, me);
        for (node, p) in &mut peers {
            let name = format!("{}{node}", world::LEASE_PREFIX);
            let duration = durations
                .get(&name)
                .copied()
                .unwrap_or(Duration::from_secs(90));
            p.fresh = self
                .seen
                .get(&name)
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < duration);
        }
        peers
    }
}
