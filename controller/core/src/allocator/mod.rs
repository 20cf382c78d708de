//! The pure IP allocator: which Service holds which external IP (docs/design/allocation.md).
//!
//! ```text
//!   pool events ──upsert_pool / set_pool_invalid / remove_pool──▶ ┌──────────────────────┐
//!                                  ◀── evicted ServiceKeys ────── │      Allocator       │
//!   Service events ──assign / claim / release──────────────────▶  │ pools: name → Pool   │
//!                   ◀── Ok(IPs, primary first) | Err(AllocError)  │   (free set per fam) │
//!                                                                 │ holders: IP → [svc]  │
//!   status / metrics ◀── pool_state / pool_stats / assigned ───── │ services: svc → IPs  │
//!                                                                 │ shared: key → what   │
//!                                                                 │   the IP holds → {IP}│
//!                                                                 └──────────────────────┘
//! ```
//!
//! No kube client, no I/O, no clock, no randomness: the same calls in the same order give
//! the same answers, so the glue can replay watch events freely and tests need no cluster.
//!
//! Cost: one allocation is O(pools · log fragments) — independent of pool size and of the
//! number of held addresses, because each pool keeps free intervals per family (see
//! [`free`]) and the sharing index groups the IPs of each sharing key by what they already
//! carry (backends and the union of their holders' ports): a Service looking for an IP to
//! join tests each group once, not each holder, so the cost grows with the number of
//! distinct groups under its key (a handful in practice), not with the key's holders. Pool
//! changes are rare and may cost O(held addresses).
//!
//! Contract with the glue: after `Err` from `assign`, the Service holds nothing (its old
//! assignment no longer matched its request); after `Ok`, it holds exactly the returned IPs.

mod error;
mod free;
mod pool;
mod service;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_crds::addresses::to_bits;

pub use error::AllocError;
pub use ferrolb_crds::addresses::Family;
pub use pool::{PoolConfig, PoolState, PoolStats};
pub use service::{Backends, FamilyPolicy, Protocol, ServiceKey, ServiceRequest};

use pool::Pool;
use service::{Incompat, Share};

/// What an IP shared under one key carries: its holders' common backends and the union
/// of their ports. A Service may join any IP of a group whose backends equal its own and
/// whose ports are disjoint from its own (the holders all agree on key and backends).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Carried {
    backends: Backends,
    /// Sorted and deduplicated.
    ports: Vec<(Protocol, u16)>,
}

impl Carried {
    /// Whether a Service with this profile (under the same key) may join the group's IPs.
    fn admits(&self, share: &Share) -> bool {
        self.backends == share.backends && disjoint(&self.ports, &share.ports)
    }
}

/// Whether two sorted lists have no element in common.
fn disjoint<T: Ord>(a: &[T], b: &[T]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return false,
        }
    }
    true
}

/// What one Service holds and how it shares it.
#[derive(Clone, Debug)]
struct Holding {
    /// Ordered as the Service's families (primary first).
    ips: Vec<IpAddr>,
    share: Share,
}

/// The allocation index: pools, holders and the free space of every pool.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    /// Pool names in candidate order: priority (unset last), then name.
    by_order: Vec<String>,
    /// Pool names oldest first: (created, name).
    by_age: Vec<String>,
    /// Holders of every held IP, sorted; never empty. Keys are shared with `services`.
    holders: HashMap<IpAddr, Vec<Arc<ServiceKey>>>,
    services: HashMap<Arc<ServiceKey>, Holding>,
    /// Sharing key → what an IP under that key carries → those IPs, ordered: finds the
    /// lowest IP a Service may join without visiting incompatible holders one by one.
    shared: HashMap<String, HashMap<Carried, BTreeSet<IpAddr>>>,
    /// Counts every change that can make a held IP available to someone else: a holder
    /// released it, or changed its ports, backends or sharing key.
    loosened: u64,
}

impl Allocator {
    /// An allocator with no pools and no holders (the state right after a controller start).
    pub fn new() -> Self {
        Self::default()
    }

    // ── pools ────────────────────────────────────────────────────────────────────────────

    /// Adds or replaces a valid pool; returns the Services that lost an IP (now in no pool;
    /// their other IPs stay held), sorted.
    pub fn upsert_pool(&mut self, config: PoolConfig) -> Vec<ServiceKey> {
        let name = config.name.clone();
        let (rebuild, shrunk) = match self.pools.get_mut(&name) {
            Some(p) if p.config == config && p.invalid.is_none() => return Vec::new(),
            Some(p) => {
                let addresses_changed = p.config.addresses != config.addresses;
                let rebuild =
                    addresses_changed || p.config.avoid_buggy_ips != config.avoid_buggy_ips;
                p.config = config;
                p.invalid = None;
                (rebuild, addresses_changed)
            }
            None => {
                self.pools.insert(name.clone(), Pool::new(config));
                (true, false)
            }
        };
        if rebuild {
            let pool = self.pools.get_mut(&name).expect("just inserted");
            pool.rebuild(self.holders.keys().copied());
        }
        self.refresh();
        if shrunk {
            self.evict_orphans()
        } else {
            Vec::new()
        }
    }

