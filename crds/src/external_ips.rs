//! Which `spec.externalIPs` FerroLB announces: one rule, shared by the controller (the
//! `ferrolb.io/ExternalIPs` condition and Events) and the speakers (what to announce), so
//! both decide from the same facts. Pure.
//!
//! Kubernetes routes a Service's `spec.externalIPs` to it on every node, and any user who
//! may create a Service may set them (CVE-2020-8554). So announcing is opt-in per pool
//! (`IPAddressPool.spec.externalIPs`), per namespace by name, and never for an address a
//! LoadBalancer Service holds:
//!
//! ```text
//!   externalIP ──in no pool──────────────▶ not ours: nothing said, nothing announced
//!      │──in two or more pools──────────▶ InOverlappingPools
//!      │──pool not marked───────────────▶ PoolNotMarked
//!      │──namespace not listed──────────▶ NamespaceNotAllowed
//!      │──a LoadBalancer Service holds it▶ HeldByLoadBalancer
//!      └────────────────────────────────▶ Accepted (announced like a LoadBalancer IP)
//! ```
//!
//! A marked pool hands no address to LoadBalancer Services, so the last rule only bites
//! for a Service that held the address before the pool was marked: it keeps it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::addresses::PoolAddresses;

/// A pool as the rule sees it.
#[derive(Clone, Copy, Debug)]
pub struct Pool<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its addresses (the last valid ones while its spec is invalid).
    pub addresses: &'a PoolAddresses,
    /// `spec.externalIPs.namespaces`; `None` when the pool is not marked.
    pub namespaces: Option<&'a [String]>,
}

/// What happens to one externalIP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// In no pool: not FerroLB's (it may be routed by other means). Not reported.
    NotOurs,
    /// Announced; the pool it comes from.
    Accepted {
        /// The marked pool.
        pool: String,
    },
    /// Inside several (overlapping) pools: ambiguous, never announced.
    InOverlappingPools {
        /// Their names, sorted.
        pools: Vec<String>,
    },
    /// Inside a pool that is not marked for externalIPs.
    PoolNotMarked {
        /// The pool.
        pool: String,
    },
    /// The pool does not list the Service's namespace.
    NamespaceNotAllowed {
        /// The pool.
        pool: String,
        /// The Service's namespace.
        namespace: String,
    },
    /// A LoadBalancer Service holds the address.
    HeldByLoadBalancer {
        /// `namespace/name` of the holder.
        service: String,
    },
}

impl Verdict {
    /// Announced.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Verdict::Accepted { .. })
    }

    /// CamelCase reason, for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::NotOurs => "NotInPool",
            Verdict::Accepted { .. } => "Accepted",
            Verdict::InOverlappingPools { .. } => "InOverlappingPools",
            Verdict::PoolNotMarked { .. } => "PoolNotMarked",
            Verdict::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            Verdict::HeldByLoadBalancer { .. } => "HeldByLoadBalancer",
        }
    }
}

impl fmt::Display for Verdict {
    /// Why, in a few words (the IP itself is not repeated).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::NotOurs => f.write_str("in no IPAddressPool"),
            Verdict::Accepted { pool } => write!(f, "from IPAddressPool {pool}"),
            Verdict::InOverlappingPools { pools } => {
                write!(f, "in overlapping IPAddressPools {}", pools.join(", "))
            }
            Verdict::PoolNotMarked { pool } => {
                write!(f, "IPAddressPool {pool} is not marked for externalIPs")
            }
            Verdict::NamespaceNotAllowed { pool, namespace } => write!(
                f,
                "IPAddressPool {pool} does not allow externalIPs for namespace {namespace}"
            ),
            Verdict::HeldByLoadBalancer { service } => {
                write!(f, "held by LoadBalancer Service {service}")
            }
        }
    }
}

/// The verdict on `ip`, an externalIP of a Service in `namespace`. `lb_holder` is a
/// LoadBalancer Service (`namespace/name`) whose status shows `ip`, if any.
pub fn judge<'a>(
    ip: IpAddr,
    namespace: &str,
    pools: impl IntoIterator<Item = Pool<'a>>,
    lb_holder: Option<&str>,
) -> Verdict {
    let mut inside: Vec<Pool<'a>> = pools
        .into_iter()
        .filter(|p| p.addresses.contains(ip))
        .collect();
    inside.sort_by_key(|p| p.name);
    inside.dedup_by_key(|p| p.name);
    let pool = match inside.as_slice() {
        [] => return Verdict::NotOurs,
        [one] => one,
        many => {
            return Verdict::InOverlappingPools {
                pools: many.iter().map(|p| p.name.to_owned()).collect(),
            };
        }
    };
    let Some(namespaces) = pool.namespaces else {
        return Verdict::PoolNotMarked {
            pool: pool.name.to_owned(),
        };
    };
    if !namespaces.iter().any(|n| n == namespace) {
        return Verdict::NamespaceNotAllowed {
            pool: pool.name.to_owned(),
            namespace: namespace.to_owned(),
        };
    }
    if let Some(service) = lb_holder {
        return Verdict::HeldByLoadBalancer {
            service: service.to_owned(),
        };
    }
    Verdict::Accepted {
        pool: pool.name.to_owned(),
    }
}

