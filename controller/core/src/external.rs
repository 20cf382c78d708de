//! `spec.externalIPs`: the controller's side of the opt-in (the rule itself is
//! [`ferrolb_crds::external_ips`], shared with the speakers). Pure.
//!
//! ```text
//!   Services ──track──▶ by_ip (externalIP → Services listing it)
//!                       lb_held (LoadBalancer ingress IP → Services showing it)
//!   pools ──set_pools──▶ [ExtPool]
//!                │
//!   judge(Service) ──▶ per IP Verdict ──▶ ferrolb.io/ExternalIPs condition (+ Event on change)
//! ```
//!
//! A verdict changes when the Service's externalIPs or namespace change, when a pool
//! changes, or when a LoadBalancer Service starts or stops showing one of its addresses:
//! [`External::track`] and [`External::set_pools`] return the Services to judge again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::conditions;
use ferrolb_crds::external_ips::{self, Verdict};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use crate::allocator::ServiceKey;
use crate::index::EventSpec;
use crate::pool::condition;
use crate::service;

/// A pool as the externalIPs rule needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtPool {
    /// Its name.
    pub name: String,
    /// Its addresses (the last valid ones while its spec is invalid).
    pub addresses: PoolAddresses,
    /// `spec.externalIPs.namespaces`, when marked.
    pub namespaces: Option<Vec<String>>,
}

/// The externalIPs of every Service, and which LoadBalancer Service shows which IP.
#[derive(Debug, Default)]
pub struct External {
    pools: Vec<ExtPool>,
    by_ip: HashMap<IpAddr, Vec<ServiceKey>>,
    lb_held: HashMap<IpAddr, Vec<ServiceKey>>,
}

/// `spec.externalIPs` of a Service, parsed.
pub fn external_ips(svc: &Service) -> Vec<IpAddr> {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_ips.as_deref())
        .map(external_ips::parse)
        .unwrap_or_default()
}

/// The ingress IPs of a `type: LoadBalancer` Service (of any class), else none.
fn lb_ips(svc: &Service) -> Vec<IpAddr> {
    let lb = svc
        .spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
    if lb {
        service::status_ips(svc)
    } else {
        Vec::new()
    }
}

impl External {
    /// Records a Service's change (`new: None`: deleted) and returns the Services whose
    /// verdicts may have changed: itself when it lists externalIPs (or did), and those
    /// listing an address it started or stopped showing as a LoadBalancer IP.
    pub fn track(
        &mut self,
        key: &ServiceKey,
        old: Option<&Service>,
        new: Option<&Service>,
    ) -> BTreeSet<ServiceKey> {
        let (old_ext, new_ext) = (
            old.map(external_ips).unwrap_or_default(),
            new.map(external_ips).unwrap_or_default(),
        );
        let (old_lb, new_lb) = (
            old.map(lb_ips).unwrap_or_default(),
            new.map(lb_ips).unwrap_or_default(),
        );
        external_ips::reindex(&mut self.by_ip, key, &old_ext, &new_ext);
        let changed = external_ips::reindex(&mut self.lb_held, key, &old_lb, &new_lb);
        let mut wake = BTreeSet::new();
        if new.is_some() && !(old_ext.is_empty() && new_ext.is_empty()) {
            wake.insert(key.clone());
        }
        for ip in &changed {
            if let Some(keys) = self.by_ip.get(ip) {
                wake.extend(keys.iter().filter(|k| *k != key || new.is_some()).cloned());
            }
        }
        wake
    }

    /// Replaces the pools; returns every Service listing an externalIP when they changed.
    pub fn set_pools(&mut self, pools: Vec<ExtPool>) -> BTreeSet<ServiceKey> {
        if pools == self.pools {
            return BTreeSet::new();
        }
        self.pools = pools;
        self.by_ip.values().flatten().cloned().collect()
    }

    /// The verdict on each externalIP of `svc` that lies in some pool (ascending by IP).
    pub fn judge(&self, svc: &Service) -> Vec<(IpAddr, Verdict)> {
        let key = service::key_of(svc);
        external_ips(svc)
            .into_iter()
            .map(|ip| {
                let holder = self
                    .lb_held
                    .get(&ip)
                    .and_then(|keys| keys.iter().next())
                    .map(ToString::to_string);
                let pools = self.pools.iter().map(|p| external_ips::Pool {
                    name: &p.name,
                    addresses: &p.addresses,
                    namespaces: p.namespaces.as_deref(),
                });
                (
                    ip,
                    external_ips::judge(ip, &key.namespace, pools, holder.as_deref()),
                )
            })
            .filter(|(_, v)| *v != Verdict::NotOurs)
            .collect()
    }

