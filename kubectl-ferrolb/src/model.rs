//! The cluster as the plugin read it, and the small pure readings every report shares.
//!
//! ```text
//!   cluster.rs (reads) ──▶ Snapshot { pools, advertisements, Services, Namespaces,
//!                                     Nodes, speaker Leases, EndpointSlices }
//!                              │
//!        status.rs / explain.rs / check.rs (pure: Snapshot + now ──▶ report)
//! ```
//!
//! Rules that belong to the controller or the speaker are not re-derived here: the pool
//! holding an IP comes from the controller core's `Allocator`, requests from its
//! `service::parse`, announcements from the speaker's `core::desired`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_controller_core::allocator::Allocator;
use ferrolb_controller_core::pool;
use ferrolb_crds::{IPAddressPool, L2Advertisement, conditions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// Everything the reports read, as listed from the API server (or built by a test).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// FerroLB `IPAddressPool`s.
    pub pools: Vec<IPAddressPool>,
    /// FerroLB `L2Advertisement`s.
    pub advertisements: Vec<L2Advertisement>,
    /// Every Service (the reports pick the LoadBalancers of FerroLB's class).
    pub services: Vec<Service>,
    /// Namespaces, for pools' `namespaceSelectors`.
    pub namespaces: Vec<Namespace>,
    /// Nodes, for the speaker's eligibility rules.
    pub nodes: Vec<Node>,
    /// Leases in the speakers' namespace (`ferrolb-speaker-<node>` ones are used).
    pub leases: Vec<Lease>,
    /// Every node's speaker report (`NodeAnnouncement`).
    pub reports: Vec<ferrolb_crds::NodeAnnouncement>,
    /// EndpointSlices (for `explain`, at least the explained Service's).
    pub slices: Vec<EndpointSlice>,
    /// The `loadBalancerClass` FerroLB serves (besides Services with none).
    pub lb_class: String,
}

impl Snapshot {
    /// The labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// The Services FerroLB serves (LoadBalancer, no class or ours), by `namespace/name`.
    pub fn handled_services(&self) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .filter(|s| ferrolb_controller_core::service::is_handled(s, &self.lb_class))
    }

    /// The controller core's allocator loaded with the pools as the controller loads them
    /// at start-up (invalid pools keep their last valid addresses), holding no IP yet.
    pub fn allocator(&self) -> Allocator {
        allocator_for(&self.pools)
    }
}

/// An allocator with these pools, built the way the controller builds it when it starts
/// leading (`Index::start_leading`).
pub fn allocator_for(pools: &[IPAddressPool]) -> Allocator {
    let mut alloc = Allocator::new();
    for p in pools {
        match pool::parse(p) {
            Ok(cfg) => {
                alloc.upsert_pool(cfg);
            }
            Err(msg) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                let last = pool::last_valid(p, None).map(|(_, a)| pool::last_valid_config(p, a));
                alloc.set_pool_invalid_keeping(&name, msg, last);
            }
        }
    }
    alloc
}

/// `namespace/name` of an object.
pub fn key_of(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A condition as the reports show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CondView {
    /// `type`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// RFC 3339 `lastTransitionTime`.
    pub since: String,
}

impl From<&Condition> for CondView {
    fn from(c: &Condition) -> Self {
        CondView {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            since: c.last_transition_time.0.to_string(),
        }
    }
}

/// A Service's condition of the given type.
pub fn service_condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// What a speaker's `ferrolb.io/Announced` condition says about one IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// The announcing node.
    pub node: String,
    /// Interfaces it answers on (empty when the message does not say).
    pub interfaces: Vec<String>,
    /// Since when this node announces (the condition's `lastTransitionTime`).
    pub since: String,
}

