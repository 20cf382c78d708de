//! The speaker's caches of watched objects, and the core's [`World`] kept current from them.
//!
//! ```text
//!   watch events ──Change::node/service/…: converted on arrival to the kept forms──▶
//!   Caches (re-list aware) ──each change updates only what it touches──▶ World
//!        (generation bumped when the World changed) ──current_world(alive)──▶ &core::World
//!   speaker Leases (slimmed) ──▶ LeaseClock (renewals seen on our clock) ──peers()──▶ liveness members
//!   speaker Leases ──unhealthy Services they publish──▶ World::unhealthy (bumps the generation)
//! ```
//!
//! Nothing here holds a watched object whole (docs/architecture.md#memory): a Node is kept
//! as [`KeptNode`], a LoadBalancer Service or one listing externalIPs as [`LbService`] (any
//! other Service as nothing),
//! an EndpointSlice as [`SliceSummary`], a pool and an advertisement as what they parse to,
//! a speaker Lease as the fields its peers are read from. The World's Nodes and Services
//! carry only the labels the advertisements' selectors read. The speaker's memory then
//! grows with what it announces and with the node count, hardly with the Services it does
//! not announce.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;

use ferrolb_ops::relist::{Op, Relist};

use crate::core::{self, World};
use crate::world::{
    Endpoints, KeptAdvertisement, KeptNode, KeptPool, LabelKeys, LbService, SliceSummary,
};
use crate::{liveness, world};

/// A watched object as the speaker keeps it: its cache key (`ns/name`, or `name`), and
/// what is kept of it; `None` when nothing is (the object does not matter, or no longer
/// does: a Service that stopped being a LoadBalancer).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kept<T> {
    key: String,
    value: Option<T>,
}

impl<T> Kept<T> {
    fn new(meta: &ObjectMeta, value: Option<T>) -> Self {
        Self {
            key: key(meta),
            value,
        }
    }
}

/// `ns/name`, or `name` for a cluster-scoped object.
fn key(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or_default();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// A watcher event of one object type as an event of another.
fn map_event<K, T>(e: Event<K>, mut f: impl FnMut(K) -> T) -> Event<T> {
    match e {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// Every watched kind, as one stream item, already in its kept form. Build one with
/// [`Change::node`], [`Change::service`] … right where the watcher yields the object, so
/// no object outlives its conversion (not even in a re-list buffer). Moved once, so the
/// size spread is harmless.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Change {
    Node(Event<Kept<KeptNode>>),
    Service(Event<Kept<LbService>>),
    Slice(Event<Kept<SliceSummary>>),
    Pool(Event<Kept<KeptPool>>),
    Advertisement(Event<Kept<KeptAdvertisement>>),
    Lease(Event<Kept<Lease>>),
}

impl Change {
    pub(crate) fn node(e: Event<Node>) -> Self {
        Change::Node(map_event(e, |n| {
            Kept::new(&n.metadata, Some(world::kept_node(&n)))
        }))
    }

    pub(crate) fn service(e: Event<Service>) -> Self {
        Change::Service(map_event(e, |s| Kept {
            key: world::service_key(&s),
            value: world::lb_service(&s),
        }))
    }

    pub(crate) fn slice(e: Event<EndpointSlice>) -> Self {
        Change::Slice(map_event(e, |s| {
            Kept::new(&s.metadata, world::slice_summary(&s))
        }))
    }

    pub(crate) fn pool(e: Event<IPAddressPool>) -> Self {
        Change::Pool(map_event(e, |p| {
            Kept::new(&p.metadata, Some(world::kept_pool(&p)))
        }))
    }

    pub(crate) fn advertisement(e: Event<L2Advertisement>) -> Self {
        Change::Advertisement(map_event(e, |a| {
            Kept::new(&a.metadata, Some(world::kept_advertisement(&a)))
        }))
    }

    pub(crate) fn lease(e: Event<Lease>) -> Self {
        Change::Lease(map_event(e, |l| Kept {
            key: key(&l.metadata),
            value: Some(slim_lease(l)),
        }))
    }
}

/// A speaker Lease reduced to what its peers are read from ([`world::peer`]: name and
/// annotations) and what [`LeaseClock`] reads (renew time, duration).
pub(crate) fn slim_lease(l: Lease) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: l.metadata.name,
            namespace: l.metadata.namespace,
            annotations: l.metadata.annotations,
            ..Default::default()
        },
        spec: l.spec.map(|s| LeaseSpec {
            renew_time: s.renew_time,
            lease_duration_seconds: s.lease_duration_seconds,
            ..Default::default()
        }),
    }
}

/// The re-list state of one watched kind: [`Tracker::apply`] folds its events into a map
/// of kept forms keyed by `ns/name`, replaced whole when a re-list completes.
pub(crate) struct Tracker<T> {
    relist: Relist<Kept<T>>,
    synced: bool,
}

impl<T: PartialEq> Tracker<T> {
    fn new() -> Self {
        Self {
            relist: Relist::default(),
            synced: false,
        }
    }

    /// Applies a watcher event to `items`; true when they changed (an object whose kept
    /// form is the same as before changes nothing). `touched(key, old, new)` sees each
    /// changed entry.
    fn apply(
        &mut self,
        items: &mut BTreeMap<String, T>,
        ev: Event<Kept<T>>,
        mut touched: impl FnMut(&str, Option<&T>, Option<&T>),
    ) -> bool {
        match self.relist.fold(ev) {
            Op::Wait => false,
            Op::Reset(list) => {
                let next: BTreeMap<String, T> = list
                    .into_iter()
                    .filter_map(|k| Some((k.key, k.value?)))
                    .collect();
                let mut changed = !self.synced;
                for (k, old) in items.iter() {
                    let new = next.get(k);
                    if new != Some(old) {
                        touched(k, Some(old), new);
                        changed = true;
                    }
                }
                for (k, new) in &next {
                    if !items.contains_key(k) {
                        touched(k, None, Some(new));
                        changed = true;
                    }
                }
                *items = next;
                self.synced = true;
                changed
            }
            Op::Apply(Kept {
                key,
                value: Some(v),
            }) => {
                if items.get(&key) == Some(&v) {
                    return false;
                }
                touched(&key, items.get(&key), Some(&v));
                items.insert(key, v);
                true
            }
            Op::Apply(Kept { key, value: None }) | Op::Delete(Kept { key, .. }) => {
                match items.remove(&key) {
                    Some(old) => {
                        touched(&key, Some(&old), None);
                        true
                    }
                    None => false,
                }
            }
        }
    }
}

