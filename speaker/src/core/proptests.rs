//! Property tests: random small Worlds, checked against a naive oracle written straight from
//! docs/design/election.md, plus the invariants speakers rely on (one announcer per IP, sharing and
//! dual-stack never split, order of events irrelevant, no extra moves).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use super::tests::{ip, labels, mk_pool, sel};
use super::*;

const NODES: [&str; 5] = ["a", "b", "c", "d", "e"];
const IFACES: [&str; 3] = ["eth0", "eth1", "eth2"];
const IPS: [&str; 10] = [
    "203.0.113.17",
    "203.0.113.18",
    "203.0.113.19",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8::3",
    "198.51.100.1",
    "2001:db8:1::1",
    "203.0.113.1",   // in no pool
    "2001:db8:2::1", // in no pool
];

fn pick<'a>(items: &[&'a str], mask: u8) -> Vec<&'a str> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// Everything a World is built from, as the glue would receive it.
#[derive(Clone, Debug)]
struct Objects {
    nodes: Vec<Node>,
    speakers: Vec<Speaker>,
    pools: Vec<Pool>,
    advertisements: Vec<Advertisement>,
    services: Vec<Service>,
    ignore_exclude_lb: bool,
    /// Per node, the Services whose kube-proxy health check fails there.
    unhealthy: BTreeMap<String, BTreeSet<String>>,
}

fn node_strategy(name: &'static str) -> impl Strategy<Value = (Option<Node>, Option<Speaker>)> {
    (
        prop::bool::weighted(0.9),
        0..2u8,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.8),
        0..8u8,
    )
        .prop_map(move |(known, zone, exclude, unavailable, live, ifaces)| {
            let mut l = labels(&[("zone", &format!("z{zone}"))]);
            if exclude {
                l.insert(EXCLUDE_LB_LABEL.into(), String::new());
            }
            let node = known.then(|| Node {
                name: name.into(),
                labels: l,
                network_unavailable: unavailable,
            });
            let speaker = live.then(|| Speaker {
                node: name.into(),
                interfaces: pick(&IFACES, ifaces)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                settling: false,
            });
            (node, speaker)
        })
}

fn pools_strategy() -> impl Strategy<Value = Vec<Pool>> {
    (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(v4, v6, mix)| {
            let mut pools = Vec::new();
            if v4 {
                pools.push(mk_pool("p4", &[("fam", "v4")], &["203.0.113.16/28"]));
            }
            if v6 {
                pools.push(mk_pool("p6", &[("fam", "v6")], &["2001:db8::/124"]));
            }
            if mix {
                pools.push(mk_pool(
                    "pmix",
                    &[("fam", "mix")],
                    &["198.51.100.0/30", "2001:db8:1::1-2001:db8:1::3"],
                ));
            }
            pools
        })
}

fn adv_strategy(i: usize) -> impl Strategy<Value = Advertisement> {
    (0..8u8, 0..4u8, 0..4u8, 0..8u8, 0..4u8).prop_map(
        move |(pools, pool_sel, nodes, ifaces, svcs)| {
            let fams = ["v4", "v6", "mix"];
            Advertisement {
                name: format!("adv{i}"),
                pools: PoolSelection {
                    names: pick(
                        &["p4", "p6", "pmix"],
                        pools & if pool_sel == 0 { 7 } else { 0 },
                    )
                    .into_iter()
                    .map(String::from)
                    .collect(),
                    selectors: pick(&fams, pool_sel & 3)
                        .into_iter()
                        .map(|f| sel(&[("fam", f)]))
                        .collect(),
                },
                node_selectors: pick(&["z0", "z1"], nodes)
                    .into_iter()
                    .map(|z| sel(&[("zone", z)]))
                    .collect(),
                interfaces: pick(&IFACES, ifaces)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                service_selectors: pick(&["x", "y"], svcs)
                    .into_iter()
                    .map(|a| sel(&[("app", a)]))
                    .collect(),
            }
        },
    )
}

fn svc_strategy(i: usize) -> impl Strategy<Value = Service> {
    (
        prop::sample::subsequence((0..IPS.len()).collect::<Vec<_>>(), 1..=2),
        prop::bool::ANY,
        prop::bool::ANY,
        0..32u8,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            move |(ips, app_x, local, serving, has_eps, ignore_hc)| Service {
                key: format!("ns/s{i}"),
                labels: labels(&[("app", if app_x { "x" } else { "y" })]),
                ips: ips.into_iter().map(|k| ip(IPS[k])).collect(),
                local,
                serving_nodes: pick(&NODES, serving)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                has_serving_endpoints: has_eps,
                ignore_health_check: ignore_hc,
            },
        )
}

