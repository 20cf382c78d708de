//! Eligibility and election: a pure function from the [`World`] to the desired [`Table`].
//!
//! ```text
//!   (Service, IP) pairs ──config──▶ NotInPool / NoAdvertisement / NoServingEndpoints
//!          │ active
//!          ▼
//!   groups = connected components (one Service holds both IPs, or two Services one IP)
//!          │ candidates = nodes eligible for EVERY pair of the group
//!          ▼
//!   winner = min over candidates of (rank(node, lowest IP of group), node name)
//!          │
//!          ▼
//!   every IP of the group: Announce { winner, its allowed interfaces }  or  NoEligibleNode
//! ```
//!
//! The ranking is a plain sort, like MetalLB's `sortL2Candidates`: no state, no leases per
//! Service. Every speaker that sees the same World elects the same node, and because the
//! winner is the minimum of a fixed per-node score, adding or removing a node that does not
//! win leaves the winner alone. A recovering node therefore takes back exactly the groups it
//! ranks first for (that is the price of statelessness, and it spreads IPs evenly again);
//! nothing else moves.
//!
//! A pair fails "by configuration" (its IP is in no pool, no advertisement covers it for that
//! Service, or the Service has no serving endpoint) independently of nodes; such pairs are
//! reported with their own reason and neither join a group nor constrain its candidates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Advertisement, EXCLUDE_LB_LABEL, Node, Pool, Service, Speaker, World};
use super::table::{Decision, Exclusions, Interfaces, NodeExclusion, NotAnnouncedReason, Table};

/// The fixed score of `node` for an IP; the lowest score (then the lowest name) wins.
///
/// Score = MurmurHash3 `fmix64`( FNV-1a 64 ( node name bytes ‖ 0x00 ‖ family tag ‖ IP
/// octets ) ), with family tag 4 (+ 4 octets) or 6 (+ 16 octets). Written out here rather
/// than taken from `std::hash` so that every speaker version, on every platform, ranks alike
/// (std's hashers may change between Rust releases, which would split a rolling upgrade).
pub fn rank(node: &str, ip: IpAddr) -> u64 {
    node_prefix(node).score(ip)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 state; copied so a node's name prefix is hashed once per `desired` call.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn write(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    fn score(self, ip: IpAddr) -> u64 {
        let h = match ip {
            IpAddr::V4(a) => self.write(&[4]).write(&a.octets()),
            IpAddr::V6(a) => self.write(&[6]).write(&a.octets()),
        };
        fmix64(h.0)
    }
}

fn node_prefix(node: &str) -> Fnv {
    Fnv(FNV_OFFSET).write(node.as_bytes()).write(&[0])
}

/// MurmurHash3's finaliser: FNV's last bytes barely reach the high bits; this spreads them.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// One candidate node: a Node object and/or a live speaker.
struct NodeInfo<'w> {
    name: &'w str,
    node: Option<&'w Node>,
    speaker: Option<&'w Speaker>,
    /// Checks that depend on the node alone.
    status: Result<(), NodeExclusion>,
    prefix: Fnv,
    /// The Local Services whose kube-proxy health check fails on this node.
    unhealthy: Option<&'w BTreeSet<String>>,
}

/// An active (Service, IP) pair and the set of advertisements that cover it.
struct Pair<'w> {
    svc: &'w Service,
    ip: IpAddr,
    /// Index into [`Views`]: which advertisements apply, and per node whether they allow it.
    view: usize,
}

/// Per distinct set of applicable advertisements: node-level checks + `nodeSelectors` +
/// interfaces, evaluated once per node. Services mostly share a handful of such sets.
#[derive(Default)]
struct Views {
    index: HashMap<Vec<usize>, usize>,
    sets: Vec<Vec<usize>>,
    per_node: Vec<Vec<Result<(), NodeExclusion>>>,
}

