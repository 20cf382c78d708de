//! Table tests for every allocation rule of docs/design/allocation.md.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Ready, autoAssign pool created at `created`.
fn mk_pool(name: &str, created: i64, addresses: &[&str]) -> PoolConfig {
    let entries: Vec<String> = addresses.iter().map(|s| s.to_string()).collect();
    PoolConfig {
        created,
        ..PoolConfig::new(name, PoolAddresses::parse(&entries).unwrap())
    }
}

/// An IPv4 SingleStack Cluster Service on TCP/80, no request, no sharing key.
fn mk_service(key: &str) -> ServiceRequest {
    let (ns, name) = key.split_once('/').unwrap();
    ServiceRequest {
        key: ServiceKey::new(ns, name),
        families: vec![Family::V4],
        ports: vec![(Protocol::Tcp, 80)],
        ..Default::default()
    }
}

fn shared(key: &str, sharing: &str, ports: &[(Protocol, u16)]) -> ServiceRequest {
    ServiceRequest {
        sharing_key: Some(sharing.into()),
        ports: ports.to_vec(),
        ..mk_service(key)
    }
}

fn k(key: &str) -> ServiceKey {
    mk_service(key).key
}

fn with_pools(pools: Vec<PoolConfig>) -> Allocator {
    let mut a = Allocator::new();
    for p in pools {
        assert!(a.upsert_pool(p).is_empty());
    }
    a.check_invariants();
    a
}

fn assign(a: &mut Allocator, svc: &ServiceRequest) -> Result<Vec<IpAddr>, AllocError> {
    let r = a.assign(svc);
    a.check_invariants();
    r
}

#[test]
fn service_key_displays_as_namespace_slash_name() {
    assert_eq!(k("ns/web").to_string(), "ns/web");
}

#[test]
fn lowest_free_address_first_and_release_frees_it() {
    let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.1-203.0.113.3"])]);
    assert_eq!(
        assign(&mut a, &mk_service("ns/a")),
        Ok(ips(&["203.0.113.1"]))
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")),
        Ok(ips(&["203.0.113.2"]))
    );
    assert_eq!(a.release(&k("ns/a")), ips(&["203.0.113.1"]));
    assert_eq!(a.assigned(&k("ns/a")), None);
    assert!(
        a.release(&k("ns/a")).is_empty(),
        "releasing twice is harmless"
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/c")),
        Ok(ips(&["203.0.113.1"]))
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/d")),
        Ok(ips(&["203.0.113.3"]))
    );
    let err = assign(&mut a, &mk_service("ns/e")).unwrap_err();
    assert_eq!(err.reason(), "PoolExhausted");
    assert_eq!(
        err.to_string(),
        "no free address for ns/e: pool \"p\" has no free IPv4 address"
    );
    assert_eq!(a.pool_of(ip("203.0.113.2")), Some("p"));
    assert_eq!(a.pool_of(ip("203.0.113.9")), None);
}