    /// Marks a pool's spec invalid: known pools keep their last valid addresses for existing
    /// holders, unknown ones are registered empty; neither allocates. Returns evicted Services (none).
    pub fn set_pool_invalid(&mut self, name: &str, message: String) -> Vec<ServiceKey> {
        self.set_pool_invalid_keeping(name, message, None)
    }

    /// [`set_pool_invalid`](Self::set_pool_invalid); an unknown pool is registered with
    /// `last_valid` (its last valid addresses, from its status after a restart) so the
    /// Services holding IPs from them can claim them again.
    pub fn set_pool_invalid_keeping(
        &mut self,
        name: &str,
        message: String,
        last_valid: Option<PoolConfig>,
    ) -> Vec<ServiceKey> {
        match self.pools.get_mut(name) {
            Some(p) if p.invalid.as_ref() == Some(&message) => return Vec::new(),
            Some(p) => p.invalid = Some(message),
            None => {
                let config = last_valid.unwrap_or_else(|| {
                    let mut c =
                        PoolConfig::new(name, ferrolb_crds::addresses::PoolAddresses::default());
                    c.created = i64::MAX;
                    c
                });
                let mut pool = Pool::new(PoolConfig {
                    auto_assign: false,
                    ..config
                });
                pool.invalid = Some(message);
                pool.rebuild(self.holders.keys().copied());
                self.pools.insert(name.to_owned(), pool);
            }
        }
        self.refresh();
        // Addresses did not change, so no held IP left every pool.
        Vec::new()
    }

    /// Forgets a pool; returns the Services that lost an IP (now in no pool; their other IPs
    /// stay held), sorted.
    pub fn remove_pool(&mut self, name: &str) -> Vec<ServiceKey> {
        if self.pools.remove(name).is_none() {
            return Vec::new();
        }
        self.refresh();
        self.evict_orphans()
    }

    /// The pool's condition; `None` for an unknown pool.
    pub fn pool_state(&self, name: &str) -> Option<PoolState> {
        self.pools.get(name).map(|p| p.state.clone())
    }

    /// Usage counts for the pool's status and metrics; `None` for an unknown pool.
    pub fn pool_stats(&self, name: &str) -> Option<PoolStats> {
        self.pools.get(name).map(Pool::stats)
    }

