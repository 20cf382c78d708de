//! Builders for the Kubernetes objects the lab creates (pure: no client here).
//!
//! There is no kubelet, scheduler or kube-controller-manager in the lab, so the lab writes
//! what they would: `Node`s with addresses and a Ready condition, and one `EndpointSlice`
//! per Service and family (Services have no selector).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// The label kube-proxy and FerroLB use to tie an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Nodes carrying this label are never announcers (docs/design/election.md#eligible-nodes).
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Address families of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 single stack.
    V4,
    /// IPv6 single stack.
    V6,
    /// Both, IPv4 first (`RequireDualStack`).
    Dual,
}

impl Family {
    fn families(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &["IPv4"],
            Family::V6 => &["IPv6"],
            Family::Dual => &["IPv4", "IPv6"],
        }
    }
}

/// A LoadBalancer Service without selector, described the way the lab needs it.
#[derive(Clone, Debug)]
pub struct Svc {
    /// Namespace (`default` unless set).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// TCP ports (each served by every node's responder).
    pub ports: Vec<u16>,
    /// `externalTrafficPolicy: Local` when true, else `Cluster`.
    pub local: bool,
    /// Address families.
    pub family: Family,
    /// Annotations (pool, shared-IP key, requested IPs…).
    pub annotations: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Nodes with a ready, serving endpoint; `None` = every node.
    pub endpoints: Option<Vec<String>>,
    /// `spec.type` (`LoadBalancer` unless set).
    pub kind: String,
    /// `spec.externalIPs`.
    pub external_ips: Vec<String>,
}

impl Svc {
    /// An IPv4 Service `default/<name>` on TCP `port`, endpoints on every node.
    pub fn new(name: &str, port: u16) -> Svc {
        Svc {
            namespace: "default".into(),
            name: name.into(),
            ports: vec![port],
            local: false,
            family: Family::V4,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            endpoints: None,
            kind: "LoadBalancer".into(),
            external_ips: Vec::new(),
        }
    }

    /// A `type: ClusterIP` Service instead (it gets no LoadBalancer IP).
    pub fn cluster_ip(mut self) -> Svc {
        self.kind = "ClusterIP".into();
        self
    }

    /// Sets `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Svc {
        self.external_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Lives in `namespace` (which must exist).
    pub fn in_namespace(mut self, namespace: &str) -> Svc {
        self.namespace = namespace.into();
        self
    }

    /// Sets the address families.
    pub fn family(mut self, family: Family) -> Svc {
        self.family = family;
        self
    }

    /// `externalTrafficPolicy: Local`.
    pub fn local(mut self) -> Svc {
        self.local = true;
        self
    }

    /// Adds an annotation.
    pub fn annotate(mut self, key: &str, value: &str) -> Svc {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Svc {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Shares its IP with other Services carrying the same key.
    pub fn shared(self, key: &str) -> Svc {
        self.annotate(ferrolb_crds::annotations::ALLOW_SHARED_IP, key)
    }

    /// Takes its address from the named pool.
    pub fn pool(self, pool: &str) -> Svc {
        self.annotate(ferrolb_crds::annotations::ADDRESS_POOL, pool)
    }

    /// Endpoints only on these nodes.
    pub fn endpoints(mut self, nodes: &[&str]) -> Svc {
        self.endpoints = Some(nodes.iter().map(|n| n.to_string()).collect());
        self
    }
}

/// A Ready `Node` with InternalIP addresses, as a kubelet would register it.
pub fn node(name: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ipv4.to_string()},
                {"type": "InternalIP", "address": ipv6.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lab node",
                 "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated", "message": "lab node",
                 "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
        },
    }))
    .expect("valid Node")
}

/// An IPAddressPool with default options.
pub fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    IPAddressPool::new(
        name,
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            external_ips: None,
        },
    )
}