fn objects() -> impl Strategy<Value = Objects> {
    let nodes: Vec<_> = NODES.iter().map(|n| node_strategy(n)).collect();
    let advs = (0..4usize).prop_flat_map(|n| (0..n).map(adv_strategy).collect::<Vec<_>>());
    let svcs = (0..7usize).prop_flat_map(|n| (0..n).map(svc_strategy).collect::<Vec<_>>());
    (
        nodes,
        pools_strategy(),
        advs,
        svcs,
        prop::bool::weighted(0.2),
        // Per node, a mask of the Service indices failing there (mostly none).
        prop::collection::vec(prop::option::weighted(0.3, 0..128u8), NODES.len()),
    )
        .prop_map(
            |(nodes, pools, advertisements, services, ignore_exclude_lb, masks)| {
                let (nodes, speakers): (Vec<_>, Vec<_>) = nodes.into_iter().unzip();
                Objects {
                    nodes: nodes.into_iter().flatten().collect(),
                    speakers: speakers.into_iter().flatten().collect(),
                    pools,
                    advertisements,
                    services,
                    ignore_exclude_lb,
                    unhealthy: NODES
                        .iter()
                        .zip(masks)
                        .filter_map(|(n, m)| {
                            let m = m?;
                            let keys = (0..7).filter(move |i| m & (1 << i) != 0);
                            Some((n.to_string(), keys.map(|i| format!("ns/s{i}")).collect()))
                        })
                        .collect(),
                }
            },
        )
}

/// SplitMix64, to derive many shuffles from one shrinkable seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Builds the World through a permuted event history: objects arrive in a random order,
/// inner lists are reordered, some objects first arrive stale and are then updated, and a
/// transient object comes and goes.
fn build(objs: &Objects, seed: u64) -> World {
    let mut rng = Rng(seed);
    let mut o = objs.clone();
    for a in &mut o.advertisements {
        rng.shuffle(&mut a.node_selectors);
        rng.shuffle(&mut a.service_selectors);
        rng.shuffle(&mut a.pools.selectors);
    }
    for s in &mut o.services {
        rng.shuffle(&mut s.ips);
    }
    enum Ev {
        Node(Node),
        Speaker(Speaker),
        Pool(Pool),
        Adv(Advertisement),
        Svc(Service),
    }
    let mut events: Vec<Ev> = Vec::new();
    events.extend(o.nodes.into_iter().map(Ev::Node));
    events.extend(o.speakers.into_iter().map(Ev::Speaker));
    events.extend(o.pools.into_iter().map(Ev::Pool));
    events.extend(o.advertisements.into_iter().map(Ev::Adv));
    events.extend(o.services.into_iter().map(Ev::Svc));
    rng.shuffle(&mut events);

    let mut w = World {
        ignore_exclude_lb: o.ignore_exclude_lb,
        unhealthy: o.unhealthy.clone(),
        ..Default::default()
    };
    let stale = rng.next().is_multiple_of(2);
    w.apply_service(Service {
        key: "tmp/transient".into(),
        ips: vec![ip("203.0.113.17")],
        has_serving_endpoints: true,
        ..Default::default()
    });
    for ev in events {
        match ev {
            Ev::Node(n) => w.apply_node(n),
            Ev::Speaker(s) => w.apply_speaker(s),
            Ev::Pool(p) => w.apply_pool(p),
            Ev::Adv(a) => w.apply_advertisement(a),
            Ev::Svc(s) => {
                if stale {
                    let mut old = s.clone();
                    old.local = !old.local;
                    old.ips.reverse();
                    old.ips.pop();
                    w.apply_service(old);
                }
                w.apply_service(s);
            }
        }
    }
    w.delete_service("tmp/transient");
    w
}

// ---- The oracle: docs/design/election.md read literally, no caching, no cleverness. ----

fn advs_for<'w>(w: &'w World, s: &Service, addr: IpAddr) -> Vec<&'w Advertisement> {
    w.advertisements
        .values()
        .filter(|a| {
            w.pools
                .values()
                .any(|p| p.addresses.contains(addr) && a.selects_pool(p))
                && a.selects_service(&s.labels)
        })
        .collect()
}

fn active(w: &World, s: &Service, addr: IpAddr) -> bool {
    s.has_serving_endpoints && !advs_for(w, s, addr).is_empty()
}