/// Reads the announcer of each IP from an `Announced` condition with status True.
///
/// The speaker writes `node N announces 203.0.113.1 on eth0,eth1, 2001:db8::1 on eth0`
/// (and `; <IP> not announced: …` for a family it could not announce); the core's own
/// display is `announced by node N on eth0, eth1` for all IPs. Both are read; an IP the
/// message does not list gets the node without interfaces.
pub fn announcements(svc: &Service) -> BTreeMap<IpAddr, Announcement> {
    let Some(c) = service_condition(svc, conditions::ANNOUNCED).filter(|c| c.status == "True")
    else {
        return BTreeMap::new();
    };
    let since = c.last_transition_time.0.to_string();
    let ips = ferrolb_controller_core::service::status_ips(svc);
    let msg = c.message.as_str();
    let mut out = BTreeMap::new();
    if let Some(rest) = msg.strip_prefix("node ") {
        let (node, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let listed = rest.strip_prefix("announces ").unwrap_or("");
        let listed = listed.split(';').next().unwrap_or("");
        for part in listed.split(", ") {
            let Some((ip, ifs)) = part.trim().split_once(" on ") else {
                continue;
            };
            let Ok(ip) = ip.trim().parse::<IpAddr>() else {
                continue;
            };
            out.insert(
                ip,
                Announcement {
                    node: node.to_owned(),
                    interfaces: ifs.split(',').map(|s| s.trim().to_owned()).collect(),
                    since: since.clone(),
                },
            );
        }
        // Any IP not listed (older or newer message shapes): the node, interfaces unknown.
        if !node.is_empty() && !msg.contains("not announced") {
            for ip in &ips {
                out.entry(*ip).or_insert_with(|| Announcement {
                    node: node.to_owned(),
                    interfaces: Vec::new(),
                    since: since.clone(),
                });
            }
        }
    } else if let Some(rest) = msg.strip_prefix("announced by node ") {
        let (node, ifs) = rest.split_once(" on ").unwrap_or((rest, ""));
        let interfaces: Vec<String> = ifs
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for ip in ips {
            out.insert(
                ip,
                Announcement {
                    node: node.trim().to_owned(),
                    interfaces: interfaces.clone(),
                    since: since.clone(),
                },
            );
        }
    }
    out
}

/// A speaker's liveness as the plugin can judge it: from its Lease, not its heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerLease {
    /// The node the speaker runs on.
    pub node: String,
    /// Renewed within its `leaseDurationSeconds`.
    pub fresh: bool,
    /// `renewTime`, RFC 3339, if set.
    pub renewed: Option<String>,
    /// `leaseDurationSeconds`, if set.
    pub duration_seconds: Option<i32>,
}

