//! Table tests, one row per eligibility rule, plus grouping and interface cases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;

use super::*;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::from_labels(pairs.iter().copied())
}

pub(super) fn mk_node(name: &str, l: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        labels: labels(l),
        network_unavailable: false,
    }
}

pub(super) fn mk_speaker(node: &str, ifaces: &[&str]) -> Speaker {
    Speaker {
        node: node.into(),
        interfaces: set(ifaces),
        settling: false,
    }
}

pub(super) fn mk_pool(name: &str, l: &[(&str, &str)], addrs: &[&str]) -> Pool {
    let addrs: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
    Pool {
        name: name.into(),
        labels: labels(l),
        addresses: PoolAddresses::parse(&addrs).unwrap(),
    }
}

/// An advertisement of every pool, from every node, on every interface, for every Service.
pub(super) fn mk_adv(name: &str) -> Advertisement {
    Advertisement {
        name: name.into(),
        ..Default::default()
    }
}

/// A `Cluster` Service with serving endpoints on every node.
pub(super) fn mk_svc(key: &str, ips: &[&str]) -> Service {
    Service {
        key: key.into(),
        labels: labels(&[("app", "web")]),
        ips: ips.iter().map(|s| ip(s)).collect(),
        local: false,
        serving_nodes: set(&["a", "b", "c"]),
        has_serving_endpoints: true,
        ignore_health_check: false,
    }
}

/// Node `a` (zone z1) with a speaker on eth0+eth1; pool `p` (env=prod, dual-stack); one
/// advertisement `adv` of everything; Service `ns/s` on 203.0.113.1.
fn one_node_world() -> World {
    let mut w = World::default();
    w.apply_node(mk_node("a", &[("zone", "z1")]));
    w.apply_speaker(mk_speaker("a", &["eth0", "eth1"]));
    w.apply_pool(mk_pool(
        "p",
        &[("env", "prod")],
        &["203.0.113.0/24", "2001:db8::/64"],
    ));
    w.apply_advertisement(mk_adv("adv"));
    w.apply_service(mk_svc("ns/s", &["203.0.113.1"]));
    w
}

fn announce(node: &str, ifaces: &[&str]) -> Decision {
    Decision::Announce {
        node: node.into(),
        interfaces: set(ifaces).into(),
    }
}

fn excluded(nodes: &[(&str, NodeExclusion)]) -> Decision {
    Decision::NotAnnounced {
        reason: NotAnnouncedReason::NoEligibleNode {
            detail: nodes.iter().map(|(n, e)| (n.to_string(), *e)).collect(),
        },
    }
}

fn no_adv(pools: &[&str], excluded: &[&str]) -> Decision {
    Decision::NotAnnounced {
        reason: NotAnnouncedReason::NoAdvertisement {
            pools: set(pools),
            excluded_by_service_selectors: set(excluded),
        },
    }
}

fn reason(r: NotAnnouncedReason) -> Decision {
    Decision::NotAnnounced { reason: r }
}

fn adv_mut(w: &mut World) -> &mut Advertisement {
    w.advertisements.get_mut("adv").unwrap()
}

fn svc_mut(w: &mut World) -> &mut Service {
    w.services.get_mut("ns/s").unwrap()
}