impl Views {
    fn get(&mut self, set: Vec<usize>, ctx: &Ctx<'_>) -> usize {
        if let Some(&i) = self.index.get(&set) {
            return i;
        }
        let per_node = ctx
            .nodes
            .iter()
            .enumerate()
            .map(|(n, info)| {
                info.status?;
                let speaker = info.speaker.ok_or(NodeExclusion::NoSpeaker)?;
                let mut selecting = set
                    .iter()
                    .filter(|&&a| ctx.adv_selects_node[a][n])
                    .peekable();
                if selecting.peek().is_none() {
                    return Err(NodeExclusion::NotSelected);
                }
                let mut allowed =
                    selecting.flat_map(|&a| ctx.advs[a].allowed_interfaces(&speaker.interfaces));
                match allowed.next() {
                    Some(_) => Ok(()),
                    None => Err(NodeExclusion::NoAllowedInterface),
                }
            })
            .collect();
        let i = self.sets.len();
        self.index.insert(set.clone(), i);
        self.sets.push(set);
        self.per_node.push(per_node);
        i
    }
}

/// What `desired` precomputes once per call.
struct Ctx<'w> {
    nodes: Vec<NodeInfo<'w>>,
    advs: Vec<&'w Advertisement>,
    /// `adv_selects_node[a][n]`: advertisement `a`'s `nodeSelectors` match node `n`.
    adv_selects_node: Vec<Vec<bool>>,
}

/// The desired announcements for the whole cluster; every speaker computes the same Table.
pub fn desired(world: &World) -> Table {
    let ctx = context(world);
    let pools: Vec<&Pool> = world.pools.values().collect();
    let pool_advs: Vec<Vec<usize>> = pools
        .iter()
        .map(|p| {
            (0..ctx.advs.len())
                .filter(|&a| ctx.advs[a].selects_pool(p))
                .collect()
        })
        .collect();

    let mut table = Table::default();
    let mut views = Views::default();
    let mut interner = Interner::default();
    let mut ip_pools: HashMap<IpAddr, Vec<usize>> = HashMap::new();
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    // IPs with no active pair get the reason of the pair that got furthest (ties: lowest key).
    let mut inactive_ips: BTreeMap<IpAddr, (u8, NotAnnouncedReason)> = BTreeMap::new();

    for svc in world.services.values() {
        let ips: BTreeSet<IpAddr> = svc.ips.iter().copied().collect();
        for ip in ips {
            let in_pools = ip_pools.entry(ip).or_insert_with(|| {
                (0..pools.len())
                    .filter(|&p| pools[p].addresses.contains(ip))
                    .collect()
            });
            let outcome = check_config(svc, in_pools, &pools, &pool_advs, &ctx.advs);
            match outcome {
                Ok(set) => pairs.push(Pair {
                    svc,
                    ip,
                    view: views.get(set, &ctx),
                }),
                Err(reason) => {
                    table
                        .services
                        .entry(svc.key.clone())
                        .or_default()
                        .insert(ip, not_announced(reason.clone()));
                    let better = inactive_ips
                        .get(&ip)
                        .is_none_or(|(_, known)| progress(known) < progress(&reason));
                    if better {
                        inactive_ips.insert(ip, (progress(&reason), reason));
                    }
                }
            }
        }
    }

    for group in groups(&pairs) {
        let decisions = elect(&ctx, &views, &pairs, &group, &mut interner);
        for &p in &group {
            let pair = &pairs[p];
            let d = decisions[&pair.ip].clone();
            table
                .services
                .entry(pair.svc.key.clone())
                .or_default()
                .insert(pair.ip, d);
        }
        table.ips.extend(decisions);
    }
    for (ip, (_, reason)) in inactive_ips {
        table.ips.entry(ip).or_insert_with(|| not_announced(reason));
    }
    table
}

fn not_announced(reason: NotAnnouncedReason) -> Decision {
    Decision::NotAnnounced { reason }
}