/// Keeps an index of address → keys current when `key`'s addresses go from `old` to `new`
/// (both the controller and the speakers index who lists and who holds each address).
/// Each address's keys are kept sorted and distinct in a `Vec`: an address nearly always
/// has one key, and a `BTreeSet`'s first node would cost about 280 bytes per address in
/// every speaker (docs/architecture.md#memory). Returns the addresses that were added or
/// removed.
pub fn reindex<K: Ord + Clone>(
    map: &mut HashMap<IpAddr, Vec<K>>,
    key: &K,
    old: &[IpAddr],
    new: &[IpAddr],
) -> Vec<IpAddr> {
    let mut changed = Vec::new();
    for ip in old.iter().filter(|ip| !new.contains(ip)) {
        if let Some(keys) = map.get_mut(ip) {
            if let Ok(at) = keys.binary_search(key) {
                keys.remove(at);
            }
            if keys.is_empty() {
                map.remove(ip);
            }
        }
        changed.push(*ip);
    }
    for ip in new {
        if !old.contains(ip) {
            changed.push(*ip);
        }
        let keys = map.entry(*ip).or_default();
        if let Err(at) = keys.binary_search(key) {
            keys.insert(at, key.clone());
        }
    }
    changed
}

/// A Service's `spec.externalIPs` as addresses: unparseable entries (the API server
/// validates them, so only through a bug) are skipped, duplicates collapse, sorted.
pub fn parse(external_ips: &[String]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = external_ips
        .iter()
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &[&str]) -> PoolAddresses {
        PoolAddresses::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn each_rule_in_order() {
        let ext = addrs(&["203.0.113.0/28"]);
        let lb = addrs(&["198.51.100.0/28"]);
        let over = addrs(&["203.0.113.8/29"]);
        let allowed = vec!["team-a".to_string()];
        let marked = Pool {
            name: "ext",
            addresses: &ext,
            namespaces: Some(&allowed),
        };
        let plain = Pool {
            name: "lb",
            addresses: &lb,
            namespaces: None,
        };
        let overlapping = Pool {
            name: "over",
            addresses: &over,
            namespaces: Some(&allowed),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (
                "198.51.100.200",
                "team-a",
                None,
                vec![marked, plain],
                "NotInPool",
            ),
            (
                "203.0.113.1",
                "team-a",
                None,
                vec![marked, plain],
                "Accepted",
            ),
            (
                "198.51.100.1",
                "team-a",
                None,
                vec![marked, plain],
                "PoolNotMarked",
            ),
            (
                "203.0.113.1",
                "team-b",
                None,
                vec![marked],
                "NamespaceNotAllowed",
            ),
            (
                "203.0.113.1",
                "team-a",
                Some("a/lb"),
                vec![marked],
                "HeldByLoadBalancer",
            ),
            (
                "203.0.113.9",
                "team-a",
                None,
                vec![marked, overlapping],
                "InOverlappingPools",
            ),
            // Overlap is checked first: neither pool's rules apply.
            (
                "203.0.113.9",
                "team-b",
                Some("a/lb"),
                vec![overlapping, marked],
                "InOverlappingPools",
            ),
            // Outside the overlap the marked pool alone decides.
            (
                "203.0.113.2",
                "team-a",
                None,
                vec![marked, overlapping],
                "Accepted",
            ),
        ];
        for (addr, ns, holder, pools, want) in cases {
            let v = judge(ip(addr), ns, pools, holder);
            assert_eq!(v.reason(), want, "{addr} in {ns}: {v:?}");
            assert_eq!(v.is_accepted(), want == "Accepted");
        }
    }

    #[test]
    fn messages_name_what_to_fix() {
        let ext = addrs(&["203.0.113.0/28"]);
        let allowed = ["team-a".to_string()];
        let p = |ns| Pool {
            name: "ext",
            addresses: &ext,
            namespaces: ns,
        };
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let msg = |ns, namespace, holder| judge(ip, namespace, [p(ns)], holder).to_string();
        assert_eq!(
            msg(Some(&allowed[..]), "team-a", None),
            "from IPAddressPool ext"
        );
        assert_eq!(
            msg(None, "team-a", None),
            "IPAddressPool ext is not marked for externalIPs"
        );
        assert_eq!(
            msg(Some(&allowed[..]), "team-b", None),
            "IPAddressPool ext does not allow externalIPs for namespace team-b"
        );
        assert_eq!(
            msg(Some(&allowed[..]), "team-a", Some("a/web")),
            "held by LoadBalancer Service a/web"
        );
    }

    #[test]
    fn reindex_tracks_keys_and_reports_what_moved() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut m: HashMap<IpAddr, Vec<&str>> = HashMap::new();
        let (a, b) = (ip("203.0.113.1"), ip("203.0.113.2"));
        assert_eq!(reindex(&mut m, &"s1", &[], &[a, b]), vec![a, b]);
        assert_eq!(reindex(&mut m, &"s2", &[], &[a]), vec![a]);
        assert_eq!(reindex(&mut m, &"s0", &[], &[a]), vec![a]);
        assert_eq!(
            m[&a],
            ["s0", "s1", "s2"],
            "sorted, whatever the order of arrival"
        );
        assert_eq!(reindex(&mut m, &"s0", &[a], &[]), vec![a]);
        assert_eq!(reindex(&mut m, &"s1", &[a, b], &[a]), vec![b]);
        assert_eq!(m.get(&b), None, "emptied entries go");
        assert_eq!(m[&a], ["s1", "s2"]);
        assert!(reindex(&mut m, &"s2", &[a], &[a]).is_empty());
        assert_eq!(m[&a], ["s1", "s2"], "a key listed again is not doubled");
    }

    #[test]
    fn parse_skips_junk_and_collapses_duplicates() {
        let ips = parse(&[
            "2001:DB8::1".into(),
            "203.0.113.1".into(),
            "not-an-ip".into(),
            "2001:db8::1".into(),
        ]);
        assert_eq!(
            ips,
            vec![
                "203.0.113.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }
}
