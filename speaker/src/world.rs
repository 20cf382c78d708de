//! From watched Kubernetes objects to the core's plain [`World`]. Pure conversions.
//!
//! ```text
//!   Node ─────────────▶ core::Node          IPAddressPool ──▶ core::Pool (valid addresses only)
//!   L2Advertisement ──▶ core::Advertisement (valid selectors only; the controller reports the rest)
//!   Service + its EndpointSlices ──▶ core::Service (handled LoadBalancers with IPs only)
//!   Lease (ferrolb-speaker-<node>) ──▶ peer heartbeat address
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::parse_all;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::core;
use crate::liveness::PeerAddr;

/// Annotation on a speaker's Lease: where its peers send heartbeats.
pub const HEARTBEAT_ADDR_ANNOTATION: &str = "ferrolb.io/heartbeat-addr";
/// Annotation on a speaker's Lease: the incarnation its heartbeats carry (random per
/// start, decimal), so peers accept a restart whatever the clocks say.
pub const INCARNATION_ANNOTATION: &str = "ferrolb.io/heartbeat-incarnation";
/// Prefix of every speaker Lease name; the rest is the node name.
pub const LEASE_PREFIX: &str = "ferrolb-speaker-";
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// A Node as election sees it.
pub fn node(n: &K8sNode) -> core::Node {
    let network_unavailable = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    core::Node {
        name: name(n),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        network_unavailable,
    }
}

/// A pool with valid addresses; an invalid one announces nothing (its Services have no IPs).
pub fn pool(p: &IPAddressPool) -> Option<core::Pool> {
    let addresses = PoolAddresses::parse(&p.spec.addresses).ok()?;
    Some(core::Pool {
        name: name(p),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        addresses,
    })
}

/// An advertisement with valid selectors; `Err` says why it is ignored.
pub fn advertisement(a: &L2Advertisement) -> Result<core::Advertisement, String> {
    Ok(core::Advertisement {
        name: name(a),
        pools: core::PoolSelection {
            names: a.spec.ip_address_pools.iter().cloned().collect(),
            selectors: parse_all("ipAddressPoolSelectors", &a.spec.ip_address_pool_selectors)?,
        },
        node_selectors: parse_all("nodeSelectors", &a.spec.node_selectors)?,
        interfaces: a.spec.interfaces.iter().cloned().collect(),
        service_selectors: parse_all("serviceSelectors", &a.spec.service_selectors)?,
    })
}

/// `namespace/name`, the key the core and the conditions use.
pub fn service_key(s: &K8sService) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        name(s)
    )
}

/// The key of the Service an EndpointSlice belongs to.
pub fn slice_service_key(slice: &EndpointSlice) -> Option<String> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{svc}",
        slice.metadata.namespace.as_deref().unwrap_or_default()
    ))
}

/// Whether the speaker serves this Service: `type: LoadBalancer` with no class or ours.
pub fn is_handled(s: &K8sService, lb_class: &str) -> bool {
    let Some(spec) = &s.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == lb_class)
}

/// A handled Service with IPs, joined with its EndpointSlices; `None` when there is
/// nothing to announce.
pub fn service<'a>(
    s: &K8sService,
    lb_class: &str,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Option<core::Service> {
    if !is_handled(s, lb_class) {
        return None;
    }
    let ips: Vec<IpAddr> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let mut serving_nodes = BTreeSet::new();
    let mut has_serving_endpoints = false;
    for slice in slices {
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            // Per the EndpointSlice API, an unset `serving` means the value of `ready`, and
            // an unset `ready` means ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            if serving {
                has_serving_endpoints = true;
                if let Some(n) = &ep.node_name {
                    serving_nodes.insert(n.clone());
                }
            }
        }
    }
    let local = s
        .spec
        .as_ref()
        .and_then(|sp| sp.external_traffic_policy.as_deref())
        == Some("Local");
    Some(core::Service {
        key: service_key(s),
        labels: s.metadata.labels.clone().unwrap_or_default(),
        ips,
        local,
        serving_nodes,
        has_serving_endpoints,
    })
}