#[test]
fn each_rule_in_isolation() {
    use NodeExclusion::*;
    type Case = (&'static str, fn(&mut World), Decision);
    let both = &["eth0", "eth1"];
    let cases: Vec<Case> = vec![
        ("baseline", |_| {}, announce("a", both)),
        (
            "no live speaker",
            |w| w.delete_speaker("a"),
            excluded(&[("a", NoSpeaker)]),
        ),
        (
            "node unknown",
            |w| w.delete_node("a"),
            excluded(&[("a", UnknownNode)]),
        ),
        (
            "no node and no speaker",
            |w| {
                w.delete_node("a");
                w.delete_speaker("a");
            },
            excluded(&[]),
        ),
        (
            "exclude label",
            |w| {
                let n = w.nodes.get_mut("a").unwrap();
                n.labels.insert(EXCLUDE_LB_LABEL.into(), String::new());
            },
            excluded(&[("a", ExcludedByLabel)]),
        ),
        (
            "exclude label ignored",
            |w| {
                let n = w.nodes.get_mut("a").unwrap();
                n.labels.insert(EXCLUDE_LB_LABEL.into(), "true".into());
                w.ignore_exclude_lb = true;
            },
            announce("a", both),
        ),
        (
            "NetworkUnavailable",
            |w| w.nodes.get_mut("a").unwrap().network_unavailable = true,
            excluded(&[("a", NetworkUnavailable)]),
        ),
        (
            "dead speaker wins over other exclusions",
            |w| {
                w.nodes.get_mut("a").unwrap().network_unavailable = true;
                w.delete_speaker("a");
            },
            excluded(&[("a", NoSpeaker)]),
        ),
        (
            "node selector excludes",
            |w| adv_mut(w).node_selectors = vec![sel(&[("zone", "z2")])],
            excluded(&[("a", NotSelected)]),
        ),
        (
            "node selectors: any match",
            |w| adv_mut(w).node_selectors = vec![sel(&[("zone", "z2")]), sel(&[("zone", "z1")])],
            announce("a", both),
        ),
        (
            "service selector excludes",
            |w| adv_mut(w).service_selectors = vec![sel(&[("app", "db")])],
            no_adv(&["p"], &["adv"]),
        ),
        (
            "service selectors: any match",
            |w| adv_mut(w).service_selectors = vec![sel(&[("app", "db")]), sel(&[("app", "web")])],
            announce("a", both),
        ),
        (
            "pool not advertised (other name)",
            |w| adv_mut(w).pools.names = set(&["other"]),
            no_adv(&["p"], &[]),
        ),
        (
            "no advertisement at all",
            |w| w.delete_advertisement("adv"),
            no_adv(&["p"], &[]),
        ),
        (
            "pool selected by name",
            |w| adv_mut(w).pools.names = set(&["other", "p"]),
            announce("a", both),
        ),
        (
            "pool selected by label",
            |w| adv_mut(w).pools.selectors = vec![sel(&[("env", "prod")])],
            announce("a", both),
        ),
        (
            "pool label selector misses",
            |w| adv_mut(w).pools.selectors = vec![sel(&[("env", "dev")])],
            no_adv(&["p"], &[]),
        ),
        (
            "pool named or labelled",
            |w| {
                let a = adv_mut(w);
                a.pools.names = set(&["p"]);
                a.pools.selectors = vec![sel(&[("env", "dev")])];
            },
            announce("a", both),
        ),
        (
            "IP in no pool",
            |w| svc_mut(w).ips = vec![ip("198.51.100.1")],
            reason(NotAnnouncedReason::NotInPool),
        ),
        (
            "pool deleted",
            |w| w.delete_pool("p"),
            reason(NotAnnouncedReason::NotInPool),
        ),
        (
            "no serving endpoints (Cluster)",
            |w| svc_mut(w).has_serving_endpoints = false,
            reason(NotAnnouncedReason::NoServingEndpoints),
        ),
        (
            "no serving endpoints (Local)",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.has_serving_endpoints = false;
            },
            reason(NotAnnouncedReason::NoServingEndpoints),
        ),
        (
            "Local, endpoints only elsewhere",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["b"]);
            },
            excluded(&[("a", NoLocalEndpoint)]),
        ),
        (
            "Local, endpoint on the node",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["a"]);
            },
            announce("a", both),
        ),
        (
            "Local, endpoint on the node, its health check failing",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["a"]);
                w.unhealthy.insert("a".into(), set(&["ns/s"]));
            },
            excluded(&[("a", NoHealthyEndpoint)]),
        ),
        (
            "Local, no endpoint and the check failing: the endpoint reason first",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["b"]);
                w.unhealthy.insert("a".into(), set(&["ns/s"]));
            },
            excluded(&[("a", NoLocalEndpoint)]),
        ),
        (
            "Local, another Service's health check failing",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["a"]);
                w.unhealthy.insert("a".into(), set(&["ns/other"]));
            },
            announce("a", both),
        ),
        (
            "Local, health check opted out",
            |w| {
                let s = svc_mut(w);
                s.local = true;
                s.serving_nodes = set(&["a"]);
                s.ignore_health_check = true;
                w.unhealthy.insert("a".into(), set(&["ns/s"]));
            },
            announce("a", both),
        ),
        (
            "Cluster ignores the health check",
            |w| {
                w.unhealthy.insert("a".into(), set(&["ns/s"]));
            },
            announce("a", both),
        ),
        (
            "Cluster ignores where endpoints are",
            |w| svc_mut(w).serving_nodes = set(&["b"]),
            announce("a", both),
        ),
        (
            "interfaces filter leaves nothing",
            |w| adv_mut(w).interfaces = set(&["eth9"]),
            excluded(&[("a", NoAllowedInterface)]),
        ),
        (
            "interfaces filter keeps one",
            |w| adv_mut(w).interfaces = set(&["eth1", "eth9"]),
            announce("a", &["eth1"]),
        ),
        (
            "speaker has no usable interface",
            |w| w.apply_speaker(mk_speaker("a", &[])),
            excluded(&[("a", NoAllowedInterface)]),
        ),
        (
            "IPv6 follows the same rules",
            |w| svc_mut(w).ips = vec![ip("2001:db8::5")],
            announce("a", both),
        ),
    ];
    for (name, mutate, want) in cases {
        let mut w = one_node_world();
        mutate(&mut w);
        let t = desired(&w);
        let svc_ip = w.services["ns/s"].ips[0];
        assert_eq!(t.get(svc_ip), Some(&want), "{name}");
        assert_eq!(
            t.service("ns/s").unwrap()[&svc_ip],
            want,
            "{name} (Service view)"
        );
        assert_eq!(t.ips().len(), 1, "{name}");
    }
}