/// Every speaker Lease (`ferrolb-speaker-<node>`) with whether it is fresh at `now`.
pub fn speaker_leases(leases: &[Lease], now: Timestamp) -> Vec<SpeakerLease> {
    let mut out: Vec<SpeakerLease> = leases
        .iter()
        .filter_map(|l| {
            let node = l
                .metadata
                .name
                .as_deref()?
                .strip_prefix(ferrolb_speaker::world::LEASE_PREFIX)?;
            let spec = l.spec.as_ref();
            let renew = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
            let duration = spec.and_then(|s| s.lease_duration_seconds);
            let fresh = match (renew, duration) {
                (Some(r), Some(d)) => {
                    let age = now.as_second() - r.as_second();
                    age <= i64::from(d)
                }
                _ => false,
            };
            Some(SpeakerLease {
                node: node.to_owned(),
                fresh,
                renewed: renew.map(|r| r.to_string()),
                duration_seconds: duration,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Interfaces each node was seen announcing on (from every Service's Announced condition):
/// the only interface names of a node the API shows (speakers share theirs in heartbeats).
pub fn seen_interfaces(services: &[Service]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in services {
        for a in announcements(s).into_values() {
            out.entry(a.node).or_default().extend(a.interfaces);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for the reports' tests.
    use super::*;
    use ferrolb_crds::{IPAddressPoolSpec, IPAddressPoolStatus, L2AdvertisementSpec};
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

    pub fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    pub fn cond(type_: &str, status: bool, reason: &str, message: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(t(at)),
        }
    }

    pub fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
                external_ips: None,
            },
        )
    }

    pub fn with_status(mut p: IPAddressPool, v4: (i64, i64), ready: bool) -> IPAddressPool {
        let reason = if ready { "Ready" } else { "Invalid" };
        p.status = Some(IPAddressPoolStatus {
            assigned_ipv4: v4.0,
            available_ipv4: v4.1,
            conditions: vec![cond(
                "Ready",
                ready,
                reason,
                "the pool allocates addresses",
                "2025-01-01T00:00:00Z",
            )],
            ..Default::default()
        });
        p
    }

    pub fn adv(name: &str) -> L2Advertisement {
        L2Advertisement::new(name, L2AdvertisementSpec::default())
    }

    pub fn svc(ns: &str, name: &str, ips: &[&str]) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        });
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            conditions: Some(vec![]),
        });
        s
    }

    pub fn add_cond(mut s: Service, c: Condition) -> Service {
        s.status
            .as_mut()
            .unwrap()
            .conditions
            .get_or_insert_with(Vec::new)
            .push(c);
        s
    }

    pub fn annotate(mut s: Service, k: &str, v: &str) -> Service {
        s.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        s
    }

    pub fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    /// An EndpointSlice of `ns/service` with one ready endpoint on each of `nodes`.
    pub fn slice(ns: &str, service: &str, nodes: &[&str]) -> EndpointSlice {
        use k8s_openapi::api::discovery::v1::Endpoint;
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: nodes
                .iter()
                .map(|n| Endpoint {
                    addresses: vec!["198.51.100.50".into()],
                    node_name: Some(n.to_string()),
                    ..Default::default()
                })
                .collect(),
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{service}-1")),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".into(),
                    service.into(),
                )])),
                ..Default::default()
            },
            ports: None,
        }
    }

    pub fn lease(node: &str, renewed: &str, secs: i32) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some(format!("ferrolb-speaker-{node}"));
        l.spec = Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(t(renewed))),
            ..Default::default()
        });
        l
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn announced_messages_of_both_shapes_are_read() {
        let s = add_cond(
            svc("ns", "web", &["203.0.113.1", "2001:db8::1"]),
            cond(
                "ferrolb.io/Announced",
                true,
                "Announced",
                "node n1 announces 203.0.113.1 on eth0,eth1, 2001:db8::1 on eth0",
                "2025-01-02T03:04:05Z",
            ),
        );
        let a = announcements(&s);
        let v4 = &a[&"203.0.113.1".parse::<IpAddr>().unwrap()];
        assert_eq!(v4.node, "n1");
        assert_eq!(v4.interfaces, ["eth0", "eth1"]);
        assert_eq!(v4.since, "2025-01-02T03:04:05Z");
        assert_eq!(
            a[&"2001:db8::1".parse::<IpAddr>().unwrap()].interfaces,
            ["eth0"]
        );

        let s = add_cond(
            svc("ns", "web", &["203.0.113.1"]),
            cond(
                "ferrolb.io/Announced",
                true,
                "Announced",
                "announced by node n2 on eth0, eth1",
                "2025-01-02T03:04:05Z",
            ),
        );
        let a = announcements(&s);
        assert_eq!(a.len(), 1);
        assert_eq!(a.values().next().unwrap().node, "n2");
        assert_eq!(a.values().next().unwrap().interfaces, ["eth0", "eth1"]);
    }

    #[test]
    fn partially_announced_lists_only_the_announced_ip() {
        let s = add_cond(
            svc("ns", "web", &["203.0.113.1", "2001:db8::1"]),
            cond(
                "ferrolb.io/Announced",
                true,
                "PartiallyAnnounced",
                "node n1 announces 203.0.113.1 on eth0; 2001:db8::1 not announced: the IP is in no IPAddressPool",
                "2025-01-02T03:04:05Z",
            ),
        );
        let a = announcements(&s);
        assert_eq!(a.len(), 1, "{a:?}");
    }

    #[test]
    fn leases_are_fresh_within_their_duration() {
        let now = t("2025-01-01T00:01:00Z");
        let leases = vec![
            lease("b", "2025-01-01T00:00:30Z", 90),
            lease("a", "2024-12-31T23:00:00Z", 90),
        ];
        let got = speaker_leases(&leases, now);
        assert_eq!(got[0].node, "a");
        assert!(!got[0].fresh);
        assert!(got[1].fresh);
    }
}