/// The kept forms of one kind, keyed by `ns/name`.
pub(crate) struct Cache<T> {
    pub(crate) items: BTreeMap<String, T>,
    tracker: Tracker<T>,
}

impl<T: PartialEq> Cache<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: BTreeMap::new(),
            tracker: Tracker::new(),
        }
    }

    /// Applies a watcher event; true when the cache changed.
    fn apply(
        &mut self,
        ev: Event<Kept<T>>,
        touched: impl FnMut(&str, Option<&T>, Option<&T>),
    ) -> bool {
        self.tracker.apply(&mut self.items, ev, touched)
    }

    pub(crate) fn synced(&self) -> bool {
        self.tracker.synced
    }
}

/// Everything watched, and the core's [`World`] kept current from it event by event: no
/// event rebuilds it, and the Nodes are kept in it alone.
pub(crate) struct Caches {
    /// The `spec.loadBalancerClass` served besides none.
    lb_class: String,
    /// Nodes, pools, advertisements and Services as the core sees them; the speakers are
    /// filled in by [`Caches::current_world`].
    world: World,
    /// The label keys the World's Nodes and Services keep (those its selectors read).
    keys: LabelKeys,
    pub(crate) nodes: Cache<KeptNode>,
    /// LoadBalancer Services (of any class) and Services listing externalIPs.
    pub(crate) services: Cache<LbService>,
    /// Every EndpointSlice naming a Service: a Service may become a LoadBalancer later.
    pub(crate) slices: Cache<SliceSummary>,
    /// Pools (`parsed` is `None` when the addresses do not parse).
    pub(crate) pools: Cache<KeptPool>,
    pub(crate) advertisements: Cache<KeptAdvertisement>,
    pub(crate) leases: Cache<Lease>,
    /// What decides which externalIPs are announced, besides the World's pools.
    external: External,
    /// Bumped by every change to the World's Nodes, pools, advertisements, Services or
    /// unhealthy sets: the same generation and the same live speakers make the same World.
    /// Leases bump it only when the unhealthy Services they publish change (never on a
    /// renewal), Services that are no LoadBalancer and their EndpointSlices never, nor
    /// objects whose kept form did not change (status writes, kubelet heartbeats).
    pub(crate) generation: u64,
    /// Bumped by every change to the World's Nodes, pools or advertisements only: what
    /// the heartbeat scope (scope.rs) is made of, so Service churn does not recompute it.
    pub(crate) topology: u64,
    /// Bumped by every change of a kept Service, even one the World does not see (its
    /// `healthCheckNodePort`): with the generation, what [`Caches::health_targets`] reads.
    pub(crate) services_changed: u64,
}

impl Caches {
    /// Empty caches for a speaker serving `lb_class` (and Services with no class).
    pub(crate) fn new(lb_class: &str) -> Self {
        Self {
            lb_class: lb_class.to_owned(),
            world: World::default(),
            keys: LabelKeys::default(),
            nodes: Cache::new(),
            services: Cache::new(),
            slices: Cache::new(),
            pools: Cache::new(),
            advertisements: Cache::new(),
            leases: Cache::new(),
            external: External::default(),
            generation: 0,
            topology: 0,
            services_changed: 0,
        }
    }

    pub(crate) fn synced(&self) -> bool {
        self.nodes.synced()
            && self.services.synced()
            && self.slices.synced()
            && self.pools.synced()
            && self.advertisements.synced()
            && self.leases.synced()
    }