fn three_node_world() -> World {
    let mut w = one_node_world();
    w.apply_node(mk_node("b", &[("zone", "z2")]));
    w.apply_node(mk_node("c", &[("zone", "z2")]));
    w.apply_speaker(mk_speaker("b", &["eth0", "eth1"]));
    w.apply_speaker(mk_speaker("c", &["eth0", "eth1"]));
    w
}

/// A node whose kube-proxy health check fails for a Local Service loses its IPs to the
/// next-ranked healthy node with a local endpoint, and gets them back once it publishes
/// the Service healthy again; opt-out and Cluster Services stay where they are.
#[test]
fn a_node_failing_the_health_check_loses_the_ip_to_a_healthy_node() {
    let mut w = three_node_world();
    let s = svc_mut(&mut w);
    s.local = true;
    s.serving_nodes = set(&["a", "b"]);
    let svc_ip = s.ips[0];
    let first = desired(&w)
        .get(svc_ip)
        .and_then(|d| d.announcer().map(String::from));
    let first = first.expect("announced");
    let other = if first == "a" { "b" } else { "a" };

    let mut failing = w.clone();
    failing.unhealthy.insert(first.clone(), set(&["ns/s"]));
    assert_eq!(
        desired(&failing).get(svc_ip).and_then(|d| d.announcer()),
        Some(other),
        "moves to the healthy node with an endpoint, never to c (no endpoint)"
    );

    failing.unhealthy.insert(other.into(), set(&["ns/s"]));
    assert_eq!(
        desired(&failing).get(svc_ip),
        Some(&excluded(&[
            ("a", NodeExclusion::NoHealthyEndpoint),
            ("b", NodeExclusion::NoHealthyEndpoint),
            ("c", NodeExclusion::NoLocalEndpoint),
        ])),
        "nobody healthy: not announced, and the message says why"
    );
    let table = desired(&failing);
    assert!(
        table
            .get(svc_ip)
            .unwrap()
            .to_string()
            .contains("kube-proxy health check failing"),
        "{}",
        table.get(svc_ip).unwrap()
    );

    let mut opted_out = failing.clone();
    svc_mut(&mut opted_out).ignore_health_check = true;
    assert_eq!(
        desired(&opted_out).get(svc_ip).and_then(|d| d.announcer()),
        Some(first.as_str()),
        "opt-out: the check does not count"
    );
    let mut cluster = failing.clone();
    svc_mut(&mut cluster).local = false;
    let mut healthy_cluster = w.clone();
    svc_mut(&mut healthy_cluster).local = false;
    assert_eq!(
        desired(&cluster),
        desired(&healthy_cluster),
        "Cluster policy: the check does not count"
    );

    failing.unhealthy.clear();
    assert_eq!(
        desired(&failing).get(svc_ip).and_then(|d| d.announcer()),
        Some(first.as_str()),
        "back once healthy"
    );
}

