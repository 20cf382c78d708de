//! From an `IPAddressPool` object to the allocator's [`PoolConfig`], and from the
//! allocator's view back to the pool's `status`. Pure.
//!
//! ```text
//!   IPAddressPool.spec ──parse──▶ PoolConfig ──▶ Allocator
//!                         │  bad addresses / selectors: Invalid condition, nothing else moves
//!   Allocator (state, stats) ──▶ IPAddressPoolStatus (counts, Ready/Invalid/Conflict)
//! ```

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::parse_all;
use ferrolb_crds::{IPAddressPool, IPAddressPoolStatus, conditions};
use k8s_openapi::jiff::Timestamp;

use crate::allocator::{PoolConfig, PoolState, PoolStats};
pub use ferrolb_crds::condition::condition;

/// Parses a pool's spec; an `Err` is the message of its `Invalid` condition.
pub fn parse(pool: &IPAddressPool) -> Result<PoolConfig, String> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let addresses = PoolAddresses::parse(&pool.spec.addresses).map_err(|e| e.to_string())?;
    let alloc = pool.spec.service_allocation.clone().unwrap_or_default();
    if alloc.priority.is_some_and(|p| p < 0) {
        return Err("serviceAllocation.priority must not be negative".into());
    }
    let namespace_selectors = parse_all(
        "serviceAllocation.namespaceSelectors",
        &alloc.namespace_selectors,
    )?;
    let service_selectors = parse_all(
        "serviceAllocation.serviceSelectors",
        &alloc.service_selectors,
    )?;
    Ok(PoolConfig {
        name,
        addresses,
        auto_assign: pool.spec.auto_assign,
        avoid_buggy_ips: pool.spec.avoid_buggy_ips,
        priority: alloc.priority,
        namespaces: alloc.namespaces,
        namespace_selectors,
        service_selectors,
        created: pool
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        external_ips: pool
            .spec
            .external_ips
            .as_ref()
            .map(|e| e.namespaces.clone()),
    })
}

