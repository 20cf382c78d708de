use super::*;
use crate::core::{self, Advertisement, Node, Pool, PoolSelection, Service, Speaker};
use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        network_unavailable: false,
    }
}

fn pool(name: &str, addrs: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        labels: BTreeMap::new(),
        addresses: PoolAddresses::parse(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .unwrap(),
    }
}

/// An advertisement of `pools` (none: every pool) from the nodes labelled with any of
/// `selectors` (none: every node).
fn adv(name: &str, pools: &[&str], selectors: &[(&str, &str)]) -> Advertisement {
    Advertisement {
        name: name.into(),
        pools: PoolSelection {
            names: pools.iter().map(|p| p.to_string()).collect(),
            selectors: Vec::new(),
        },
        node_selectors: selectors
            .iter()
            .map(|(k, v)| Selector::from_labels([(*k, *v)]))
            .collect(),
        ..Default::default()
    }
}

fn world(nodes: &[Node], pools: &[Pool], advs: &[Advertisement]) -> World {
    let mut w = World::default();
    nodes.iter().cloned().for_each(|n| w.apply_node(n));
    pools.iter().cloned().for_each(|p| w.apply_pool(p));
    advs.iter().cloned().for_each(|a| w.apply_advertisement(a));
    w
}

fn inside(s: &Scope, w: &World) -> Vec<String> {
    w.nodes.keys().filter(|n| s.contains(n)).cloned().collect()
}

/// Three racks, each with its own pool and advertisement; `edge` is in racks 1 and 2
/// (which it joins into one group), rack 3 is on its own.
fn racks() -> World {
    world(
        &[
            node("a1", &[("rack", "1")]),
            node("a2", &[("rack", "1")]),
            node("b1", &[("rack", "2")]),
            node("b2", &[("rack", "2")]),
            node("c1", &[("rack", "3")]),
            node("edge", &[("edge", "true")]),
            node("worker", &[]),
        ],
        &[
            pool("p1", &["203.0.113.0/28"]),
            pool("p2", &["203.0.113.16/28"]),
            pool("p3", &["198.51.100.0/28"]),
        ],
        &[
            adv("r1", &["p1"], &[("rack", "1"), ("edge", "true")]),
            adv("r2", &["p2"], &[("rack", "2"), ("edge", "true")]),
            adv("r3", &["p3"], &[("rack", "3")]),
        ],
    )
}

#[test]
fn an_advertisement_of_every_node_is_all_to_all() {
    let w = world(
        &[node("a", &[]), node("b", &[("x", "y")])],
        &[pool("p", &["203.0.113.0/24"])],
        &[adv("all", &[], &[])],
    );
    for me in ["a", "b"] {
        let s = Scope::of(&w, me);
        assert!(s.is_everyone(), "{me}");
        assert!(s.contains("stranger") && s.heartbeats("stranger"));
        assert!(s.judges(&w, ip("203.0.113.1")));
    }
}

#[test]
fn each_group_of_racks_joined_by_shared_nodes_hears_itself() {
    let w = racks();
    let s = |me| Scope::of(&w, me);
    let joined = ["a1", "a2", "b1", "b2", "edge"];
    for me in joined {
        assert_eq!(inside(&s(me), &w), joined, "{me}");
    }
    assert_eq!(inside(&s("c1"), &w), ["c1"]);
    assert!(
        s("a1").heartbeats("b1"),
        "b1 is edge's peer: heard (and relayed)"
    );
    assert!(!s("a1").heartbeats("c1") && !s("a1").heartbeats("worker"));
    assert!(
        s("a1").heartbeats("new-node"),
        "a Node we do not know yet: heard"
    );
    assert!(!s("a1").contains("new-node"), "but never counted out");
    // A group judges its own pools, and IPs in no pool; not the other groups'.
    assert!(s("a1").judges(&w, ip("203.0.113.5")));
    assert!(s("a1").judges(&w, ip("203.0.113.20")));
    assert!(!s("a1").judges(&w, ip("198.51.100.1")));
    assert!(s("a1").judges(&w, ip("198.51.100.200")));
    assert!(s("c1").judges(&w, ip("198.51.100.1")));
    assert!(!s("c1").judges(&w, ip("203.0.113.20")));
    // What depends on no node, anyone judges.
    let d = Decision::NotAnnounced {
        reason: NotAnnouncedReason::NoServingEndpoints,
    };
    assert!(s("a1").judges_decision(&w, ip("198.51.100.1"), &d));
    let d = Decision::NotAnnounced {
        reason: NotAnnouncedReason::NoEligibleNode {
            detail: Default::default(),
        },
    };
    assert!(!s("a1").judges_decision(&w, ip("198.51.100.1"), &d));
    assert!(s("c1").judges_decision(&w, ip("198.51.100.1"), &d));
}