/// Each `AllocError` reason with the situation that triggers it.
#[test]
fn every_error_reason_has_its_trigger() {
    type Setup = fn(&mut Allocator);
    let none: Setup = |_| {};
    let v4_pool: Setup = |a| {
        a.upsert_pool(mk_pool("p", 0, &["203.0.113.0/30"]));
    };
    let tiny: Setup = |a| {
        a.upsert_pool(mk_pool("tiny", 0, &["203.0.113.1"]));
        a.assign(&mk_service("ns/holder")).unwrap();
    };
    let held_shared: Setup = |a| {
        a.upsert_pool(mk_pool("p", 0, &["203.0.113.0/30"]));
        a.assign(&shared("ns/holder", "k", &[(Protocol::Tcp, 80)]))
            .unwrap();
    };
    let held_plain: Setup = |a| {
        a.upsert_pool(mk_pool("p", 0, &["203.0.113.0/30"]));
        a.assign(&mk_service("ns/holder")).unwrap();
    };
    let manual: Setup = |a| {
        a.upsert_pool(PoolConfig {
            auto_assign: false,
            ..mk_pool("manual", 0, &["203.0.113.0/30"])
        });
    };
    let restricted: Setup = |a| {
        a.upsert_pool(PoolConfig {
            namespaces: vec!["prod".into()],
            ..mk_pool("prod-only", 0, &["203.0.113.0/30"])
        });
    };
    let selected: Setup = |a| {
        a.upsert_pool(PoolConfig {
            service_selectors: vec![Selector::from_labels([("tier", "edge")])],
            ..mk_pool("edge", 0, &["203.0.113.0/30"])
        });
    };
    let conflict: Setup = |a| {
        a.upsert_pool(mk_pool("old", 0, &["203.0.113.0/30"]));
        a.upsert_pool(mk_pool("new", 1, &["203.0.113.2/31", "203.0.113.64/30"]));
    };
    let invalid: Setup = |a| {
        a.upsert_pool(mk_pool("p", 0, &["203.0.113.0/30"]));
        a.set_pool_invalid("p", "addresses[0] \"x\": invalid IP address".into());
    };
    let split: Setup = |a| {
        a.upsert_pool(mk_pool("v4", 0, &["203.0.113.0/30"]));
        a.upsert_pool(mk_pool("v6", 0, &["2001:db8::/126"]));
    };
    let avoid: Setup = |a| {
        a.upsert_pool(PoolConfig {
            avoid_buggy_ips: true,
            ..mk_pool("p", 0, &["203.0.113.0/24"])
        });
    };

    let base = mk_service("ns/s");
    let req = |list: &[&str]| ServiceRequest {
        requested_ips: ips(list),
        ..mk_service("ns/s")
    };
    let named = |pool: &str| ServiceRequest {
        requested_pool: Some(pool.into()),
        ..mk_service("ns/s")
    };
    let v6 = ServiceRequest {
        families: vec![Family::V6],
        ..mk_service("ns/s")
    };
    let require = ServiceRequest {
        policy: FamilyPolicy::RequireDualStack,
        ..mk_service("ns/s")
    };
    let require_req = |list: &[&str]| ServiceRequest {
        policy: FamilyPolicy::RequireDualStack,
        families: vec![Family::V4, Family::V6],
        requested_ips: ips(list),
        ..mk_service("ns/s")
    };

    let table: Vec<(&str, Setup, ServiceRequest, &str, &str)> = vec![
        (
            "no pools",
            none,
            base.clone(),
            "NoMatchingPool",
            "no IPAddressPool exists",
        ),
        (
            "autoAssign off",
            manual,
            base.clone(),
            "NoMatchingPool",
            "no ready pool has autoAssign enabled ([manual]",
        ),
        (
            "namespace excluded",
            restricted,
            base.clone(),
            "NoMatchingPool",
            "pool \"prod-only\": namespace \"ns\" is not in its serviceAllocation.namespaces [prod]",
        ),
        (
            "service selector",
            selected,
            base.clone(),
            "NoMatchingPool",
            "match none of its serviceAllocation.serviceSelectors",
        ),
        (
            "named pool missing",
            v4_pool,
            named("nope"),
            "NoMatchingPool",
            "pool \"nope\" (named by the Service) does not exist",
        ),
        (
            "named pool in conflict",
            conflict,
            named("new"),
            "NoMatchingPool",
            "overlaps the older pool \"old\" on 203.0.113.2/31",
        ),
        (
            "named pool invalid",
            invalid,
            named("p"),
            "NoMatchingPool",
            "is invalid (addresses[0]",
        ),
        (
            "only pool invalid",
            invalid,
            base.clone(),
            "NoMatchingPool",
            "no IPAddressPool is ready (pool \"p\" is invalid",
        ),
        (
            "named pool excludes",
            selected,
            named("edge"),
            "NoMatchingPool",
            "pool \"edge\" (named by the Service) excludes it",
        ),
        (
            "requested IP in excluding pool",
            restricted,
            req(&["203.0.113.1"]),
            "NoMatchingPool",
            "pool \"prod-only\", which holds requested IP 203.0.113.1, excludes it",
        ),
        (
            "requested IP in conflicting pool",
            conflict,
            req(&["203.0.113.65"]),
            "NoMatchingPool",
            "requested IP 203.0.113.65 is in pool \"new\", which overlaps",
        ),
        (
            "exhausted",
            tiny,
            base.clone(),
            "PoolExhausted",
            "pool \"tiny\" has no free IPv4 address",
        ),
        (
            "requested IP outside pools",
            v4_pool,
            req(&["198.51.100.1"]),
            "RequestedIPNotInPool",
            "ns/s: 198.51.100.1 is not in any IPAddressPool",
        ),
        (
            "requested IP not in named pool",
            split,
            ServiceRequest {
                requested_pool: Some("v6".into()),
                ..req(&["203.0.113.1"])
            },
            "RequestedIPNotInPool",
            "203.0.113.1 is not in pool \"v6\", which the Service names",
        ),
        (
            "requested IPs in two pools",
            split,
            require_req(&["203.0.113.1", "2001:db8::1"]),
            "RequestedIPNotInPool",
            "2001:db8::1 is in pool \"v6\" but 203.0.113.1 is in pool \"v4\"",
        ),
        (
            "requested IP held, no key",
            held_plain,
            req(&["203.0.113.0"]),
            "RequestedIPInUse",
            "203.0.113.0 is already used by ns/holder; it has no sharing key",
        ),
        (
            "requested IP held, other key",
            held_shared,
            ServiceRequest {
                sharing_key: Some("other".into()),
                ..req(&["203.0.113.0"])
            },
            "RequestedIPInUse",
            "it has sharing key \"k\" and this Service has sharing key \"other\"",
        ),
        (
            "requested IP held, port clash",
            held_shared,
            ServiceRequest {
                sharing_key: Some("k".into()),
                ..req(&["203.0.113.0"])
            },
            "SharingConflict",
            "ns/s cannot share 203.0.113.0 with ns/holder: both use port TCP/80",
        ),
        (
            "requested IP held, backends differ",
            held_shared,
            ServiceRequest {
                sharing_key: Some("k".into()),
                ports: vec![(Protocol::Tcp, 443)],
                backends: Backends::Local {
                    selector: labels(&[("app", "x")]),
                },
                ..req(&["203.0.113.0"])
            },
            "SharingConflict",
            "backends differ (externalTrafficPolicy Cluster vs externalTrafficPolicy Local with selector {app=x})",
        ),
        (
            "requested IP of the wrong family",
            split,
            req(&["2001:db8::1"]),
            "InvalidRequest",
            "requested IP 2001:db8::1 is IPv6 but the Service wants [IPv4] (SingleStack)",
        ),
        (
            "RequireDualStack with one requested IP",
            split,
            require_req(&["203.0.113.1"]),
            "InvalidRequest",
            "RequireDualStack needs one requested IP per family",
        ),
        (
            "requested buggy IP",
            avoid,
            req(&["203.0.113.255"]),
            "InvalidRequest",
            "requested IP 203.0.113.255 ends in .0 or .255 and pool \"p\" avoids buggy IPs",
        ),
        (
            "two IPs of one family",
            v4_pool,
            req(&["203.0.113.1", "203.0.113.2"]),
            "InvalidRequest",
            "at most one per family",
        ),
        (
            "no families",
            v4_pool,
            ServiceRequest {
                families: vec![],
                ..base.clone()
            },
            "InvalidRequest",
            "spec.ipFamilies is empty",
        ),
        (
            "duplicate families",
            v4_pool,
            ServiceRequest {
                families: vec![Family::V4, Family::V4],
                ..base.clone()
            },
            "InvalidRequest",
            "two distinct families",
        ),
        (
            "empty sharing key",
            v4_pool,
            ServiceRequest {
                sharing_key: Some(String::new()),
                ..base.clone()
            },
            "InvalidRequest",
            "the sharing key is empty",
        ),
        (
            "IPv6 from an IPv4 pool",
            v4_pool,
            v6.clone(),
            "FamilyUnavailable",
            "ns/s needs an IPv6 address, but no candidate pool ([p]) has IPv6 addresses",
        ),
        (
            "RequireDualStack from an IPv4 pool",
            v4_pool,
            require.clone(),
            "FamilyUnavailable",
            "needs an IPv6 address",
        ),
        (
            "RequireDualStack from split pools",
            split,
            require,
            "FamilyUnavailable",
            "has both IPv4 and IPv6 addresses, and RequireDualStack takes both from one pool",
        ),
    ];
    for (what, setup, svc, reason, message) in table {
        let mut a = Allocator::new();
        setup(&mut a);
        let err = assign(&mut a, &svc).expect_err(what);
        assert_eq!(err.reason(), reason, "{what}: {err}");
        assert!(err.to_string().contains(message), "{what}: {err}");
        assert_eq!(err.service(), &svc.key);
        assert_eq!(a.assigned(&svc.key), None, "{what}: nothing held after Err");
    }
}