/// The table holds one interface set per distinct set, not one per IP and view: a
/// speaker announcing thousands of IPs keeps its table, its decider's copy and the data
/// plane's in a few allocations (docs/architecture.md#memory).
#[test]
fn equal_interface_sets_share_one_allocation() {
    let mut w = one_node_world();
    for i in 2..40 {
        w.apply_service(mk_svc(&format!("ns/s{i}"), &[&format!("203.0.113.{i}")]));
    }
    w.apply_service(mk_svc("ns/v6", &["2001:db8::7"]));
    let t = desired(&w);
    let sets: Vec<&Interfaces> = t
        .ips()
        .values()
        .chain(t.services().values().flat_map(|by_ip| by_ip.values()))
        .map(|d| match d {
            Decision::Announce { interfaces, .. } => interfaces,
            other => panic!("not announced: {other}"),
        })
        .collect();
    assert_eq!(sets.len(), 2 * 40);
    assert_eq!(**sets[0], set(&["eth0", "eth1"]));
    assert!(
        sets.iter().all(|s| std::sync::Arc::ptr_eq(s, sets[0])),
        "every IP, by IP and by Service, shares the one set"
    );
    let local = local_announcements(&t, "a");
    assert!(local.values().all(|s| std::sync::Arc::ptr_eq(s, sets[0])));
}

#[test]
fn advertisements_combine_by_union_of_interfaces() {
    let mut w = one_node_world();
    w.delete_advertisement("adv");
    w.apply_speaker(mk_speaker("a", &["eth0", "eth1", "eth2"]));
    let only = |name: &str, ifaces: &[&str]| Advertisement {
        interfaces: set(ifaces),
        ..mk_adv(name)
    };
    w.apply_advertisement(only("x", &["eth0"]));
    w.apply_advertisement(only("y", &["eth1", "eth9"]));
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth0", "eth1"]))
    );

    // An advertisement that does not select the node adds nothing on it.
    w.advertisements.get_mut("y").unwrap().node_selectors = vec![sel(&[("zone", "z2")])];
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth0"]))
    );

    // Nor does one whose serviceSelectors exclude the Service.
    let y = w.advertisements.get_mut("y").unwrap();
    y.node_selectors.clear();
    y.service_selectors = vec![sel(&[("app", "db")])];
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth0"]))
    );

    // An advertisement that allows no usable interface is saved by another that does.
    w.advertisements.get_mut("x").unwrap().interfaces = set(&["eth9"]);
    w.advertisements
        .get_mut("y")
        .unwrap()
        .service_selectors
        .clear();
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth1"]))
    );

    // An advertisement with no interface list allows all of them.
    w.apply_advertisement(mk_adv("z"));
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth0", "eth1", "eth2"]))
    );
}