/// The node a speaker Lease belongs to, and the heartbeat address it publishes.
pub fn peer(lease: &Lease) -> Option<(String, PeerAddr)> {
    let node = name(lease).strip_prefix(LEASE_PREFIX)?.to_owned();
    let annotations = lease.metadata.annotations.as_ref()?;
    let addr: SocketAddr = annotations.get(HEARTBEAT_ADDR_ANNOTATION)?.parse().ok()?;
    let incarnation = annotations
        .get(INCARNATION_ANNOTATION)
        .and_then(|v| v.parse().ok());
    // Freshness is judged by the glue, on its own clock, from when it saw renewals.
    let fresh = true;
    Some((
        node,
        PeerAddr {
            addr,
            incarnation,
            fresh,
        },
    ))
}

/// The heartbeat peers (every speaker Lease but our own).
pub fn peers<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    me: &str,
) -> BTreeMap<String, PeerAddr> {
    leases
        .into_iter()
        .filter_map(peer)
        .filter(|(n, _)| n != me)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use std::collections::BTreeMap;

    fn lb_service(ips: &[&str], local: bool) -> K8sService {
        let mut s = K8sService::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some("web".into());
        s.spec = Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.into()),
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
            conditions: None,
        });
        s
    }

    fn slice(eps: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(node, ready, serving)| Endpoint {
                    addresses: vec!["198.51.100.99".into()],
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *serving,
                        terminating: None,
                    }),
                    ..Default::default()
                })
                .collect(),
            metadata: kube::api::ObjectMeta {
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.into(), "web".into())])),
                ..Default::default()
            },
            ports: None,
        }
    }

    #[test]
    fn serving_endpoints_follow_the_api_defaults() {
        let sl = slice(&[
            ("n1", None, None),
            ("n2", Some(false), None),
            ("n3", Some(false), Some(true)),
        ]);
        assert_eq!(slice_service_key(&sl).as_deref(), Some("ns/web"));
        let s = service(
            &lb_service(&["203.0.113.1"], true),
            "ferrolb.io/ferrolb",
            [&sl],
        )
        .unwrap();
        assert!(s.local && s.has_serving_endpoints);
        assert_eq!(
            s.serving_nodes,
            BTreeSet::from(["n1".to_string(), "n3".to_string()])
        );
        let none = slice(&[("n1", Some(false), Some(false))]);
        let s = service(
            &lb_service(&["203.0.113.1"], false),
            "ferrolb.io/ferrolb",
            [&none],
        )
        .unwrap();
        assert!(!s.has_serving_endpoints);
    }

    #[test]
    fn services_without_ips_or_of_another_class_are_skipped() {
        assert!(service(&lb_service(&[], false), "ferrolb.io/ferrolb", []).is_none());
        let mut other = lb_service(&["203.0.113.1"], false);
        other.spec.as_mut().unwrap().load_balancer_class = Some("x/y".into());
        assert!(service(&other, "ferrolb.io/ferrolb", []).is_none());
    }

    #[test]
    fn peers_come_from_speaker_leases() {
        let mk = |n: &str, addr: Option<&str>| {
            let mut l = Lease::default();
            l.metadata.name = Some(n.into());
            l.metadata.annotations = addr
                .map(|a| BTreeMap::from([(HEARTBEAT_ADDR_ANNOTATION.to_string(), a.to_string())]));
            l
        };
        let leases = [
            mk("ferrolb-speaker-node1", Some("198.51.100.11:7473")),
            mk("ferrolb-speaker-node2", Some("[2001:db8::12]:7473")),
            mk("ferrolb-speaker-node3", None),
            mk("ferrolb-controller", Some("198.51.100.2:1")),
        ];
        let p = peers(&leases, "node1");
        assert_eq!(p.len(), 1);
        assert_eq!(p["node2"].addr, "[2001:db8::12]:7473".parse().unwrap());
        assert_eq!(p["node2"].incarnation, None, "a Lease without one");
        let mut with = mk("ferrolb-speaker-node4", Some("198.51.100.14:7473"));
        let mut annotate = |v: &str| {
            let annos = with.metadata.annotations.as_mut().unwrap();
            annos.insert(INCARNATION_ANNOTATION.into(), v.into());
            peer(&with).unwrap().1.incarnation
        };
        assert_eq!(annotate("18446744073709551615"), Some(u64::MAX));
        assert_eq!(annotate("-1"), None, "unparsable: none");
    }
}