/// docs/design/allocation.md#choosing-an-ip: pools whose `serviceAllocation` admits the Service come before general
/// autoAssign pools, even without a priority and whatever the names.
#[test]
fn restricted_pools_come_before_general_ones() {
    let mut general = mk_pool("aaa-general", 0, &["203.0.113.1"]);
    general.priority = None;
    let mut team = mk_pool("zzz-team", 0, &["203.0.113.2"]);
    team.namespaces = vec!["ns".into()];
    let mut ranked = mk_pool("zzz-ranked", 0, &["203.0.113.3"]);
    ranked.priority = Some(5);
    ranked.namespaces = vec!["other".into()];
    let mut a = with_pools(vec![general, team, ranked]);
    let ips = assign(&mut a, &mk_service("ns/s1")).unwrap();
    assert_eq!(
        a.pool_of(ips[0]),
        Some("zzz-team"),
        "restricted before general"
    );
    let ips = assign(&mut a, &mk_service("ns/s2")).unwrap();
    assert_eq!(
        a.pool_of(ips[0]),
        Some("aaa-general"),
        "then the general pool"
    );
    let ips = assign(&mut a, &mk_service("other/s3")).unwrap();
    assert_eq!(
        a.pool_of(ips[0]),
        Some("zzz-ranked"),
        "a priority comes first"
    );
}