#[test]
fn overlapping_pools_each_bring_their_advertisements() {
    let mut w = one_node_world();
    w.apply_pool(mk_pool("q", &[], &["203.0.113.0/28"]));
    let adv = |name: &str, pool: &str, iface: &str| Advertisement {
        pools: PoolSelection {
            names: set(&[pool]),
            selectors: vec![],
        },
        interfaces: set(&[iface]),
        ..mk_adv(name)
    };
    w.delete_advertisement("adv");
    w.apply_advertisement(adv("for-p", "p", "eth0"));
    w.apply_advertisement(adv("for-q", "q", "eth1"));
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&announce("a", &["eth0", "eth1"]))
    );
    w.delete_advertisement("for-p");
    w.delete_advertisement("for-q");
    assert_eq!(
        desired(&w).get(ip("203.0.113.1")),
        Some(&no_adv(&["p", "q"], &[]))
    );
}

#[test]
fn the_winner_is_the_lowest_ranked_eligible_node() {
    let w = three_node_world();
    let target = ip("203.0.113.1");
    let mut by_rank: Vec<&str> = vec!["a", "b", "c"];
    by_rank.sort_by_key(|n| (rank(n, target), *n));
    assert_eq!(desired(&w).announcer(target), Some(by_rank[0]));

    // Take the winner away: the runner-up takes over; then the third.
    let mut w2 = w.clone();
    w2.delete_speaker(by_rank[0]);
    assert_eq!(desired(&w2).announcer(target), Some(by_rank[1]));
    w2.delete_speaker(by_rank[1]);
    assert_eq!(desired(&w2).announcer(target), Some(by_rank[2]));

    // The first comes back: it takes back exactly its IP (the ranking requires it).
    w2.apply_speaker(mk_speaker(by_rank[0], &["eth0"]));
    assert_eq!(desired(&w2).announcer(target), Some(by_rank[0]));
}

#[test]
fn a_settling_node_wins_only_what_no_settled_node_can_take() {
    let w = three_node_world();
    let target = ip("203.0.113.1");
    let mut by_rank: Vec<&str> = vec!["a", "b", "c"];
    by_rank.sort_by_key(|n| (rank(n, target), *n));
    // The best-ranked node is back but settling: the runner-up keeps the IP.
    let mut w2 = w.clone();
    let mut back = mk_speaker(by_rank[0], &["eth0", "eth1"]);
    back.settling = true;
    w2.apply_speaker(back.clone());
    assert_eq!(desired(&w2).announcer(target), Some(by_rank[1]));
    // Settled after the hold-down: it takes the IP back, once.
    back.settling = false;
    w2.apply_speaker(back.clone());
    assert_eq!(desired(&w2).announcer(target), Some(by_rank[0]));
    // Settling, but the only eligible node: it announces rather than leave the IP dark.
    let mut alone = w.clone();
    for n in &by_rank[1..] {
        alone.delete_speaker(n);
    }
    back.settling = true;
    alone.apply_speaker(back);
    assert_eq!(desired(&alone).announcer(target), Some(by_rank[0]));
}

