//! Property tests: whatever the order of pool and Service events, no IP is ever given to two
//! incompatible Services, every held IP lies in a pool, and the allocator is deterministic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;
use proptest::prelude::*;

use super::*;

/// Tiny, partly overlapping pools so that conflicts and exhaustion happen often.
fn pool_universe() -> Vec<PoolConfig> {
    let mk = |name: &str, created: i64, addrs: &[&str]| {
        let entries: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
        PoolConfig {
            created,
            ..PoolConfig::new(name, PoolAddresses::parse(&entries).unwrap())
        }
    };
    vec![
        mk("a", 1, &["203.0.113.0/30", "2001:db8::/127"]),
        mk("a", 1, &["203.0.113.0/31"]),
        PoolConfig {
            priority: Some(1),
            ..mk("b", 2, &["203.0.113.2-203.0.113.5"])
        },
        PoolConfig {
            auto_assign: false,
            ..mk("c", 3, &["2001:db8:1::/127"])
        },
        PoolConfig {
            avoid_buggy_ips: true,
            priority: Some(0),
            namespaces: vec!["ns1".into()],
            // Two buggy addresses (.255, .0) and one usable (.1) across two /24s (no two
            // allowed test /24s are adjacent; `free` covers an x.255-x+1.0 interval).
            ..mk("d", 4, &["203.0.113.255", "198.51.100.0-198.51.100.1"])
        },
        PoolConfig {
            service_selectors: vec![Selector::from_labels([("app", "web")])],
            namespace_selectors: vec![Selector::from_labels([("team", "x")])],
            ..mk("e", 0, &["203.0.113.128/31", "2001:db8:2::/127"])
        },
        mk("e", 0, &["203.0.113.3", "2001:db8::1"]),
        PoolConfig {
            auto_assign: false,
            ..mk("b", 2, &["203.0.113.4-203.0.113.6", "2001:db8:1::1"])
        },
    ]
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "zz"];

const IPS: [&str; 15] = [
    "203.0.113.0",
    "203.0.113.1",
    "203.0.113.2",
    "203.0.113.3",
    "203.0.113.5",
    "203.0.113.6",
    "203.0.113.255",
    "198.51.100.0",
    "198.51.100.1",
    "203.0.113.129",
    "2001:db8::",
    "2001:db8::1",
    "2001:db8:1::",
    "2001:db8:2::1",
    "203.0.113.200",
];

#[derive(Clone, Debug)]
enum Op {
    Upsert(usize),
    Remove(usize),
    Invalid(usize),
    Assign(ServiceRequest),
    Claim(ServiceRequest, Vec<IpAddr>),
    Release(usize),
}

fn key(i: usize) -> ServiceKey {
    ServiceKey::new(
        if i.is_multiple_of(2) { "ns0" } else { "ns1" },
        format!("s{i}"),
    )
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    (0..IPS.len()).prop_map(|i| IPS[i].parse().unwrap())
}