fn context(world: &World) -> Ctx<'_> {
    let names: BTreeSet<&str> = world
        .nodes
        .keys()
        .chain(world.speakers.keys())
        .map(String::as_str)
        .collect();
    let nodes: Vec<NodeInfo<'_>> = names
        .into_iter()
        .map(|name| {
            let node = world.nodes.get(name);
            let speaker = world.speakers.get(name);
            let status = match (node, speaker) {
                (None, _) => Err(NodeExclusion::UnknownNode),
                (Some(_), None) => Err(NodeExclusion::NoSpeaker),
                (Some(n), Some(_)) if n.network_unavailable => {
                    Err(NodeExclusion::NetworkUnavailable)
                }
                (Some(n), Some(_))
                    if !world.ignore_exclude_lb && n.labels.contains_key(EXCLUDE_LB_LABEL) =>
                {
                    Err(NodeExclusion::ExcludedByLabel)
                }
                _ => Ok(()),
            };
            NodeInfo {
                name,
                node,
                speaker,
                status,
                prefix: node_prefix(name),
                unhealthy: world.unhealthy.get(name).filter(|s| !s.is_empty()),
            }
        })
        .collect();
    let advs: Vec<&Advertisement> = world.advertisements.values().collect();
    let adv_selects_node = advs
        .iter()
        .map(|a| {
            nodes
                .iter()
                .map(|n| n.node.is_some_and(|node| a.selects_node(&node.labels)))
                .collect()
        })
        .collect();
    Ctx {
        nodes,
        advs,
        adv_selects_node,
    }
}

/// How far a pair got through the node-independent checks, to pick an IP's reason when no
/// Service gets it announced (the most advanced is the most useful to report).
fn progress(reason: &NotAnnouncedReason) -> u8 {
    match reason {
        NotAnnouncedReason::NotInPool => 0,
        NotAnnouncedReason::NoAdvertisement { .. } => 1,
        NotAnnouncedReason::NoServingEndpoints => 2,
        NotAnnouncedReason::NoEligibleNode { .. } => 3,
    }
}

/// Node-independent checks of one (Service, IP) pair: the applicable advertisements, or why
/// the pair is refused whatever the nodes.
fn check_config(
    svc: &Service,
    in_pools: &[usize],
    pools: &[&Pool],
    pool_advs: &[Vec<usize>],
    advs: &[&Advertisement],
) -> Result<Vec<usize>, NotAnnouncedReason> {
    if in_pools.is_empty() {
        return Err(NotAnnouncedReason::NotInPool);
    }
    let covering: BTreeSet<usize> = in_pools
        .iter()
        .flat_map(|&p| pool_advs[p].iter().copied())
        .collect();
    let (applicable, excluded): (Vec<usize>, Vec<usize>) = covering
        .into_iter()
        .partition(|&a| advs[a].selects_service(&svc.labels));
    if applicable.is_empty() {
        return Err(NotAnnouncedReason::NoAdvertisement {
            pools: in_pools.iter().map(|&p| pools[p].name.clone()).collect(),
            excluded_by_service_selectors: excluded.iter().map(|&a| advs[a].name.clone()).collect(),
        });
    }
    if !svc.has_serving_endpoints {
        return Err(NotAnnouncedReason::NoServingEndpoints);
    }
    Ok(applicable)
}