    /// Applies one change; true when a cache changed (for a Lease: its renewal or what it
    /// publishes).
    pub(crate) fn apply(&mut self, c: Change) -> bool {
        let before = self.generation;
        match c {
            Change::Node(e) => {
                let (keys, nodes) = (&self.keys, &mut self.world.nodes);
                let changed = self.nodes.apply(e, |name, _, new| {
                    match new {
                        Some(n) => nodes.insert(name.to_owned(), n.to_core(keys)),
                        None => nodes.remove(name),
                    };
                });
                self.generation += u64::from(changed);
                self.topology += u64::from(changed);
                changed
            }
            Change::Service(e) => {
                let mut touched = Vec::new();
                let external = &mut self.external;
                let changed = self.services.apply(e, |k, old, new| {
                    touched.push(k.to_owned());
                    // A LoadBalancer IP that appears or goes changes the verdict on the
                    // same address listed as an externalIP elsewhere.
                    for other in external.track(k, old, new) {
                        if !touched.contains(&other) {
                            touched.push(other);
                        }
                    }
                });
                self.refresh_touched(touched);
                self.services_changed += u64::from(changed);
                changed
            }
            Change::Slice(e) => {
                // Only the Services already kept (LoadBalancers) need a look.
                let services = &self.services.items;
                let mut touched = Vec::new();
                let changed = self.slices.apply(e, |_, old, new| {
                    for s in [old, new].into_iter().flatten() {
                        if services.contains_key(&s.service) && !touched.contains(&s.service) {
                            touched.push(s.service.clone());
                        }
                    }
                });
                self.refresh_touched(touched);
                changed
            }
            Change::Pool(e) => {
                let changed = self.pools.apply(e, |_, _, _| {});
                if changed {
                    // Pools as last parsed successfully: an edit that breaks a pool's
                    // addresses keeps its IPs announced, as the controller keeps them
                    // assigned.
                    let mut good = BTreeMap::new();
                    for (name, p) in &self.pools.items {
                        match p
                            .parsed
                            .clone()
                            .or_else(|| self.world.pools.get(name).cloned())
                        {
                            Some(parsed) => {
                                good.insert(name.clone(), parsed);
                            }
                            None => {
                                tracing::warn!(pool = %name, "pool addresses invalid; nothing to announce from it")
                            }
                        }
                    }
                    let marks: BTreeMap<String, Vec<String>> = self
                        .pools
                        .items
                        .iter()
                        .filter_map(|(name, p)| Some((name.clone(), p.external_ips.clone()?)))
                        .collect();
                    let pools_changed = good != self.world.pools;
                    if pools_changed {
                        self.world.pools = good;
                        self.generation += 1;
                        self.topology += 1;
                    }
                    if marks != self.external.marks {
                        self.external.marks = marks;
                        self.refresh_listers();
                    } else if pools_changed {
                        self.refresh_listers();
                    }
                }
                changed
            }
            Change::Advertisement(e) => {
                let changed = self.advertisements.apply(e, |_, _, _| {});
                if changed {
                    let mut advs = BTreeMap::new();
                    for a in self.advertisements.items.values() {
                        match &a.parsed {
                            Ok(a) => {
                                advs.insert(a.name.clone(), a.clone());
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "ignoring invalid L2Advertisement")
                            }
                        }
                    }
                    // The labels the World keeps follow the selectors, before they are used.
                    let keys = LabelKeys::of(self.advertisements.items.values());
                    if keys != self.keys {
                        let nodes_too = keys.nodes != self.keys.nodes;
                        self.keys = keys;
                        if nodes_too {
                            let nodes: BTreeMap<String, core::Node> = self
                                .nodes
                                .items
                                .iter()
                                .map(|(k, n)| (k.clone(), n.to_core(&self.keys)))
                                .collect();
                            if nodes != self.world.nodes {
                                self.world.nodes = nodes;
                                self.generation += 1;
                                self.topology += 1;
                            }
                        }
                        self.refresh_services();
                    }
                    if advs != self.world.advertisements {
                        self.world.advertisements = advs;
                        self.generation += 1;
                        self.topology += 1;
                    }
                }
                changed
            }
            Change::Lease(e) => {
                // A Lease is a World input only through the unhealthy Services it publishes.
                let unhealthy = &mut self.world.unhealthy;
                let mut moved = false;
                let changed = self.leases.apply(e, |_, old, new| {
                    let (was, is) = (
                        old.and_then(world::unhealthy),
                        new.and_then(world::unhealthy),
                    );
                    if was != is {
                        moved = true;
                        if let Some((node, _)) = was {
                            unhealthy.remove(&node);
                        }
                        if let Some((node, keys)) = is {
                            unhealthy.insert(node, keys);
                        }
                    }
                });
                self.generation += u64::from(moved);
                debug_assert!(moved || self.generation == before);
                changed
            }
        }
    }

    /// Recomputes the World's entry for the Service `key` from its kept form and slices.
    fn refresh_service(&mut self, key: &str) {
        let svc = self.services.items.get(key).and_then(|lb| {
            // A Service's slices are in its namespace: only that range is looked at.
            let ns = key.split_once('/').map_or("", |(ns, _)| ns);
            let slices = self
                .slices
                .items
                .range(format!("{ns}/")..format!("{ns}0"))
                .map(|(_, s)| s)
                .filter(|s| s.service == key)
                .map(|s| &s.endpoints);
            let accepted = self.external.accepted(lb, &self.world.pools);
            lb.to_core(&self.lb_class, &self.keys, slices, &accepted)
        });
        let changed = match svc {
            Some(svc) if self.world.services.get(key) != Some(&svc) => {
                self.world.services.insert(key.to_owned(), svc);
                true
            }
            Some(_) => false,
            None => self.world.services.remove(key).is_some(),
        };
        self.generation += u64::from(changed);
    }

    /// Recomputes the World's entries of the `touched` Services: one by one, or all at
    /// once when several changed (a re-list, a burst).
    fn refresh_touched(&mut self, touched: Vec<String>) {
        if touched.len() > 1 {
            self.refresh_services();
        } else {
            for k in touched {
                self.refresh_service(&k);
            }
        }
    }

    /// Recomputes the Services listing externalIPs (a pool or its mark changed).
    fn refresh_listers(&mut self) {
        let listers: BTreeSet<String> = self.external.listers.values().flatten().cloned().collect();
        self.refresh_touched(listers.into_iter().collect());
    }

    /// Recomputes every Service of the World (after a re-list).
    fn refresh_services(&mut self) {
        let mut slices: HashMap<&str, Vec<&Endpoints>> = HashMap::new();
        for s in self.slices.items.values() {
            if self.services.items.contains_key(&s.service) {
                slices.entry(&s.service).or_default().push(&s.endpoints);
            }
        }
        let services: BTreeMap<String, core::Service> = self
            .services
            .items
            .iter()
            .filter_map(|(key, lb)| {
                let mine = slices
                    .get(key.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let accepted = self.external.accepted(lb, &self.world.pools);
                let svc =
                    lb.to_core(&self.lb_class, &self.keys, mine.iter().copied(), &accepted)?;
                Some((key.clone(), svc))
            })
            .collect();
        if services != self.world.services {
            self.world.services = services;
            self.generation += 1;
        }
    }

    /// The Services this node's kube-proxy health check is probed for (`ns/name` →
    /// `spec.healthCheckNodePort`): handled, `externalTrafficPolicy: Local`, with a serving
    /// endpoint on node `me`, a health-check port, and not opted out (crate::health).
    pub(crate) fn health_targets(&self, me: &str) -> BTreeMap<String, u16> {
        self.world
            .services
            .values()
            .filter(|s| s.local && !s.ignore_health_check && s.serving_nodes.contains(me))
            .filter_map(|s| {
                let port = self.services.items.get(&s.key)?.health_check_node_port?;
                Some((s.key.clone(), port))
            })
            .collect()
    }

    /// The core's view given the speakers that may announce, kept current event by
    /// event: only the speakers are set here, and only when they changed.
    pub(crate) fn current_world(
        &mut self,
        alive: &liveness::AliveView,
        ignore_exclude_lb: bool,
    ) -> &World {
        let same = self.world.speakers.len() == alive.len()
            && alive
                .iter()
                .zip(&self.world.speakers)
                .all(|((n, l), (m, s))| {
                    n == m && l.interfaces == s.interfaces && l.settling == s.settling
                });
        if !same {
            self.world.speakers = alive
                .iter()
                .map(|(node, live)| {
                    let s = core::Speaker {
                        node: node.clone(),
                        interfaces: live.interfaces.clone(),
                        settling: live.settling,
                    };
                    (node.clone(), s)
                })
                .collect();
        }
        self.world.ignore_exclude_lb = ignore_exclude_lb;
        &self.world
    }

    /// A copy of [`Caches::current_world`] (`lb_class` must be the one served; it is
    /// fixed when the caches are made).
    #[cfg(test)]
    pub(crate) fn world(
        &self,
        alive: &liveness::AliveView,
        lb_class: &str,
        ignore_exclude_lb: bool,
    ) -> World {
        debug_assert_eq!(lb_class, self.lb_class, "one class per speaker");
        let mut w = World {
            ignore_exclude_lb,
            speakers: BTreeMap::new(),
            ..self.world.clone()
        };
        for (node, live) in alive {
            w.apply_speaker(core::Speaker {
                node: node.clone(),
                interfaces: live.interfaces.clone(),
                settling: live.settling,
            });
        }
        w
    }
}

