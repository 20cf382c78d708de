//! What the allocator needs to know about a Service, and the IP-sharing rule.
//!
//! ```text
//!   v1.Service ──glue──▶ ServiceRequest ──share()──▶ Share {key, ports, backends}
//!                        (key, labels,                 │
//!                         families, requests)          └─ compatible(other) ─▶ Ok | Incompat
//! ```
//!
//! Two Services may hold the same IP only when both carry the same non-empty sharing key,
//! no (protocol, port) pair overlaps, and their backends match (docs/design/allocation.md#sharing-an-ip).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::Family;

/// Identifies a Service (`namespace/name`); the allocator's handle for holders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key from borrowed parts, for glue and tests.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    /// The `namespace/name` spelling kubectl users know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`: how many families a Service gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FamilyPolicy {
    /// Only the primary family (`ipFamilies[0]`).
    #[default]
    SingleStack,
    /// Both listed families when one pool can serve them, else the primary alone.
    PreferDualStack,
    /// IPv4 and IPv6, or nothing.
    RequireDualStack,
}

impl fmt::Display for FamilyPolicy {
    /// The Kubernetes spelling, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FamilyPolicy::SingleStack => "SingleStack",
            FamilyPolicy::PreferDualStack => "PreferDualStack",
            FamilyPolicy::RequireDualStack => "RequireDualStack",
        })
    }
}

/// A Service port's protocol; sharing compares (protocol, port) pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    /// The Kubernetes spelling (`TCP`), for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Where traffic for the IP goes; sharers must agree, or one node can't serve them all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backends {
    /// `externalTrafficPolicy: Cluster`: any node can serve.
    #[default]
    Cluster,
    /// `externalTrafficPolicy: Local` with the Service's pod selector: only nodes with those pods.
    Local {
        /// The Service's `spec.selector`.
        selector: BTreeMap<String, String>,
    },
}

impl fmt::Display for Backends {
    /// `Cluster` or `Local (app=web)`, for sharing-conflict messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backends::Cluster => f.write_str("externalTrafficPolicy Cluster"),
            Backends::Local { selector } => {
                let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "externalTrafficPolicy Local with selector {{{}}}",
                    sel.join(",")
                )
            }
        }
    }
}

/// Everything the glue extracts from a v1 Service for allocation; the allocator never sees kube types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRequest {
    /// Which Service.
    pub key: ServiceKey,
    /// The Service's labels, for `serviceSelectors`.
    pub labels: BTreeMap<String, String>,
    /// The namespace's labels, for `namespaceSelectors`.
    pub namespace_labels: BTreeMap<String, String>,
    /// `spec.ipFamilies` in order (primary first), one or two distinct entries.
    pub families: Vec<Family>,
    /// `spec.ipFamilyPolicy`.
    pub policy: FamilyPolicy,
    /// Requested IPs (annotation or `spec.loadBalancerIP`), at most one per family; empty = none.
    pub requested_ips: Vec<IpAddr>,
    /// Requested pool name (`ferrolb.io/address-pool`).
    pub requested_pool: Option<String>,
    /// Sharing key (`ferrolb.io/allow-shared-ip`), non-empty when present.
    pub sharing_key: Option<String>,
    /// The Service's (protocol, port) pairs; sharers must not overlap.
    pub ports: Vec<(Protocol, u16)>,
    /// Traffic policy and pod selector; sharers must match.
    pub backends: Backends,
}

impl ServiceRequest {
    /// The sharing profile stored for each holder.
    pub(crate) fn share(&self) -> Share {
        let mut ports = self.ports.clone();
        ports.sort();
        ports.dedup();
        Share {
            key: self.sharing_key.clone(),
            ports,
            backends: self.backends.clone(),
        }
    }

    /// The families this request must end up with, primary first; `Err` explains a malformed list.
    pub(crate) fn wanted_families(&self) -> Result<Vec<Family>, String> {
        let Some(&primary) = self.families.first() else {
            return Err("spec.ipFamilies is empty".into());
        };
        if self.families.len() > 2 || (self.families.len() == 2 && self.families[1] == primary) {
            let list: Vec<String> = self.families.iter().map(Family::to_string).collect();
            return Err(format!(
                "spec.ipFamilies [{}] must list one or two distinct families",
                list.join(", ")
            ));
        }
        Ok(match self.policy {
            FamilyPolicy::SingleStack => vec![primary],
            FamilyPolicy::PreferDualStack => self.families.clone(),
            FamilyPolicy::RequireDualStack => vec![primary, primary.other()],
        })
    }
}

/// How one holder uses an IP; two profiles decide whether their Services may share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    pub key: Option<String>,
    /// Sorted and deduplicated.
    pub ports: Vec<(Protocol, u16)>,
    pub backends: Backends,
}

/// Why two profiles cannot share an IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Incompat {
    /// Missing or different sharing keys (the holder does not share with us).
    Keys {
        mine: Option<String>,
        theirs: Option<String>,
    },
    /// Same key, but both use this (protocol, port).
    Port(Protocol, u16),
    /// Same key, but different traffic policies or Local selectors.
    Backends { mine: Backends, theirs: Backends },
}

impl Share {
    /// Whether `self` may hold an IP that `other` holds (symmetric).
    pub fn compatible(&self, other: &Share) -> Result<(), Incompat> {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) if a == b => {}
            _ => {
                return Err(Incompat::Keys {
                    mine: self.key.clone(),
                    theirs: other.key.clone(),
                });
            }
        }
        // Both port lists are sorted: merge-walk for the first common pair.
        let (mut i, mut j) = (0, 0);
        while i < self.ports.len() && j < other.ports.len() {
            match self.ports[i].cmp(&other.ports[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    let (p, n) = self.ports[i];
                    return Err(Incompat::Port(p, n));
                }
            }
        }
        if self.backends != other.backends {
            return Err(Incompat::Backends {
                mine: self.backends.clone(),
                theirs: other.backends.clone(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Incompat {
    /// The clause completing "... cannot share IP with X: <this>".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = |k: &Option<String>| match k {
            Some(k) => format!("sharing key {k:?}"),
            None => "no sharing key".to_owned(),
        };
        match self {
            Incompat::Keys { mine, theirs } => {
                write!(
                    f,
                    "it has {} and this Service has {}",
                    key(theirs),
                    key(mine)
                )
            }
            Incompat::Port(p, n) => write!(f, "both use port {p}/{n}"),
            Incompat::Backends { mine, theirs } => {
                write!(f, "backends differ ({theirs} vs {mine})")
            }
        }
    }
}
