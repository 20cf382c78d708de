//! Whom this speaker heartbeats: the nodes that could be a candidate in an election in which
//! it is a candidate itself, closed over shared nodes (docs/failover.md#who-heartbeats-whom).
//! Pure.
//!
//! ```text
//!   pools ──(share an address)──▶ pool classes C       (an IP's pools all lie in one class)
//!   sel(C) = nodes some advertisement covering a pool of C selects (nodeSelectors only)
//!   groups = the nodes joined by being in one sel(C)    (connected components)
//!   scope(me) = my group                                (everyone: it holds every node;
//!                                                        nobody: no advertisement selects me)
//!   judges(ip) ⇔ sel(class of ip) ⊆ scope(me)           (or no pool holds ip)
//! ```
//!
//! Why it is safe: two candidates of one IP are both in `sel` of the IP's class, so each is
//! in the other's scope: what a candidate does not hear is never a candidate of its own
//! IPs. It over-approximates on purpose: `serviceSelectors`, interfaces, the exclude label,
//! `NetworkUnavailable` and `externalTrafficPolicy: Local` only remove candidates, so they
//! are ignored; a Service with two IPs elects among the nodes eligible for both, a subset.
//!
//! Why a whole group rather than ⋃ { sel(C) : me ∈ sel(C) }: whether a speaker serves
//! (liveness::detector) is judged over all its members, and news of a member is relayed
//! by the others. A node in two node sets could otherwise serve because a peer of one set
//! hears it, while nobody of the other set hears it nor can relay that it lives: two
//! announcers. Within a group, every member hears and relays for every other, so a group
//! behaves exactly like a cluster of its own (the step tests check both).
//!
//! A speaker selected by no advertisement has an empty scope: it announces nothing and
//! heartbeats nobody (its detector, with no member, serves alone and stays quiet).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::core::{Decision, NotAnnouncedReason, World};
use crate::liveness::PeerAddr;

/// How long a peer that left our scope is still heartbeated: speakers see a configuration
/// change at slightly different times, and one that has not seen it yet still needs to
/// hear us (or it would count us dead and elect itself for IPs we hold).
pub const GRACE: Duration = Duration::from_secs(30);

/// The nodes this speaker must hear, and which IPs its election can judge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every node (we are unknown to the World, or one of our advertisements
    /// selects every node: exactly the all-to-all of a default install).
    inside: Option<BTreeSet<String>>,
    /// Known Nodes outside the scope (a Lease of a node we do not know is heartbeated:
    /// another speaker may know it).
    outside: BTreeSet<String>,
    /// Pools whose possible announcers are not all inside: our table is no judge of
    /// their IPs (we do not hear every node that decides them).
    unjudged: BTreeSet<String>,
    /// No known node is selected by any advertisement covering any pool.
    nobody_selected: bool,
}

impl Scope {
    /// Every node: all-to-all (before the caches sync).
    pub const fn everyone() -> Self {
        Scope {
            inside: None,
            outside: BTreeSet::new(),
            unjudged: BTreeSet::new(),
            nobody_selected: false,
        }
    }