fn arb_request() -> impl Strategy<Value = ServiceRequest> {
    use Family::{V4, V6};
    let families = prop_oneof![
        4 => Just(vec![V4]),
        1 => Just(vec![V6]),
        2 => Just(vec![V4, V6]),
        1 => Just(vec![V6, V4])
    ];
    let policy = prop_oneof![
        Just(FamilyPolicy::SingleStack),
        Just(FamilyPolicy::PreferDualStack),
        Just(FamilyPolicy::RequireDualStack)
    ];
    let requested_ips = prop_oneof![
        6 => Just(vec![]),
        2 => proptest::collection::vec(arb_ip(), 1..=2),
    ];
    let requested_pool = prop_oneof![
        6 => Just(None),
        1 => (0..NAMES.len()).prop_map(|i| Some(NAMES[i].to_owned())),
    ];
    let sharing_key = prop_oneof![
        1 => Just(None),
        3 => Just(Some("k1".to_owned())),
        1 => Just(Some("k2".to_owned()))
    ];
    let ports = proptest::sample::subsequence(
        vec![
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 443),
            (Protocol::Udp, 80),
        ],
        0..=3,
    );
    let backends = prop_oneof![
        3 => Just(Backends::Cluster),
        1 => Just(Backends::Local {
            selector: BTreeMap::from([("app".to_owned(), "x".to_owned())])
        }),
        1 => Just(Backends::Local {
            selector: BTreeMap::from([("app".to_owned(), "y".to_owned())])
        }),
    ];
    let labels = prop_oneof![
        Just(BTreeMap::new()),
        Just(BTreeMap::from([("app".to_owned(), "web".to_owned())]))
    ];
    let ns_labels = prop_oneof![
        Just(BTreeMap::new()),
        Just(BTreeMap::from([("team".to_owned(), "x".to_owned())]))
    ];
    (
        0usize..6,
        (families, policy, requested_ips, requested_pool),
        (sharing_key, ports, backends, labels, ns_labels),
    )
        .prop_map(
            |(
                i,
                (families, policy, requested_ips, requested_pool),
                (sharing_key, ports, backends, labels, namespace_labels),
            )| {
                ServiceRequest {
                    key: key(i),
                    labels,
                    namespace_labels,
                    families,
                    policy,
                    requested_ips,
                    requested_pool,
                    sharing_key,
                    ports,
                    backends,
                }
            },
        )
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..pool_universe().len()).prop_map(Op::Upsert),
        1 => (0..NAMES.len()).prop_map(Op::Remove),
        1 => (0..NAMES.len()).prop_map(Op::Invalid),
        6 => arb_request().prop_map(Op::Assign),
        2 => (arb_request(), proptest::collection::vec(arb_ip(), 1..=2))
            .prop_map(|(r, ips)| Op::Claim(r, ips)),
        2 => (0usize..6).prop_map(Op::Release),
    ]
}

/// Independent restatement of `serviceAllocation` matching.
fn oracle_admits(c: &PoolConfig, svc: &ServiceRequest) -> bool {
    (c.namespaces.is_empty() || c.namespaces.contains(&svc.key.namespace))
        && (c.namespace_selectors.is_empty()
            || c.namespace_selectors
                .iter()
                .any(|s| s.matches(&svc.namespace_labels)))
        && (c.service_selectors.is_empty()
            || c.service_selectors.iter().any(|s| s.matches(&svc.labels)))
}

fn snapshot(a: &Allocator) -> BTreeMap<ServiceKey, Vec<IpAddr>> {
    (0..6)
        .filter_map(|i| a.assigned(&key(i)).map(|ips| (key(i), ips.to_vec())))
        .collect()
}

