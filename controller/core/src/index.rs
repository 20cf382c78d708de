//! The controller's state machine: watch events in, status updates out. Pure — no client,
//! no clock (time is passed in) — so every rule is tested without an API server.
//!
//! ```text
//!   watchers ──apply/delete/reset──▶ Index ──reconcile(now)──▶ [Update] ──▶ writer (leader only)
//!                                      │  caches (pools, services, namespaces, advertisements)
//!                                      └─ Allocator (authoritative only while leading)
//! ```
//!
//! Restart and handover safety: when this replica starts leading, [`Index::start_leading`]
//! rebuilds the allocator from the caches, claiming every IP already published in a
//! Service status (oldest Service first) before any pending Service is served. Updates
//! compare the desired status with the observed one, so a resync or a restart emits no
//! write and no Event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ferrolb_crds::selector::parse_all;
use ferrolb_crds::{
    IPAddressPool, IPAddressPoolStatus, L2Advertisement, L2AdvertisementStatus, conditions,
};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use crate::allocator::{Allocator, ServiceKey};
use crate::external::{self, ExtPool, External};
use crate::pool::{self, condition};
use crate::service::{self, AliasUsed};

/// An Event to record on the object of an [`Update`], once the write succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// `IPAllocated`, `AllocationFailed`, `IPReleased`, `AnnotationAlias`.
    pub reason: String,
    /// The human sentence shown by `kubectl describe`.
    pub note: String,
}

/// A status write the index wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Set a Service's `status.loadBalancer.ingress` and our condition.
    Service {
        /// Which Service.
        key: ServiceKey,
        /// The resourceVersion the update was computed from (optimistic concurrency).
        resource_version: Option<String>,
        /// The IPs to publish, primary family first.
        ingress: Vec<IpAddr>,
        /// Our `ferrolb.io/IPAllocated` condition; `None` removes it (Service no longer ours).
        condition: Option<Condition>,
        /// The Service's whole condition list to write: the one the decision was made on,
        /// with ours replaced (others', such as the speakers', kept as they were).
        conditions: Vec<Condition>,
        /// The Service's UID, for the Events' reference.
        uid: Option<String>,
        /// Events to record once written.
        events: Vec<EventSpec>,
    },
    /// Set only a Service's conditions (its ingress is not ours to touch): our
    /// `ferrolb.io/ExternalIPs` on a Service FerroLB does not load-balance.
    ServiceConditions {
        /// Which Service.
        key: ServiceKey,
        /// The resourceVersion the update was computed from (optimistic concurrency).
        resource_version: Option<String>,
        /// The Service's whole condition list to write, ours replaced.
        conditions: Vec<Condition>,
        /// The Service's UID, for the Events' reference.
        uid: Option<String>,
        /// Events to record once written.
        events: Vec<EventSpec>,
    },
    /// Replace a pool's status.
    Pool {
        /// Which pool.
        name: String,
        /// The full status.
        status: IPAddressPoolStatus,
        /// Events to record once written (the pool became Ready, Invalid or conflicting).
        events: Vec<EventSpec>,
    },
    /// Replace an advertisement's status.
    Advertisement {
        /// Which advertisement.
        name: String,
        /// The full status.
        status: L2AdvertisementStatus,
        /// Events to record once written (the advertisement became Ready or not).
        events: Vec<EventSpec>,
    },
}

/// What the last write for a Service was based on, to avoid writing it twice while the
/// watch catches up.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    resource_version: Option<String>,
    ingress: Vec<IpAddr>,
    condition: Option<(String, String, String)>,
    external: Option<(String, String, String)>,
}

impl Written {
    /// What `svc`'s status shows now.
    fn observed(svc: &Service) -> Self {
        Written {
            resource_version: rv(&svc.metadata),
            ingress: service::status_ips(svc),
            condition: our_condition(svc).map(cond_key),
            external: external::observed(svc).map(cond_key),
        }
    }
}

/// Every condition on `svc`'s status (ours and other writers').
fn conditions_of(svc: &Service) -> Vec<Condition> {
    svc.status
        .as_ref()
        .and_then(|st| st.conditions.clone())
        .unwrap_or_default()
}

/// Which caches have seen their initial list.
#[derive(Clone, Copy, Debug, Default)]
struct Synced {
    pools: bool,
    services: bool,
    namespaces: bool,
    advertisements: bool,
}

/// The controller's whole view of the cluster plus the allocator.
pub struct Index {
    lb_class: String,
    pools: BTreeMap<String, IPAddressPool>,
    advertisements: BTreeMap<String, L2Advertisement>,
    services: HashMap<ServiceKey, Service>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    synced: Synced,
    /// This replica holds the lease.
    leading: bool,
    /// The allocator was rebuilt from fully synced caches in this term: only then is it
    /// authoritative and updated incrementally.
    built: bool,
    alloc: Allocator,
    /// Services to reconcile at the next round.
    dirty: BTreeSet<ServiceKey>,
    /// Handled Services without an assignment, retried whenever capacity may have freed.
    pending: BTreeSet<ServiceKey>,
    /// Why a Service lost its IP, for the IPReleased Event of the next round.
    evicted: HashMap<ServiceKey, String>,
    written: HashMap<ServiceKey, Written>,
    /// Writes the API server refused for good (403, 422: retrying cannot help until
    /// something changes): when to try again, and how many refusals so far.
    rejected: HashMap<Target, (Timestamp, u32)>,
    /// Each pool's last valid addresses (spec entries as written): what holders keep while
    /// its spec is invalid, recorded in its status so a restart knows them too.
    last_valid: HashMap<String, Vec<String>>,
    /// Which Services' cached statuses show each IP that we published (our condition
    /// proves it), to hold back a new holder until the old one's release has landed.
    shown: HashMap<IpAddr, BTreeSet<ServiceKey>>,
    /// Services whose write waits for an IP to disappear from another Service's status.
    deferred: HashMap<IpAddr, BTreeSet<ServiceKey>>,
    written_pools: HashMap<String, (Option<String>, IPAddressPoolStatus)>,
    written_advs: HashMap<String, (Option<String>, L2AdvertisementStatus)>,
    /// Every Service's externalIPs and the pools they may come from.
    external: External,
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.resource_version.clone()
}

/// Our condition on a Service, if present.
pub fn our_condition(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == conditions::IP_ALLOCATED)
}

fn cond_key(c: &Condition) -> (String, String, String) {
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an update writes to, for the backoff of refused writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Service(ServiceKey),
    Pool(String),
    Advertisement(String),
}

impl Target {
    fn of(update: &Update) -> Self {
        match update {
            Update::Service { key, .. } | Update::ServiceConditions { key, .. } => {
                Target::Service(key.clone())
            }
            Update::Pool { name, .. } => Target::Pool(name.clone()),
            Update::Advertisement { name, .. } => Target::Advertisement(name.clone()),
        }
    }
}

/// First wait after a write the API server refused for good; it doubles per refusal.
const REJECTED_FIRST: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait between attempts of a write the API server keeps refusing.
const REJECTED_MAX: std::time::Duration = std::time::Duration::from_secs(300);