    /// Every known pool name in name order, so the glue can publish status for each.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// The pool an IP belongs to: the oldest non-conflicting pool containing it, else the oldest.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        let containing = || {
            self.by_age
                .iter()
                .map(|n| &self.pools[n])
                .filter(move |p| p.contains(ip))
        };
        containing()
            .find(|p| !matches!(p.state, PoolState::Conflict { .. }))
            .or_else(|| containing().next())
            .map(Pool::name)
    }

    /// Recomputes orders and states after any pool change (O(pools²); pools are few).
    fn refresh(&mut self) {
        let mut order: Vec<&Pool> = self.pools.values().collect();
        order.sort_by(|a, b| a.order().cmp(&b.order()));
        self.by_order = order.iter().map(|p| p.name().to_owned()).collect();
        order.sort_by(|a, b| a.age().cmp(&b.age()));
        self.by_age = order.iter().map(|p| p.name().to_owned()).collect();

        let states: Vec<PoolState> = self
            .by_age
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let p = &self.pools[name];
                if let Some(message) = &p.invalid {
                    return PoolState::Invalid {
                        message: message.clone(),
                    };
                }
                self.by_age[..i]
                    .iter()
                    .find_map(|older| {
                        let o = &self.pools[older];
                        o.config
                            .addresses
                            .overlap(&p.config.addresses)
                            .map(|overlap| PoolState::Conflict {
                                with: older.clone(),
                                overlap,
                            })
                    })
                    .unwrap_or(PoolState::Ready)
            })
            .collect();
        for (name, state) in self.by_age.iter().zip(states) {
            self.pools.get_mut(name).expect("listed").state = state;
        }
    }

    /// Releases every Service holding an IP that no pool contains any more.
    fn evict_orphans(&mut self) -> Vec<ServiceKey> {
        let mut orphans: Vec<(ServiceKey, IpAddr)> = self
            .holders
            .iter()
            .filter(|(ip, _)| !self.pools.values().any(|p| p.contains(**ip)))
            .flat_map(|(ip, hs)| hs.iter().map(|h| (ServiceKey::clone(h), *ip)))
            .collect();
        orphans.sort();
        let mut lost: Vec<ServiceKey> = orphans.iter().map(|(k, _)| k.clone()).collect();
        lost.dedup();
        // Only the orphaned IPs go: a dual-stack Service whose IPv6 address left every
        // pool keeps its IPv4 address (the next `assign` decides whether that still serves).
        for (key, ip) in orphans {
            self.drop_ip(&key, ip);
        }
        lost
    }

    /// Takes one IP from a Service's holding; an emptied holding is removed.
    fn drop_ip(&mut self, key: &ServiceKey, ip: IpAddr) {
        if !self.services.contains_key(key) {
            return;
        }
        self.loosened += 1;
        // Unheld while the holding still lists it, so the sharing index sees what it carried.
        self.unhold(ip, key);
        let holding = self.services.get_mut(key).expect("still held");
        holding.ips.retain(|i| *i != ip);
        if holding.ips.is_empty() {
            self.services.remove(key);
        }
    }

    // ── services ─────────────────────────────────────────────────────────────────────────

    /// A counter that moves whenever a holder released an IP or changed how it uses one
    /// (ports, backends, sharing key): Services waiting with `RequestedIPInUse` or
    /// `SharingConflict` are worth retrying exactly then.
    pub fn loosened(&self) -> u64 {
        self.loosened
    }

    /// The IPs a Service holds, primary family first.
    pub fn assigned(&self, key: &ServiceKey) -> Option<&[IpAddr]> {
        self.services.get(key).map(|h| h.ips.as_slice())
    }

    /// Frees a Service's IPs; returns those no longer held by anyone (a shared IP stays held).
    pub fn release(&mut self, key: &ServiceKey) -> Vec<IpAddr> {
        let Some(ips) = self.services.get(key).map(|h| h.ips.clone()) else {
            return Vec::new();
        };
        self.loosened += 1;
        // Unheld while its holding still exists, so the sharing index sees what it carried.
        let freed = ips.into_iter().filter(|ip| self.unhold(*ip, key)).collect();
        self.services.remove(key);
        freed
    }

    /// Adopts IPs found in a Service's status (restart safety): each must lie in some pool,
    /// fit the Service's families and share compatibly; replaces what the Service held.
    pub fn claim(&mut self, svc: &ServiceRequest, ips: &[IpAddr]) -> Result<(), AllocError> {
        let wanted = validate(svc).map_err(|why| invalid(svc, why))?;
        if ips.is_empty() {
            return Err(invalid(svc, "no IP to claim".into()));
        }
        let fams: Vec<Family> = ips.iter().map(|ip| Family::of(*ip)).collect();
        let distinct = fams.len() == 1 || (fams.len() == 2 && fams[0] != fams[1]);
        if !distinct || fams.iter().any(|f| !wanted.contains(f)) {
            return Err(invalid(
                svc,
                format!(
                    "its status holds {} but it wants {} ({})",
                    list(ips),
                    list(&wanted),
                    svc.policy
                ),
            ));
        }
        self.all_in_some_pool(svc, ips)?;
        let share = svc.share();
        for &ip in ips {
            self.check_compat(&svc.key, &share, ip)
                .map_err(|(holder, inc)| compat_error(svc, ip, holder, inc))?;
        }
        self.release(&svc.key);
        self.adopt(&svc.key, order_by(ips, &wanted), share);
        Ok(())
    }

    /// Gives a Service its IPs: keeps a still-valid assignment, else allocates anew
    /// (requested IPs, then the named pool, then automatic). Idempotent; IPs primary first.
    pub fn assign(&mut self, svc: &ServiceRequest) -> Result<Vec<IpAddr>, AllocError> {
        self.assign_preferring(svc, &[])
    }

    /// Keeps what the Service holds if that still satisfies `svc` (pools, families,
    /// sharing with the other holders), updating its sharing profile; else releases it.
    /// Never allocates: for a Service whose request is in error, judged without it.
    pub fn keep(&mut self, svc: &ServiceRequest) -> Vec<IpAddr> {
        let Some(held) = self.services.get(&svc.key).map(|h| h.ips.clone()) else {
            return Vec::new();
        };
        let share = svc.share();
        match validate(svc) {
            Ok(wanted) if self.keeps(svc, &wanted, &share, &held) => {
                let ips = order_by(&held, &wanted);
                self.update_holding(&svc.key, ips.clone(), share);
                ips
            }
            _ => {
                self.release(&svc.key);
                Vec::new()
            }
        }
    }

    /// [`assign`](Self::assign), preferring `hint` (the IPs the Service's status still
    /// shows) when it holds nothing here: after its pool was deleted and re-created in one
    /// step, or one family of its pool shrank, it gets back every IP that is still valid
    /// instead of the lowest free ones (issue: no IP moves without cause).
    pub fn assign_preferring(
        &mut self,
        svc: &ServiceRequest,
        hint: &[IpAddr],
    ) -> Result<Vec<IpAddr>, AllocError> {
        let wanted = match validate(svc) {
            Ok(w) => w,
            Err(why) => {
                self.release(&svc.key);
                return Err(invalid(svc, why));
            }
        };
        let share = svc.share();
        let previous = self
            .services
            .get(&svc.key)
            .map(|h| h.ips.clone())
            .unwrap_or_default();
        if !previous.is_empty() {
            if self.keeps(svc, &wanted, &share, &previous) {
                let mut ips = order_by(&previous, &wanted);
                if let Some(extra) = self.second_family(svc, &wanted, &share, &ips) {
                    // A Service that became dual-stack gains its second family from the
                    // pool of its first, which does not move.
                    self.hold(extra, &Arc::new(svc.key.clone()));
                    ips.push(extra);
                    ips = order_by(&ips, &wanted);
                }
                self.update_holding(&svc.key, ips.clone(), share);
                return Ok(ips);
            }
            self.release(&svc.key);
        }
        let prefer = if previous.is_empty() {
            hint
        } else {
            &previous[..]
        };
        let ips = self.allocate(svc, &wanted, &share, prefer)?;
        self.adopt(&svc.key, ips.clone(), share);
        Ok(ips)
    }

    /// For a kept single-family assignment of a Service that now wants both families
    /// (PreferDualStack; RequireDualStack is re-allocated whole by `keeps`), an IP of the
    /// missing family from the pool that holds its current IP, when it has one free.
    fn second_family(
        &self,
        svc: &ServiceRequest,
        wanted: &[Family],
        share: &Share,
        held: &[IpAddr],
    ) -> Option<IpAddr> {
        let (&[first], &[_, _]) = (held, wanted) else {
            return None;
        };
        if !svc.requested_ips.is_empty() {
            return None;
        }
        let missing = wanted.iter().copied().find(|f| *f != Family::of(first))?;
        let pool = self.pools.get(self.pool_of(first)?)?;
        // New addresses only from a pool the Service may allocate from now (a claimed IP
        // can sit in a pool whose selectors no longer admit it).
        let eligible = pool.admits(svc).is_ok()
            && match &svc.requested_pool {
                Some(name) => *name == pool.config.name,
                None => pool.config.auto_assign,
            };
        if !pool.is_ready() || !eligible {
            return None;
        }
        self.pick(pool, missing, &svc.key, share, &[])
    }

    /// Whether the current assignment still satisfies the request (docs/design/allocation.md#choosing-an-ip: keep a valid assignment).
    /// Selectors, autoAssign and pool state are deliberately not re-checked: IPs never move for those.
    fn keeps(
        &self,
        svc: &ServiceRequest,
        wanted: &[Family],
        share: &Share,
        held: &[IpAddr],
    ) -> bool {
        let fams: Vec<Family> = held.iter().map(|ip| Family::of(*ip)).collect();
        held.iter().all(|ip| self.pool_of(*ip).is_some())
            && fams.iter().all(|f| wanted.contains(f))
            && fams.contains(&wanted[0])
            && (svc.policy != FamilyPolicy::RequireDualStack || fams.len() == 2)
            && (svc.requested_ips.is_empty() || same_set(&svc.requested_ips, held))
            && svc.requested_pool.as_ref().is_none_or(|name| {
                self.pools
                    .get(name)
                    .is_some_and(|p| held.iter().all(|ip| p.contains(*ip)))
            })
            && held
                .iter()
                .all(|ip| self.check_compat(&svc.key, share, *ip).is_ok())
    }

    /// Chooses new IPs without changing anything.
    fn allocate(
        &self,
        svc: &ServiceRequest,
        wanted: &[Family],
        share: &Share,
        prefer: &[IpAddr],
    ) -> Result<Vec<IpAddr>, AllocError> {
        if !svc.requested_ips.is_empty() {
            return self.allocate_requested(svc, wanted, share);
        }
        let mut candidates: Vec<&Pool> = match &svc.requested_pool {
            Some(name) => vec![self.named_pool(svc, name)?],
            None => {
                let c: Vec<&Pool> = self
                    .candidates()
                    .filter(|p| p.is_ready() && p.config.auto_assign && p.admits(svc).is_ok())
                    .collect();
                if c.is_empty() {
                    return Err(no_match(svc, self.why_no_candidate(svc)));
                }
                c
            }
        };
        // A re-allocation tries the pool it held IPs from first, so little moves.
        if let Some(pos) = prefer
            .first()
            .and_then(|ip| candidates.iter().position(|p| p.contains(*ip)))
        {
            let p = candidates.remove(pos);
            candidates.insert(0, p);
        }
        self.allocate_from(svc, &candidates, wanted, share, prefer)
    }

    /// The pool a Service names, if it may allocate from it (autoAssign not needed).
    /// `RequestedIPNotInPool` for the first of `ips` that lies in no pool at all.
    fn all_in_some_pool(&self, svc: &ServiceRequest, ips: &[IpAddr]) -> Result<(), AllocError> {
        match ips
            .iter()
            .find(|ip| !self.pools.values().any(|p| p.contains(**ip)))
        {
            Some(&ip) => Err(AllocError::RequestedIPNotInPool {
                service: svc.key.clone(),
                ip,
                why: "is not in any IPAddressPool".into(),
            }),
            None => Ok(()),
        }
    }

    fn named_pool(&self, svc: &ServiceRequest, name: &str) -> Result<&Pool, AllocError> {
        let pool = self.pools.get(name).ok_or_else(|| {
            no_match(
                svc,
                format!("pool {name:?} (named by the Service) does not exist"),
            )
        })?;
        if !pool.is_ready() {
            return Err(no_match(
                svc,
                format!(
                    "pool {name:?} (named by the Service) {}",
                    pool.state.describe()
                ),
            ));
        }
        pool.admits(svc).map_err(|why| {
            no_match(
                svc,
                format!("pool {name:?} (named by the Service) excludes it: {why}"),
            )
        })?;
        Ok(pool)
    }

    /// Picks the families from the first candidate pool that can serve them.
    fn allocate_from(
        &self,
        svc: &ServiceRequest,
        candidates: &[&Pool],
        wanted: &[Family],
        share: &Share,
        prefer: &[IpAddr],
    ) -> Result<Vec<IpAddr>, AllocError> {
        let pick = |p: &Pool, f| self.pick(p, f, &svc.key, share, prefer);
        let names = || list(&candidates.iter().map(|p| p.name()).collect::<Vec<_>>());
        let primary = wanted[0];
        let mut exhausted = Vec::new();
        if let &[first, second] = wanted {
            let dual: Vec<&Pool> = candidates
                .iter()
                .copied()
                .filter(|p| p.has(first) && p.has(second))
                .collect();
            for p in &dual {
                match (pick(p, first), pick(p, second)) {
                    (Some(a), Some(b)) => return Ok(vec![a, b]),
                    (a, _) => {
                        let f = if a.is_none() { first } else { second };
                        exhausted.push((p.name().to_owned(), f));
                    }
                }
            }
            if svc.policy == FamilyPolicy::RequireDualStack {
                if !dual.is_empty() {
                    return Err(exhausted_err(svc, exhausted));
                }
                let missing = [second, first]
                    .into_iter()
                    .find(|f| !candidates.iter().any(|p| p.has(*f)));
                let (family, why) = match missing {
                    Some(f) => (
                        f,
                        format!("no candidate pool ({}) has {f} addresses", names()),
                    ),
                    None => (
                        second,
                        format!(
                            "no candidate pool ({}) has both IPv4 and IPv6 addresses, and \
                             RequireDualStack takes both from one pool",
                            names()
                        ),
                    ),
                };
                return Err(AllocError::FamilyUnavailable {
                    service: svc.key.clone(),
                    family,
                    why,
                });
            }
            exhausted.clear();
        }
        let single: Vec<&Pool> = candidates
            .iter()
            .copied()
            .filter(|p| p.has(primary))
            .collect();
        for p in &single {
            match pick(p, primary) {
                Some(a) => return Ok(vec![a]),
                None => exhausted.push((p.name().to_owned(), primary)),
            }
        }
        if single.is_empty() {
            return Err(AllocError::FamilyUnavailable {
                service: svc.key.clone(),
                family: primary,
                why: format!("no candidate pool ({}) has {primary} addresses", names()),
            });
        }
        Err(exhausted_err(svc, exhausted))
    }

    /// The lowest address of family `f` in `pool` that the Service may take (free or
    /// compatibly shared), preferring a previously held one.
    fn pick(
        &self,
        pool: &Pool,
        f: Family,
        key: &ServiceKey,
        share: &Share,
        prefer: &[IpAddr],
    ) -> Option<IpAddr> {
        if !pool.has(f) {
            return None;
        }
        if let Some(&ip) = prefer.iter().find(|ip| Family::of(**ip) == f)
            && pool.contains(ip)
            && !pool.avoids(ip)
            && self.check_compat(key, share, ip).is_ok()
        {
            return Some(ip);
        }
        let free = pool.free(f).lowest();
        let shared = share
            .key
            .as_deref()
            .and_then(|k| self.lowest_shared(pool, f, k, key, share, free));
        let best = match (free, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        best.map(|v| f.ip_from_bits(v))
    }

    /// The lowest IP of `pool` held under sharing key `k` that this Service may join, below
    /// `bound`: the lowest of each admitting group, one ordered-set lookup per group.
    fn lowest_shared(
        &self,
        pool: &Pool,
        f: Family,
        k: &str,
        key: &ServiceKey,
        share: &Share,
        bound: Option<u128>,
    ) -> Option<u128> {
        let groups = self.shared.get(k)?;
        let mut best = bound;
        for (_, ips) in groups.iter().filter(|(c, _)| c.admits(share)) {
            if let Some(v) = lowest_in(pool, f, ips, best) {
                best = Some(v);
            }
        }
        let found = best.filter(|b| Some(*b) != bound);
        debug_assert!(
            found.is_none_or(|v| self.check_compat(key, share, f.ip_from_bits(v)).is_ok()),
            "the sharing index offered an IP the Service cannot join"
        );
        #[cfg(test)]
        assert_eq!(
            found,
            self.lowest_shared_by_scan(pool, f, k, key, share, bound),
            "the sharing index and a scan of every holder disagree"
        );
        found
    }

    /// What [`lowest_shared`](Self::lowest_shared) must return, by visiting every IP under
    /// the key and every holder of it: the tests' reference.
    #[cfg(test)]
    fn lowest_shared_by_scan(
        &self,
        pool: &Pool,
        f: Family,
        k: &str,
        key: &ServiceKey,
        share: &Share,
        bound: Option<u128>,
    ) -> Option<u128> {
        let mut ips: Vec<&IpAddr> = self.shared.get(k)?.values().flatten().collect();
        ips.sort();
        ips.into_iter()
            .filter(|ip| Family::of(**ip) == f && bound.is_none_or(|b| to_bits(**ip) < b))
            .find(|ip| {
                pool.contains(**ip)
                    && !pool.avoids(**ip)
                    && self.check_compat(key, share, **ip).is_ok()
            })
            .map(|ip| to_bits(*ip))
    }

    /// Requested IPs: all from one ready pool that admits the Service, usable by it.
    fn allocate_requested(
        &self,
        svc: &ServiceRequest,
        wanted: &[Family],
        share: &Share,
    ) -> Result<Vec<IpAddr>, AllocError> {
        let reqs = &svc.requested_ips;
        let primary = wanted[0];
        if let Some(&ip) = reqs.iter().find(|ip| !wanted.contains(&Family::of(**ip))) {
            return Err(invalid(
                svc,
                format!(
                    "requested IP {ip} is {} but the Service wants {} ({})",
                    Family::of(ip),
                    list(wanted),
                    svc.policy
                ),
            ));
        }
        if !reqs.iter().any(|ip| Family::of(*ip) == primary) {
            return Err(invalid(
                svc,
                format!(
                    "requested IPs {} include no {primary} address, its primary family",
                    list(reqs)
                ),
            ));
        }
        if svc.policy == FamilyPolicy::RequireDualStack && reqs.len() < 2 {
            return Err(invalid(
                svc,
                format!(
                    "RequireDualStack needs one requested IP per family, got only {}",
                    list(reqs)
                ),
            ));
        }
        self.all_in_some_pool(svc, reqs)?;
        let candidates: Vec<&Pool> = match &svc.requested_pool {
            Some(name) => {
                let p = self.pools.get(name).ok_or_else(|| {
                    no_match(
                        svc,
                        format!("pool {name:?} (named by the Service) does not exist"),
                    )
                })?;
                if let Some(&ip) = reqs.iter().find(|ip| !p.contains(**ip)) {
                    return Err(AllocError::RequestedIPNotInPool {
                        service: svc.key.clone(),
                        ip,
                        why: format!("is not in pool {name:?}, which the Service names"),
                    });
                }
                vec![p]
            }
            None => self
                .candidates()
                .filter(|p| reqs.iter().all(|ip| p.contains(*ip)))
                .collect(),
        };
        let Some(first) = candidates.first() else {
            // Each IP is in some pool, but no pool holds them all: two IPs in different pools.
            let (a, b) = (reqs[0], reqs[reqs.len() - 1]);
            return Err(AllocError::RequestedIPNotInPool {
                service: svc.key.clone(),
                ip: b,
                why: format!(
                    "is in pool {:?} but {a} is in pool {:?}; both families must come from one pool",
                    self.pool_of(b).unwrap_or_default(),
                    self.pool_of(a).unwrap_or_default()
                ),
            });
        };
        let ready: Vec<&Pool> = candidates
            .iter()
            .copied()
            .filter(|p| p.is_ready())
            .collect();
        let Some(first_ready) = ready.first() else {
            return Err(no_match(
                svc,
                format!(
                    "requested IP {} is in pool {:?}, which {}",
                    reqs[0],
                    first.name(),
                    first.state.describe()
                ),
            ));
        };
        let pool = match ready.iter().find(|p| p.admits(svc).is_ok()) {
            Some(p) => *p,
            None => {
                let why = first_ready.admits(svc).expect_err("none admits");
                return Err(no_match(
                    svc,
                    format!(
                        "pool {:?}, which holds requested IP {}, excludes it: {why}",
                        first_ready.name(),
                        reqs[0]
                    ),
                ));
            }
        };
        if let Some(&ip) = reqs.iter().find(|ip| pool.avoids(**ip)) {
            return Err(invalid(
                svc,
                format!(
                    "requested IP {ip} ends in .0 or .255 and pool {:?} avoids buggy IPs",
                    pool.name()
                ),
            ));
        }
        for &ip in reqs {
            self.check_compat(&svc.key, share, ip)
                .map_err(|(holder, inc)| compat_error(svc, ip, holder, inc))?;
        }
        Ok(order_by(reqs, wanted))
    }

    /// Pools in candidate order.
    fn candidates(&self) -> impl Iterator<Item = &Pool> {
        self.by_order.iter().map(|n| &self.pools[n])
    }

    /// Explains why no pool is a candidate for automatic allocation.
    fn why_no_candidate(&self, svc: &ServiceRequest) -> String {
        if self.pools.is_empty() {
            return "no IPAddressPool exists".into();
        }
        let ready: Vec<&Pool> = self.candidates().filter(|p| p.is_ready()).collect();
        if ready.is_empty() {
            let states: Vec<String> = self
                .candidates()
                .map(|p| format!("pool {:?} {}", p.name(), p.state.describe()))
                .collect();
            return format!("no IPAddressPool is ready ({})", states.join("; "));
        }
        let auto: Vec<&Pool> = ready
            .iter()
            .copied()
            .filter(|p| p.config.auto_assign)
            .collect();
        if auto.is_empty() {
            let names: Vec<&str> = ready.iter().map(|p| p.name()).collect();
            return format!(
                "no ready pool has autoAssign enabled ({} serve only Services that name them \
                 with ferrolb.io/address-pool or request one of their IPs)",
                list(&names)
            );
        }
        let reasons: Vec<String> = auto
            .iter()
            .filter_map(|p| {
                p.admits(svc)
                    .err()
                    .map(|why| format!("pool {:?}: {why}", p.name()))
            })
            .collect();
        format!(
            "every ready autoAssign pool excludes it ({})",
            reasons.join("; ")
        )
    }

    // ── holders ──────────────────────────────────────────────────────────────────────────

    /// Whether the Service may hold `ip` next to its current holders; `Err` names the first misfit.
    fn check_compat(
        &self,
        key: &ServiceKey,
        share: &Share,
        ip: IpAddr,
    ) -> Result<(), (ServiceKey, Incompat)> {
        for h in self.holders.get(&ip).into_iter().flatten() {
            if **h == *key {
                continue;
            }
            share
                .compatible(&self.services[h].share)
                .map_err(|inc| (ServiceKey::clone(h), inc))?;
        }
        Ok(())
    }

    /// Records a new holding (the Service holds nothing yet).
    fn adopt(&mut self, key: &ServiceKey, ips: Vec<IpAddr>, share: Share) {
        let key = Arc::new(key.clone());
        self.services.insert(
            Arc::clone(&key),
            Holding {
                ips: ips.clone(),
                share,
            },
        );
        for ip in ips {
            self.hold(ip, &key);
        }
    }

    /// Replaces a kept holding's order and sharing profile, re-indexing what its IPs carry.
    fn update_holding(&mut self, key: &ServiceKey, ips: Vec<IpAddr>, share: Share) {
        let holding = self.services.get(key).expect("kept holding exists");
        if holding.share == share {
            self.services.get_mut(key).expect("exists").ips = ips;
            return;
        }
        self.loosened += 1;
        let before: Vec<_> = ips.iter().map(|ip| self.carried(*ip)).collect();
        let holding = self.services.get_mut(key).expect("exists");
        holding.share = share;
        holding.ips = ips.clone();
        for (ip, was) in ips.into_iter().zip(before) {
            self.reindex(ip, was);
        }
    }

    /// Adds `key` (already in `services`) as a holder of `ip`; the first holder takes the IP
    /// from every containing pool.
    fn hold(&mut self, ip: IpAddr, key: &Arc<ServiceKey>) {
        let was = self.carried(ip);
        let hs = self.holders.entry(ip).or_default();
        if hs.is_empty() {
            let (f, v) = (Family::of(ip), to_bits(ip));
            for p in self.pools.values_mut().filter(|p| p.contains(ip)) {
                let took = p.free_mut(f).take(v);
                debug_assert!(took, "{ip} was not free in pool {}", p.name());
            }
        }
        if let Err(pos) = hs.binary_search_by(|h| (**h).cmp(key)) {
            hs.insert(pos, Arc::clone(key));
        }
        self.reindex(ip, was);
    }

    /// Removes `key` as a holder of `ip`; true when nobody holds it any more (it is free again).
    fn unhold(&mut self, ip: IpAddr, key: &ServiceKey) -> bool {
        let was = self.carried(ip);
        let Some(hs) = self.holders.get_mut(&ip) else {
            return false;
        };
        if let Ok(pos) = hs.binary_search_by(|h| (**h).cmp(key)) {
            hs.remove(pos);
        }
        let freed = hs.is_empty();
        if freed {
            self.holders.remove(&ip);
            let (f, v) = (Family::of(ip), to_bits(ip));
            for p in self.pools.values_mut().filter(|p| p.contains(ip)) {
                p.free_mut(f).give(v);
            }
        }
        self.reindex(ip, was);
        freed
    }

    /// The sharing key of `ip` and what it carries; `None` when it is free or its holder
    /// does not share. Compatible holders all have the same key and backends.
    fn carried(&self, ip: IpAddr) -> Option<(String, Carried)> {
        let hs = self.holders.get(&ip)?;
        let first = &self.services.get(hs.first()?)?.share;
        let key = first.key.clone()?;
        let mut ports: Vec<(Protocol, u16)> = hs
            .iter()
            .filter_map(|h| self.services.get(h))
            .flat_map(|h| h.share.ports.iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let backends = first.backends.clone();
        Some((key, Carried { backends, ports }))
    }

    /// Moves `ip` in the sharing index from the group it was in (`was`) to the one it is in now.
    fn reindex(&mut self, ip: IpAddr, was: Option<(String, Carried)>) {
        let now = self.carried(ip);
        if now == was {
            return;
        }
        if let Some((k, c)) = was
            && let Some(groups) = self.shared.get_mut(&k)
        {
            if let Some(set) = groups.get_mut(&c) {
                set.remove(&ip);
                if set.is_empty() {
                    groups.remove(&c);
                }
            }
            if groups.is_empty() {
                self.shared.remove(&k);
            }
        }
        if let Some((k, c)) = now {
            self.shared
                .entry(k)
                .or_default()
                .entry(c)
                .or_default()
                .insert(ip);
        }
    }
}

/// The lowest IP of `ips` inside `pool`'s family-`f` ranges, not avoided, below `bound`.
fn lowest_in(pool: &Pool, f: Family, ips: &BTreeSet<IpAddr>, bound: Option<u128>) -> Option<u128> {
    for range in pool.config.addresses.ranges(f) {
        let (lo, mut hi) = range.bounds();
        if let Some(b) = bound {
            hi = hi.min(b.checked_sub(1)?);
        }
        if hi < lo {
            return None;
        }
        let first = ips
            .range(f.ip_from_bits(lo)..=f.ip_from_bits(hi))
            .find(|ip| !pool.avoids(**ip));
        if let Some(ip) = first {
            return Some(to_bits(*ip));
        }
    }
    None
}

/// Checks what the glue should already guarantee; returns the wanted families.
fn validate(svc: &ServiceRequest) -> Result<Vec<Family>, String> {
    let wanted = svc.wanted_families()?;
    if svc.sharing_key.as_deref() == Some("") {
        return Err("the sharing key is empty".into());
    }
    let r = &svc.requested_ips;
    if r.len() > 2 || (r.len() == 2 && Family::of(r[0]) == Family::of(r[1])) {
        return Err(format!(
            "requested IPs {} must be at most one per family",
            list(r)
        ));
    }
    Ok(wanted)
}

/// `ips` sorted by the position of their family in `wanted` (primary first).
fn order_by(ips: &[IpAddr], wanted: &[Family]) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort_by_key(|ip| wanted.iter().position(|f| *f == Family::of(*ip)));
    v
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[{}]", v.join(", "))
}