/// An L2Advertisement.
pub fn l2_advertisement(name: &str, spec: L2AdvertisementSpec) -> L2Advertisement {
    L2Advertisement::new(name, spec)
}

/// The Service object for `svc`.
pub fn service(svc: &Svc) -> Service {
    let ports: Vec<_> = svc
        .ports
        .iter()
        .map(|p| json!({"name": format!("tcp-{p}"), "protocol": "TCP", "port": p, "targetPort": p}))
        .collect();
    let policy = if svc.family == Family::Dual {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut spec = json!({
        "type": svc.kind,
        "ports": ports,
        "ipFamilies": svc.family.families(),
        "ipFamilyPolicy": policy,
    });
    // The API server refuses a traffic policy on a Service that is not reachable from
    // outside (ClusterIP).
    if svc.kind != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!(if svc.local { "Local" } else { "Cluster" });
    }
    if !svc.external_ips.is_empty() {
        spec["externalIPs"] = json!(svc.external_ips);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "annotations": svc.annotations,
            "labels": svc.labels,
        },
        "spec": spec,
    }))
    .expect("valid Service")
}

/// The EndpointSlices of `svc` (one per family, named `<svc>-ipv4` / `<svc>-ipv6`), with a
/// ready, serving endpoint on each node in `nodes` (name, IPv4, IPv6).
pub fn endpoint_slices(svc: &Svc, nodes: &[(String, Ipv4Addr, Ipv6Addr)]) -> Vec<EndpointSlice> {
    let ports: Vec<_> = svc
        .ports
        .iter()
        .map(|p| json!({"name": format!("tcp-{p}"), "protocol": "TCP", "port": p}))
        .collect();
    svc.family
        .families()
        .iter()
        .map(|fam| {
            let v6 = *fam == "IPv6";
            let endpoints: Vec<_> = nodes
                .iter()
                .map(|(name, v4a, v6a)| {
                    let addr: IpAddr = if v6 { (*v6a).into() } else { (*v4a).into() };
                    json!({
                        "addresses": [addr.to_string()],
                        "nodeName": name,
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                    })
                })
                .collect();
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{}-{}", svc.name, fam.to_lowercase()),
                    "namespace": svc.namespace,
                    "labels": {
                        SERVICE_NAME_LABEL: svc.name,
                        "endpointslice.kubernetes.io/managed-by": "ferrolb-lab",
                    },
                },
                "addressType": fam,
                "endpoints": endpoints,
                "ports": ports,
            }))
            .expect("valid EndpointSlice")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_has_no_selector_and_right_families() {
        let s = service(&Svc::new("web", 80).family(Family::Dual).local().shared("k"));
        let spec = s.spec.unwrap();
        assert!(spec.selector.is_none());
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.ip_families.unwrap(), vec!["IPv4", "IPv6"]);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert_eq!(
            s.metadata.annotations.unwrap()[ferrolb_crds::annotations::ALLOW_SHARED_IP],
            "k"
        );
    }

    #[test]
    fn slices_per_family_with_node_names() {
        let nodes = vec![(
            "node2".to_string(),
            "198.51.100.12".parse().unwrap(),
            "2001:db8:100::12".parse().unwrap(),
        )];
        let slices = endpoint_slices(&Svc::new("web", 80).family(Family::Dual), &nodes);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[1].address_type, "IPv6");
        assert_eq!(slices[1].endpoints[0].addresses, vec!["2001:db8:100::12"]);
        assert_eq!(slices[0].endpoints[0].node_name.as_deref(), Some("node2"));
        assert_eq!(
            slices[0].metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
    }

    #[test]
    fn node_is_ready_with_both_addresses() {
        let n = node(
            "node1",
            "198.51.100.11".parse().unwrap(),
            "2001:db8:100::11".parse().unwrap(),
        );
        let st = n.status.unwrap();
        assert_eq!(st.addresses.unwrap().len(), 3);
        assert!(
            st.conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }
}