#[test]
fn shared_ip_and_dual_stack_land_on_one_node() {
    let mut w = three_node_world();
    // s1 is dual-stack; s2 shares its IPv4 address and is Local with endpoints only on b.
    w.delete_service("ns/s");
    w.apply_service(mk_svc("ns/s1", &["203.0.113.10", "2001:db8::10"]));
    let mut s2 = mk_svc("ns/s2", &["203.0.113.10"]);
    s2.local = true;
    s2.serving_nodes = set(&["b"]);
    w.apply_service(s2);
    let t = desired(&w);
    assert_eq!(t.announcer(ip("203.0.113.10")), Some("b"));
    assert_eq!(
        t.announcer(ip("2001:db8::10")),
        Some("b"),
        "dual-stack follows"
    );
    assert_eq!(
        t.service("ns/s1").unwrap()[&ip("2001:db8::10")],
        announce("b", &["eth0", "eth1"])
    );
    assert_eq!(local_announcements(&t, "b").len(), 2);
    assert!(local_announcements(&t, "a").is_empty());

    // Incompatible constraints: no node can serve the whole group, so none announces it.
    let mut s3 = mk_svc("ns/s3", &["2001:db8::10"]);
    s3.local = true;
    s3.serving_nodes = set(&["c"]);
    w.apply_service(s3);
    let t = desired(&w);
    let want = excluded(&[
        ("a", NodeExclusion::NoLocalEndpoint),
        ("b", NodeExclusion::NoLocalEndpoint),
        ("c", NodeExclusion::NoLocalEndpoint),
    ]);
    for addr in ["203.0.113.10", "2001:db8::10"] {
        assert_eq!(t.get(ip(addr)), Some(&want), "{addr}");
        for key in ["ns/s1", "ns/s2", "ns/s3"] {
            if let Some(d) = t.service(key).unwrap().get(&ip(addr)) {
                assert_eq!(d, &want, "{key} {addr}");
            }
        }
    }
    assert_eq!(
        want.to_string(),
        "not announced: no eligible node (3 nodes): no local serving endpoint: a, b, c"
    );
}

#[test]
fn dual_stack_services_never_split() {
    let mut w = three_node_world();
    w.delete_service("ns/s");
    for i in 1..=200u32 {
        w.apply_service(mk_svc(
            &format!("ns/s{i}"),
            &[
                &format!("203.0.113.{}", i % 250),
                &format!("2001:db8::{i:x}"),
            ],
        ));
    }
    let t = desired(&w);
    for i in 1..=200u32 {
        let v4 = t.announcer(ip(&format!("203.0.113.{}", i % 250)));
        let v6 = t.announcer(ip(&format!("2001:db8::{i:x}")));
        assert!(v4.is_some());
        assert_eq!(v4, v6, "service {i}");
    }
}

#[test]
fn a_sharing_service_without_endpoints_does_not_block_the_ip() {
    let mut w = three_node_world();
    let mut idle = mk_svc("ns/idle", &["203.0.113.1"]);
    idle.has_serving_endpoints = false;
    w.apply_service(idle);
    let t = desired(&w);
    let winner = t.announcer(ip("203.0.113.1")).expect("announced for ns/s");
    assert_eq!(
        t.service("ns/s").unwrap()[&ip("203.0.113.1")].announcer(),
        Some(winner)
    );
    assert_eq!(
        t.service("ns/idle").unwrap()[&ip("203.0.113.1")],
        reason(NotAnnouncedReason::NoServingEndpoints)
    );
}

#[test]
fn a_partly_advertised_dual_stack_service_announces_what_it_can() {
    let mut w = one_node_world();
    adv_mut(&mut w).pools.names = set(&["p"]);
    w.apply_pool(mk_pool("p6", &[], &["2001:db8:6::/64"]));
    w.apply_service(mk_svc("ns/s", &["203.0.113.1", "2001:db8:6::1"]));
    let t = desired(&w);
    assert_eq!(t.announcer(ip("203.0.113.1")), Some("a"));
    assert_eq!(t.get(ip("2001:db8:6::1")), Some(&no_adv(&["p6"], &[])));
}

#[test]
fn ip_view_of_an_unannounced_ip_reports_the_most_advanced_reason() {
    let mut w = one_node_world();
    adv_mut(&mut w).service_selectors = vec![sel(&[("app", "db")])];
    let mut db = mk_svc("ns/a-db", &["203.0.113.1"]);
    db.labels = labels(&[("app", "db")]);
    db.has_serving_endpoints = false;
    w.apply_service(db);
    let t = desired(&w);
    // ns/a-db passes the advertisement but has no endpoints; ns/s is excluded by selectors.
    assert_eq!(
        t.get(ip("203.0.113.1")),
        Some(&reason(NotAnnouncedReason::NoServingEndpoints))
    );
    assert_eq!(
        t.service("ns/s").unwrap()[&ip("203.0.113.1")],
        no_adv(&["p"], &["adv"])
    );
}