impl std::fmt::Debug for Index {
    /// A summary: the caches can hold thousands of objects.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("leading", &self.leading)
            .field("services", &self.services.len())
            .field("pools", &self.pools.len())
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An empty index serving `lb_class` (plus Services without a class).
    pub fn new(lb_class: impl Into<String>) -> Self {
        Self {
            lb_class: lb_class.into(),
            pools: BTreeMap::new(),
            advertisements: BTreeMap::new(),
            services: HashMap::new(),
            namespaces: HashMap::new(),
            synced: Synced::default(),
            leading: false,
            built: false,
            alloc: Allocator::new(),
            dirty: BTreeSet::new(),
            pending: BTreeSet::new(),
            evicted: HashMap::new(),
            written: HashMap::new(),
            last_valid: HashMap::new(),
            rejected: HashMap::new(),
            shown: HashMap::new(),
            deferred: HashMap::new(),
            written_pools: HashMap::new(),
            written_advs: HashMap::new(),
            external: External::default(),
        }
    }

    /// True once every watched kind has delivered its initial list.
    pub fn synced(&self) -> bool {
        let s = self.synced;
        s.pools && s.services && s.namespaces && s.advertisements
    }

    /// Whether this replica currently acts on the index.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// The allocator, for metrics and tests.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Every cached Service (reduced by [`service::slim`]), in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The `spec.loadBalancerClass` served besides "no class".
    pub fn lb_class(&self) -> &str {
        &self.lb_class
    }

    /// Becomes the writer. The allocator is rebuilt from the caches (re-claiming every IP
    /// already in a Service status, oldest first, before anything new is allocated) once
    /// every cache has synced — never from a partial view, where a Service seen before its
    /// pool would lose its IP.
    pub fn start_leading(&mut self) {
        self.leading = true;
        self.built = false;
        if self.synced() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.built = true;
        self.alloc = Allocator::new();
        self.written.clear();
        self.written_pools.clear();
        self.written_advs.clear();
        self.evicted.clear();
        self.pending.clear();
        self.deferred.clear();
        for p in self.pools.values() {
            match pool::parse(p) {
                Ok(cfg) => {
                    self.alloc.upsert_pool(cfg);
                }
                Err(msg) => {
                    // Holders keep their IPs from the last valid addresses (remembered, or
                    // recorded in the status), whatever happened to the spec meanwhile.
                    let name = name_of(p);
                    let last_valid = pool::last_valid(p, self.last_valid.get(&name))
                        .map(|(_, addrs)| pool::last_valid_config(p, addrs));
                    self.alloc.set_pool_invalid_keeping(&name, msg, last_valid);
                }
            }
        }
        // Oldest first, by reference: no copy of the cache.
        let mut order: Vec<(i64, &ServiceKey)> = self
            .services
            .iter()
            .map(|(k, s)| (creation(s), k))
            .collect();
        order.sort();
        for (_, key) in order {
            let svc = &self.services[key];
            let ns = namespace_labels(&self.namespaces, svc);
            claim(&mut self.alloc, &mut self.evicted, &self.lb_class, &ns, svc);
        }
        self.dirty = self.services.keys().cloned().collect();
    }

    /// Stops writing; caches stay warm for a later term.
    pub fn stop_leading(&mut self) {
        self.leading = false;
        self.built = false;
        self.alloc = Allocator::new();
        self.dirty.clear();
        self.pending.clear();
    }

    fn namespace_labels(&self, svc: &Service) -> BTreeMap<String, String> {
        namespace_labels(&self.namespaces, svc)
    }

    fn capacity_changed(&mut self) {
        self.dirty.extend(self.pending.iter().cloned());
    }

    fn pool_changed(&mut self, evicted: Vec<ServiceKey>, why: &str) {
        for key in evicted {
            self.evicted.insert(key.clone(), why.to_owned());
            self.dirty.insert(key);
        }
        self.capacity_changed();
    }

    /// A pool was created or changed.
    pub fn apply_pool(&mut self, p: IPAddressPool) {
        let name = name_of(&p);
        self.rejected.remove(&Target::Pool(name.clone()));
        // Our own status writes come back as pool events after every allocation: when the
        // spec is unchanged the allocator has nothing to learn, and retrying every pending
        // Service each time would cost O(pending) per allocation.
        let same_spec = self
            .pools
            .get(&name)
            .is_some_and(|old| old.spec == p.spec && old.metadata.uid == p.metadata.uid);
        self.pools.insert(name.clone(), p.clone());
        if same_spec && self.built {
            return;
        }
        let last_valid = pool::last_valid(&p, self.last_valid.get(&name));
        if let Some((raw, _)) = &last_valid {
            self.last_valid.insert(name.clone(), raw.clone());
        }
        self.refresh_external_pools();
        if !self.built {
            return;
        }
        let evicted = match pool::parse(&p) {
            Ok(cfg) => self.alloc.upsert_pool(cfg),
            Err(msg) => {
                let keep = last_valid.map(|(_, addrs)| pool::last_valid_config(&p, addrs));
                self.alloc.set_pool_invalid_keeping(&name, msg, keep)
            }
        };
        self.pool_changed(evicted, &format!("its IP is no longer in pool {name}"));
    }

    /// A pool was deleted.
    pub fn delete_pool(&mut self, name: &str) {
        self.pools.remove(name);
        self.last_valid.remove(name);
        self.written_pools.remove(name);
        self.refresh_external_pools();
        if !self.built {
            return;
        }
        let evicted = self.alloc.remove_pool(name);
        self.pool_changed(evicted, &format!("pool {name} was deleted"));
    }