    /// Our `ferrolb.io/ExternalIPs` condition for `svc`: `None` when none of its
    /// externalIPs lies in a pool (nothing of ours to say).
    pub fn condition(&self, svc: &Service, now: Timestamp) -> Option<Condition> {
        let judged = self.judge(svc);
        if judged.is_empty() {
            return None;
        }
        let old = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let (accepted, rejected): (Vec<_>, Vec<_>) =
            judged.iter().partition(|(_, v)| v.is_accepted());
        let reason = match (accepted.is_empty(), rejected.first()) {
            (_, None) => "Accepted",
            (true, Some((_, v))) => v.reason(),
            (false, Some(_)) => "PartiallyAccepted",
        };
        let mut parts = Vec::new();
        if !accepted.is_empty() {
            // Grouped by pool: `announcing 203.0.113.7, 203.0.113.8 from IPAddressPool ext`.
            let mut by_pool: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (ip, v) in &accepted {
                if let Verdict::Accepted { pool } = v {
                    by_pool
                        .entry(pool.clone())
                        .or_default()
                        .push(ip.to_string());
                }
            }
            let groups: Vec<String> = by_pool
                .iter()
                .map(|(pool, ips)| format!("{} from IPAddressPool {pool}", ips.join(", ")))
                .collect();
            parts.push(format!("announcing {}", groups.join("; ")));
        }
        if !rejected.is_empty() {
            let why: Vec<String> = rejected
                .iter()
                .map(|(ip, v)| format!("{ip}: {v}"))
                .collect();
            parts.push(format!("not announcing {}", why.join("; ")));
        }
        Some(condition(
            &old,
            conditions::EXTERNAL_IPS,
            rejected.is_empty(),
            reason,
            &parts.join("; "),
            svc.metadata.generation,
            now,
        ))
    }
}

/// Our `ferrolb.io/ExternalIPs` condition on a Service, if present.
pub fn observed(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == conditions::EXTERNAL_IPS)
}