#[test]
fn services_without_ips_are_absent_and_duplicates_collapse() {
    let mut w = one_node_world();
    w.apply_service(mk_svc("ns/pending", &[]));
    w.apply_service(mk_svc("ns/s", &["203.0.113.1", "203.0.113.1"]));
    let t = desired(&w);
    assert!(t.service("ns/pending").is_none());
    assert_eq!(t.service("ns/s").unwrap().len(), 1);
    assert_eq!(t.ips().len(), 1);
}

#[test]
fn election_spreads_ips_evenly() {
    let mut w = World::default();
    let nodes: Vec<String> = (0..10).map(|i| format!("worker-{i}")).collect();
    for n in &nodes {
        w.apply_node(mk_node(n, &[]));
        w.apply_speaker(mk_speaker(n, &["eth0"]));
    }
    // Only 512 IPv4 test addresses exist: all of them, then IPv6 up to 2000 IPs.
    w.apply_pool(mk_pool(
        "p",
        &[],
        &["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/64"],
    ));
    w.apply_advertisement(mk_adv("adv"));
    for i in 0..2000u32 {
        let addr = match i {
            0..256 => format!("198.51.100.{i}"),
            256..512 => format!("203.0.113.{}", i - 256),
            _ => format!("2001:db8::{:x}", i - 512),
        };
        w.apply_service(mk_svc(&format!("ns/s{i}"), &[&addr]));
    }
    let t = desired(&w);
    for n in &nodes {
        let won = local_announcements(&t, n);
        assert!(
            (120..=280).contains(&won.len()),
            "{n} won {} of 2000",
            won.len()
        );
        // The IPv4 share alone, within the same ±40% of its mean (51.2).
        let v4 = won.keys().filter(|a| a.is_ipv4()).count();
        assert!((31..=71).contains(&v4), "{n} won {v4} of 512 IPv4");
    }
}

/// A correlated outage (no speaker anywhere) in a large cluster: every IP's reason names
/// all nodes by count but keeps only a few names, so the table stays small (it once held
/// every node's reason for every IP: ~140 MiB per speaker at 1,000 × 1,000).
#[test]
fn no_eligible_node_keeps_a_bounded_summary_per_ip() {
    let mut w = World::default();
    for n in 0..200 {
        w.apply_node(mk_node(&format!("node-{n:03}"), &[]));
    }
    w.apply_node(Node {
        network_unavailable: true,
        ..mk_node("node-net", &[])
    });
    w.apply_speaker(mk_speaker("node-net", &["eth0"]));
    w.apply_pool(mk_pool("p", &[], &["203.0.113.0/24"]));
    w.apply_advertisement(mk_adv("adv"));
    for i in 1..=50 {
        w.apply_service(mk_svc(&format!("ns/s{i}"), &[&format!("203.0.113.{i}")]));
    }
    let t = desired(&w);
    assert_eq!(t.ips().len(), 50);
    for (ip, d) in t.ips() {
        let Decision::NotAnnounced {
            reason: NotAnnouncedReason::NoEligibleNode { detail },
        } = d
        else {
            panic!("{ip}: want NoEligibleNode, got {d:?}");
        };
        assert_eq!(detail.total(), 201);
        let reasons: Vec<(NodeExclusion, usize, Vec<String>)> = detail
            .by_reason()
            .map(|(why, e)| (why, e.count, e.first.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    NodeExclusion::NoSpeaker,
                    200,
                    vec!["node-000".into(), "node-001".into(), "node-002".into()]
                ),
                (
                    NodeExclusion::NetworkUnavailable,
                    1,
                    vec!["node-net".into()]
                ),
            ]
        );
        assert_eq!(
            d.to_string(),
            "not announced: no eligible node (201 nodes): no live speaker: node-000, \
             node-001, node-002 and 197 more; NetworkUnavailable: node-net"
        );
    }
}