/// Saturating conversion of an address count to the int64 of the status.
fn saturate(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The addresses a pool's holders may keep, as the index remembers them: the spec's when
/// it parses; else what `remembered` holds (the last valid spec this controller saw); else
/// the last valid addresses its status records (after a restart). `None`: it never was
/// valid, or the record is unusable.
pub fn last_valid(
    pool: &IPAddressPool,
    remembered: Option<&Vec<String>>,
) -> Option<(Vec<String>, PoolAddresses)> {
    let candidates = [
        Some(&pool.spec.addresses),
        remembered,
        pool.status.as_ref().map(|s| &s.last_valid_addresses),
    ];
    candidates.into_iter().flatten().find_map(|raw| {
        let parsed = PoolAddresses::parse(raw).ok()?;
        Some((raw.clone(), parsed))
    })
}

/// The allocator's stand-in for an invalid pool: its last valid addresses, so holders keep
/// their IPs (also after a restart), and nothing else (an invalid pool allocates nothing).
pub fn last_valid_config(pool: &IPAddressPool, addresses: PoolAddresses) -> PoolConfig {
    let mut config = PoolConfig::new(pool.metadata.name.clone().unwrap_or_default(), addresses);
    config.auto_assign = false;
    config.created = pool
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    config
}

/// The status the pool should have, reusing `lastTransitionTime` of unchanged conditions.
pub fn desired_status(
    pool: &IPAddressPool,
    state: &PoolState,
    stats: Option<PoolStats>,
    last_valid_addresses: Vec<String>,
    now: Timestamp,
) -> IPAddressPoolStatus {
    let old = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let (ready, reason, message) = match state {
        PoolState::Ready => match &pool.spec.external_ips {
            None => (true, "Ready", "the pool allocates addresses".to_owned()),
            Some(e) => (
                true,
                "Ready",
                format!(
                    "the pool serves spec.externalIPs of Services in namespaces {} (no \
                     LoadBalancer allocation)",
                    e.namespaces.join(", ")
                ),
            ),
        },
        PoolState::Invalid { message } => (false, conditions::INVALID, message.clone()),
        PoolState::Conflict { with, overlap } => (
            false,
            conditions::CONFLICT,
            format!(
                "addresses overlap older pool {with} ({overlap}); this pool allocates nothing new until fixed"
            ),
        ),
    };
    let mut conds = vec![condition(
        &old.conditions,
        conditions::READY,
        ready,
        reason,
        &message,
        generation,
        now,
    )];
    for (kind, on) in [
        (
            conditions::INVALID,
            matches!(state, PoolState::Invalid { .. }),
        ),
        (
            conditions::CONFLICT,
            matches!(state, PoolState::Conflict { .. }),
        ),
    ] {
        let (reason, msg) = if on {
            (kind, message.clone())
        } else {
            ("Clear", format!("no {}", kind.to_lowercase()))
        };
        conds.push(condition(
            &old.conditions,
            kind,
            on,
            reason,
            &msg,
            generation,
            now,
        ));
    }
    let mut stats = stats.unwrap_or(PoolStats {
        assigned_v4: 0,
        assigned_v6: 0,
        available_v4: 0,
        available_v6: 0,
    });
    if *state != PoolState::Ready || pool.spec.external_ips.is_some() {
        // An Invalid or conflicting pool allocates nothing new, nor does one reserved for
        // externalIPs: nothing is available to LoadBalancer Services.
        stats.available_v4 = 0;
        stats.available_v6 = 0;
    }
    IPAddressPoolStatus {
        assigned_ipv4: saturate(stats.assigned_v4),
        assigned_ipv6: saturate(stats.assigned_v6),
        available_ipv4: saturate(stats.available_v4),
        available_ipv6: saturate(stats.available_v6),
        observed_generation: generation,
        last_valid_addresses,
        conditions: conds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_crds::{IPAddressPoolSpec, ServiceAllocation};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn pool(addresses: &[&str]) -> IPAddressPool {
        IPAddressPool::new(
            "p",
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
                external_ips: None,
            },
        )
    }

    #[test]
    fn invalid_pools_name_the_entry() {
        let err = parse(&pool(&["203.0.113.0/28", "203.0.113.9-203.0.113.1"])).unwrap_err();
        assert!(err.contains("203.0.113.9-203.0.113.1"), "{err}");
        let mut p = pool(&["203.0.113.0/28"]);
        p.spec.service_allocation = Some(ServiceAllocation {
            service_selectors: vec![LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "a".into(),
                    operator: "Bogus".into(),
                    values: None,
                }]),
                match_labels: None,
            }],
            ..Default::default()
        });
        let err = parse(&p).unwrap_err();
        assert!(
            err.starts_with("serviceAllocation.serviceSelectors[0]"),
            "{err}"
        );
    }

    /// A pool reserved for externalIPs says so, and shows nothing available to
    /// LoadBalancer Services (the allocator refuses them: `admits`).
    #[test]
    fn a_pool_reserved_for_external_ips_shows_nothing_available() {
        let mut p = pool(&["203.0.113.0/28"]);
        p.spec.external_ips = Some(ferrolb_crds::PoolExternalIPs {
            namespaces: vec!["team-a".into(), "team-b".into()],
        });
        assert_eq!(
            parse(&p).unwrap().external_ips,
            Some(vec!["team-a".to_string(), "team-b".to_string()])
        );
        let stats = PoolStats {
            assigned_v4: 1,
            assigned_v6: 0,
            available_v4: 15,
            available_v6: 0,
        };
        let t0 = Timestamp::from_second(1_000).unwrap();
        let s = desired_status(&p, &PoolState::Ready, Some(stats), vec![], t0);
        assert_eq!((s.assigned_ipv4, s.available_ipv4), (1, 0));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(
            ready.message,
            "the pool serves spec.externalIPs of Services in namespaces team-a, team-b (no \
             LoadBalancer allocation)"
        );
    }

    #[test]
    fn status_reports_counts_and_keeps_transition_times() {
        let p = pool(&["203.0.113.0/28"]);
        let t0 = Timestamp::from_second(1_000).unwrap();
        let stats = PoolStats {
            assigned_v4: 2,
            assigned_v6: 0,
            available_v4: 14,
            available_v6: u128::MAX,
        };
        let s = desired_status(&p, &PoolState::Ready, Some(stats), vec![], t0);
        assert_eq!(
            (s.assigned_ipv4, s.available_ipv4, s.available_ipv6),
            (2, 14, i64::MAX)
        );
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        // Same state later: the transition time does not move.
        let mut p2 = p.clone();
        p2.status = Some(s.clone());
        let t1 = Timestamp::from_second(2_000).unwrap();
        let s2 = desired_status(&p2, &PoolState::Ready, Some(stats), vec![], t1);
        assert_eq!(s2, s, "a resync changes nothing");
        let s3 = desired_status(
            &p2,
            &PoolState::Invalid {
                message: "bad".into(),
            },
            None,
            vec![],
            t1,
        );
        let ready = s3.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(ready.last_transition_time.0, t1);
        let invalid = s3.conditions.iter().find(|c| c.type_ == "Invalid").unwrap();
        assert_eq!(
            (invalid.status.as_str(), invalid.message.as_str()),
            ("True", "bad")
        );
    }
}