/// Which externalIPs are announced: the speaker's side of [`ferrolb_crds::external_ips`],
/// kept current with the Services (who lists and who holds each address) and the pools'
/// marks. The controller applies the same rule to the same objects.
#[derive(Default)]
struct External {
    /// Pool → `spec.externalIPs.namespaces`, for marked pools.
    marks: BTreeMap<String, Vec<String>>,
    /// externalIP → Services listing it.
    listers: HashMap<IpAddr, Vec<String>>,
    /// LoadBalancer IP (status, any class) → Services showing it.
    held: HashMap<IpAddr, Vec<String>>,
}

impl External {
    /// Records a kept Service's change; returns the other Services listing an address it
    /// started or stopped holding as a LoadBalancer IP.
    fn track(
        &mut self,
        key: &str,
        old: Option<&LbService>,
        new: Option<&LbService>,
    ) -> Vec<String> {
        let ext = |s: Option<&LbService>| s.map(|s| s.external_ips.clone()).unwrap_or_default();
        let lb = |s: Option<&LbService>| s.map(|s| s.lb_ips().to_vec()).unwrap_or_default();
        let key = key.to_owned();
        ferrolb_crds::external_ips::reindex(&mut self.listers, &key, &ext(old), &ext(new));
        let moved = ferrolb_crds::external_ips::reindex(&mut self.held, &key, &lb(old), &lb(new));
        moved
            .iter()
            .filter_map(|ip| self.listers.get(ip))
            .flatten()
            .filter(|k| **k != key)
            .cloned()
            .collect()
    }