/// Applies one op, checks every property, and returns a transcript line.
fn step(a: &mut Allocator, op: &Op) -> Result<String, TestCaseError> {
    let universe = pool_universe();
    let before = snapshot(a);
    let line = match op {
        Op::Upsert(i) | Op::Remove(i) | Op::Invalid(i) => {
            let evicted = match op {
                Op::Upsert(_) => a.upsert_pool(universe[*i].clone()),
                Op::Remove(_) => a.remove_pool(NAMES[*i]),
                _ => a.set_pool_invalid(NAMES[*i], "bad".into()),
            };
            prop_assert!(evicted.windows(2).all(|w| w[0] < w[1]), "evictions sorted");
            for (k, ips) in &before {
                let now = a.assigned(k).map(<[IpAddr]>::to_vec);
                if evicted.contains(k) {
                    // It lost exactly the IPs no pool contains any more, and kept the rest.
                    let in_a_pool: Vec<IpAddr> = ips
                        .iter()
                        .copied()
                        .filter(|ip| a.pool_of(*ip).is_some())
                        .collect();
                    prop_assert!(in_a_pool.len() < ips.len(), "{} evicted for nothing", k);
                    let kept = now.unwrap_or_default();
                    prop_assert_eq!(kept, in_a_pool, "{} lost more than its orphaned IPs", k);
                } else {
                    prop_assert_eq!(now.as_ref(), Some(ips), "{} moved on a pool change", k);
                }
            }
            format!("{op:?} -> {evicted:?}")
        }
        Op::Assign(svc) => {
            let previous = a.assigned(&svc.key).map(<[IpAddr]>::to_vec);
            let r = a.assign(svc);
            match &r {
                Ok(ips) => {
                    prop_assert_eq!(a.assigned(&svc.key), Some(&ips[..]));
                    prop_assert!(!ips.is_empty() && ips.len() <= 2);
                    prop_assert_eq!(Family::of(ips[0]), svc.families[0], "primary first");
                    // Kept (possibly reordered after an ipFamilies swap) or new?
                    if !previous.as_ref().is_some_and(|p| super::same_set(p, ips)) {
                        // A new allocation: from one Ready pool that admits the Service.
                        let ok = a.pools.values().any(|p| {
                            ips.iter().all(|ip| p.contains(*ip))
                                && p.state == PoolState::Ready
                                && oracle_admits(&p.config, svc)
                                && svc.requested_pool.as_ref().is_none_or(|n| n == p.name())
                                && (p.config.auto_assign
                                    || svc.requested_pool.is_some()
                                    || !svc.requested_ips.is_empty())
                        });
                        prop_assert!(ok, "{} got {:?} from no eligible pool", svc.key, ips);
                    }
                    if !svc.requested_ips.is_empty() {
                        prop_assert!(super::same_set(&svc.requested_ips, ips));
                    }
                }
                Err(e) => {
                    prop_assert_eq!(a.assigned(&svc.key), None, "Err leaves nothing held");
                    prop_assert_eq!(e.service(), &svc.key);
                }
            }
            for (k, ips) in &before {
                if *k != svc.key {
                    prop_assert_eq!(a.assigned(k), Some(&ips[..]), "assign moved {}", k);
                }
            }
            format!("{op:?} -> {r:?}")
        }
        Op::Claim(svc, ips) => {
            let r = a.claim(svc, ips);
            if r.is_err() {
                prop_assert_eq!(
                    a.assigned(&svc.key).map(<[IpAddr]>::to_vec),
                    before.get(&svc.key).cloned()
                );
            } else {
                let held = a.assigned(&svc.key).unwrap();
                prop_assert!(super::same_set(held, ips));
            }
            format!("{op:?} -> {r:?}")
        }
        Op::Release(i) => {
            let freed = a.release(&key(*i));
            for ip in &freed {
                prop_assert!(!a.holders.contains_key(ip));
            }
            format!("{op:?} -> {freed:?}")
        }
    };
    a.check_invariants();
    for i in 0..6 {
        for ip in a.assigned(&key(i)).into_iter().flatten() {
            prop_assert!(a.pool_of(*ip).is_some(), "{} held outside every pool", ip);
            prop_assert!(a.holders[ip].iter().any(|h| **h == key(i)));
        }
    }
    for (ip, hs) in &a.holders {
        for h in hs {
            prop_assert!(a.assigned(h).is_some_and(|ips| ips.contains(ip)));
        }
    }
    Ok(line)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_every_invariant(
        seed_pools in proptest::sample::subsequence(vec![0usize, 2, 3, 4, 5], 0..=5),
        ops in proptest::collection::vec(arb_op(), 1..60),
    ) {
        // Usually start with some pools, so that most Service ops have something to work on.
        let ops: Vec<Op> = seed_pools.into_iter().map(Op::Upsert).chain(ops).collect();
        let mut a = Allocator::new();
        let mut transcript = Vec::new();
        for op in &ops {
            transcript.push(step(&mut a, op)?);
        }
        let mut replay = Allocator::new();
        for (op, want) in ops.iter().zip(&transcript) {
            let got = step(&mut replay, op)?;
            prop_assert_eq!(&got, want, "replay diverged");
        }
        prop_assert_eq!(snapshot(&a), snapshot(&replay));
        for name in NAMES {
            prop_assert_eq!(a.pool_stats(name), replay.pool_stats(name));
            prop_assert_eq!(a.pool_state(name), replay.pool_state(name));
        }
    }
}