#[test]
fn pools_are_tried_by_priority_then_name() {
    let prio = |name: &str, p: Option<i32>| PoolConfig {
        priority: p,
        ..mk_pool(
            name,
            0,
            &[match name {
                "a" => "203.0.113.1",
                "b" => "203.0.113.2",
                "c" => "203.0.113.3",
                _ => "203.0.113.4",
            }],
        )
    };
    let mut a = with_pools(vec![
        prio("a", None),
        prio("b", Some(1)),
        prio("c", Some(1)),
        prio("d", Some(0)),
    ]);
    let got: Vec<String> = (0..4)
        .map(|i| {
            let ips = assign(&mut a, &mk_service(&format!("ns/s{i}"))).unwrap();
            a.pool_of(ips[0]).unwrap().to_owned()
        })
        .collect();
    assert_eq!(got, ["d", "b", "c", "a"]);
    let err = assign(&mut a, &mk_service("ns/x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free address for ns/x: pool \"d\" has no free IPv4 address, pool \"b\" has no free \
         IPv4 address, pool \"c\" has no free IPv4 address, pool \"a\" has no free IPv4 address"
    );
}

#[test]
fn service_allocation_restricts_pools() {
    let mut a = with_pools(vec![
        PoolConfig {
            priority: Some(1),
            namespaces: vec!["prod".into()],
            ..mk_pool("by-namespace", 0, &["203.0.113.65"])
        },
        PoolConfig {
            priority: Some(2),
            namespace_selectors: vec![
                Selector::from_labels([("team", "x")]),
                Selector::from_labels([("team", "y")]),
            ],
            ..mk_pool("by-ns-labels", 0, &["203.0.113.97"])
        },
        PoolConfig {
            priority: Some(3),
            service_selectors: vec![Selector::from_labels([("tier", "edge")])],
            ..mk_pool("by-svc-labels", 0, &["203.0.113.113"])
        },
        mk_pool("fallback", 0, &["203.0.113.128/25"]),
    ]);
    let table = [
        (mk_service("prod/a"), "by-namespace"),
        (mk_service("dev/b"), "fallback"),
        (
            ServiceRequest {
                namespace_labels: labels(&[("team", "y")]),
                ..mk_service("dev/c")
            },
            "by-ns-labels",
        ),
        (
            ServiceRequest {
                labels: labels(&[("tier", "edge")]),
                ..mk_service("dev/d")
            },
            "by-svc-labels",
        ),
        (
            ServiceRequest {
                namespace_labels: labels(&[("team", "z")]),
                labels: labels(&[("tier", "core")]),
                ..mk_service("dev/e")
            },
            "fallback",
        ),
    ];
    for (svc, want) in table {
        let got = assign(&mut a, &svc).unwrap();
        assert_eq!(a.pool_of(got[0]), Some(want), "{}", svc.key);
    }
    // A named pool still applies its selectors.
    let err = assign(
        &mut a,
        &ServiceRequest {
            requested_pool: Some("by-namespace".into()),
            ..mk_service("dev/f")
        },
    )
    .unwrap_err();
    assert_eq!(err.reason(), "NoMatchingPool");
}

#[test]
fn auto_assign_false_serves_only_by_name_or_requested_ip() {
    let mut a = with_pools(vec![
        PoolConfig {
            auto_assign: false,
            ..mk_pool("manual", 0, &["203.0.113.0/30"])
        },
        mk_pool("auto", 0, &["203.0.113.128/30"]),
    ]);
    assert_eq!(
        assign(&mut a, &mk_service("ns/a")),
        Ok(ips(&["203.0.113.128"]))
    );
    let by_name = ServiceRequest {
        requested_pool: Some("manual".into()),
        ..mk_service("ns/b")
    };
    assert_eq!(assign(&mut a, &by_name), Ok(ips(&["203.0.113.0"])));
    let by_ip = ServiceRequest {
        requested_ips: ips(&["203.0.113.2"]),
        ..mk_service("ns/c")
    };
    assert_eq!(assign(&mut a, &by_ip), Ok(ips(&["203.0.113.2"])));
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    // The end of one /24 and the start of a higher one (no two allowed test /24s are
    // adjacent; the x.255-x+1.0 interval itself is covered numerically in `free`).
    let ends = ["198.51.100.254-198.51.100.255", "203.0.113.0-203.0.113.1"];
    let mut a = with_pools(vec![PoolConfig {
        avoid_buggy_ips: true,
        ..mk_pool("p", 0, &ends)
    }]);
    assert_eq!(
        a.pool_stats("p"),
        Some(PoolStats {
            available_v4: 2,
            ..Default::default()
        })
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/a")),
        Ok(ips(&["198.51.100.254"]))
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")),
        Ok(ips(&["203.0.113.1"]))
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/c")).unwrap_err().reason(),
        "PoolExhausted"
    );
    // Without avoidance the same pool hands them out.
    a.upsert_pool(mk_pool("p", 0, &ends));
    assert_eq!(
        assign(&mut a, &mk_service("ns/c")),
        Ok(ips(&["198.51.100.255"]))
    );
}

#[test]
fn sharing_rule_table() {
    use Protocol::*;
    let local = |app: &str| Backends::Local {
        selector: labels(&[("app", app)]),
    };
    #[allow(clippy::type_complexity)]
    let table: Vec<(
        &str,
        (Option<&str>, Vec<(Protocol, u16)>, Backends),
        (Option<&str>, Vec<(Protocol, u16)>, Backends),
        bool,
    )> = vec![
        (
            "compatible",
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            (Some("k"), vec![(Tcp, 443)], Backends::Cluster),
            true,
        ),
        (
            "port clash",
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            false,
        ),
        (
            "same port other protocol",
            (Some("k"), vec![(Tcp, 53)], Backends::Cluster),
            (Some("k"), vec![(Udp, 53)], Backends::Cluster),
            true,
        ),
        (
            "Local, same selector",
            (Some("k"), vec![(Tcp, 80)], local("x")),
            (Some("k"), vec![(Tcp, 443)], local("x")),
            true,
        ),
        (
            "Local, different selectors",
            (Some("k"), vec![(Tcp, 80)], local("x")),
            (Some("k"), vec![(Tcp, 443)], local("y")),
            false,
        ),
        (
            "Cluster vs Local",
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            (Some("k"), vec![(Tcp, 443)], local("x")),
            false,
        ),
        (
            "different keys",
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            (Some("j"), vec![(Tcp, 443)], Backends::Cluster),
            false,
        ),
        (
            "no keys",
            (None, vec![(Tcp, 80)], Backends::Cluster),
            (None, vec![(Tcp, 443)], Backends::Cluster),
            false,
        ),
        (
            "one key",
            (Some("k"), vec![(Tcp, 80)], Backends::Cluster),
            (None, vec![(Tcp, 443)], Backends::Cluster),
            false,
        ),
        (
            "several ports, one clash",
            (
                Some("k"),
                vec![(Tcp, 80), (Udp, 5000), (Sctp, 9)],
                Backends::Cluster,
            ),
            (Some("k"), vec![(Tcp, 443), (Sctp, 9)], Backends::Cluster),
            false,
        ),
    ];
    for (what, (ka, pa, ba), (kb, pb, bb), ok) in table {
        let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.1-203.0.113.2"])]);
        let first = ServiceRequest {
            sharing_key: ka.map(String::from),
            ports: pa,
            backends: ba,
            ..mk_service("ns/a")
        };
        let second = ServiceRequest {
            sharing_key: kb.map(String::from),
            ports: pb,
            backends: bb,
            ..mk_service("ns/b")
        };
        assert_eq!(assign(&mut a, &first), Ok(ips(&["203.0.113.1"])), "{what}");
        let want = if ok { "203.0.113.1" } else { "203.0.113.2" };
        assert_eq!(
            assign(&mut a, &second),
            Ok(ips(&[want])),
            "{what}: automatic"
        );
        // The same pair through a request for the first Service's IP.
        a.release(&second.key);
        let requested = ServiceRequest {
            requested_ips: ips(&["203.0.113.1"]),
            ..second.clone()
        };
        assert_eq!(assign(&mut a, &requested).is_ok(), ok, "{what}: requested");
        a.check_invariants();
    }
}

#[test]
fn shared_ip_stays_held_until_the_last_sharer_leaves() {
    let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.1-203.0.113.2"])]);
    let s1 = shared("ns/a", "k", &[(Protocol::Tcp, 80)]);
    let s2 = shared("ns/b", "k", &[(Protocol::Tcp, 443)]);
    assert_eq!(assign(&mut a, &s1), Ok(ips(&["203.0.113.1"])));
    assert_eq!(assign(&mut a, &s2), Ok(ips(&["203.0.113.1"])));
    assert_eq!(a.pool_stats("p").unwrap().assigned_v4, 1, "distinct IPs");
    assert!(a.release(&s1.key).is_empty(), "still held by ns/b");
    assert_eq!(
        assign(&mut a, &mk_service("ns/c")),
        Ok(ips(&["203.0.113.2"]))
    );
    assert_eq!(a.release(&s2.key), ips(&["203.0.113.1"]));
    assert_eq!(
        assign(&mut a, &mk_service("ns/d")),
        Ok(ips(&["203.0.113.1"]))
    );
}

#[test]
fn compatibly_shared_address_wins_when_lower_than_free_one() {
    let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.1-203.0.113.4"])]);
    assign(&mut a, &mk_service("ns/plain")).unwrap(); // .1
    assign(&mut a, &shared("ns/a", "k", &[(Protocol::Tcp, 80)])).unwrap(); // .2
    assign(&mut a, &shared("ns/b", "k", &[(Protocol::Tcp, 80)])).unwrap(); // .3 (clash on .2)
    a.release(&k("ns/plain")); // .1 free again, below the shared ones
    assert_eq!(
        assign(&mut a, &shared("ns/c", "k", &[(Protocol::Tcp, 443)])),
        Ok(ips(&["203.0.113.1"])),
        "free .1 is lower than shareable .2"
    );
    assert_eq!(
        assign(&mut a, &shared("ns/d", "k", &[(Protocol::Tcp, 8080)])),
        Ok(ips(&["203.0.113.1"])),
        "shares .1 with ns/c"
    );
    assert_eq!(
        assign(&mut a, &shared("ns/e", "k", &[(Protocol::Tcp, 443)])),
        Ok(ips(&["203.0.113.2"])),
        ".1 clashes on 443; .2 is the lowest compatible"
    );
}

#[test]
fn dual_stack_policies_against_pool_kinds() {
    use Family::{V4, V6};
    use FamilyPolicy::*;
    let pools = |kind: &str| match kind {
        "v4" => vec![mk_pool("v4", 0, &["203.0.113.1"])],
        "v6" => vec![mk_pool("v6", 0, &["2001:db8::1"])],
        "dual" => vec![mk_pool("dual", 0, &["203.0.113.1", "2001:db8::1"])],
        // A v4-only pool tried first, then a dual one.
        _ => vec![
            PoolConfig {
                priority: Some(0),
                ..mk_pool("v4first", 0, &["203.0.113.65"])
            },
            mk_pool("dual", 0, &["203.0.113.1", "2001:db8::1"]),
        ],
    };
    type Row = (
        FamilyPolicy,
        Vec<Family>,
        &'static str,
        Result<&'static [&'static str], &'static str>,
    );
    let table: Vec<Row> = vec![
        (SingleStack, vec![V4], "v4", Ok(&["203.0.113.1"])),
        (SingleStack, vec![V4], "v6", Err("FamilyUnavailable")),
        (SingleStack, vec![V6], "v6", Ok(&["2001:db8::1"])),
        (SingleStack, vec![V6], "dual", Ok(&["2001:db8::1"])),
        (SingleStack, vec![V4, V6], "dual", Ok(&["203.0.113.1"])),
        (PreferDualStack, vec![V4, V6], "v4", Ok(&["203.0.113.1"])),
        (
            PreferDualStack,
            vec![V4, V6],
            "v6",
            Err("FamilyUnavailable"),
        ),
        (PreferDualStack, vec![V6, V4], "v6", Ok(&["2001:db8::1"])),
        (
            PreferDualStack,
            vec![V4, V6],
            "dual",
            Ok(&["203.0.113.1", "2001:db8::1"]),
        ),
        (
            PreferDualStack,
            vec![V6, V4],
            "dual",
            Ok(&["2001:db8::1", "203.0.113.1"]),
        ),
        (
            PreferDualStack,
            vec![V4, V6],
            "mixed",
            Ok(&["203.0.113.1", "2001:db8::1"]),
        ),
        (PreferDualStack, vec![V4], "dual", Ok(&["203.0.113.1"])),
        (
            RequireDualStack,
            vec![V4, V6],
            "v4",
            Err("FamilyUnavailable"),
        ),
        (
            RequireDualStack,
            vec![V4, V6],
            "v6",
            Err("FamilyUnavailable"),
        ),
        (
            RequireDualStack,
            vec![V4, V6],
            "dual",
            Ok(&["203.0.113.1", "2001:db8::1"]),
        ),
        (
            RequireDualStack,
            vec![V6, V4],
            "dual",
            Ok(&["2001:db8::1", "203.0.113.1"]),
        ),
        (
            RequireDualStack,
            vec![V6],
            "dual",
            Ok(&["2001:db8::1", "203.0.113.1"]),
        ),
        (
            RequireDualStack,
            vec![V4],
            "mixed",
            Ok(&["203.0.113.1", "2001:db8::1"]),
        ),
    ];
    for (policy, families, kind, want) in table {
        let mut a = with_pools(pools(kind));
        let svc = ServiceRequest {
            policy,
            families: families.clone(),
            ..mk_service("ns/s")
        };
        let got = assign(&mut a, &svc);
        let what = format!("{policy} {families:?} on {kind}");
        match want {
            Ok(list) => assert_eq!(got, Ok(ips(list)), "{what}"),
            Err(reason) => assert_eq!(got.map_err(|e| e.reason()), Err(reason), "{what}"),
        }
    }
}