#[test]
fn a_node_no_advertisement_selects_hears_nobody() {
    let w = racks();
    let s = Scope::of(&w, "worker");
    assert!(s.is_empty() && !s.is_everyone() && !s.nobody_selected());
    assert!(!s.heartbeats("a1") && !s.contains("a1") && !s.contains("worker"));
    assert!(s.heartbeats("new-node"), "unknown: heard all the same");
    assert!(!s.judges(&w, ip("203.0.113.5")));
    // No advertisement at all: nobody is selected, every scope is empty.
    let bare = world(
        &[node("a", &[]), node("b", &[])],
        &[pool("p", &["203.0.113.0/28"])],
        &[],
    );
    let s = Scope::of(&bare, "a");
    assert!(s.is_empty() && s.nobody_selected());
    assert!(s.judges(&bare, ip("203.0.113.1")), "no candidate: judged");
}

#[test]
fn advertisements_of_overlapping_pools_share_their_nodes() {
    let w = world(
        &[
            node("a", &[("rack", "1")]),
            node("b", &[("rack", "2")]),
            node("c", &[("rack", "3")]),
        ],
        &[
            pool("p1", &["203.0.113.0/28"]),
            pool("p2", &["203.0.113.8-203.0.113.20"]),
            pool("p3", &["198.51.100.0/28"]),
        ],
        &[
            adv("r1", &["p1"], &[("rack", "1")]),
            adv("r2", &["p2"], &[("rack", "2")]),
            adv("r3", &["p3"], &[("rack", "3")]),
        ],
    );
    assert_eq!(inside(&Scope::of(&w, "a"), &w), ["a", "b"]);
    assert_eq!(inside(&Scope::of(&w, "c"), &w), ["c"]);
}

#[test]
fn a_node_unknown_to_our_world_hears_everyone() {
    let w = racks();
    let s = Scope::of(&w, "not-in-the-world");
    assert!(s.is_everyone() && s.heartbeats("b1"));
}

fn peer(n: u8) -> PeerAddr {
    PeerAddr {
        addr: SocketAddr::from(([198, 51, 100, n], 7473)),
        incarnation: Some(u64::from(n)),
        fresh: true,
        pubkey: None,
    }
}

use std::net::SocketAddr;

#[test]
fn a_peer_that_leaves_the_scope_is_heard_stale_for_the_grace_then_dropped() {
    let w = racks();
    let known: BTreeMap<String, PeerAddr> = [("a2", 1), ("c1", 2), ("edge", 3), ("new", 4)]
        .into_iter()
        .map(|(n, i)| (n.to_string(), peer(i)))
        .collect();
    let t0 = Instant::now();
    let mut hb = Heartbeats::default();
    // Before the caches sync: everyone.
    let all = hb.peers(&known, &Scope::everyone(), t0);
    assert_eq!(all, known);
    // Synced: c1 left (grace, stale), the unknown "new" stays.
    let s = Scope::of(&w, "a1");
    let p = hb.peers(&known, &s, t0 + Duration::from_secs(1));
    assert_eq!(p.keys().collect::<Vec<_>>(), ["a2", "c1", "edge", "new"]);
    assert!(!p["c1"].fresh && p["a2"].fresh && p["new"].fresh);
    let p = hb.peers(
        &known,
        &s,
        t0 + Duration::from_secs(1) + GRACE - Duration::from_millis(1),
    );
    assert!(p.contains_key("c1"));
    let p = hb.peers(&known, &s, t0 + Duration::from_secs(1) + GRACE);
    assert_eq!(p.keys().collect::<Vec<_>>(), ["a2", "edge", "new"]);
    // Gone is gone: it does not come back while out of scope.
    let p = hb.peers(&known, &s, t0 + GRACE * 3);
    assert!(!p.contains_key("c1"));
    // Back in scope: fresh at once.
    let p = hb.peers(&known, &Scope::everyone(), t0 + GRACE * 4);
    assert_eq!(p, known);
    // A peer never heartbeated is never in a grace.
    let mut fresh_start = Heartbeats::default();
    let p = fresh_start.peers(&known, &s, t0);
    assert!(!p.contains_key("c1"));
}

// ── property: two candidates of an IP always hear each other ─────────────────────────