    /// Replaces every pool after a re-list, deleting those that vanished.
    pub fn reset_pools(&mut self, list: Vec<IPAddressPool>) {
        let keep: BTreeSet<String> = list.iter().map(name_of).collect();
        let gone: Vec<String> = self
            .pools
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.delete_pool(&n);
        }
        for p in list {
            self.apply_pool(p);
        }
        self.synced.pools = true;
    }

    /// Gives the externalIPs rule the pools as they are now (the last valid addresses of
    /// an invalid pool, as its holders and the speakers keep them); wakes the Services
    /// listing externalIPs when that changes anything.
    fn refresh_external_pools(&mut self) {
        let pools: Vec<ExtPool> = self
            .pools
            .iter()
            .filter_map(|(name, p)| {
                let (_, addresses) = pool::last_valid(p, self.last_valid.get(name))?;
                Some(ExtPool {
                    name: name.clone(),
                    addresses,
                    namespaces: p.spec.external_ips.as_ref().map(|e| e.namespaces.clone()),
                })
            })
            .collect();
        let wake = self.external.set_pools(pools);
        if self.built {
            self.dirty.extend(wake);
        }
    }

    /// An advertisement was created or changed (the controller only validates it).
    pub fn apply_advertisement(&mut self, a: L2Advertisement) {
        self.rejected.remove(&Target::Advertisement(name_of(&a)));
        self.advertisements.insert(name_of(&a), a);
    }

    /// An advertisement was deleted.
    pub fn delete_advertisement(&mut self, name: &str) {
        self.advertisements.remove(name);
        self.written_advs.remove(name);
    }

    /// Replaces every advertisement after a re-list.
    pub fn reset_advertisements(&mut self, list: Vec<L2Advertisement>) {
        self.advertisements = list.into_iter().map(|a| (name_of(&a), a)).collect();
        self.synced.advertisements = true;
    }

    /// A namespace was created or its labels changed.
    pub fn apply_namespace(&mut self, ns: Namespace) {
        let name = name_of(&ns);
        let labels = ns.metadata.labels.unwrap_or_default();
        if self.namespaces.get(&name) == Some(&labels) {
            return;
        }
        self.namespaces.insert(name.clone(), labels);
        // Assigned Services keep their IPs; pending ones may now match a pool.
        let affected: Vec<ServiceKey> = self
            .pending
            .iter()
            .filter(|k| k.namespace == name)
            .cloned()
            .collect();
        self.dirty.extend(affected);
    }

    /// A namespace was deleted.
    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Replaces every namespace after a re-list.
    pub fn reset_namespaces(&mut self, list: Vec<Namespace>) {
        self.namespaces.clear();
        for ns in list {
            self.apply_namespace(ns);
        }
        self.synced.namespaces = true;
    }

    /// Records what `svc`'s status shows (None: it is gone) in `shown`, and wakes the
    /// Services waiting for an IP it no longer shows.
    fn track_shown(&mut self, key: &ServiceKey, svc: Option<&Service>) {
        let ours = |s: &Service| {
            if our_condition(s).is_some() {
                service::status_ips(s)
            } else {
                Vec::new()
            }
        };
        let old = self.services.get(key).map(ours).unwrap_or_default();
        let new = svc.map(ours).unwrap_or_default();
        for ip in old.iter().filter(|ip| !new.contains(ip)) {
            if let Some(keys) = self.shown.get_mut(ip) {
                keys.remove(key);
                if keys.is_empty() {
                    self.shown.remove(ip);
                }
            }
            if let Some(waiting) = self.deferred.remove(ip) {
                self.dirty.extend(waiting);
            }
        }
        for ip in new {
            self.shown.entry(ip).or_default().insert(key.clone());
        }
    }

    /// An IP of `ingress` that `key` would newly show while another Service's status still
    /// shows it although that Service no longer holds it (its release is in flight).
    fn shown_elsewhere(
        &self,
        key: &ServiceKey,
        observed: &[IpAddr],
        ingress: &[IpAddr],
    ) -> Option<IpAddr> {
        ingress
            .iter()
            .copied()
            .filter(|ip| !observed.contains(ip))
            .find(|ip| {
                self.shown.get(ip).is_some_and(|keys| {
                    keys.iter().any(|k| {
                        k != key && !self.alloc.assigned(k).is_some_and(|held| held.contains(ip))
                    })
                })
            })
    }

    /// A Service was created or changed.
    pub fn apply_service(&mut self, svc: Service) {
        let svc = service::slim(svc);
        let key = service::key_of(&svc);
        // Edited (or its status moved on): a refused write may pass now.
        self.rejected.remove(&Target::Service(key.clone()));
        let first_sight = !self.services.contains_key(&key);
        self.track_shown(&key, Some(&svc));
        let wake = self
            .external
            .track(&key, self.services.get(&key), Some(&svc));
        self.services.insert(key.clone(), svc);
        if self.built {
            self.dirty.extend(wake);
            if first_sight {
                let svc = &self.services[&key];
                let ns = namespace_labels(&self.namespaces, svc);
                claim(&mut self.alloc, &mut self.evicted, &self.lb_class, &ns, svc);
            }
            self.dirty.insert(key);
        }
    }

    /// A Service was deleted: its IPs go back to the pool.
    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.track_shown(key, None);
        let wake = self.external.track(key, self.services.get(key), None);
        if self.built {
            self.dirty.extend(wake);
        }
        self.services.remove(key);
        self.written.remove(key);
        self.pending.remove(key);
        self.dirty.remove(key);
        let loosened = self.alloc.loosened();
        if self.built && (!self.alloc.release(key).is_empty() || self.alloc.loosened() != loosened)
        {
            self.capacity_changed();
        }
    }

    /// Replaces every Service after a re-list.
    pub fn reset_services(&mut self, list: Vec<Service>) {
        let keep: BTreeSet<ServiceKey> = list.iter().map(service::key_of).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_service(&k);
        }
        for s in list {
            self.apply_service(s);
        }
        self.synced.services = true;
    }

    /// A write failed: forget it so the next round retries.
    pub fn write_failed(&mut self, update: &Update) {
        match update {
            Update::Service { key, .. } | Update::ServiceConditions { key, .. } => {
                self.written.remove(key);
                self.dirty.insert(key.clone());
            }
            Update::Pool { name, .. } => {
                self.written_pools.remove(name);
            }
            Update::Advertisement { name, .. } => {
                self.written_advs.remove(name);
            }
        }
    }

    /// The API server refused a write for good (403, 422): retry it later, backing off
    /// (10 s doubling to 5 min), not every round; a change of the object retries at once.
    pub fn write_rejected(&mut self, update: &Update, now: Timestamp) {
        self.write_failed(update);
        let target = Target::of(update);
        let refusals = self.rejected.get(&target).map_or(0, |(_, n)| *n) + 1;
        let wait = REJECTED_FIRST
            .saturating_mul(1 << refusals.min(16).saturating_sub(1))
            .min(REJECTED_MAX);
        let until = now
            .checked_add(k8s_openapi::jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .unwrap_or(now);
        self.rejected.insert(target, (until, refusals));
    }

    /// Whether `target`'s write waits after a refusal at `now`.
    fn backing_off(&self, target: &Target, now: Timestamp) -> bool {
        self.rejected
            .get(target)
            .is_some_and(|(until, _)| *until > now)
    }

    /// Computes the writes that bring the cluster to the desired state. Empty unless this
    /// replica leads and every cache has synced.
    pub fn reconcile(&mut self, now: Timestamp) -> Vec<Update> {
        if !self.leading || !self.synced() {
            return Vec::new();
        }
        if !self.built {
            self.rebuild();
        }
        let mut updates = Vec::new();
        // A release or a loosened holder in one pass may let a pending Service fit in the
        // next; a few passes settle chains of those within one round.
        // Refused writes whose wait is over are tried again.
        let due: Vec<ServiceKey> = self
            .rejected
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .filter_map(|(t, _)| match t {
                Target::Service(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        self.dirty.extend(due);
        let mut waiting = BTreeSet::new();
        for _ in 0..4 {
            let (later, mut batch): (Vec<ServiceKey>, Vec<ServiceKey>) =
                std::mem::take(&mut self.dirty)
                    .into_iter()
                    .partition(|k| self.backing_off(&Target::Service(k.clone()), now));
            waiting.extend(later);
            batch.sort_by_key(|k| (self.services.get(k).map(creation), k.clone()));
            for key in batch {
                if let Some(u) = self.reconcile_service(&key, now) {
                    updates.retain(|old: &Update| {
                        !matches!(old, Update::Service { key: k, .. }
                            | Update::ServiceConditions { key: k, .. } if *k == key)
                    });
                    updates.push(u);
                }
            }
            if self.dirty.is_empty() {
                break;
            }
        }
        // Those still waiting stay dirty for a later round.
        self.dirty.extend(waiting);
        // Clear before set, judged on the round's final state (a holder reconciled later
        // in the round may have let an IP go): while another Service's status still shows
        // one of a Service's new IPs, its write waits for the watch to show the release,
        // so no reader ever sees an IP on two incompatible Services.
        updates.retain(|u| {
            let Update::Service { key, ingress, .. } = u else {
                return true;
            };
            let observed = self
                .services
                .get(key)
                .map(service::status_ips)
                .unwrap_or_default();
            match self.shown_elsewhere(key, &observed, ingress) {
                None => true,
                Some(ip) => {
                    tracing::debug!(service = %key, %ip, "waiting for the previous holder's release");
                    self.written.remove(key);
                    self.deferred.entry(ip).or_default().insert(key.clone());
                    false
                }
            }
        });
        updates.extend(self.pool_updates(now));
        updates.extend(self.advertisement_updates(now));
        updates
    }

    fn reconcile_service(&mut self, key: &ServiceKey, now: Timestamp) -> Option<Update> {
        let svc = self.services.get(key)?.clone();
        let observed_ips = service::status_ips(&svc);
        let observed_cond = our_condition(&svc).cloned();
        let ext = self.external.condition(&svc, now);
        let old_conds = conditions_of(&svc);

        if !service::is_handled(&svc, &self.lb_class) {
            // Ours only if this controller served it until now (it holds its IPs or had it
            // pending): another FerroLB serving another class writes the same condition
            // type, and its Services must never be touched. A class changed while no one
            // led leaves a stale status behind, never a cleared foreign one.
            let was_ours = self.alloc.assigned(key).is_some() || self.pending.remove(key);
            let loosened = self.alloc.loosened();
            self.alloc.release(key);
            if self.alloc.loosened() != loosened {
                self.capacity_changed();
            }
            // Clear only what we published: our condition proves the ingress is ours.
            if !was_ours || observed_cond.is_none() {
                return self.conditions_update(&svc, ext);
            }
            let note = format!(
                "released {}: the Service is no longer a FerroLB LoadBalancer",
                join(&observed_ips)
            );
            let events = if observed_ips.is_empty() {
                vec![]
            } else {
                vec![EventSpec {
                    warning: false,
                    reason: "IPReleased".into(),
                    note,
                }]
            };
            return self.service_update(&svc, Vec::new(), None, ext, events);
        }

        if self.alloc.assigned(key).is_none() && !self.namespaces.contains_key(&key.namespace) {
            // Pools choose Services by namespace labels, and an assignment is never moved
            // to a better pool: deciding before the Namespace has arrived (a GitOps apply
            // of a namespace and its Service together) could put it in the wrong pool for
            // good. Its arrival retries the pending Services of that namespace.
            self.pending.insert(key.clone());
            return None;
        }
        let ns = self.namespace_labels(&svc);
        let (result, aliases, pool_name) = match service::parse(&svc, &ns) {
            Ok(parsed) => {
                let loosened = self.alloc.loosened();
                let result = self.alloc.assign_preferring(&parsed.request, &observed_ips);
                if self.alloc.loosened() != loosened {
                    // This Service let go of an IP or changed how it uses one: whoever
                    // waits for an IP in use or a sharing conflict may fit now.
                    self.capacity_changed();
                }
                let pool = result
                    .as_ref()
                    .ok()
                    .and_then(|ips| ips.first())
                    .and_then(|ip| self.alloc.pool_of(*ip))
                    .map(str::to_owned);
                (
                    result.map_err(|e| (e.reason(), e.to_string())),
                    parsed.aliases,
                    pool,
                )
            }
            Err(msg) => {
                // A bad annotation never takes an assigned IP away; it is reported. Unless
                // the rest of the edit (ports, sharing key, policy) makes the IP clash with
                // its other holders: one IP is never on two incompatible Services.
                let loosened = self.alloc.loosened();
                let kept = match service::parse(&service::without_requests(&svc), &ns) {
                    Ok(rest) => self.alloc.keep(&rest.request),
                    Err(_) => self
                        .alloc
                        .assigned(key)
                        .map(<[IpAddr]>::to_vec)
                        .unwrap_or_default(),
                };
                if self.alloc.loosened() != loosened {
                    self.capacity_changed();
                }
                let msg = if kept.is_empty() {
                    msg
                } else {
                    format!("{msg} (keeping {})", join(&kept))
                };
                (Err(("InvalidRequest", msg)), Vec::new(), None)
            }
        };
        let ingress = match &result {
            Ok(ips) => ips.clone(),
            Err(_) => self
                .alloc
                .assigned(key)
                .map(<[IpAddr]>::to_vec)
                .unwrap_or_default(),
        };
        if ingress.is_empty() {
            self.pending.insert(key.clone());
        } else {
            self.pending.remove(key);
        }
        let generation = svc.metadata.generation;
        let cond = match &result {
            Ok(ips) => condition(
                &old_conds,
                conditions::IP_ALLOCATED,
                true,
                "Allocated",
                &format!(
                    "assigned {} from pool {}",
                    join(ips),
                    pool_name.as_deref().unwrap_or("?")
                ),
                generation,
                now,
            ),
            Err((reason, msg)) => condition(
                &old_conds,
                conditions::IP_ALLOCATED,
                false,
                reason,
                msg,
                generation,
                now,
            ),
        };

        let mut events = Vec::new();
        let released: Vec<IpAddr> = observed_ips
            .iter()
            .filter(|ip| !ingress.contains(ip))
            .copied()
            .collect();
        if !released.is_empty() {
            let why = self.evicted.remove(key).unwrap_or_else(|| match &result {
                Ok(_) => "the Service's request changed".to_owned(),
                Err((_, msg)) => msg.clone(),
            });
            events.push(EventSpec {
                warning: true,
                reason: "IPReleased".into(),
                note: format!("released {}: {why}", join(&released)),
            });
        } else {
            self.evicted.remove(key);
        }
        if ingress != observed_ips && !ingress.is_empty() && result.is_ok() {
            events.push(EventSpec {
                warning: false,
                reason: "IPAllocated".into(),
                note: cond.message.clone(),
            });
            events.extend(aliases.iter().map(alias_event));
        }
        if let Err((_, msg)) = &result {
            let same = observed_cond
                .as_ref()
                .is_some_and(|c| cond_key(c) == cond_key(&cond));
            if !same {
                events.push(EventSpec {
                    warning: true,
                    reason: "AllocationFailed".into(),
                    note: msg.clone(),
                });
            }
        }
        self.service_update(&svc, ingress, Some(cond), ext, events)
    }

    /// Emits a conditions-only update when our `ferrolb.io/ExternalIPs` condition of a
    /// Service FerroLB does not load-balance changes.
    fn conditions_update(&mut self, svc: &Service, ext: Option<Condition>) -> Option<Update> {
        let key = service::key_of(svc);
        let observed = Written::observed(svc);
        let desired = Written {
            external: ext.as_ref().map(cond_key),
            ..observed.clone()
        };
        if observed == desired || self.written.get(&key) == Some(&desired) {
            return None;
        }
        self.written.insert(key.clone(), desired);
        let events = external::event(external::observed(svc), ext.as_ref())
            .into_iter()
            .collect();
        Some(Update::ServiceConditions {
            key,
            resource_version: rv(&svc.metadata),
            conditions: ferrolb_crds::condition::replace(
                &conditions_of(svc),
                conditions::EXTERNAL_IPS,
                ext,
            ),
            uid: svc.metadata.uid.clone(),
            events,
        })
    }

    /// Emits an update unless the observed status (or our in-flight write) already says it.
    fn service_update(
        &mut self,
        svc: &Service,
        ingress: Vec<IpAddr>,
        cond: Option<Condition>,
        ext: Option<Condition>,
        mut events: Vec<EventSpec>,
    ) -> Option<Update> {
        let key = service::key_of(svc);
        let observed = Written::observed(svc);
        let desired = Written {
            ingress: ingress.clone(),
            condition: cond.as_ref().map(cond_key),
            external: ext.as_ref().map(cond_key),
            ..observed.clone()
        };
        if observed == desired || self.written.get(&key) == Some(&desired) {
            return None;
        }
        self.written.insert(key.clone(), desired);
        events.extend(external::event(external::observed(svc), ext.as_ref()));
        let old = conditions_of(svc);
        Some(Update::Service {
            key,
            resource_version: rv(&svc.metadata),
            ingress,
            conditions: ferrolb_crds::condition::replace(
                &ferrolb_crds::condition::replace(&old, conditions::IP_ALLOCATED, cond.clone()),
                conditions::EXTERNAL_IPS,
                ext,
            ),
            condition: cond,
            uid: svc.metadata.uid.clone(),
            events,
        })
    }

    fn pool_updates(&mut self, now: Timestamp) -> Vec<Update> {
        let mut out = Vec::new();
        for (name, p) in &self.pools {
            let Some(state) = self.alloc.pool_state(name) else {
                continue;
            };
            if self.backing_off(&Target::Pool(name.clone()), now) {
                continue;
            }
            let last_valid = self.last_valid.get(name).cloned().unwrap_or_default();
            let status =
                pool::desired_status(p, &state, self.alloc.pool_stats(name), last_valid, now);
            if p.status.as_ref() == Some(&status) {
                continue;
            }
            let stamp = (rv(&p.metadata), status.clone());
            if self.written_pools.get(name) == Some(&stamp) {
                continue;
            }
            self.written_pools.insert(name.clone(), stamp);
            let old = p
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let events = ready_change_event(old, &status.conditions, "Pool")
                .into_iter()
                .collect();
            out.push(Update::Pool {
                name: name.clone(),
                status,
                events,
            });
        }
        out
    }

    fn advertisement_updates(&mut self, now: Timestamp) -> Vec<Update> {
        let mut out = Vec::new();
        for (name, a) in &self.advertisements {
            if self.backing_off(&Target::Advertisement(name.clone()), now) {
                continue;
            }
            let old = a.status.clone().unwrap_or_default().conditions;
            let mut problems = Vec::new();
            let unknown: Vec<&str> = a
                .spec
                .ip_address_pools
                .iter()
                .filter(|p| !self.pools.contains_key(*p))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                problems.push((
                    "UnknownPools",
                    format!("unknown pools: {}", unknown.join(", ")),
                ));
            }
            for (field, sels) in [
                ("ipAddressPoolSelectors", &a.spec.ip_address_pool_selectors),
                ("nodeSelectors", &a.spec.node_selectors),
                ("serviceSelectors", &a.spec.service_selectors),
            ] {
                if let Err(e) = parse_all(field, sels) {
                    problems.push(("InvalidSelector", e));
                }
            }
            let invalid = problems.iter().any(|(r, _)| *r == "InvalidSelector");
            let (ready, reason, message) = match problems.first() {
                None => (true, "Ready", "the advertisement is in use".to_owned()),
                Some((reason, _)) => (
                    false,
                    *reason,
                    problems
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            };
            let gen_ = a.metadata.generation;
            let mut conds = vec![condition(
                &old,
                conditions::READY,
                ready,
                reason,
                &message,
                gen_,
                now,
            )];
            let (ireason, imsg) = if invalid {
                ("InvalidSelector", message.clone())
            } else {
                ("Clear", "no invalid".to_owned())
            };
            conds.push(condition(
                &old,
                conditions::INVALID,
                invalid,
                ireason,
                &imsg,
                gen_,
                now,
            ));
            let status = L2AdvertisementStatus { conditions: conds };
            if a.status.as_ref() == Some(&status) {
                continue;
            }
            let stamp = (rv(&a.metadata), status.clone());
            if self.written_advs.get(name) == Some(&stamp) {
                continue;
            }
            self.written_advs.insert(name.clone(), stamp);
            let events = ready_change_event(&old, &status.conditions, "Advertisement")
                .into_iter()
                .collect();
            out.push(Update::Advertisement {
                name: name.clone(),
                status,
                events,
            });
        }
        out
    }
}

/// An Event when the `Ready` condition changes status or reason (never on resync):
/// `PoolReady` / `PoolInvalid` / `PoolConflict`, `AdvertisementReady` / `AdvertisementUnknownPools` …
fn ready_change_event(old: &[Condition], new: &[Condition], kind: &str) -> Option<EventSpec> {
    let find = |cs: &[Condition]| {
        cs.iter()
            .find(|c| c.type_ == conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let now = new.iter().find(|c| c.type_ == conditions::READY)?;
    if find(old) == find(new) {
        return None;
    }
    let ready = now.status == "True";
    let reason = if ready {
        format!("{kind}Ready")
    } else {
        format!("{kind}{}", now.reason)
    };
    Some(EventSpec {
        warning: !ready,
        reason,
        note: now.message.clone(),
    })
}

fn alias_event(a: &AliasUsed) -> EventSpec {
    EventSpec {
        warning: false,
        reason: "AnnotationAlias".into(),
        note: format!("honoured {} as {}", a.found, a.canonical),
    }
}

/// Claims the IPs `svc`'s status shows (restart and handover safety), recording in
/// `evicted` why any could not be kept. A free function over the fields it needs, so the
/// caller can pass a Service borrowed from the cache.
fn claim(
    alloc: &mut Allocator,
    evicted: &mut HashMap<ServiceKey, String>,
    lb_class: &str,
    ns: &BTreeMap<String, String>,
    svc: &Service,
) {
    if !service::is_handled(svc, lb_class) {
        return;
    }
    let ips = service::status_ips(svc);
    if ips.is_empty() {
        return;
    }
    // A request that does not parse (a bad edit) must not cost the IPs the Service
    // holds: claim them as if it requested nothing; the next round reports the error.
    let parsed =
        service::parse(svc, ns).or_else(|_| service::parse(&service::without_requests(svc), ns));
    if let Ok(parsed) = parsed {
        // An IP no longer in any pool (one family of the pool shrank while no one led)
        // goes alone: the Service keeps the others rather than losing all and being
        // allocated anew behind younger Services.
        let (keep, gone): (Vec<IpAddr>, Vec<IpAddr>) =
            ips.iter().partition(|ip| alloc.pool_of(**ip).is_some());
        let key = service::key_of(svc);
        if !gone.is_empty() {
            evicted.insert(
                key.clone(),
                format!("{} is in no IPAddressPool any more", join(&gone)),
            );
        }
        if keep.is_empty() {
            return;
        }
        // A failed claim (held incompatibly by an older Service) leaves the Service to
        // be allocated again, with an Event saying why.
        if let Err(e) = alloc.claim(&parsed.request, &keep) {
            evicted.insert(key, format!("{} could not be kept: {e}", join(&keep)));
        }
    }
}

/// The labels of `svc`'s namespace (empty when unknown: callers wait for it first).
fn namespace_labels(
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    svc: &Service,
) -> BTreeMap<String, String> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    namespaces.get(ns).cloned().unwrap_or_default()
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

fn creation(svc: &Service) -> i64 {
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second())
}

#[cfg(test)]
#[path = "index_proptests.rs"]
mod proptests;

#[cfg(test)]
#[path = "index_external_tests.rs"]
mod external_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_crds::IPAddressPoolSpec;
    use k8s_openapi::api::core::v1::{ServiceSpec, ServiceStatus};

    pub(super) fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    pub(super) fn mk_pool(name: &str, addrs: &[&str]) -> IPAddressPool {
        let mut p = IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addrs.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
                external_ips: None,
            },
        );
        p.metadata.resource_version = Some("1".into());
        p
    }

    pub(super) fn mk_service(name: &str, created: i64) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some("1".into());
        s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            t(created),
        ));
        s.spec = Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..Default::default()
        });
        s
    }

    pub(super) fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    /// An index that has synced and leads.
    pub(super) fn leading(pools: Vec<IPAddressPool>, services: Vec<Service>) -> Index {
        let mut i = Index::new(ferrolb_crds::DEFAULT_LB_CLASS);
        i.reset_pools(pools);
        i.reset_services(services);
        i.reset_namespaces(vec![mk_namespace("ns", &[])]);
        i.reset_advertisements(vec![]);
        i.start_leading();
        i
    }

    pub(super) fn mk_namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    /// What the API server would hold after the writer applied `u`.
    fn written(svc: &Service, u: &Update, rv: &str) -> Service {
        let Update::Service {
            ingress, condition, ..
        } = u
        else {
            panic!("not a service update")
        };
        let mut s = svc.clone();
        s.metadata.resource_version = Some(rv.into());
        s.status = Some(ServiceStatus {
            load_balancer: Some(service::lb_status(ingress)),
            conditions: condition.clone().map(|c| vec![c]),
        });
        s
    }

    pub(super) fn service_updates(us: &[Update]) -> Vec<&Update> {
        us.iter()
            .filter(|u| matches!(u, Update::Service { .. }))
            .collect()
    }

    #[test]
    fn nothing_is_written_before_sync_or_leadership() {
        let mut i = Index::new(ferrolb_crds::DEFAULT_LB_CLASS);
        i.apply_pool(mk_pool("p", &["203.0.113.0/30"]));
        i.apply_service(mk_service("a", 1));
        assert!(i.reconcile(t(10)).is_empty(), "not leading");
        i.start_leading();
        assert!(i.reconcile(t(10)).is_empty(), "caches not synced");
    }

    #[test]
    fn one_write_and_one_event_per_change_none_on_resync() {
        let svc = mk_service("a", 1);
        let mut i = leading(vec![mk_pool("p", &["203.0.113.0/30"])], vec![svc.clone()]);
        let us = i.reconcile(t(10));
        let su = service_updates(&us);
        assert_eq!(su.len(), 1);
        let Update::Service {
            ingress, events, ..
        } = su[0]
        else {
            unreachable!()
        };
        assert_eq!(ingress, &["203.0.113.0".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["IPAllocated"]
        );
        // The watch has not caught up yet: a second round writes nothing.
        i.apply_service(svc.clone());
        assert!(
            service_updates(&i.reconcile(t(11))).is_empty(),
            "in-flight write repeated"
        );
        // The watch delivers our write; resyncs and a restart write nothing.
        let after = written(&svc, su[0], "2");
        i.apply_service(after.clone());
        assert!(service_updates(&i.reconcile(t(12))).is_empty());
        i.reset_services(vec![after.clone()]);
        assert!(
            service_updates(&i.reconcile(t(13))).is_empty(),
            "re-list is a resync"
        );
        i.stop_leading();
        i.start_leading();
        assert!(
            service_updates(&i.reconcile(t(14))).is_empty(),
            "new term re-claims, writes nothing"
        );
    }

    #[test]
    fn leadership_before_sync_never_loses_a_claim() {
        // The lease can be won before the caches load, and Services may load before pools:
        // the claims must wait for the full view.
        let mut i = Index::new(ferrolb_crds::DEFAULT_LB_CLASS);
        i.start_leading();
        let u = Update::Service {
            key: key("a"),
            resource_version: None,
            ingress: vec!["203.0.113.2".parse().unwrap()],
            condition: None,
            conditions: vec![],
            uid: None,
            events: vec![],
        };
        i.reset_services(vec![written(&mk_service("a", 1), &u, "3")]);
        i.reset_namespaces(vec![]);
        i.reset_advertisements(vec![]);
        assert!(i.reconcile(t(5)).is_empty(), "pools not synced yet");
        i.reset_pools(vec![mk_pool("p", &["203.0.113.0/30"])]);
        let us = i.reconcile(t(6));
        assert_eq!(
            i.allocator().assigned(&key("a")),
            Some(&["203.0.113.2".parse::<IpAddr>().unwrap()][..])
        );
        for u in service_updates(&us) {
            let Update::Service {
                ingress, events, ..
            } = u
            else {
                unreachable!()
            };
            assert_eq!(ingress, &["203.0.113.2".parse::<IpAddr>().unwrap()]);
            assert!(
                events.iter().all(|e| e.reason != "IPReleased"),
                "{events:?}"
            );
        }
    }

    #[test]
    fn a_failed_write_is_retried() {
        let svc = mk_service("a", 1);
        let mut i = leading(vec![mk_pool("p", &["203.0.113.0/30"])], vec![svc]);
        let us = i.reconcile(t(10));
        let u = service_updates(&us)[0].clone();
        i.write_failed(&u);
        let again = i.reconcile(t(11));
        let su = service_updates(&again);
        assert_eq!(su.len(), 1, "retried");
        let (
            Update::Service {
                key: k1,
                ingress: i1,
                ..
            },
            Update::Service {
                key: k2,
                ingress: i2,
                ..
            },
        ) = (&u, su[0])
        else {
            unreachable!()
        };
        assert_eq!((k1, i1), (k2, i2));
    }

    #[test]
    fn restart_reclaims_oldest_first_and_reallocates_the_loser() {
        // Two Services claim the same IP in their status (e.g. a bug before migration):
        // the older keeps it, the younger gets a new one with an IPReleased Event.
        let p = mk_pool("p", &["203.0.113.0/30"]);
        let base = |n: &str, c| {
            let s = mk_service(n, c);
            let u = Update::Service {
                key: key(n),
                resource_version: None,
                ingress: vec!["203.0.113.2".parse().unwrap()],
                condition: None,
                conditions: vec![],
                uid: None,
                events: vec![],
            };
            written(&s, &u, "5")
        };
        let mut i = leading(vec![p], vec![base("young", 20), base("old", 10)]);
        let us = i.reconcile(t(30));
        let su = service_updates(&us);
        let by = |n: &str| {
            su.iter()
                .find_map(|u| match u {
                    Update::Service {
                        key,
                        ingress,
                        events,
                        ..
                    } if key.name == n => Some((ingress.clone(), events.clone())),
                    _ => None,
                })
                .unwrap()
        };
        let (old_ips, _) = by("old");
        assert_eq!(
            old_ips,
            ["203.0.113.2".parse::<IpAddr>().unwrap()],
            "the older keeps its IP"
        );
        let (young_ips, young_events) = by("young");
        assert_eq!(young_ips, ["203.0.113.0".parse::<IpAddr>().unwrap()]);
        let reasons: Vec<_> = young_events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["IPReleased", "IPAllocated"]);
    }

    #[test]
    fn pool_deletion_evicts_with_a_reason_and_pending_services_retry() {
        let svc = mk_service("a", 1);
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/32"])],
            vec![svc.clone(), mk_service("b", 2)],
        );
        let us = i.reconcile(t(10));
        let a_update = service_updates(&us)
            .into_iter()
            .find(|u| matches!(u, Update::Service { key, .. } if key.name == "a"))
            .unwrap()
            .clone();
        i.apply_service(written(&svc, &a_update, "2"));
        assert_eq!(
            i.allocator().assigned(&key("b")),
            None,
            "b waits: the pool is full"
        );
        // A second pool appears: b is retried without any event on b itself.
        i.apply_pool(mk_pool("q", &["203.0.113.8/32"]));
        let us = i.reconcile(t(11));
        assert!(service_updates(&us).iter().any(|u| matches!(u, Update::Service { key, ingress, .. } if key.name == "b" && !ingress.is_empty())));
        // Deleting p evicts a, and says why.
        i.delete_pool("p");
        let us = i.reconcile(t(12));
        let Some(Update::Service {
            ingress, events, ..
        }) = service_updates(&us)
            .into_iter()
            .find(|u| matches!(u, Update::Service { key, .. } if key.name == "a"))
        else {
            panic!("a not updated")
        };
        assert!(ingress.is_empty());
        assert!(
            events
                .iter()
                .any(|e| e.reason == "IPReleased" && e.note.contains("pool p was deleted")),
            "{events:?}"
        );
    }

    /// The API server's side of the loop: applies every Service update as the writer would
    /// and feeds the result back like the watch, until nothing more is written. Returns
    /// the ingress IPs of every Service.
    pub(super) fn settle(i: &mut Index, now: i64) -> BTreeMap<String, Vec<IpAddr>> {
        for round in 0..10 {
            let us = i.reconcile(t(now + round));
            let su: Vec<Update> = service_updates(&us).into_iter().cloned().collect();
            if su.is_empty() {
                break;
            }
            for u in &su {
                let Update::Service { key, .. } = u else {
                    unreachable!()
                };
                let svc = i
                    .services
                    .get(key)
                    .cloned()
                    .expect("updated Service is cached");
                i.apply_service(written(&svc, u, &format!("{}", 100 + round)));
            }
        }
        i.services
            .iter()
            .map(|(k, s)| (k.name.clone(), service::status_ips(s)))
            .collect()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn dual(name: &str, created: i64) -> Service {
        let mut s = mk_service(name, created);
        let spec = s.spec.as_mut().unwrap();
        spec.ip_family_policy = Some("PreferDualStack".into());
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        s
    }

    /// A GitOps replace deletes a pool and creates it again; both land in one round. The
    /// holders must come back to the IPs their status shows, not to the lowest free ones.
    #[test]
    fn pool_deleted_and_recreated_in_one_step_moves_nothing() {
        let pool = || mk_pool("p", &["203.0.113.0/29"]);
        let mut i = leading(
            vec![pool()],
            vec![mk_service("a", 1), mk_service("b", 2), mk_service("c", 3)],
        );
        let before = settle(&mut i, 10);
        assert_eq!(before["b"], ips(&["203.0.113.1"]));
        i.delete_service(&key("a")); // .0 is free now: the lowest free IP
        i.delete_pool("p");
        i.apply_pool(pool());
        let after = settle(&mut i, 20);
        assert_eq!(after["b"], before["b"], "b moved");
        assert_eq!(after["c"], before["c"], "c moved");
    }

    /// Shrinking the IPv6 half of a dual-stack pool takes a Service's IPv6 address away; its
    /// IPv4 address must stay, even when a lower one is free.
    #[test]
    fn shrinking_one_family_keeps_the_other() {
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/30", "2001:db8::/126"])],
            vec![dual("a", 1), dual("b", 2)],
        );
        let before = settle(&mut i, 10);
        assert_eq!(before["b"], ips(&["203.0.113.1", "2001:db8::1"]));
        i.delete_service(&key("a"));
        i.apply_pool(mk_pool("p", &["203.0.113.0/30", "2001:db8::2/127"]));
        let after = settle(&mut i, 20);
        assert_eq!(after["b"], ips(&["203.0.113.1", "2001:db8::2"]));
    }

    /// a gives up its IP (it moves to another class) and b is waiting for one: b's write
    /// must wait until a's release has landed, or a reader could see the IP on both.
    #[test]
    fn an_ip_is_cleared_from_its_old_holder_before_the_new_one_gets_it() {
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/32"])],
            vec![mk_service("a", 1), mk_service("b", 2)],
        );
        let before = settle(&mut i, 10);
        assert_eq!(before["a"], ips(&["203.0.113.0"]));
        assert!(before["b"].is_empty());
        let mut a = i.services[&key("a")].clone();
        a.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
        i.apply_service(a.clone());
        let us = i.reconcile(t(20));
        let names: Vec<(String, Vec<IpAddr>)> = service_updates(&us)
            .into_iter()
            .map(|u| match u {
                Update::Service { key, ingress, .. } => (key.name.clone(), ingress.clone()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            names,
            [("a".to_string(), vec![])],
            "only the release is written first"
        );
        let release = service_updates(&us)[0].clone();
        i.apply_service(written(&a, &release, "50"));
        let us = i.reconcile(t(21));
        assert!(
            service_updates(&us).iter().any(|u| matches!(u,
                Update::Service { key, ingress, .. } if key.name == "b" && *ingress == ips(&["203.0.113.0"]))),
            "b gets the IP once a's status no longer shows it: {us:?}"
        );
    }

    /// Like `settle`, also feeding pool status writes back.
    fn settle_all(i: &mut Index, now: i64) -> BTreeMap<String, Vec<IpAddr>> {
        for round in 0..10 {
            let us = i.reconcile(t(now + round));
            if us.is_empty() {
                break;
            }
            for u in &us {
                match u {
                    Update::Service { key, .. } => {
                        let svc = i.services[key].clone();
                        i.apply_service(written(&svc, u, &format!("{}", 100 + round)));
                    }
                    Update::Pool { name, status, .. } => {
                        let mut p = i.pools[name].clone();
                        p.status = Some(status.clone());
                        i.apply_pool(p);
                    }
                    Update::ServiceConditions { .. } | Update::Advertisement { .. } => {}
                }
            }
        }
        i.services
            .iter()
            .map(|(k, s)| (k.name.clone(), service::status_ips(s)))
            .collect()
    }

    /// A typo in a pool, and a Service annotation that does not parse, keep the IPs held
    /// while the controller runs; a restart (or a new leader) must keep them too.
    #[test]
    fn restart_keeps_the_ips_of_an_invalid_pool_and_of_a_bad_request() {
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/30"])],
            vec![mk_service("a", 1), mk_service("b", 2)],
        );
        let before = settle_all(&mut i, 10);
        assert_eq!(before["b"], ips(&["203.0.113.1"]));
        let mut p = i.pools["p"].clone();
        p.spec.addresses.push("203.0.113.300".into());
        i.apply_pool(p);
        let mut b = i.services[&key("b")].clone();
        b.metadata.annotations = Some(BTreeMap::from([(
            "ferrolb.io/loadBalancerIPs".to_string(),
            "nope".to_string(),
        )]));
        i.apply_service(b);
        assert_eq!(
            settle_all(&mut i, 20),
            before,
            "nothing moves while running"
        );
        let status = i.pools["p"].status.clone().unwrap();
        assert_eq!(status.last_valid_addresses, ["203.0.113.0/30"]);

        for restart in ["process restart", "leader change"] {
            let mut j = match restart {
                "process restart" => leading(
                    i.pools.values().cloned().collect(),
                    i.services.values().cloned().collect(),
                ),
                _ => {
                    i.stop_leading();
                    i.start_leading();
                    std::mem::replace(&mut i, Index::new(ferrolb_crds::DEFAULT_LB_CLASS))
                }
            };
            let us = j.reconcile(t(30));
            for u in service_updates(&us) {
                let Update::Service {
                    key,
                    ingress,
                    events,
                    ..
                } = u
                else {
                    unreachable!()
                };
                assert_eq!(ingress, &before[&key.name], "{restart}: {key} moved");
                assert!(
                    events.iter().all(|e| e.reason != "IPReleased"),
                    "{restart}: {events:?}"
                );
            }
            assert_eq!(settle_all(&mut j, 40), before, "{restart}");
            i = j;
        }
    }

    fn with_port(mut s: Service, port: i32, annos: &[(&str, &str)]) -> Service {
        s.spec.as_mut().unwrap().ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
            port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
        s.metadata.annotations = Some(
            annos
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    }

    /// b waits with SharingConflict for a's IP; a then moves to another port. b must get
    /// the IP in that same round, not at some unrelated later event.
    #[test]
    fn a_waiting_service_is_retried_when_the_holder_changes() {
        let share = ("ferrolb.io/allow-shared-ip", "k");
        let want = ("ferrolb.io/loadBalancerIPs", "203.0.113.0");
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/30"])],
            vec![
                with_port(mk_service("a", 1), 80, &[share]),
                with_port(mk_service("b", 2), 80, &[share, want]),
            ],
        );
        let before = settle(&mut i, 10);
        assert_eq!(before["a"], ips(&["203.0.113.0"]));
        assert!(before["b"].is_empty());
        let reason = our_condition(&i.services[&key("b")])
            .unwrap()
            .reason
            .clone();
        assert_eq!(reason, "SharingConflict");
        let a = with_port(i.services[&key("a")].clone(), 81, &[share]);
        i.apply_service(a);
        let us = i.reconcile(t(20));
        assert!(
            service_updates(&us).iter().any(|u| matches!(u,
                Update::Service { key, ingress, .. } if key.name == "b" && *ingress == ips(&["203.0.113.0"]))),
            "b is retried when a changes: {us:?}"
        );
    }

    /// A namespace and its Service applied together: the Service's event can arrive before
    /// the Namespace's. It must wait for the Namespace's labels, not be matched as if it had
    /// none (and land, for good, in the general pool).
    #[test]
    fn a_service_waits_for_its_namespace() {
        let mut team = mk_pool("team", &["203.0.113.8/30"]);
        team.spec.service_allocation = Some(ferrolb_crds::ServiceAllocation {
            namespace_selectors: vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([("team".to_string(), "a".to_string())])),
                    match_expressions: None,
                },
            ],
            ..Default::default()
        });
        let mut i = leading(vec![mk_pool("general", &["203.0.113.0/30"]), team], vec![]);
        let mut svc = mk_service("web", 1);
        svc.metadata.namespace = Some("late".into());
        i.apply_service(svc);
        let us = i.reconcile(t(10));
        assert!(
            service_updates(&us).is_empty(),
            "decided before the namespace: {us:?}"
        );
        i.apply_namespace(mk_namespace("late", &[("team", "a")]));
        let got = settle(&mut i, 20);
        assert_eq!(got["web"], ips(&["203.0.113.8"]));
    }

    /// The write carries the decision's resourceVersion and the whole condition list of
    /// the object the decision was made on, ours replaced and the speakers' kept.
    #[test]
    fn an_update_keeps_other_writers_conditions_and_the_decision_version() {
        let mut svc = mk_service("a", 1);
        svc.metadata.resource_version = Some("7".into());
        svc.metadata.uid = Some("u-a".into());
        let theirs = Condition {
            type_: ferrolb_crds::conditions::ANNOUNCED.into(),
            status: "True".into(),
            reason: "Announced".into(),
            message: "node1".into(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(1)),
        };
        svc.status = Some(ServiceStatus {
            conditions: Some(vec![theirs.clone()]),
            ..Default::default()
        });
        let mut i = leading(vec![mk_pool("p", &["203.0.113.0/30"])], vec![svc]);
        let us = i.reconcile(t(10));
        let Update::Service {
            resource_version,
            conditions,
            uid,
            ..
        } = service_updates(&us)[0]
        else {
            unreachable!()
        };
        assert_eq!(resource_version.as_deref(), Some("7"));
        assert_eq!(uid.as_deref(), Some("u-a"));
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                ferrolb_crds::conditions::ANNOUNCED,
                conditions::IP_ALLOCATED
            ]
        );
        assert_eq!(conditions[0], theirs);
    }

    /// A write the API server refuses for good (403, 422) is not resent every round: it
    /// waits 10 s, then 20 s, ... up to 5 min; an edit of the Service retries at once.
    #[test]
    fn refused_writes_back_off_until_the_object_changes() {
        let svc = mk_service("a", 1);
        let mut i = leading(vec![mk_pool("p", &["203.0.113.0/30"])], vec![svc.clone()]);
        let u = service_updates(&i.reconcile(t(10)))[0].clone();
        i.write_rejected(&u, t(10));
        for second in [11, 15, 19] {
            assert!(
                service_updates(&i.reconcile(t(second))).is_empty(),
                "resent {} s after a refusal",
                second - 10
            );
        }
        let again = service_updates(&i.reconcile(t(20))).len();
        assert_eq!(again, 1, "retried once the 10 s are over");
        i.write_rejected(&u, t(20));
        assert!(
            service_updates(&i.reconcile(t(35))).is_empty(),
            "the second wait is 20 s"
        );
        assert_eq!(service_updates(&i.reconcile(t(40))).len(), 1);
        // An edit of the Service may have fixed the cause: it is tried at once.
        i.write_rejected(&u, t(40));
        let mut edited = svc;
        edited.metadata.labels = Some(BTreeMap::from([("fixed".to_string(), "yes".to_string())]));
        i.apply_service(edited);
        assert_eq!(service_updates(&i.reconcile(t(41))).len(), 1);
    }

    /// A pool's status event (our own write coming back) retries no pending Service;
    /// a spec change does.
    #[test]
    fn pool_status_events_do_not_retry_pending_services() {
        let mut i = leading(
            vec![mk_pool("p", &["203.0.113.0/32"])],
            vec![mk_service("a", 1), mk_service("b", 2)],
        );
        settle_all(&mut i, 10);
        assert!(i.pending.contains(&key("b")), "b waits: the pool is full");
        let mut p = i.pools["p"].clone();
        p.status.as_mut().unwrap().assigned_ipv4 = 99;
        i.apply_pool(p.clone());
        assert!(
            i.dirty.is_empty(),
            "a status event made work: {:?}",
            i.dirty
        );
        p.spec.addresses.push("203.0.113.1".into());
        i.apply_pool(p);
        assert!(
            i.dirty.contains(&key("b")),
            "a spec change retries the pending"
        );
    }

    /// Another FerroLB serving another class writes the same condition type: its Services
    /// are never touched, also when this controller starts with them already there (it
    /// used to clear them, fighting every other installation and test run).
    #[test]
    fn another_classes_services_are_never_touched() {
        let mut theirs = mk_service("theirs", 1);
        theirs.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
        let u = Update::Service {
            key: key("theirs"),
            resource_version: None,
            ingress: vec!["203.0.113.9".parse().unwrap()],
            condition: Some(condition(
                &[],
                conditions::IP_ALLOCATED,
                true,
                "Allocated",
                "assigned by another FerroLB",
                None,
                t(1),
            )),
            conditions: vec![],
            uid: None,
            events: vec![],
        };
        let theirs = written(&theirs, &u, "3");
        let mut i = leading(vec![mk_pool("p", &["203.0.113.0/30"])], vec![theirs]);
        assert!(service_updates(&i.reconcile(t(10))).is_empty());
        // Ours moving to another class is still released.
        i.apply_service(mk_service("mine", 2));
        settle(&mut i, 20);
        let mut mine = i.services[&key("mine")].clone();
        mine.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
        i.apply_service(mine);
        let us = i.reconcile(t(30));
        assert!(service_updates(&us).iter().any(
            |u| matches!(u, Update::Service { key, ingress, .. } if key.name == "mine" && ingress.is_empty())
        ));
    }
}