/// The Event for a change of the condition (none when it did not change or went away).
pub fn event(observed: Option<&Condition>, desired: Option<&Condition>) -> Option<EventSpec> {
    let d = desired?;
    let same = observed
        .is_some_and(|o| (&o.status, &o.reason, &o.message) == (&d.status, &d.reason, &d.message));
    if same {
        return None;
    }
    let accepted = d.status == "True";
    Some(EventSpec {
        warning: !accepted,
        reason: if accepted {
            "ExternalIPsAccepted"
        } else {
            "ExternalIPsRejected"
        }
        .into(),
        note: d.message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServiceSpec, ServiceStatus};

    fn svc(ns: &str, name: &str, type_: &str, external: &[&str], ingress: &[&str]) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(ServiceSpec {
            type_: Some(type_.into()),
            external_ips: (!external.is_empty())
                .then(|| external.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        });
        s.status = Some(ServiceStatus {
            load_balancer: Some(service::lb_status(ingress)),
            conditions: None,
        });
        s
    }

    fn pools() -> Vec<ExtPool> {
        let addrs = |s: &str| PoolAddresses::parse(&[s.to_string()]).unwrap();
        vec![
            ExtPool {
                name: "ext".into(),
                addresses: addrs("203.0.113.0/28"),
                namespaces: Some(vec!["team-a".into()]),
            },
            ExtPool {
                name: "lb".into(),
                addresses: addrs("198.51.100.0/28"),
                namespaces: None,
            },
        ]
    }

    fn key(s: &Service) -> ServiceKey {
        service::key_of(s)
    }

    #[test]
    fn condition_lists_what_is_announced_and_why_not_the_rest() {
        let mut ext = External::default();
        ext.set_pools(pools());
        let now = Timestamp::UNIX_EPOCH;
        let s = svc(
            "team-a",
            "web",
            "ClusterIP",
            &[
                "203.0.113.2",
                "203.0.113.1",
                "198.51.100.1",
                "2001:db8:ffff::1",
            ],
            &[],
        );
        ext.track(&key(&s), None, Some(&s));
        let c = ext.condition(&s, now).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PartiallyAccepted")
        );
        assert_eq!(
            c.message,
            "announcing 203.0.113.1, 203.0.113.2 from IPAddressPool ext; not announcing \
             198.51.100.1: IPAddressPool lb is not marked for externalIPs"
        );

        let only_ours = svc("team-a", "web", "ClusterIP", &["203.0.113.1"], &[]);
        let c = ext.condition(&only_ours, now).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Accepted"));

        let other_ns = svc("team-b", "web", "ClusterIP", &["203.0.113.1"], &[]);
        let c = ext.condition(&other_ns, now).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NamespaceNotAllowed")
        );

        // Outside every pool: not ours, nothing said.
        let outside = svc("team-a", "web", "ClusterIP", &["2001:db8:ffff::1"], &[]);
        assert_eq!(ext.condition(&outside, now), None);
    }

    #[test]
    fn a_load_balancer_showing_the_address_wins_and_its_release_wakes_the_lister() {
        let mut ext = External::default();
        ext.set_pools(pools());
        let now = Timestamp::UNIX_EPOCH;
        let lister = svc("team-a", "web", "ClusterIP", &["203.0.113.5"], &[]);
        let wake = ext.track(&key(&lister), None, Some(&lister));
        assert_eq!(wake, BTreeSet::from([key(&lister)]));
        assert!(ext.condition(&lister, now).unwrap().status == "True");

        // A LoadBalancer Service (say, one that held it before the pool was marked) shows it.
        let lb = svc("team-a", "old", "LoadBalancer", &[], &["203.0.113.5"]);
        let wake = ext.track(&key(&lb), None, Some(&lb));
        assert_eq!(
            wake,
            BTreeSet::from([key(&lister)]),
            "the lister is judged again"
        );
        let c = ext.condition(&lister, now).unwrap();
        assert_eq!(c.reason, "HeldByLoadBalancer");
        assert!(
            c.message
                .contains("held by LoadBalancer Service team-a/old")
        );

        // A ClusterIP Service showing an ingress IP (stale status) holds nothing.
        let stale = svc("team-a", "stale", "ClusterIP", &[], &["203.0.113.6"]);
        ext.track(&key(&stale), None, Some(&stale));
        let six = svc("team-a", "six", "ClusterIP", &["203.0.113.6"], &[]);
        ext.track(&key(&six), None, Some(&six));
        assert_eq!(ext.condition(&six, now).unwrap().status, "True");

        // The holder is deleted: the lister is woken and accepted.
        let wake = ext.track(&key(&lb), Some(&lb), None);
        assert_eq!(wake, BTreeSet::from([key(&lister)]));
        assert_eq!(ext.condition(&lister, now).unwrap().status, "True");

        // The lister drops its externalIPs: judged once more (its condition goes away).
        let plain = svc("team-a", "web", "ClusterIP", &[], &[]);
        let wake = ext.track(&key(&lister), Some(&lister), Some(&plain));
        assert_eq!(wake, BTreeSet::from([key(&lister)]));
        assert_eq!(ext.condition(&plain, now), None);
        assert!(!ext.by_ip.contains_key(&"203.0.113.5".parse().unwrap()));
    }

    #[test]
    fn pool_changes_wake_every_lister_once_and_unchanged_pools_none() {
        let mut ext = External::default();
        assert!(
            ext.set_pools(pools()).is_empty(),
            "nobody lists anything yet"
        );
        let a = svc("team-a", "a", "ClusterIP", &["203.0.113.1"], &[]);
        let b = svc("team-b", "b", "NodePort", &["198.51.100.3"], &[]);
        ext.track(&key(&a), None, Some(&a));
        ext.track(&key(&b), None, Some(&b));
        assert!(
            ext.set_pools(pools()).is_empty(),
            "same pools: nothing to do"
        );
        let mut marked = pools();
        marked[1].namespaces = Some(vec!["team-b".into()]);
        assert_eq!(ext.set_pools(marked), BTreeSet::from([key(&a), key(&b)]));
        let c = ext.condition(&b, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(c.status, "True");
    }

    #[test]
    fn events_follow_changes_only() {
        let mut ext = External::default();
        ext.set_pools(pools());
        let now = Timestamp::UNIX_EPOCH;
        let s = svc("team-b", "web", "ClusterIP", &["203.0.113.1"], &[]);
        let c = ext.condition(&s, now);
        let e = event(None, c.as_ref()).unwrap();
        assert!(e.warning);
        assert_eq!(e.reason, "ExternalIPsRejected");
        assert_eq!(event(c.as_ref(), c.as_ref()), None, "unchanged: no Event");
        assert_eq!(event(c.as_ref(), None), None, "went away: no Event");
    }
}