/// The interfaces `node` would announce `addr` on for `s`, or None if not eligible.
fn eligible(w: &World, s: &Service, addr: IpAddr, node: &str) -> Option<BTreeSet<String>> {
    let n = w.nodes.get(node)?;
    let sp = w.speakers.get(node)?;
    if n.network_unavailable
        || (!w.ignore_exclude_lb && n.labels.contains_key(EXCLUDE_LB_LABEL))
        || (s.local && !s.serving_nodes.contains(node))
        || (s.local
            && !s.ignore_health_check
            && w.unhealthy.get(node).is_some_and(|u| u.contains(&s.key)))
    {
        return None;
    }
    let ifaces: BTreeSet<String> = advs_for(w, s, addr)
        .into_iter()
        .filter(|a| a.selects_node(&n.labels))
        .flat_map(|a| {
            sp.interfaces
                .iter()
                .filter(|i| a.interfaces.is_empty() || a.interfaces.contains(*i))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    (!ifaces.is_empty()).then_some(ifaces)
}

/// Active (Service, IP) pairs grouped by the sharing relation, found by naive merging.
fn oracle_groups(w: &World) -> Vec<Vec<(&Service, IpAddr)>> {
    let pairs: Vec<(&Service, IpAddr)> = w
        .services
        .values()
        .flat_map(|s| {
            s.ips
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(move |a| (s, a))
        })
        .filter(|(s, a)| active(w, s, *a))
        .collect();
    let mut groups: Vec<Vec<(&Service, IpAddr)>> = pairs.into_iter().map(|p| vec![p]).collect();
    loop {
        let linked = |g: &[(&Service, IpAddr)], h: &[(&Service, IpAddr)]| {
            g.iter()
                .any(|(s, a)| h.iter().any(|(t, b)| s.key == t.key || a == b))
        };
        let found = (0..groups.len()).find_map(|i| {
            (i + 1..groups.len())
                .find(|&j| linked(&groups[i], &groups[j]))
                .map(|j| (i, j))
        });
        match found {
            Some((i, j)) => {
                let g = groups.remove(j);
                groups[i].extend(g);
            }
            None => return groups,
        }
    }
}

fn all_node_names(w: &World) -> BTreeSet<String> {
    w.nodes.keys().chain(w.speakers.keys()).cloned().collect()
}

fn check_against_oracle(w: &World, t: &Table) -> Result<(), TestCaseError> {
    let mut covered: BTreeSet<IpAddr> = BTreeSet::new();
    for g in oracle_groups(w) {
        let key = g.iter().map(|(_, a)| *a).min().unwrap();
        let winner = all_node_names(w)
            .into_iter()
            .filter(|n| g.iter().all(|(s, a)| eligible(w, s, *a, n).is_some()))
            .min_by_key(|n| (rank(n, key), n.clone()));
        for (s, a) in &g {
            covered.insert(*a);
            let got = &t.service(&s.key).unwrap()[a];
            prop_assert_eq!(
                got,
                t.get(*a).unwrap(),
                "Service view = IP view for active pairs"
            );
            match &winner {
                Some(n) => {
                    let want: BTreeSet<String> = g
                        .iter()
                        .filter(|(_, b)| b == a)
                        .flat_map(|(s2, b)| eligible(w, s2, *b, n).unwrap())
                        .collect();
                    prop_assert_eq!(
                        got,
                        &Decision::Announce {
                            node: n.clone(),
                            interfaces: want.into()
                        }
                    );
                }
                None => match got {
                    Decision::NotAnnounced {
                        reason: NotAnnouncedReason::NoEligibleNode { detail },
                    } => {
                        // Every known node is counted once, under one reason, and the
                        // names kept are known nodes.
                        let all = all_node_names(w);
                        prop_assert_eq!(detail.total(), all.len());
                        for (_, e) in detail.by_reason() {
                            prop_assert!(e.first.len() == e.count.min(NAMES_PER_REASON));
                            prop_assert!(e.first.iter().all(|n| all.contains(n)));
                            prop_assert!(e.first.is_sorted());
                        }
                    }
                    other => prop_assert!(false, "{a}: want NoEligibleNode, got {other:?}"),
                },
            }
        }
    }
    // Every other (Service, IP) is refused for a configuration reason, and so is its IP
    // unless a sharing Service got it through.
    for s in w.services.values() {
        for a in &s.ips {
            if active(w, s, *a) {
                continue;
            }
            let got = &t.service(&s.key).unwrap()[a];
            let why = match got {
                Decision::NotAnnounced { reason } => reason.reason(),
                d => return Err(TestCaseError::fail(format!("{a} of {}: {d:?}", s.key))),
            };
            prop_assert!(["NotInPool", "NoAdvertisement", "NoServingEndpoints"].contains(&why));
            if !covered.contains(a) {
                prop_assert!(t.get(*a).unwrap().announcer().is_none());
            }
        }
    }
    let held: BTreeSet<IpAddr> = w.services.values().flat_map(|s| s.ips.clone()).collect();
    prop_assert_eq!(held, t.ips().keys().copied().collect::<BTreeSet<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Election matches the literal reading of the rules.
    #[test]
    fn matches_the_oracle(objs in objects(), seed in any::<u64>()) {
        let w = build(&objs, seed);
        check_against_oracle(&w, &desired(&w))?;
    }

    /// (1) N speakers, each with its own view built from a different event order: every
    /// announced IP is answered by exactly its announcer, unannounced IPs by nobody, and the
    /// announcer is eligible for every Service that has the IP announced.
    #[test]
    fn exactly_one_speaker_answers_each_announced_ip(objs in objects(), seed in any::<u64>()) {
        let reference = desired(&build(&objs, seed));
        let mut answering: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for (k, node) in NODES.iter().enumerate() {
            let view = build(&objs, seed.wrapping_add(k as u64 + 1));
            if !view.speakers.contains_key(*node) {
                continue; // a dead speaker computes nothing
            }
            for (addr, ifaces) in local_announcements(&desired(&view), node) {
                prop_assert!(!ifaces.is_empty());
                answering.entry(addr).or_default().push(node.to_string());
            }
        }
        let w = build(&objs, seed);
        for (addr, d) in reference.ips() {
            match d {
                Decision::Announce { node, .. } => {
                    prop_assert_eq!(answering.get(addr), Some(&vec![node.clone()]));
                }
                Decision::NotAnnounced { .. } => prop_assert!(!answering.contains_key(addr)),
            }
        }
        for s in w.services.values() {
            for (addr, d) in reference.service(&s.key).into_iter().flatten() {
                if let Some(n) = d.announcer() {
                    prop_assert!(eligible(&w, s, *addr, n).is_some(), "{} {addr} on {n}", s.key);
                }
            }
        }
    }

    /// (2) All announced IPs of a Service share one node, and so do all Services of an IP.
    #[test]
    fn sharing_and_dual_stack_never_split(objs in objects(), seed in any::<u64>()) {
        let w = build(&objs, seed);
        let t = desired(&w);
        for s in w.services.values() {
            let nodes: BTreeSet<&str> = t
                .service(&s.key)
                .into_iter()
                .flatten()
                .filter_map(|(_, d)| d.announcer())
                .collect();
            prop_assert!(nodes.len() <= 1, "{} split over {nodes:?}", s.key);
            if let Some(n) = nodes.first() {
                for (addr, d) in t.service(&s.key).unwrap() {
                    if d.announcer().is_some() {
                        prop_assert_eq!(t.announcer(*addr), Some(*n));
                    }
                }
            }
        }
    }

    /// (3) Any permutation of the same events yields the identical Table.
    #[test]
    fn event_order_does_not_matter(objs in objects(), s1 in any::<u64>(), s2 in any::<u64>()) {
        let (w1, w2) = (build(&objs, s1), build(&objs, s2));
        prop_assert_eq!(desired(&w1), desired(&w2));
    }

    /// (4) Losing a node that announces nothing moves nothing.
    #[test]
    fn losing_an_idle_node_moves_nothing(objs in objects(), seed in any::<u64>()) {
        let w = build(&objs, seed);
        let before = desired(&w);
        for node in w.speakers.keys() {
            if !local_announcements(&before, node).is_empty() {
                continue;
            }
            let mut w2 = w.clone();
            w2.delete_speaker(node);
            let after = desired(&w2);
            for (addr, d) in before.ips() {
                match d {
                    Decision::Announce { .. } => prop_assert_eq!(after.get(*addr), Some(d)),
                    Decision::NotAnnounced { .. } => prop_assert!(after.announcer(*addr).is_none()),
                }
            }
        }
    }
}

/// The generator must produce both outcomes often, or the properties prove little.
#[test]
fn generator_exercises_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut announced, mut refused, mut shared) = (0, 0, 0);
    for _ in 0..300 {
        let objs = objects().new_tree(&mut runner).unwrap().current();
        let w = build(&objs, 0);
        let t = desired(&w);
        announced += t.ips().values().filter(|d| d.announcer().is_some()).count();
        refused += t.ips().values().filter(|d| d.announcer().is_none()).count();
        shared += t
            .ips()
            .keys()
            .filter(|a| w.services.values().filter(|s| s.ips.contains(a)).count() > 1)
            .count();
    }
    assert!(
        announced > 100 && refused > 100 && shared > 100,
        "{announced} {refused} {shared}"
    );
}