fn invalid(svc: &ServiceRequest, why: String) -> AllocError {
    AllocError::InvalidRequest {
        service: svc.key.clone(),
        why,
    }
}

fn no_match(svc: &ServiceRequest, why: String) -> AllocError {
    AllocError::NoMatchingPool {
        service: svc.key.clone(),
        why,
    }
}

fn exhausted_err(svc: &ServiceRequest, exhausted: Vec<(String, Family)>) -> AllocError {
    AllocError::PoolExhausted {
        service: svc.key.clone(),
        exhausted,
    }
}

/// Missing or different keys mean "in use"; same key but a clash is a sharing conflict.
fn compat_error(svc: &ServiceRequest, ip: IpAddr, holder: ServiceKey, inc: Incompat) -> AllocError {
    let why = inc.to_string();
    match inc {
        Incompat::Keys { .. } => AllocError::RequestedIPInUse {
            service: svc.key.clone(),
            ip,
            holder: Box::new(holder),
            why,
        },
        Incompat::Port(..) | Incompat::Backends { .. } => AllocError::SharingConflict {
            service: svc.key.clone(),
            ip,
            with: Box::new(holder),
            why,
        },
    }
}

#[cfg(test)]
impl Allocator {
    /// Checks every internal invariant; tests call it after each operation.
    pub(crate) fn check_invariants(&self) {
        for (key, h) in &self.services {
            assert!(!h.ips.is_empty(), "{key} holds an empty assignment");
            for ip in &h.ips {
                assert!(
                    self.holders.get(ip).is_some_and(|hs| hs.contains(key)),
                    "{key} holds {ip} but is not among its holders"
                );
            }
        }
        for (ip, hs) in &self.holders {
            assert!(!hs.is_empty(), "{ip} has an empty holder list");
            assert!(hs.windows(2).all(|w| w[0] < w[1]), "{ip} holders unsorted");
            for (i, a) in hs.iter().enumerate() {
                let sa = &self.services.get(a).expect("holder is a service").share;
                assert!(self.services[a].ips.contains(ip));
                for b in &hs[i + 1..] {
                    assert!(
                        sa.compatible(&self.services[b].share).is_ok(),
                        "{a} and {b} share {ip} incompatibly"
                    );
                }
            }
        }
        let mut expected: HashMap<String, HashMap<Carried, BTreeSet<IpAddr>>> = HashMap::new();
        for ip in self.holders.keys() {
            if let Some((k, c)) = self.carried(*ip) {
                expected
                    .entry(k)
                    .or_default()
                    .entry(c)
                    .or_default()
                    .insert(*ip);
            }
        }
        assert_eq!(expected, self.shared, "the sharing index drifted");
        for p in self.pools.values() {
            let mut fresh = p.clone();
            fresh.rebuild(self.holders.keys().copied());
            assert_eq!(fresh.free, p.free, "free set of pool {} drifted", p.name());
        }
    }
}
