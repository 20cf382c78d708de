//! From a `v1.Service` to the allocator's [`ServiceRequest`]: which Services are ours,
//! and what they ask for (docs/design/allocation.md#requests). Pure: no client, no clock.
//!
//! ```text
//!   Service ──handled?──▶ annotations (+ metallb aliases) ──▶ ServiceRequest
//!                 │                     │
//!                 └── not ours: ignore  └── bad value: InvalidRequest (condition + Event)
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::annotations;
use k8s_openapi::api::core::v1::Service;

use crate::allocator::{Backends, Family, FamilyPolicy, Protocol, ServiceKey, ServiceRequest};

/// The key of a Service object.
pub fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

/// `svc` reduced to what the controller reads: identity and version, labels (pool
/// selectors), FerroLB's and MetalLB's annotations, the spec fields a request is made of
/// (and `externalIPs`),
/// the published ingress and the conditions (written back whole). The cache holds one of
/// these per Service of the cluster, so everything else (managed fields, other
/// annotations, cluster IPs, node ports, ...) is dropped on arrival.
pub fn slim(svc: Service) -> Service {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    let ours = |k: &str| {
        k.strip_prefix(ferrolb_crds::GROUP)
            .is_some_and(|rest| rest.starts_with('/'))
            || annotations::ALIAS_PREFIXES.iter().any(|p| k.starts_with(p))
    };
    let m = svc.metadata;
    let annotations = m
        .annotations
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| ours(k))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    let metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        generation: m.generation,
        labels: m.labels,
        annotations,
        ..Default::default()
    };
    let spec = svc.spec.map(|s| ServiceSpec {
        type_: s.type_,
        load_balancer_class: s.load_balancer_class,
        ip_families: s.ip_families,
        ip_family_policy: s.ip_family_policy,
        load_balancer_ip: s.load_balancer_ip,
        external_ips: s.external_ips,
        external_traffic_policy: s.external_traffic_policy,
        selector: s.selector,
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    port: p.port,
                    protocol: p.protocol,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    let status = svc.status.map(|s| ServiceStatus {
        load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
            ingress: lb.ingress.map(|ingress| {
                ingress
                    .into_iter()
                    .map(|i| LoadBalancerIngress {
                        ip: i.ip,
                        hostname: i.hostname,
                        ..Default::default()
                    })
                    .collect()
            }),
        }),
        conditions: s.conditions,
    });
    Service {
        metadata,
        spec,
        status,
    }
}

/// Whether FerroLB serves this Service: `type: LoadBalancer` with no class or our class.
pub fn is_handled(svc: &Service, lb_class: &str) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == lb_class)
}

/// The IPs currently published in `status.loadBalancer.ingress` (hostnames ignored).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// A `status.loadBalancer` showing `ips`, for tests.
#[cfg(test)]
pub(crate) fn lb_status<I: ToString>(
    ips: impl IntoIterator<Item = I>,
) -> k8s_openapi::api::core::v1::LoadBalancerStatus {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus};
    LoadBalancerStatus {
        ingress: Some(
            ips.into_iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// A MetalLB annotation spelling that was honoured, for the Normal Event that notes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasUsed {
    /// The annotation as written on the Service.
    pub found: String,
    /// The FerroLB annotation it stands for.
    pub canonical: &'static str,
}

/// What a Service asks for, or why its request cannot be honoured.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The request for the allocator.
    pub request: ServiceRequest,
    /// MetalLB spellings used (empty when the Service uses `ferrolb.io/` keys).
    pub aliases: Vec<AliasUsed>,
}

/// Looks up a FerroLB annotation, falling back to its MetalLB spellings.
///
/// A blank value is absent, as in MetalLB: Helm charts render `key: ""` for unset values,
/// and a Service migrating with one must keep its IP, not turn into an invalid request.
fn annotation<'a>(
    annos: &'a BTreeMap<String, String>,
    canonical: &'static str,
    aliases: &mut Vec<AliasUsed>,
) -> Option<&'a str> {
    let set = |v: &'a String| Some(v.trim()).filter(|v| !v.is_empty());
    if let Some(v) = annos.get(canonical).and_then(set) {
        return Some(v);
    }
    let suffix = canonical
        .strip_prefix("ferrolb.io/")
        .expect("ferrolb.io annotation");
    annotations::ALIAS_PREFIXES.iter().find_map(|prefix| {
        let found = format!("{prefix}{suffix}");
        let v = annos.get(&found).and_then(set)?;
        aliases.push(AliasUsed { found, canonical });
        Some(v)
    })
}