    /// The scope of node `me` in `world` (only Nodes, pools and advertisements are read).
    pub fn of(world: &World, me: &str) -> Self {
        let classes = pool_classes(world);
        let names: Vec<&String> = world.nodes.keys().collect();
        // sel(C) per class, as indices into `names`.
        let mut sel: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); classes.len()];
        for adv in world.advertisements.values() {
            let covered: Vec<usize> = classes
                .iter()
                .enumerate()
                .filter(|(_, pools)| pools.iter().any(|p| adv.selects_pool(&world.pools[*p])))
                .map(|(c, _)| c)
                .collect();
            if covered.is_empty() {
                continue;
            }
            let nodes: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| adv.selects_node(&world.nodes[**n].labels))
                .map(|(i, _)| i)
                .collect();
            for c in covered {
                sel[c].extend(nodes.iter().copied());
            }
        }
        let nobody_selected = sel.iter().all(BTreeSet::is_empty);
        let Some(me_i) = names.iter().position(|n| *n == me) else {
            // Not a candidate anywhere in our World; hear everyone rather than guess.
            return Scope {
                nobody_selected,
                ..Self::everyone()
            };
        };
        // Groups: the nodes of one sel(C) are joined.
        let mut parent: Vec<usize> = (0..names.len()).collect();
        for s in &sel {
            if let Some(&first) = s.first() {
                for &n in s {
                    let (a, b) = (find(&mut parent, first), find(&mut parent, n));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let selected = sel.iter().any(|s| s.contains(&me_i));
        let root = find(&mut parent, me_i);
        let inside: BTreeSet<usize> = (0..names.len())
            .filter(|&n| selected && find(&mut parent, n) == root)
            .collect();
        if inside.len() == names.len() {
            return Scope {
                nobody_selected,
                ..Self::everyone()
            };
        }
        let unjudged = classes
            .iter()
            .zip(&sel)
            .filter(|(_, s)| !s.is_subset(&inside))
            .flat_map(|(pools, _)| pools.iter().map(|p| (*p).to_owned()))
            .collect();
        let (mut ins, mut outs) = (BTreeSet::new(), BTreeSet::new());
        for (i, n) in names.into_iter().enumerate() {
            if inside.contains(&i) {
                &mut ins
            } else {
                &mut outs
            }
            .insert(n.clone());
        }
        Scope {
            inside: Some(ins),
            outside: outs,
            unjudged,
            nobody_selected,
        }
    }

    /// Whether `node` could be a candidate with us (a known Node in our scope): only such
    /// a peer may be counted out in our report.
    pub fn contains(&self, node: &str) -> bool {
        self.inside.as_ref().is_none_or(|s| s.contains(node))
    }

    /// Whether we heartbeat `node`: in our scope, or a Node we do not know (yet).
    pub fn heartbeats(&self, node: &str) -> bool {
        !self.outside.contains(node)
    }

    /// We hear everyone (all-to-all).
    pub fn is_everyone(&self) -> bool {
        self.inside.is_none()
    }

    /// No advertisement selects us: we announce nothing and hear nobody.
    pub fn is_empty(&self) -> bool {
        self.inside.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// No known node is selected by any advertisement (then nothing is announced
    /// anywhere, and every scope is empty).
    pub fn nobody_selected(&self) -> bool {
        self.nobody_selected
    }

    /// Whether every node that may announce `ip` is in our scope, so that our election's
    /// decision for it is right (an IP in no pool has no candidate: yes).
    pub fn judges(&self, world: &World, ip: IpAddr) -> bool {
        self.unjudged.is_empty()
            || !world
                .pools
                .values()
                .any(|p| self.unjudged.contains(&p.name) && p.addresses.contains(ip))
    }

    /// Whether our decision `d` for `ip` is right: a reason that depends on no node
    /// (no pool, no advertisement, no serving endpoint), or an IP we [judge](Self::judges).
    pub fn judges_decision(&self, world: &World, ip: IpAddr, d: &Decision) -> bool {
        let node_free = matches!(
            d,
            Decision::NotAnnounced {
                reason: NotAnnouncedReason::NotInPool
                    | NotAnnouncedReason::NoAdvertisement { .. }
                    | NotAnnouncedReason::NoServingEndpoints
            }
        );
        node_free || self.judges(world, ip)
    }
}

/// The root of `x` in a union-find forest.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Pools in classes: two pools that share an address are in one class (transitively), so
/// every pool holding a given IP is in the same class. Pool names, by class.
fn pool_classes(world: &World) -> Vec<Vec<&str>> {
    let pools: Vec<&crate::core::Pool> = world.pools.values().collect();
    let mut parent: Vec<usize> = (0..pools.len()).collect();
    for i in 0..pools.len() {
        for j in i + 1..pools.len() {
            if pools[i].addresses.overlap(&pools[j].addresses).is_some() {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut by_root: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (i, p) in pools.iter().enumerate() {
        let root = find(&mut parent, i);
        by_root.entry(root).or_default().push(&p.name);
    }
    by_root.into_values().collect()
}

/// The peers handed to the heartbeat engine: those we [heartbeat](Scope::heartbeats),
/// and for [`GRACE`] those that left our scope. A peer in its grace is marked stale: it
/// no longer makes us "cut off" when we cannot hear it, and, stale when it is finally
/// dropped, the detector does not keep it as a member whose Lease went away.
#[derive(Debug, Default)]
pub struct Heartbeats {
    /// Peers we heartbeat, and since when the ones that left the scope are out.
    sent_to: BTreeMap<String, Option<Instant>>,
}

impl Heartbeats {
    /// The peers to heartbeat at `now`, from every speaker Lease but ours (`known`).
    pub fn peers(
        &mut self,
        known: &BTreeMap<String, PeerAddr>,
        scope: &Scope,
        now: Instant,
    ) -> BTreeMap<String, PeerAddr> {
        let mut next: BTreeMap<String, Option<Instant>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (node, p) in known {
            let state = if scope.heartbeats(node) {
                None
            } else {
                match self.sent_to.get(node) {
                    Some(None) => Some(now),
                    Some(Some(since)) if now.saturating_duration_since(*since) < GRACE => {
                        Some(*since)
                    }
                    _ => continue,
                }
            };
            let mut p = *p;
            if state.is_some() {
                p.fresh = false;
            }
            next.insert(node.clone(), state);
            out.insert(node.clone(), p);
        }
        self.sent_to = next;
        out
    }
}

#[cfg(test)]
mod tests;