#[test]
fn prefer_dual_stack_falls_back_to_the_primary_when_the_second_family_is_full() {
    let mut a = with_pools(vec![mk_pool(
        "dual",
        0,
        &["203.0.113.1-203.0.113.2", "2001:db8::1"],
    )]);
    let dual = |key: &str| ServiceRequest {
        policy: FamilyPolicy::PreferDualStack,
        families: vec![Family::V4, Family::V6],
        ..mk_service(key)
    };
    assert_eq!(
        assign(&mut a, &dual("ns/a")),
        Ok(ips(&["203.0.113.1", "2001:db8::1"]))
    );
    assert_eq!(assign(&mut a, &dual("ns/b")), Ok(ips(&["203.0.113.2"])));
    // Once an IPv6 address frees up it gains it, keeping its IPv4 address.
    a.release(&k("ns/a"));
    assert_eq!(
        assign(&mut a, &dual("ns/b")),
        Ok(ips(&["203.0.113.2", "2001:db8::1"]))
    );

    // RequireDualStack for the same Service is satisfied by what it holds.
    let require = ServiceRequest {
        policy: FamilyPolicy::RequireDualStack,
        ..dual("ns/b")
    };
    assert_eq!(
        assign(&mut a, &require),
        Ok(ips(&["203.0.113.2", "2001:db8::1"])),
        "keeps its IPv4"
    );
}

#[test]
fn assign_is_idempotent_and_selector_changes_move_nothing() {
    let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.0/29"])]);
    let svc = mk_service("ns/a");
    let first = assign(&mut a, &svc).unwrap();
    for _ in 0..3 {
        assert_eq!(assign(&mut a, &svc), Ok(first.clone()));
    }
    // The pool now excludes the Service and stops auto-assigning: the IP stays.
    a.upsert_pool(PoolConfig {
        auto_assign: false,
        namespaces: vec!["other".into()],
        service_selectors: vec![Selector::from_labels([("x", "y")])],
        ..mk_pool("p", 0, &["203.0.113.0/29"])
    });
    assert_eq!(assign(&mut a, &svc), Ok(first.clone()));
    // Labels, ports and sharing key changes that stay compatible keep it too.
    let edited = ServiceRequest {
        labels: labels(&[("new", "label")]),
        ports: vec![(Protocol::Udp, 53)],
        sharing_key: Some("k".into()),
        ..svc.clone()
    };
    assert_eq!(assign(&mut a, &edited), Ok(first.clone()));
    // … and the new sharing key is usable right away.
    let joiner = ServiceRequest {
        requested_ips: first.clone(),
        labels: labels(&[("x", "y")]),
        ..shared("other/b", "k", &[(Protocol::Tcp, 80)])
    };
    assert_eq!(assign(&mut a, &joiner), Ok(first.clone()));
}