/// `svc` without its IP and pool requests (annotations in every spelling, and
/// `spec.loadBalancerIP`): what a restarted controller claims for a Service whose request
/// does not parse, so the IPs it holds stay held (a bad edit never takes an IP away).
pub fn without_requests(svc: &Service) -> Service {
    let mut s = svc.clone();
    if let Some(annos) = s.metadata.annotations.as_mut() {
        for canonical in [annotations::LOAD_BALANCER_IPS, annotations::ADDRESS_POOL] {
            let suffix = canonical
                .strip_prefix("ferrolb.io/")
                .expect("ferrolb.io annotation");
            annos.remove(canonical);
            for prefix in annotations::ALIAS_PREFIXES {
                annos.remove(&format!("{prefix}{suffix}"));
            }
        }
    }
    if let Some(spec) = s.spec.as_mut() {
        spec.load_balancer_ip = None;
    }
    s
}

/// Reads a handled Service into an allocation request.
///
/// `namespace_labels` are the labels of the Service's namespace (for pool namespace
/// selectors). An `Err` is the message of an `InvalidRequest` condition.
pub fn parse(svc: &Service, namespace_labels: &BTreeMap<String, String>) -> Result<Parsed, String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let annos = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut aliases = Vec::new();

    let policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(format!(
                "spec.ipFamilyPolicy {other:?} is not a known policy"
            ));
        }
    };
    let mut families = Vec::new();
    for f in spec.ip_families.iter().flatten() {
        let family = match f.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => return Err(format!("spec.ipFamilies: unknown family {other:?}")),
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    if families.is_empty() {
        // The API server always fills ipFamilies; stand-ins may not. Default as a
        // single-stack IPv4 cluster would, or both families when dual-stack is asked for.
        families.push(Family::V4);
        if policy != FamilyPolicy::SingleStack {
            families.push(Family::V6);
        }
    }

    let mut requested_ips = Vec::new();
    if let Some(list) = annotation(annos, annotations::LOAD_BALANCER_IPS, &mut aliases) {
        for raw in list.split(',').map(str::trim) {
            let ip: IpAddr = raw.parse().map_err(|_| {
                format!(
                    "annotation {}: {raw:?} is not an IP address",
                    annotations::LOAD_BALANCER_IPS
                )
            })?;
            if requested_ips
                .iter()
                .any(|r: &IpAddr| r.is_ipv4() == ip.is_ipv4())
            {
                return Err(format!(
                    "annotation {}: at most one IP per family, got {list:?}",
                    annotations::LOAD_BALANCER_IPS
                ));
            }
            requested_ips.push(ip);
        }
    } else if let Some(raw) = spec
        .load_balancer_ip
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        let ip: IpAddr = raw
            .trim()
            .parse()
            .map_err(|_| format!("spec.loadBalancerIP {raw:?} is not an IP address"))?;
        requested_ips.push(ip);
    }
    let requested_pool = match annotation(annos, annotations::ADDRESS_POOL, &mut aliases) {
        Some(p) if requested_ips.is_empty() => Some(p.to_owned()),
        // Requested IPs win (docs/design/allocation.md#requests: first match wins); the pool name is then unused.
        _ => None,
    };
    let sharing_key =
        annotation(annos, annotations::ALLOW_SHARED_IP, &mut aliases).map(str::to_owned);

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Err(format!("spec.ports: unknown protocol {other:?}")),
        };
        let port = u16::try_from(p.port).map_err(|_| format!("spec.ports: bad port {}", p.port))?;
        ports.push((protocol, port));
    }
    let backends = match spec.external_traffic_policy.as_deref() {
        Some("Local") => Backends::Local {
            selector: spec.selector.clone().unwrap_or_default(),
        },
        _ => Backends::Cluster,
    };

    Ok(Parsed {
        request: ServiceRequest {
            key: key_of(svc),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            families,
            policy,
            requested_ips,
            requested_pool,
            sharing_key,
            ports,
            backends,
        },
        aliases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(annos: &[(&str, &str)], spec: ServiceSpec) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some("web".into());
        s.metadata.annotations = Some(
            annos
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s.spec = Some(spec);
        s
    }

    #[test]
    fn slim_keeps_what_a_request_and_a_status_write_are_made_of() {
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let mut full = svc(
            &[
                (annotations::LOAD_BALANCER_IPS, "203.0.113.7"),
                ("metallb.universe.tf/allow-shared-ip", "k"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                ("ferrolb.io.example.org/other", "x"),
            ],
            ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                external_traffic_policy: Some("Local".into()),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(vec![ServicePort {
                    port: 443,
                    protocol: Some("TCP".into()),
                    node_port: Some(31443),
                    name: Some("https".into()),
                    ..Default::default()
                }]),
                ip_family_policy: Some("PreferDualStack".into()),
                ..lb()
            },
        );
        full.metadata.labels = Some(BTreeMap::from([("tier".into(), "edge".into())]));
        full.metadata.resource_version = Some("42".into());
        full.metadata.uid = Some("u-1".into());
        full.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                }]),
            }),
            conditions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: "ferrolb.io/Announced".into(),
                    status: "True".into(),
                    reason: "Announced".into(),
                    message: String::new(),
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                    observed_generation: None,
                },
            ]),
        });
        let slim = slim(full.clone());
        let ns = BTreeMap::new();
        assert_eq!(parse(&slim, &ns), parse(&full, &ns), "same request");
        assert_eq!(status_ips(&slim), status_ips(&full));
        assert_eq!(key_of(&slim), key_of(&full));
        assert!(is_handled(&slim, "c"));
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(slim.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(
            slim.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        let annos: Vec<&String> = slim.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(
            annos,
            [
                annotations::LOAD_BALANCER_IPS,
                "metallb.universe.tf/allow-shared-ip"
            ],
            "only FerroLB's and MetalLB's annotations stay"
        );
        let spec = slim.spec.unwrap();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.ports.unwrap()[0].node_port, None);
    }

    fn lb() -> ServiceSpec {
        ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_load_balancers_of_our_class_are_handled() {
        let class = "ferrolb.io/ferrolb";
        assert!(is_handled(&svc(&[], lb()), class));
        let mut other = lb();
        other.load_balancer_class = Some("example.com/other".into());
        assert!(!is_handled(&svc(&[], other), class));
        let mut ours = lb();
        ours.load_balancer_class = Some(class.into());
        assert!(is_handled(&svc(&[], ours), class));
        let cluster_ip = ServiceSpec {
            type_: Some("ClusterIP".into()),
            ..Default::default()
        };
        assert!(!is_handled(&svc(&[], cluster_ip), class));
    }

    #[test]
    fn requests_in_precedence_order() {
        let mut spec = lb();
        spec.load_balancer_ip = Some("203.0.113.9".into());
        let p = parse(
            &svc(
                &[
                    ("ferrolb.io/loadBalancerIPs", "203.0.113.5, 2001:db8::5"),
                    ("ferrolb.io/address-pool", "a"),
                ],
                spec.clone(),
            ),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            p.request.requested_ips,
            [
                "203.0.113.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(p.request.requested_pool, None, "IPs win over the pool name");

        let p = parse(&svc(&[], spec.clone()), &BTreeMap::new()).unwrap();
        assert_eq!(
            p.request.requested_ips,
            ["203.0.113.9".parse::<IpAddr>().unwrap()]
        );

        let p = parse(
            &svc(&[("ferrolb.io/address-pool", " gold ")], lb()),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.request.requested_pool.as_deref(), Some("gold"));
    }

    #[test]
    fn metallb_aliases_are_honoured_and_reported() {
        let p = parse(
            &svc(
                &[
                    ("metallb.universe.tf/address-pool", "gold"),
                    ("metallb.io/allow-shared-ip", "k"),
                ],
                lb(),
            ),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.request.requested_pool.as_deref(), Some("gold"));
        assert_eq!(p.request.sharing_key.as_deref(), Some("k"));
        let found: Vec<_> = p.aliases.iter().map(|a| a.found.as_str()).collect();
        assert_eq!(
            found,
            [
                "metallb.universe.tf/address-pool",
                "metallb.io/allow-shared-ip"
            ]
        );
        // The FerroLB spelling wins over an alias.
        let p = parse(
            &svc(
                &[
                    ("metallb.io/address-pool", "old"),
                    ("ferrolb.io/address-pool", "new"),
                ],
                lb(),
            ),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.request.requested_pool.as_deref(), Some("new"));
        assert!(p.aliases.is_empty());
    }

    /// MetalLB treats an empty annotation as absent, and Helm renders them all the time: a
    /// Service carrying one is an ordinary request (docs/design/allocation.md#empty-annotations), and a blank FerroLB key does
    /// not hide a MetalLB alias that is set.
    #[test]
    fn empty_annotations_are_absent() {
        let blank = [
            ("ferrolb.io/loadBalancerIPs", ""),
            ("metallb.universe.tf/address-pool", ""),
            ("metallb.io/allow-shared-ip", " "),
        ];
        let mut spec = lb();
        spec.load_balancer_ip = Some(" ".into());
        let p = parse(&svc(&blank, spec), &BTreeMap::new()).expect("blank means absent");
        assert!(p.request.requested_ips.is_empty());
        assert_eq!(p.request.requested_pool, None);
        assert_eq!(p.request.sharing_key, None);
        assert!(p.aliases.is_empty(), "no alias was used: {:?}", p.aliases);

        let fallback = [
            ("ferrolb.io/address-pool", ""),
            ("metallb.universe.tf/address-pool", "legacy"),
        ];
        let p = parse(&svc(&fallback, lb()), &BTreeMap::new()).unwrap();
        assert_eq!(p.request.requested_pool.as_deref(), Some("legacy"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let table = [
            (
                vec![("ferrolb.io/loadBalancerIPs", "300.1.1.1")],
                "\"300.1.1.1\" is not an IP address",
            ),
            (
                vec![("ferrolb.io/loadBalancerIPs", "203.0.113.1,203.0.113.2")],
                "at most one IP per family",
            ),
            (
                vec![("ferrolb.io/loadBalancerIPs", "203.0.113.1,")],
                "\"\" is not an IP address",
            ),
        ];
        for (annos, want) in table {
            let err = parse(&svc(&annos, lb()), &BTreeMap::new()).unwrap_err();
            assert!(err.contains(want), "{annos:?}: {err}");
        }
        let mut spec = lb();
        spec.load_balancer_ip = Some("nope".into());
        assert!(
            parse(&svc(&[], spec), &BTreeMap::new())
                .unwrap_err()
                .contains("spec.loadBalancerIP")
        );
    }

    #[test]
    fn families_ports_and_backends() {
        let mut spec = lb();
        spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        spec.ip_family_policy = Some("RequireDualStack".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.selector = Some(BTreeMap::from([("app".into(), "web".into())]));
        spec.ports = Some(vec![
            ServicePort {
                port: 80,
                ..Default::default()
            },
            ServicePort {
                port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ]);
        let r = parse(&svc(&[], spec), &BTreeMap::new()).unwrap().request;
        assert_eq!(r.families, [Family::V6, Family::V4]);
        assert_eq!(r.policy, FamilyPolicy::RequireDualStack);
        assert_eq!(r.ports, [(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
        assert_eq!(
            r.backends,
            Backends::Local {
                selector: BTreeMap::from([("app".into(), "web".into())])
            }
        );
        // Without ipFamilies (a stand-in API server), dual-stack policies ask for both.
        let mut spec = lb();
        spec.ip_family_policy = Some("PreferDualStack".into());
        let r = parse(&svc(&[], spec), &BTreeMap::new()).unwrap().request;
        assert_eq!(r.families, [Family::V4, Family::V6]);
    }
}
