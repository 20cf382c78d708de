//! One IPAddressPool as the allocator sees it: config, health, and free-space index.
//!
//! ```text
//!   PoolConfig ──upsert──▶ Pool { config, invalid, state, free: [v4 FreeSet, v6 FreeSet] }
//!                                           │
//!                    Ready ◀────────────────┤ recomputed on every pool change:
//!                    Invalid{message} ◀─────┤   invalid message set?  → Invalid
//!                    Conflict{with, overlap}┘   overlaps an older pool → Conflict
//! ```
//!
//! Only `Ready` pools hand out new addresses; every pool keeps its free sets exact so that
//! holders, stats and a later return to `Ready` need no rebuild.

use std::net::IpAddr;

use ferrolb_crds::addresses::{AddressRange, PoolAddresses, to_bits};
use ferrolb_crds::selector::Selector;

use super::free::FreeSet;
use super::{Family, ServiceRequest};

/// A parsed, valid IPAddressPool; the glue builds it from the CR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// `metadata.name`; pools are cluster-scoped.
    pub name: String,
    /// The normalised `spec.addresses`.
    pub addresses: PoolAddresses,
    /// `spec.autoAssign`: false = only by pool name or requested IP.
    pub auto_assign: bool,
    /// `spec.avoidBuggyIPs`: never hand out IPv4 `.0`/`.255`.
    pub avoid_buggy_ips: bool,
    /// `serviceAllocation.priority`: lower first, `None` last.
    pub priority: Option<i32>,
    /// `serviceAllocation.namespaces` (empty = any).
    pub namespaces: Vec<String>,
    /// `serviceAllocation.namespaceSelectors`, any match (empty = any).
    pub namespace_selectors: Vec<Selector>,
    /// `serviceAllocation.serviceSelectors`, any match (empty = any).
    pub service_selectors: Vec<Selector>,
    /// `creationTimestamp` in unix seconds; with the name, decides which overlapping pool is older.
    pub created: i64,
    /// `spec.externalIPs.namespaces` when the pool is reserved for externalIPs: it then
    /// admits no LoadBalancer Service (holders keep what they have).
    pub external_ips: Option<Vec<String>>,
}

impl PoolConfig {
    /// Whether `serviceAllocation` admits the Service; `Err` says which rule excluded it.
    pub fn admits(&self, svc: &ServiceRequest) -> Result<(), String> {
        let c = self;
        if c.external_ips.is_some() {
            return Err("it is reserved for spec.externalIPs (spec.externalIPs is set)".into());
        }
        if !c.namespaces.is_empty() && !c.namespaces.contains(&svc.key.namespace) {
            return Err(format!(
                "namespace {:?} is not in its serviceAllocation.namespaces [{}]",
                svc.key.namespace,
                c.namespaces.join(", ")
            ));
        }
        if !c.namespace_selectors.is_empty()
            && !c
                .namespace_selectors
                .iter()
                .any(|s| s.matches(&svc.namespace_labels))
        {
            return Err(format!(
                "the labels of namespace {:?} match none of its serviceAllocation.namespaceSelectors",
                svc.key.namespace
            ));
        }
        if !c.service_selectors.is_empty()
            && !c.service_selectors.iter().any(|s| s.matches(&svc.labels))
        {
            return Err(
                "the Service's labels match none of its serviceAllocation.serviceSelectors".into(),
            );
        }
        Ok(())
    }

    /// A pool with these addresses and every other field at its CRD default, for tests and glue.
    pub fn new(name: impl Into<String>, addresses: PoolAddresses) -> Self {
        PoolConfig {
            name: name.into(),
            addresses,
            auto_assign: true,
            avoid_buggy_ips: false,
            priority: None,
            namespaces: Vec::new(),
            namespace_selectors: Vec::new(),
            service_selectors: Vec::new(),
            created: 0,
            external_ips: None,
        }
    }
}

/// A pool's health, written as its `Ready`/`Invalid`/`Conflict` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolState {
    /// Allocates new addresses.
    Ready,
    /// The spec failed validation; existing holders keep their IPs, nothing new is handed out.
    Invalid {
        /// The validation error, verbatim from the glue.
        message: String,
    },
    /// Overlaps an older pool; existing holders keep their IPs, nothing new is handed out.
    Conflict {
        /// The oldest overlapping pool.
        with: String,
        /// The first overlapping range, for the condition message.
        overlap: AddressRange,
    },
}

impl PoolState {
    /// A clause for error messages ("is in conflict with …").
    pub(crate) fn describe(&self) -> String {
        match self {
            PoolState::Ready => "is ready".into(),
            PoolState::Invalid { message } => format!("is invalid ({message})"),
            PoolState::Conflict { with, overlap } => {
                format!("overlaps the older pool {with:?} on {overlap} and allocates nothing new")
            }
        }
    }
}