#[test]
fn request_changes_move_the_service() {
    let mut a = with_pools(vec![
        mk_pool("p", 0, &["203.0.113.0/29"]),
        PoolConfig {
            auto_assign: false,
            ..mk_pool("q", 0, &["203.0.113.64/29"])
        },
    ]);
    let svc = mk_service("ns/a");
    assert_eq!(assign(&mut a, &svc), Ok(ips(&["203.0.113.0"])));
    let to_ip = ServiceRequest {
        requested_ips: ips(&["203.0.113.5"]),
        ..svc.clone()
    };
    assert_eq!(assign(&mut a, &to_ip), Ok(ips(&["203.0.113.5"])));
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")),
        Ok(ips(&["203.0.113.0"])),
        "old IP was freed"
    );
    let to_pool = ServiceRequest {
        requested_pool: Some("q".into()),
        ..svc.clone()
    };
    assert_eq!(assign(&mut a, &to_pool), Ok(ips(&["203.0.113.64"])));
    // Dropping the request keeps the assignment (still valid for an automatic Service).
    assert_eq!(assign(&mut a, &svc), Ok(ips(&["203.0.113.64"])));
    // A request that fails leaves the Service with nothing.
    let bad = ServiceRequest {
        requested_ips: ips(&["198.51.100.1"]),
        ..svc.clone()
    };
    assert_eq!(
        assign(&mut a, &bad).unwrap_err().reason(),
        "RequestedIPNotInPool"
    );
    assert_eq!(a.assigned(&svc.key), None);
    // Sharing: a co-holder that changes its ports to clash moves; the other stays.
    let s1 = shared("ns/s1", "k", &[(Protocol::Tcp, 80)]);
    let s2 = shared("ns/s2", "k", &[(Protocol::Tcp, 443)]);
    let ip1 = assign(&mut a, &s1).unwrap();
    assert_eq!(assign(&mut a, &s2), Ok(ip1.clone()));
    let s2_clash = shared("ns/s2", "k", &[(Protocol::Tcp, 80)]);
    let moved = assign(&mut a, &s2_clash).unwrap();
    assert_ne!(moved, ip1);
    assert_eq!(assign(&mut a, &s1), Ok(ip1));
}

#[test]
fn shrink_and_delete_evict_exactly_the_affected_services() {
    let mut a = with_pools(vec![
        mk_pool("p", 0, &["203.0.113.1-203.0.113.4"]),
        PoolConfig {
            auto_assign: false,
            ..mk_pool("other", 0, &["203.0.113.129"])
        },
    ]);
    assign(&mut a, &mk_service("ns/one")).unwrap(); // .1
    assign(&mut a, &shared("ns/s1", "k", &[(Protocol::Tcp, 80)])).unwrap(); // .2
    assign(&mut a, &shared("ns/s2", "k", &[(Protocol::Tcp, 443)])).unwrap(); // .2
    assign(&mut a, &mk_service("ns/three")).unwrap(); // .3
    let requested_other = ServiceRequest {
        requested_ips: ips(&["203.0.113.129"]),
        ..mk_service("ns/far")
    };
    assign(&mut a, &requested_other).unwrap();
    // Shrink to .1 and .3: both sharers of .2 lose it, nothing else moves.
    let evicted = a.upsert_pool(mk_pool("p", 0, &["203.0.113.1", "203.0.113.3"]));
    a.check_invariants();
    assert_eq!(evicted, vec![k("ns/s1"), k("ns/s2")]);
    assert_eq!(a.assigned(&k("ns/one")), Some(&ips(&["203.0.113.1"])[..]));
    assert_eq!(a.assigned(&k("ns/s1")), None);
    // They re-allocate from what is left.
    assert_eq!(
        assign(&mut a, &shared("ns/s1", "k", &[(Protocol::Tcp, 80)]))
            .unwrap_err()
            .reason(),
        "PoolExhausted"
    );
    // An IP also covered by another pool survives the deletion of one of them.
    a.upsert_pool(mk_pool("cover", 5, &["203.0.113.3"]));
    let evicted = a.remove_pool("p");
    a.check_invariants();
    assert_eq!(evicted, vec![k("ns/one")]);
    assert_eq!(a.assigned(&k("ns/three")), Some(&ips(&["203.0.113.3"])[..]));
    assert_eq!(a.pool_of(ip("203.0.113.3")), Some("cover"));
    assert_eq!(a.remove_pool("p"), vec![], "unknown pool");
    assert_eq!(a.remove_pool("other"), vec![k("ns/far")]);
    assert_eq!(a.pool_names().collect::<Vec<_>>(), ["cover"]);
}

#[test]
fn newer_overlapping_pool_is_in_conflict_until_the_older_goes() {
    let mut a = with_pools(vec![mk_pool("old", 10, &["203.0.113.0/30"])]);
    assign(&mut a, &mk_service("ns/a")).unwrap();
    a.upsert_pool(PoolConfig {
        priority: Some(0),
        ..mk_pool("new", 20, &["203.0.113.2-203.0.113.9"])
    });
    a.check_invariants();
    assert_eq!(
        a.pool_state("new"),
        Some(PoolState::Conflict {
            with: "old".into(),
            overlap: ferrolb_crds::addresses::parse_range("203.0.113.2/31").unwrap(),
        })
    );
    assert_eq!(a.pool_state("old"), Some(PoolState::Ready));
    // `new` has priority 0 but allocates nothing; `old` serves as before.
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")),
        Ok(ips(&["203.0.113.1"]))
    );
    let want_new = ServiceRequest {
        requested_ips: ips(&["203.0.113.8"]),
        ..mk_service("ns/c")
    };
    assert_eq!(
        assign(&mut a, &want_new).unwrap_err().reason(),
        "NoMatchingPool"
    );
    assert_eq!(
        a.pool_of(ip("203.0.113.2")),
        Some("old"),
        "older pool owns the overlap"
    );
    assert_eq!(
        a.pool_of(ip("203.0.113.8")),
        Some("new"),
        "only pool containing it"
    );
    // Stats of the overlap count in both.
    assert_eq!(a.pool_stats("new").unwrap().assigned_v4, 0);
    assign(&mut a, &mk_service("ns/d")).unwrap(); // 203.0.113.2, in both pools
    assert_eq!(a.pool_stats("new").unwrap().assigned_v4, 1);
    // Deleting the older pool clears the conflict; holders in the overlap keep their IPs.
    assert_eq!(a.remove_pool("old"), vec![k("ns/a"), k("ns/b")]);
    assert_eq!(a.pool_state("new"), Some(PoolState::Ready));
    assert_eq!(a.assigned(&k("ns/d")), Some(&ips(&["203.0.113.2"])[..]));
    assert_eq!(assign(&mut a, &want_new), Ok(ips(&["203.0.113.8"])));
    // Shrinking an older pool away from the overlap clears it too.
    a.upsert_pool(mk_pool("older", 1, &["203.0.113.8-203.0.113.20"]));
    assert!(
        matches!(a.pool_state("new"), Some(PoolState::Conflict { with, .. }) if with == "older")
    );
    a.upsert_pool(mk_pool("older", 1, &["203.0.113.10-203.0.113.20"]));
    assert_eq!(a.pool_state("new"), Some(PoolState::Ready));
    // Same timestamp: the name breaks the tie.
    a.upsert_pool(mk_pool("aaa", 20, &["203.0.113.9"]));
    assert_eq!(a.pool_state("aaa"), Some(PoolState::Ready));
    assert!(matches!(a.pool_state("new"), Some(PoolState::Conflict { with, .. }) if with == "aaa"));
}