    /// The externalIPs of `lb` that are announced, given the pools (last valid addresses).
    fn accepted(&self, lb: &LbService, pools: &BTreeMap<String, core::Pool>) -> Vec<IpAddr> {
        if lb.external_ips.is_empty() {
            return Vec::new();
        }
        let namespace = lb.key.split_once('/').map_or("", |(ns, _)| ns);
        lb.external_ips
            .iter()
            .copied()
            .filter(|ip| {
                let rule = pools.values().map(|p| ferrolb_crds::external_ips::Pool {
                    name: &p.name,
                    addresses: &p.addresses,
                    namespaces: self.marks.get(&p.name).map(Vec::as_slice),
                });
                let holder = self.held.get(ip).and_then(|h| h.iter().next());
                ferrolb_crds::external_ips::judge(*ip, namespace, rule, holder.map(String::as_str))
                    .is_accepted()
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::coordination::v1::Lease;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::liveness::{AliveView, Live};

    const CLASS: &str = "ferrolb.io/ferrolb";

    /// The watched objects at one moment, whole, keyed as the caches key them.
    #[derive(Clone, Debug, Default)]
    struct Snapshot {
        nodes: BTreeMap<String, Node>,
        services: BTreeMap<String, Service>,
        slices: BTreeMap<String, EndpointSlice>,
        pools: BTreeMap<String, IPAddressPool>,
        advertisements: BTreeMap<String, L2Advertisement>,
    }

    /// The World as the speaker built it when it kept whole objects (the code this
    /// module replaced): the reference every kept form is checked against.
    fn reference(
        s: &Snapshot,
        good_pools: &BTreeMap<String, core::Pool>,
        alive: &AliveView,
    ) -> World {
        let mut w = World::default();
        for n in s.nodes.values() {
            w.apply_node(world::node(n));
        }
        for (node, live) in alive {
            w.apply_speaker(core::Speaker {
                node: node.clone(),
                interfaces: live.interfaces.clone(),
                settling: live.settling,
            });
        }
        for p in good_pools.values() {
            w.apply_pool(p.clone());
        }
        for a in s.advertisements.values() {
            if let Ok(a) = world::advertisement(a) {
                w.apply_advertisement(a);
            }
        }
        let mut slices: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
        for sl in s.slices.values() {
            if let Some(k) = world::slice_service_key(sl) {
                slices.entry(k).or_default().push(sl);
            }
        }
        for (key, svc) in &s.services {
            let mine = slices.get(key).map(Vec::as_slice).unwrap_or_default();
            let accepted = reference_accepted(s, good_pools, svc);
            if let Some(svc) = world::service(svc, CLASS, mine.iter().copied(), &accepted) {
                w.apply_service(svc);
            }
        }
        w
    }

    /// The externalIPs of `svc` the rule accepts, judged from whole objects: a scan of
    /// every LoadBalancer's status instead of the caches' indexes.
    fn reference_accepted(
        s: &Snapshot,
        good_pools: &BTreeMap<String, core::Pool>,
        svc: &Service,
    ) -> Vec<IpAddr> {
        let ips = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.external_ips.as_deref())
            .map(ferrolb_crds::external_ips::parse)
            .unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        ips.into_iter()
            .filter(|ip| {
                let holder = s.services.iter().find(|(_, o)| {
                    o.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer")
                        && world::lb_service(o).is_some_and(|k| k.ips.contains(ip))
                });
                let marks: BTreeMap<&str, Vec<String>> = s
                    .pools
                    .iter()
                    .filter_map(|(n, p)| {
                        Some((n.as_str(), p.spec.external_ips.as_ref()?.namespaces.clone()))
                    })
                    .collect();
                let rule = good_pools
                    .values()
                    .map(|p| ferrolb_crds::external_ips::Pool {
                        name: &p.name,
                        addresses: &p.addresses,
                        namespaces: marks.get(p.name.as_str()).map(Vec::as_slice),
                    });
                ferrolb_crds::external_ips::judge(*ip, ns, rule, holder.map(|(k, _)| k.as_str()))
                    .is_accepted()
            })
            .collect()
    }

    /// The pools the old code kept after seeing `s`, given those it kept before.
    fn reference_good(
        prev: &BTreeMap<String, core::Pool>,
        s: &Snapshot,
    ) -> BTreeMap<String, core::Pool> {
        s.pools
            .iter()
            .filter_map(|(name, p)| {
                let good = world::pool(p).or_else(|| prev.get(name).cloned())?;
                Some((name.clone(), good))
            })
            .collect()
    }

    /// `w` with the labels the kept forms give the core: those the valid advertisements'
    /// selectors read (and the exclude label).
    fn normalized(mut w: World, s: &Snapshot) -> World {
        let kept: Vec<KeptAdvertisement> = s
            .advertisements
            .values()
            .map(world::kept_advertisement)
            .collect();
        let keys = LabelKeys::of(&kept);
        for n in w.nodes.values_mut() {
            n.labels.retain(|k, _| keys.nodes.contains(k));
        }
        for svc in w.services.values_mut() {
            svc.labels.retain(|k, _| keys.services.contains(k));
        }
        w
    }

    /// The World the kept forms must give for `s`, and the one whole objects gave.
    fn expected(
        s: &Snapshot,
        good: &BTreeMap<String, core::Pool>,
        alive: &AliveView,
    ) -> (World, World) {
        let whole = reference(s, good, alive);
        (normalized(whole.clone(), s), whole)
    }

    fn caches() -> Caches {
        Caches::new(CLASS)
    }

    fn alive() -> AliveView {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Live {
                        interfaces: ["eth0".to_string()].into(),
                        settling: false,
                    },
                )
            })
            .collect()
    }

    fn relist<K: Clone>(objs: &BTreeMap<String, K>, to: fn(Event<K>) -> Change, c: &mut Caches) {
        c.apply(to(Event::Init));
        for o in objs.values() {
            c.apply(to(Event::InitApply(o.clone())));
        }
        c.apply(to(Event::InitDone));
    }

    fn relist_all(s: &Snapshot, c: &mut Caches) {
        relist(&s.nodes, Change::node, c);
        relist(&s.services, Change::service, c);
        relist(&s.slices, Change::slice, c);
        relist(&s.pools, Change::pool, c);
        relist(&s.advertisements, Change::advertisement, c);
        relist(&BTreeMap::<String, Lease>::new(), Change::lease, c);
    }

    /// The events that take a watcher from `a` to `b`, one object at a time: every object
    /// of `b` applied (changed or not), then those gone deleted.
    fn events<K: Clone>(
        a: &BTreeMap<String, K>,
        b: &BTreeMap<String, K>,
        to: fn(Event<K>) -> Change,
    ) -> Vec<Change> {
        let mut out: Vec<Change> = b.values().map(|o| to(Event::Apply(o.clone()))).collect();
        out.extend(
            a.iter()
                .filter(|(k, _)| !b.contains_key(*k))
                .map(|(_, o)| to(Event::Delete(o.clone()))),
        );
        out
    }

    fn node(name: &str, zone: u8, unavailable: Option<bool>) -> Node {
        let mut conds = vec![json!({"type": "Ready", "status": "True"})];
        if let Some(u) = unavailable {
            conds.push(
                json!({"type": "NetworkUnavailable", "status": if u { "True" } else { "False" }}),
            );
        }
        let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
        match zone {
            0 | 1 => labels["zone"] = json!(format!("z{zone}")),
            2 => labels[core::EXCLUDE_LB_LABEL] = json!(""),
            _ => {}
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}, "resourceVersion": "7"},
            "status": {"conditions": conds, "images": [{"names": ["registry.example/a:1"], "sizeBytes": 1}]},
        }))
        .unwrap()
    }

    const TYPES: [Option<&str>; 4] = [
        Some("LoadBalancer"),
        Some("ClusterIP"),
        Some("NodePort"),
        None,
    ];
    const CLASSES: [Option<&str>; 3] = [None, Some(CLASS), Some("other.example/lb")];
    const INGRESS: [&str; 4] = ["203.0.113.7", "2001:db8::7", "not-an-ip", "203.0.113.8"];
    const POLICIES: [Option<&str>; 3] = [Some("Local"), Some("Cluster"), None];
    /// externalIPs: one a LoadBalancer may also hold (in INGRESS), one in pool p2, one in
    /// p1 only.
    const EXTERNAL: [&str; 3] = ["203.0.113.7", "198.51.100.9", "203.0.113.50"];

    fn service(
        ns: &str,
        name: &str,
        (ty, class, ips, policy, tier, ext): (usize, usize, u8, usize, u8, u8),
    ) -> Service {
        let labels = match tier {
            0 | 1 => json!({"tier": format!("t{tier}"), "app": name}),
            _ => json!({"app": name}),
        };
        let ingress: Vec<_> = INGRESS
            .iter()
            .enumerate()
            .filter(|(i, _)| ips & (1 << i) != 0)
            .map(|(_, ip)| json!({"ip": ip}))
            .collect();
        let external: Vec<&str> = EXTERNAL
            .iter()
            .enumerate()
            .filter(|(i, _)| ext & (1 << i) != 0)
            .map(|(_, ip)| *ip)
            .collect();
        // Tier 1 opts out of the kube-proxy health check; Local ones have a check port.
        let annotations = match tier {
            1 => json!({"ferrolb.io/address-pool": "p1", "ferrolb.io/health-check": "false"}),
            _ => json!({"ferrolb.io/address-pool": "p1"}),
        };
        let check_port = (policy == 0).then_some(30_000 + u32::from(ips));
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels,
                         "annotations": annotations},
            "spec": {"type": TYPES[ty], "loadBalancerClass": CLASSES[class],
                     "externalTrafficPolicy": POLICIES[policy], "ports": [{"port": 80}],
                     "healthCheckNodePort": check_port,
                     "externalIPs": if external.is_empty() { None } else { Some(external) }},
            "status": {"loadBalancer": {"ingress": ingress},
                       "conditions": [{"type": "ferrolb.io/Announced", "status": "True", "reason": "x",
                                       "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    const SLICE_SERVICES: [Option<&str>; 4] = [Some("s1"), Some("s2"), Some("s3"), None];
    const EP_NODES: [Option<&str>; 4] = [Some("n1"), Some("n2"), Some("n4"), None];
    const FLAGS: [Option<bool>; 3] = [None, Some(true), Some(false)];

    fn slice(ns: &str, name: &str, svc: usize, eps: &[(usize, usize, usize)]) -> EndpointSlice {
        let mut labels = BTreeMap::from([(
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "x".to_string(),
        )]);
        if let Some(s) = SLICE_SERVICES[svc] {
            labels.insert("kubernetes.io/service-name".into(), s.into());
        }
        let endpoints: Vec<_> = eps
            .iter()
            .map(|&(n, ready, serving)| {
                json!({"addresses": ["2001:db8:9::1"], "nodeName": EP_NODES[n],
                       "conditions": {"ready": FLAGS[ready], "serving": FLAGS[serving]}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "addressType": "IPv6", "endpoints": endpoints, "ports": [{"port": 80}],
        }))
        .unwrap()
    }

    /// Pool `name`: p1 holds 203.0.113.0/24 and 2001:db8::/64, p2 198.51.100.0/24;
    /// `mark` 0: not marked for externalIPs, 1: for namespace a, 2: for a and b.
    fn pool(name: &str, valid: bool, mark: u8) -> IPAddressPool {
        let addresses = match (valid, name) {
            (false, _) => json!(["not an address"]),
            (true, "p2") => json!(["198.51.100.0/24"]),
            (true, _) => json!(["203.0.113.0/24", "2001:db8::/64"]),
        };
        let external = match mark {
            0 => None,
            1 => Some(json!({"namespaces": ["a"]})),
            _ => Some(json!({"namespaces": ["a", "b"]})),
        };
        serde_json::from_value(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": name, "labels": {"pool": name}},
            "spec": {"addresses": addresses, "externalIPs": external},
        }))
        .unwrap()
    }

    fn advertisement(name: &str, variant: u8) -> L2Advertisement {
        let spec = match variant {
            0 => json!({}),
            1 => json!({"serviceSelectors": [{"matchLabels": {"tier": "t1"}}],
                        "nodeSelectors": [{"matchLabels": {"zone": "z0"}}]}),
            2 => {
                json!({"serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}],
                        "nodeSelectors": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z1"]}]}]})
            }
            _ => {
                json!({"serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "Sometimes"}]}]})
            }
        };
        serde_json::from_value(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> String {
        format!("{ns}/{name}")
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        let nodes = prop::collection::vec(
            prop::option::weighted(0.8, (0..4u8, prop::option::of(any::<bool>()))),
            3,
        );
        let services = prop::collection::vec(
            prop::option::weighted(
                0.8,
                (0..4usize, 0..3usize, 0..16u8, 0..3usize, 0..3u8, 0..8u8),
            ),
            4,
        );
        let slices = prop::collection::vec(
            prop::option::weighted(
                0.8,
                (
                    0..4usize,
                    prop::collection::vec((0..4usize, 0..3usize, 0..3usize), 0..4),
                ),
            ),
            6,
        );
        let pools = prop::collection::vec(prop::option::weighted(0.8, (any::<bool>(), 0..3u8)), 2);
        let advs = prop::collection::vec(prop::option::weighted(0.8, 0..4u8), 2);
        (nodes, services, slices, pools, advs).prop_map(|(nodes, services, slices, pools, advs)| {
            let mut s = Snapshot::default();
            for (i, n) in nodes.into_iter().enumerate() {
                if let Some((zone, u)) = n {
                    let name = format!("n{}", i + 1);
                    s.nodes.insert(name.clone(), node(&name, zone, u));
                }
            }
            let svc_names = [("a", "s1"), ("a", "s2"), ("b", "s1"), ("b", "s3")];
            for ((ns, name), p) in svc_names.into_iter().zip(services) {
                if let Some(p) = p {
                    s.services.insert(key(ns, name), service(ns, name, p));
                }
            }
            let slice_names = [
                ("a", "x1"),
                ("a", "x2"),
                ("a", "x3"),
                ("b", "x1"),
                ("b", "x2"),
                ("b", "x3"),
            ];
            for ((ns, name), p) in slice_names.into_iter().zip(slices) {
                if let Some((svc, eps)) = p {
                    s.slices.insert(key(ns, name), slice(ns, name, svc, &eps));
                }
            }
            for (i, p) in pools.into_iter().enumerate() {
                if let Some((valid, mark)) = p {
                    let name = format!("p{}", i + 1);
                    s.pools.insert(name.clone(), pool(&name, valid, mark));
                }
            }
            for (i, a) in advs.into_iter().enumerate() {
                if let Some(v) = a {
                    let name = format!("ad{}", i + 1);
                    s.advertisements
                        .insert(name.clone(), advertisement(&name, v));
                }
            }
            s
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The kept forms build the World the whole objects built: after a list, after
        /// every event that moves the cluster to another state (Services becoming or
        /// ceasing to be LoadBalancers, slices moving, objects deleted), and after a
        /// re-list. And a change that leaves the generation alone leaves the World alone.
        #[test]
        fn kept_forms_give_the_world_whole_objects_gave(a in snapshot(), b in snapshot()) {
            let alive = alive();
            let mut c = caches();
            relist_all(&a, &mut c);
            prop_assert!(c.synced());
            let good_a = reference_good(&BTreeMap::new(), &a);
            let (want, whole) = expected(&a, &good_a, &alive);
            let got = c.world(&alive, CLASS, false);
            prop_assert_eq!(core::desired(&got), core::desired(&whole), "election decides alike");
            prop_assert_eq!(got, want);

            let mut evs = events(&a.nodes, &b.nodes, Change::node);
            evs.extend(events(&a.services, &b.services, Change::service));
            evs.extend(events(&a.slices, &b.slices, Change::slice));
            evs.extend(events(&a.pools, &b.pools, Change::pool));
            evs.extend(events(&a.advertisements, &b.advertisements, Change::advertisement));
            for e in evs {
                let (g0, t0, before) = (c.generation, c.topology, c.world(&alive, CLASS, false));
                c.apply(e);
                let after = c.world(&alive, CLASS, false);
                if c.topology == t0 {
                    // What the heartbeat scope reads did not change.
                    prop_assert_eq!(&after.nodes, &before.nodes, "same topology, other Nodes");
                    prop_assert_eq!(&after.pools, &before.pools, "same topology, other pools");
                    prop_assert_eq!(
                        &after.advertisements,
                        &before.advertisements,
                        "same topology, other advertisements"
                    );
                }
                if c.generation == g0 {
                    prop_assert_eq!(after, before, "same generation, other World");
                }
            }
            let good_b = reference_good(&good_a, &b);
            let (want, whole) = expected(&b, &good_b, &alive);
            let got = c.world(&alive, CLASS, false);
            prop_assert_eq!(core::desired(&got), core::desired(&whole), "election decides alike");
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(c.current_world(&alive, false), &want);
            let fewer: AliveView = alive.iter().take(1).map(|(n, l)| (n.clone(), l.clone())).collect();
            let mut w = want.clone();
            w.speakers.retain(|n, _| fewer.contains_key(n));
            w.ignore_exclude_lb = true;
            prop_assert_eq!(c.current_world(&fewer, true), &w);
            prop_assert_eq!(c.world(&fewer, CLASS, true), w);
            prop_assert_eq!(c.current_world(&alive, false), &want);

            // A re-list of the same state changes nothing; a fresh speaker sees the same.
            let g0 = c.generation;
            relist_all(&b, &mut c);
            prop_assert_eq!(c.generation, g0);
            prop_assert_eq!(&c.world(&alive, CLASS, false), &want);
            let mut fresh = caches();
            relist_all(&b, &mut fresh);
            let good = reference_good(&BTreeMap::new(), &b);
            prop_assert_eq!(fresh.world(&alive, CLASS, false), expected(&b, &good, &alive).0);
        }
    }

    #[test]
    fn a_service_that_becomes_a_load_balancer_finds_the_slices_seen_before() {
        let alive = alive();
        let mut c = caches();
        let mut s = Snapshot::default();
        s.nodes.insert("n1".into(), node("n1", 0, None));
        s.pools.insert("p1".into(), pool("p1", true, 0));
        s.advertisements
            .insert("ad1".into(), advertisement("ad1", 0));
        // ClusterIP (type index 1) with a slice on n2.
        s.services
            .insert(key("a", "s1"), service("a", "s1", (1, 0, 1, 0, 0, 0)));
        s.slices
            .insert(key("a", "x1"), slice("a", "x1", 0, &[(1, 0, 0)]));
        relist_all(&s, &mut c);
        assert!(c.services.items.is_empty(), "no ClusterIP Service is kept");
        assert_eq!(c.slices.items.len(), 1, "its slice is, in brief");
        assert!(c.world(&alive, CLASS, false).services.is_empty());

        let g0 = c.generation;
        assert!(c.apply(Change::service(Event::Apply(service(
            "a",
            "s1",
            (0, 0, 1, 0, 0, 0)
        )))));
        assert!(c.generation > g0);
        let w = c.world(&alive, CLASS, false);
        assert_eq!(w.services["a/s1"].serving_nodes, ["n2".to_string()].into());
        assert!(w.services["a/s1"].local && w.services["a/s1"].has_serving_endpoints);

        // Back to ClusterIP: forgotten again.
        assert!(c.apply(Change::service(Event::Apply(service(
            "a",
            "s1",
            (1, 0, 1, 0, 0, 0)
        )))));
        assert!(c.services.items.is_empty());
        assert!(c.world(&alive, CLASS, false).services.is_empty());
    }

    #[test]
    fn a_pool_edit_that_breaks_its_addresses_keeps_the_last_good_ones() {
        let mut c = caches();
        c.apply(Change::pool(Event::Init));
        c.apply(Change::pool(Event::InitApply(pool("p", true, 0))));
        c.apply(Change::pool(Event::InitDone));
        let good = c
            .world
            .pools
            .get("p")
            .cloned()
            .expect("a valid pool is kept");
        // The edit breaks it: the speaker keeps announcing from the last valid addresses,
        // as the controller keeps them assigned.
        c.apply(Change::pool(Event::Apply(pool("p", false, 0))));
        assert_eq!(c.world.pools.get("p"), Some(&good));
        // A pool that was never valid announces nothing; a deleted pool is gone.
        c.apply(Change::pool(Event::Apply(pool("q", false, 0))));
        assert!(!c.world.pools.contains_key("q"));
        c.apply(Change::pool(Event::Delete(pool("p", false, 0))));
        assert!(!c.world.pools.contains_key("p"));
    }

    #[test]
    fn changes_the_world_cannot_see_leave_the_generation_alone() {
        let mut c = caches();
        let mut s = Snapshot::default();
        s.services
            .insert(key("a", "s1"), service("a", "s1", (0, 0, 1, 1, 0, 0)));
        s.services
            .insert(key("a", "s2"), service("a", "s2", (1, 0, 0, 1, 0, 0)));
        relist_all(&s, &mut c);
        let g0 = c.generation;

        // The controller rewrites a LoadBalancer's status conditions; a ClusterIP Service
        // changes; the slice of that ClusterIP Service moves.
        let mut lb = service("a", "s1", (0, 0, 1, 1, 0, 0));
        lb.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].message = "moved".into();
        lb.metadata.resource_version = Some("99".into());
        assert!(!c.apply(Change::service(Event::Apply(lb))));
        assert!(!c.apply(Change::service(Event::Apply(service(
            "a",
            "s2",
            (1, 0, 3, 0, 1, 0)
        )))));
        assert!(c.apply(Change::slice(Event::Apply(slice(
            "a",
            "x2",
            1,
            &[(0, 0, 0)]
        )))));
        assert!(c.apply(Change::slice(Event::Apply(slice(
            "a",
            "x2",
            1,
            &[(1, 0, 0)]
        )))));
        // A kubelet heartbeat rewrites a Node's status.
        assert!(c.apply(Change::node(Event::Apply(node("n1", 0, Some(false))))));
        let g = c.generation;
        let mut beat = node("n1", 0, Some(false));
        beat.metadata.resource_version = Some("8".into());
        assert!(!c.apply(Change::node(Event::Apply(beat))));
        assert_eq!(c.generation, g);

        // A speaker Lease renewal: the cache changes (the clock needs it), the World cannot.
        let l = membership_lease("n1", 0);
        assert!(c.apply(Change::lease(Event::Apply(l))));
        assert!(c.apply(Change::lease(Event::Apply(membership_lease("n1", 30)))));
        assert_eq!(c.generation, g);
        assert_eq!(g, g0 + 1, "only the Node counted");

        // What does: the LoadBalancer's endpoints, its IPs.
        assert!(c.apply(Change::slice(Event::Apply(slice(
            "a",
            "x1",
            0,
            &[(0, 0, 0)]
        )))));
        assert_eq!(c.generation, g + 1);
        assert!(c.apply(Change::service(Event::Apply(service(
            "a",
            "s1",
            (0, 0, 3, 1, 0, 0)
        )))));
        assert_eq!(c.generation, g + 2);
        // A slice that stops naming the LoadBalancer.
        assert!(c.apply(Change::slice(Event::Apply(slice(
            "a",
            "x1",
            3,
            &[(0, 0, 0)]
        )))));
        assert_eq!(c.generation, g + 3);
        assert!(
            !c.slices.items.contains_key("a/x1"),
            "an unlabelled slice is not kept"
        );
    }

    fn membership_lease(node: &str, at: i64) -> Lease {
        unhealthy_lease(node, at, &[])
    }

    /// A speaker Lease as `membership` writes it, publishing `unhealthy`.
    fn unhealthy_lease(node: &str, at: i64, unhealthy: &[&str]) -> Lease {
        let published = crate::membership::Published {
            heartbeat: "198.51.100.11:7473".parse().unwrap(),
            incarnation: 7,
            pubkey: crate::liveness::SigningKey::from_bytes(&[5; 32]).verifying_key(),
        };
        let mut l = crate::membership::lease(
            node,
            Some("uid-1".into()),
            published,
            &crate::membership::Dynamic {
                macs: std::collections::BTreeSet::from([crate::wire::MacAddr::new(
                    2, 0, 0, 0, 0, 0x12,
                )]),
                unhealthy: unhealthy.iter().map(|k| k.to_string()).collect(),
            },
            Duration::from_secs(30),
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + at).unwrap(),
        );
        l.metadata.namespace = Some("ferrolb-system".into());
        l.metadata.resource_version = Some(at.to_string());
        l.metadata.managed_fields = Some(vec![Default::default()]);
        l
    }

    /// The unhealthy Services a speaker Lease publishes are a World input (every speaker
    /// ranks from them): a change bumps the generation, a plain renewal does not.
    #[test]
    fn unhealthy_services_published_in_leases_reach_the_world() {
        let mut c = caches();
        relist_all(&Snapshot::default(), &mut c);
        let g0 = c.generation;
        let set = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();

        assert!(c.apply(Change::lease(Event::Apply(unhealthy_lease(
            "n1",
            0,
            &["a/s1"]
        )))));
        assert_eq!(
            c.world.unhealthy,
            BTreeMap::from([("n1".into(), set(&["a/s1"]))])
        );
        assert_eq!(c.generation, g0 + 1);
        assert!(c.apply(Change::lease(Event::Apply(unhealthy_lease(
            "n1",
            30,
            &["a/s1"]
        )))));
        assert_eq!(c.generation, g0 + 1, "a renewal publishing the same set");
        c.apply(Change::lease(Event::Apply(unhealthy_lease(
            "n2",
            0,
            &["b/s3", "a/s1"],
        ))));
        assert_eq!(c.world.unhealthy["n2"], set(&["a/s1", "b/s3"]));
        assert_eq!(c.generation, g0 + 2);
        c.apply(Change::lease(Event::Apply(unhealthy_lease("n1", 60, &[]))));
        assert!(!c.world.unhealthy.contains_key("n1"), "healthy again");
        assert_eq!(c.generation, g0 + 3);
        c.apply(Change::lease(Event::Delete(unhealthy_lease(
            "n2",
            0,
            &["b/s3"],
        ))));
        assert!(
            c.world.unhealthy.is_empty(),
            "a deleted Lease publishes nothing"
        );
        assert_eq!(c.generation, g0 + 4);
        // A re-list without n1's Lease, which published none: nothing moves.
        c.apply(Change::lease(Event::Init));
        c.apply(Change::lease(Event::InitDone));
        assert_eq!(c.generation, g0 + 4);
    }

    /// Only Local Services with a serving endpoint on this node, a check port and no
    /// opt-out are probed.
    #[test]
    fn health_targets_are_the_local_services_served_here() {
        let mut c = caches();
        let mut s = Snapshot::default();
        // (type, class, ingress mask, policy, tier, externalIPs): LoadBalancer, Local.
        s.services
            .insert(key("a", "s1"), service("a", "s1", (0, 0, 1, 0, 0, 0)));
        // Cluster policy.
        s.services
            .insert(key("a", "s2"), service("a", "s2", (0, 0, 1, 1, 0, 0)));
        // Local, opted out (tier 1).
        s.services
            .insert(key("b", "s1"), service("b", "s1", (0, 0, 1, 0, 1, 0)));
        // Local, its endpoint on n2 only.
        s.services
            .insert(key("b", "s3"), service("b", "s3", (0, 0, 1, 0, 0, 0)));
        for (ns, svc, node) in [("a", 0, 0), ("a", 1, 0), ("b", 0, 0), ("b", 2, 1)] {
            let name = format!("x{svc}");
            s.slices
                .insert(key(ns, &name), slice(ns, &name, svc, &[(node, 0, 0)]));
        }
        relist_all(&s, &mut c);
        assert_eq!(
            c.health_targets("n1"),
            BTreeMap::from([("a/s1".to_string(), 30_001)])
        );
        assert_eq!(
            c.health_targets("n2"),
            BTreeMap::from([("b/s3".to_string(), 30_001)])
        );
        assert!(c.health_targets("n4").is_empty());

        // A port given once the Service already has its IP: no World change, but the
        // targets change with it.
        let (g, n) = (c.generation, c.services_changed);
        let mut moved = service("a", "s1", (0, 0, 1, 0, 0, 0));
        moved.spec.as_mut().unwrap().health_check_node_port = Some(31_000);
        assert!(c.apply(Change::service(Event::Apply(moved))));
        assert_eq!(c.generation, g, "the World does not see the port");
        assert!(c.services_changed > n, "so this says to look again");
        assert_eq!(c.health_targets("n1")["a/s1"], 31_000);
    }

    #[test]
    fn a_slim_lease_gives_the_same_peer_and_renewals() {
        let full = membership_lease("n2", 0);
        let slim = slim_lease(full.clone());
        assert_eq!(world::peer(&slim), world::peer(&full));
        assert!(world::peer(&slim).is_some());
        let none = Default::default();
        assert_eq!(
            world::fleet([&slim], "n1", &none),
            world::fleet([&full], "n1", &none)
        );
        assert!(world::fleet([&slim], "n1", &none).complete);
        assert!(slim.metadata.labels.is_none() && slim.metadata.owner_references.is_none());
        assert!(slim.metadata.managed_fields.is_none());

        let now = tokio::time::Instant::now();
        let (mut a, mut b) = (LeaseClock::default(), LeaseClock::default());
        let later = membership_lease("n2", 30);
        a.observe([&full], now);
        b.observe([&slim], now);
        a.observe([&later], now + Duration::from_secs(60));
        b.observe([&slim_lease(later.clone())], now + Duration::from_secs(60));
        let at = now + Duration::from_secs(120);
        assert_eq!(
            a.peers([&later], "n1", at),
            b.peers([&slim_lease(later.clone())], "n1", at)
        );
        assert!(b.peers([&slim_lease(later)], "n1", at)["n2"].fresh);
    }
}