/// Usage counts for the pool status and metrics (u128: a /64 overflows i64; the glue saturates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Distinct held IPv4 addresses inside the pool.
    pub assigned_v4: u128,
    /// Distinct held IPv6 addresses inside the pool.
    pub assigned_v6: u128,
    /// Free IPv4 addresses the pool may still hand out (buggy ones excluded when avoided).
    pub available_v4: u128,
    /// Free IPv6 addresses.
    pub available_v6: u128,
}

/// A pool plus its derived state and index.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    /// The last valid config (an `Invalid` pool keeps it for its holders).
    pub config: PoolConfig,
    /// Set by `set_pool_invalid`, cleared by a valid upsert.
    pub invalid: Option<String>,
    pub state: PoolState,
    /// Indexed by `fam_idx`.
    pub free: [FreeSet; 2],
}

pub(crate) fn fam_idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Pool {
    /// A pool with empty free sets; the caller rebuilds them unless the pool has no addresses.
    pub fn new(config: PoolConfig) -> Self {
        let avoid = config.avoid_buggy_ips;
        Pool {
            config,
            invalid: None,
            state: PoolState::Ready,
            free: [
                FreeSet::new(&[], &[], true, avoid),
                FreeSet::new(&[], &[], false, false),
            ],
        }
    }

    /// Rebuilds both free sets from the addresses minus `held` (any order, any family).
    pub fn rebuild(&mut self, held: impl Iterator<Item = IpAddr>) {
        let mut inside: [Vec<u128>; 2] = Default::default();
        for ip in held.filter(|ip| self.contains(*ip)) {
            inside[fam_idx(Family::of(ip))].push(to_bits(ip));
        }
        for f in Family::ALL {
            let held = &mut inside[fam_idx(f)];
            held.sort_unstable();
            let ranges: Vec<(u128, u128)> = self
                .config
                .addresses
                .ranges(f)
                .iter()
                .map(AddressRange::bounds)
                .collect();
            self.free[fam_idx(f)] =
                FreeSet::new(&ranges, held, f == Family::V4, self.config.avoid_buggy_ips);
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.config.addresses.contains(ip)
    }

    pub fn has(&self, f: Family) -> bool {
        self.config.addresses.has(f)
    }

    pub fn free(&self, f: Family) -> &FreeSet {
        &self.free[fam_idx(f)]
    }

    pub fn free_mut(&mut self, f: Family) -> &mut FreeSet {
        &mut self.free[fam_idx(f)]
    }

    pub fn is_ready(&self) -> bool {
        self.state == PoolState::Ready
    }

    /// Whether this pool avoids handing out `ip` because it ends in .0/.255.
    pub fn avoids(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.config.avoid_buggy_ips && ferrolb_crds::addresses::is_buggy_v4(a),
            IpAddr::V6(_) => false,
        }
    }

    /// Age order for conflicts: older = smaller (created, name).
    pub fn age(&self) -> (i64, &str) {
        (self.config.created, &self.config.name)
    }

    /// Candidate order (docs/design/allocation.md#choosing-an-ip, docs/configuration.md "Which pool a Service gets"):
    /// pools with a `serviceAllocation.priority`, lowest first; then the other pools that
    /// restrict themselves with `serviceAllocation`; then general pools; ties by name. A
    /// pool made for some Services thus wins over a general one whatever their names.
    pub fn order(&self) -> (u8, i32, &str) {
        let c = &self.config;
        let tier = match c.priority {
            Some(_) => 0,
            None if self.is_restricted() => 1,
            None => 2,
        };
        (tier, c.priority.unwrap_or(0), &c.name)
    }

    /// Whether `serviceAllocation` limits which Services the pool serves.
    fn is_restricted(&self) -> bool {
        let c = &self.config;
        !c.namespaces.is_empty()
            || !c.namespace_selectors.is_empty()
            || !c.service_selectors.is_empty()
    }

    /// Whether `serviceAllocation` admits the Service; `Err` says which rule excluded it.
    pub fn admits(&self, svc: &ServiceRequest) -> Result<(), String> {
        self.config.admits(svc)
    }

    pub fn stats(&self) -> PoolStats {
        let assigned = |f| {
            self.config
                .addresses
                .size(f)
                .saturating_sub(self.free(f).free())
        };
        PoolStats {
            assigned_v4: assigned(Family::V4),
            assigned_v6: assigned(Family::V6),
            available_v4: self.free(Family::V4).available(),
            available_v6: self.free(Family::V6).available(),
        }
    }
}