#[test]
fn invalid_pools_keep_holders_and_allocate_nothing() {
    let mut a = with_pools(vec![mk_pool("p", 0, &["203.0.113.0/30"])]);
    let held = assign(&mut a, &mk_service("ns/a")).unwrap();
    assert_eq!(a.set_pool_invalid("p", "bad".into()), vec![]);
    a.check_invariants();
    assert_eq!(
        a.pool_state("p"),
        Some(PoolState::Invalid {
            message: "bad".into()
        })
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/a")),
        Ok(held.clone()),
        "holder keeps its IP"
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")).unwrap_err().reason(),
        "NoMatchingPool"
    );
    assert_eq!(a.pool_stats("p").unwrap().assigned_v4, 1);
    // Fixed: allocates again.
    a.upsert_pool(mk_pool("p", 0, &["203.0.113.0/30"]));
    assert_eq!(a.pool_state("p"), Some(PoolState::Ready));
    assert_eq!(
        assign(&mut a, &mk_service("ns/b")),
        Ok(ips(&["203.0.113.1"]))
    );
    // Unknown pools are registered empty.
    assert_eq!(
        a.set_pool_invalid("fresh", "addresses: at least one entry is required".into()),
        vec![]
    );
    assert!(matches!(
        a.pool_state("fresh"),
        Some(PoolState::Invalid { .. })
    ));
    assert_eq!(a.pool_stats("fresh"), Some(PoolStats::default()));
    assert_eq!(a.pool_names().collect::<Vec<_>>(), ["fresh", "p"]);
    assert_eq!(a.pool_state("nope"), None);
    assert_eq!(a.pool_stats("nope"), None);
}

#[test]
fn claim_adopts_valid_assignments_only() {
    let mut a = with_pools(vec![
        mk_pool("p", 0, &["203.0.113.0/29", "2001:db8::/125"]),
        PoolConfig {
            auto_assign: false,
            namespaces: vec!["elsewhere".into()],
            ..mk_pool("strict", 0, &["203.0.113.64/29"])
        },
    ]);
    let svc = mk_service("ns/a");
    // Valid, even from a pool that would not admit it any more (restart safety).
    assert_eq!(a.claim(&svc, &ips(&["203.0.113.67"])), Ok(()));
    assert_eq!(
        a.claim(&svc, &ips(&["203.0.113.67"])),
        Ok(()),
        "twice is fine"
    );
    a.check_invariants();
    assert_eq!(
        assign(&mut a, &svc),
        Ok(ips(&["203.0.113.67"])),
        "kept by assign"
    );
    // Claiming other IPs replaces the old ones.
    assert_eq!(a.claim(&svc, &ips(&["203.0.113.5"])), Ok(()));
    assert_eq!(a.assigned(&svc.key), Some(&ips(&["203.0.113.5"])[..]));
    assert_eq!(a.pool_stats("strict").unwrap().assigned_v4, 0);
    // Out of every pool.
    let err = a
        .claim(&mk_service("ns/b"), &ips(&["198.51.100.1"]))
        .unwrap_err();
    assert_eq!(err.reason(), "RequestedIPNotInPool");
    // Held by an incompatible Service.
    let err = a
        .claim(&mk_service("ns/b"), &ips(&["203.0.113.5"]))
        .unwrap_err();
    assert_eq!(err.reason(), "RequestedIPInUse");
    assert_eq!(a.assigned(&k("ns/b")), None);
    // Wrong family for the Service, or two of one family.
    assert_eq!(
        a.claim(&mk_service("ns/b"), &ips(&["2001:db8::1"]))
            .unwrap_err()
            .reason(),
        "InvalidRequest"
    );
    assert_eq!(
        a.claim(&mk_service("ns/b"), &ips(&["203.0.113.1", "203.0.113.2"]))
            .unwrap_err()
            .reason(),
        "InvalidRequest"
    );
    assert_eq!(
        a.claim(&mk_service("ns/b"), &[]).unwrap_err().reason(),
        "InvalidRequest"
    );
    // A failed claim leaves the old assignment in place.
    assert_eq!(
        a.claim(&svc, &ips(&["198.51.100.1"])).unwrap_err().reason(),
        "RequestedIPNotInPool"
    );
    assert_eq!(a.assigned(&svc.key), Some(&ips(&["203.0.113.5"])[..]));
    // Dual-stack claim is stored primary first.
    let dual = ServiceRequest {
        families: vec![Family::V6, Family::V4],
        policy: FamilyPolicy::RequireDualStack,
        ..mk_service("ns/dual")
    };
    assert_eq!(
        a.claim(&dual, &ips(&["203.0.113.7", "2001:db8::7"])),
        Ok(())
    );
    assert_eq!(
        a.assigned(&dual.key),
        Some(&ips(&["2001:db8::7", "203.0.113.7"])[..])
    );
    // Compatible sharers can both claim the same IP.
    let s1 = shared("ns/s1", "k", &[(Protocol::Tcp, 80)]);
    let s2 = shared("ns/s2", "k", &[(Protocol::Tcp, 443)]);
    assert_eq!(a.claim(&s1, &ips(&["203.0.113.6"])), Ok(()));
    assert_eq!(a.claim(&s2, &ips(&["203.0.113.6"])), Ok(()));
    let s3 = shared("ns/s3", "k", &[(Protocol::Tcp, 443)]);
    assert_eq!(
        a.claim(&s3, &ips(&["203.0.113.6"])).unwrap_err().reason(),
        "SharingConflict"
    );
    a.check_invariants();
    // New allocations skip every claimed address.
    let got: Vec<IpAddr> = (0..4)
        .map(|i| assign(&mut a, &mk_service(&format!("ns/n{i}"))).unwrap()[0])
        .collect();
    assert_eq!(
        got,
        ips(&["203.0.113.0", "203.0.113.1", "203.0.113.2", "203.0.113.3"])
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/n4")),
        Ok(ips(&["203.0.113.4"]))
    );
    assert_eq!(
        assign(&mut a, &mk_service("ns/n5")).unwrap_err().reason(),
        "PoolExhausted"
    );
}