const NODES: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];
const POOLS: [(&str, &str); 4] = [
    ("p0", "203.0.113.0/28"),
    ("p1", "203.0.113.16/28"),
    ("p2", "203.0.113.12-203.0.113.19"), // overlaps p0 and p1
    ("p3", "2001:db8::/120"),
];
const IPS: [&str; 7] = [
    "203.0.113.3",
    "203.0.113.13",
    "203.0.113.18",
    "203.0.113.30",
    "2001:db8::5",
    "2001:db8:1::5", // in no pool
    "198.51.100.1",  // in no pool
];

fn pick<T: Copy>(items: &[T], mask: u32) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, x)| *x)
        .collect()
}

/// Random Nodes (a zone each, sometimes an `edge` label), pools (some overlapping),
/// advertisements (some pools or all, some zones or all) and Services (one or two IPs).
fn arb_world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec((0..3u8, any::<bool>()), NODES.len()),
        1u32..16,
        proptest::collection::vec((0u32..16, 0u32..16, any::<bool>()), 0..4),
        proptest::collection::vec((0..IPS.len(), proptest::option::of(0..IPS.len())), 1..5),
    )
        .prop_map(|(labels, pool_mask, advs, svcs)| {
            let mut w = World::default();
            for (n, (zone, edge)) in NODES.iter().zip(labels) {
                let z = format!("z{zone}");
                let mut l = vec![("zone", z.as_str())];
                if edge {
                    l.push(("edge", "true"));
                }
                w.apply_node(node(n, &l));
            }
            for (name, addrs) in pick(&POOLS, pool_mask) {
                w.apply_pool(pool(name, &[addrs]));
            }
            for (k, (pools, zones, edge)) in advs.into_iter().enumerate() {
                let pools: Vec<&str> = pick(&POOLS, pools).iter().map(|p| p.0).collect();
                let zones: Vec<String> = pick(&[0, 1, 2, 3], zones)
                    .iter()
                    .map(|z: &i32| format!("z{z}"))
                    .collect();
                let mut sels: Vec<(&str, &str)> =
                    zones.iter().map(|z| ("zone", z.as_str())).collect();
                if edge {
                    sels.push(("edge", "true"));
                }
                w.apply_advertisement(adv(&format!("a{k}"), &pools, &sels));
            }
            for (k, (first, second)) in svcs.into_iter().enumerate() {
                let ips = [Some(first), second]
                    .into_iter()
                    .flatten()
                    .map(|i| ip(IPS[i]));
                w.apply_service(Service {
                    key: format!("ns/s{k}"),
                    ips: ips.collect(),
                    has_serving_endpoints: true,
                    ..Default::default()
                });
            }
            w
        })
}

/// The candidates of every IP, by the election itself: node n is one for the IPs it
/// wins when its speaker is the only one alive.
fn candidates(w: &World) -> BTreeMap<IpAddr, BTreeSet<String>> {
    let mut out: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for n in w.nodes.keys() {
        let mut alone = w.clone();
        alone.apply_speaker(Speaker {
            node: n.clone(),
            interfaces: BTreeSet::from(["eth0".to_string()]),
            settling: false,
        });
        for ip in core::local_announcements(&core::desired(&alone), n).into_keys() {
            out.entry(ip).or_default().insert(n.clone());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For every IP and every two of its candidates a and b: each is in the other's scope
    /// (and heartbeats it), and each judges the IP. Scopes are groups (symmetric and
    /// transitive), and a speaker that judges an IP has all of its candidates in scope.
    #[test]
    fn prop_candidates_of_an_ip_hear_each_other(w in arb_world()) {
        let scopes: BTreeMap<&str, Scope> = NODES.iter().map(|n| (*n, Scope::of(&w, n))).collect();
        for (ip, cands) in candidates(&w) {
            for a in &cands {
                prop_assert!(scopes[a.as_str()].judges(&w, ip), "{} does not judge {}", a, ip);
                for b in &cands {
                    prop_assert!(scopes[a.as_str()].contains(b), "{} not in scope({}) for {}", b, a, ip);
                    prop_assert!(scopes[a.as_str()].heartbeats(b));
                }
            }
            for (m, s) in &scopes {
                if s.judges(&w, ip) {
                    for c in &cands {
                        prop_assert!(s.contains(c), "{} judges {} without {}", m, ip, c);
                    }
                }
            }
        }
        for a in NODES {
            for b in NODES {
                prop_assert_eq!(scopes[a].contains(b), scopes[b].contains(a), "{} {}", a, b);
                for c in NODES {
                    if scopes[a].contains(b) && scopes[b].contains(c) {
                        prop_assert!(scopes[a].contains(c), "groups: {} {} {}", a, b, c);
                    }
                }
            }
        }
    }
}