/// Connected components of active pairs: IPs joined by a Service holding both, Services
/// joined by holding the same IP. Returns pair indices per group.
fn groups(pairs: &[Pair<'_>]) -> Vec<Vec<usize>> {
    let mut ip_id: HashMap<IpAddr, usize> = HashMap::new();
    for p in pairs {
        let next = ip_id.len();
        ip_id.entry(p.ip).or_insert(next);
    }
    let mut parent: Vec<usize> = (0..ip_id.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    // Pairs come Service by Service, so a Service's IPs are adjacent.
    for w in pairs.windows(2) {
        if std::ptr::eq(w[0].svc, w[1].svc) {
            let (a, b) = (
                find(&mut parent, ip_id[&w[0].ip]),
                find(&mut parent, ip_id[&w[1].ip]),
            );
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut by_root: Vec<Vec<usize>> = vec![Vec::new(); parent.len()];
    for (i, p) in pairs.iter().enumerate() {
        let root = find(&mut parent, ip_id[&p.ip]);
        by_root[root].push(i);
    }
    by_root.retain(|g| !g.is_empty());
    by_root
}

/// One allocation per distinct interface set of a table ([`Interfaces`]).
#[derive(Default)]
struct Interner(HashSet<Interfaces>);

impl Interner {
    fn get(&mut self, set: BTreeSet<String>) -> Interfaces {
        if let Some(shared) = self.0.get(&set) {
            return shared.clone();
        }
        let shared = Arc::new(set);
        self.0.insert(shared.clone());
        shared
    }
}

/// Elects the group's node and returns one decision per IP of the group.
fn elect(
    ctx: &Ctx<'_>,
    views: &Views,
    pairs: &[Pair<'_>],
    group: &[usize],
    interner: &mut Interner,
) -> BTreeMap<IpAddr, Decision> {
    let key_ip = group
        .iter()
        .map(|&p| pairs[p].ip)
        .min()
        .expect("groups are never empty");
    let exclusion = |p: &Pair<'_>, n: usize| -> Option<NodeExclusion> {
        if let Err(e) = views.per_node[p.view][n] {
            return Some(e);
        }
        if !p.svc.local {
            return None;
        }
        let node = &ctx.nodes[n];
        if !p.svc.serving_nodes.contains(node.name) {
            return Some(NodeExclusion::NoLocalEndpoint);
        }
        let failing =
            !p.svc.ignore_health_check && node.unhealthy.is_some_and(|s| s.contains(&p.svc.key));
        failing.then_some(NodeExclusion::NoHealthyEndpoint)
    };
    let winner = (0..ctx.nodes.len())
        .filter(|&n| group.iter().all(|&p| exclusion(&pairs[p], n).is_none()))
        .min_by_key(|&n| {
            let settling = ctx.nodes[n].speaker.is_some_and(|s| s.settling);
            (
                settling,
                ctx.nodes[n].prefix.score(key_ip),
                ctx.nodes[n].name,
            )
        });

    let mut out: BTreeMap<IpAddr, Decision> = BTreeMap::new();
    match winner {
        Some(n) => {
            let speaker = ctx.nodes[n].speaker.expect("eligible nodes run a speaker");
            let mut allowed: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
            for &p in group {
                let pair = &pairs[p];
                allowed.entry(pair.ip).or_default().extend(
                    views.sets[pair.view]
                        .iter()
                        .filter(|&&a| ctx.adv_selects_node[a][n])
                        .flat_map(|&a| ctx.advs[a].allowed_interfaces(&speaker.interfaces))
                        .cloned(),
                );
            }
            for (ip, set) in allowed {
                let decision = Decision::Announce {
                    node: ctx.nodes[n].name.to_owned(),
                    interfaces: interner.get(set),
                };
                out.insert(ip, decision);
            }
        }
        None => {
            let mut detail = Exclusions::default();
            for n in 0..ctx.nodes.len() {
                if let Some(why) = group.iter().filter_map(|&p| exclusion(&pairs[p], n)).min() {
                    detail.add(ctx.nodes[n].name, why);
                }
            }
            let reason = NotAnnouncedReason::NoEligibleNode { detail };
            for &p in group {
                out.entry(pairs[p].ip)
                    .or_insert_with(|| not_announced(reason.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        let fnv = |b: &[u8]| Fnv(FNV_OFFSET).write(b).0;
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned scores (cross-checked with an independent Python implementation): changing
    /// them would make speakers of two versions elect different nodes during an upgrade.
    #[test]
    fn rank_is_stable_across_versions() {
        let table = [
            ("worker-1", "203.0.113.1", 0x5a76_9c55_3f1f_b611_u64),
            ("worker-2", "203.0.113.1", 0x9d2a_24db_604a_f2f3),
            ("worker-1", "2001:db8::1", 0x1a38_5ecb_01b5_effc),
        ];
        for (node, ip, want) in table {
            assert_eq!(rank(node, ip.parse().unwrap()), want, "{node} {ip}");
        }
    }
}