#[test]
fn stats_count_distinct_held_and_available_addresses() {
    let mut a = with_pools(vec![PoolConfig {
        avoid_buggy_ips: true,
        ..mk_pool("p", 0, &["203.0.113.0/24", "2001:db8::/64"])
    }]);
    assert_eq!(
        a.pool_stats("p"),
        Some(PoolStats {
            assigned_v4: 0,
            assigned_v6: 0,
            available_v4: 254,
            available_v6: 1 << 64,
        })
    );
    // A claimed buggy IP counts as assigned and is not subtracted twice.
    a.claim(&mk_service("ns/buggy"), &ips(&["203.0.113.255"]))
        .unwrap();
    let dual = ServiceRequest {
        policy: FamilyPolicy::RequireDualStack,
        ..mk_service("ns/dual")
    };
    assign(&mut a, &dual).unwrap();
    assign(&mut a, &shared("ns/s1", "k", &[(Protocol::Tcp, 1)])).unwrap();
    assign(&mut a, &shared("ns/s2", "k", &[(Protocol::Tcp, 2)])).unwrap();
    assert_eq!(
        a.pool_stats("p"),
        Some(PoolStats {
            assigned_v4: 3,
            assigned_v6: 1,
            available_v4: 252,
            available_v6: (1 << 64) - 1,
        })
    );
}

#[test]
fn huge_pools_allocate_lowest_first() {
    let mut a = with_pools(vec![
        mk_pool("v6", 0, &["2001:db8::/64"]),
        // The largest allowed IPv4 test space: two /24s (an IPv4 /8's worth is
        // covered numerically in `free`).
        PoolConfig {
            avoid_buggy_ips: true,
            ..mk_pool("v4", 0, &["198.51.100.0/24", "203.0.113.0/24"])
        },
    ]);
    let v6 = ServiceRequest {
        families: vec![Family::V6],
        ..mk_service("ns/a")
    };
    assert_eq!(assign(&mut a, &v6), Ok(ips(&["2001:db8::"])));
    for i in 0..300 {
        assign(&mut a, &mk_service(&format!("ns/{i}"))).unwrap();
    }
    assert_eq!(
        a.assigned(&k("ns/299")),
        Some(&ips(&["203.0.113.46"])[..]),
        "254 in 198.51.100.x, then 46"
    );
    assert_eq!(
        a.pool_stats("v4").unwrap().available_v4,
        2 * 256 - 2 * 2 - 300
    );
}

#[test]
fn errors_map_to_their_reason_names() {
    let s = || k("ns/s");
    let all = [
        AllocError::NoMatchingPool {
            service: s(),
            why: String::new(),
        },
        AllocError::PoolExhausted {
            service: s(),
            exhausted: vec![],
        },
        AllocError::RequestedIPNotInPool {
            service: s(),
            ip: ip("203.0.113.1"),
            why: String::new(),
        },
        AllocError::RequestedIPInUse {
            service: s(),
            ip: ip("203.0.113.1"),
            holder: Box::new(s()),
            why: String::new(),
        },
        AllocError::SharingConflict {
            service: s(),
            ip: ip("203.0.113.1"),
            with: Box::new(s()),
            why: String::new(),
        },
        AllocError::InvalidRequest {
            service: s(),
            why: String::new(),
        },
        AllocError::FamilyUnavailable {
            service: s(),
            family: Family::V4,
            why: String::new(),
        },
    ];
    let reasons: Vec<&str> = all.iter().map(AllocError::reason).collect();
    assert_eq!(
        reasons,
        [
            "NoMatchingPool",
            "PoolExhausted",
            "RequestedIPNotInPool",
            "RequestedIPInUse",
            "SharingConflict",
            "InvalidRequest",
            "FamilyUnavailable"
        ]
    );
    for e in &all {
        assert_eq!(format!("{e:?}").split([' ', '{']).next(), Some(e.reason()));
    }
}

/// A single-stack Service edited to PreferDualStack gains the second family from its
/// pool, keeping the first; RequireDualStack too; a pool without the family keeps it single.
#[test]
fn a_service_that_becomes_dual_stack_gains_its_second_family() {
    let mut a = with_pools(vec![
        mk_pool("dual", 0, &["203.0.113.0/30", "2001:db8::/126"]),
        mk_pool("v4only", 1, &["203.0.113.8/30"]),
    ]);
    let single = mk_service("ns/web");
    assert_eq!(assign(&mut a, &single).unwrap(), [ip("203.0.113.0")]);
    for policy in [
        FamilyPolicy::PreferDualStack,
        FamilyPolicy::RequireDualStack,
    ] {
        let dual = ServiceRequest {
            families: vec![Family::V4, Family::V6],
            policy,
            ..single.clone()
        };
        assert_eq!(
            assign(&mut a, &dual).unwrap(),
            [ip("203.0.113.0"), ip("2001:db8::")],
            "{policy}"
        );
    }
    // Back to single stack and on again: nothing else moves, the IPv6 address returns.
    assert_eq!(assign(&mut a, &single).unwrap(), [ip("203.0.113.0")]);

    let other = ServiceRequest {
        requested_pool: Some("v4only".into()),
        ..mk_service("ns/legacy")
    };
    assert_eq!(assign(&mut a, &other).unwrap(), [ip("203.0.113.8")]);
    let prefer = ServiceRequest {
        families: vec![Family::V4, Family::V6],
        policy: FamilyPolicy::PreferDualStack,
        ..other
    };
    assert_eq!(
        assign(&mut a, &prefer).unwrap(),
        [ip("203.0.113.8")],
        "its pool has no IPv6: it stays single-stack"
    );
}
