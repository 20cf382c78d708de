//! The desired-state table: for every Service IP, who announces it on which interfaces, or
//! why nobody does.
//!
//! ```text
//!   desired(world) ──▶ Table ──┬── by IP:      IpAddr ─▶ Decision   (data plane, per node:
//!                              │                                      local_announcements)
//!                              └── by Service: ns/name ─▶ IpAddr ─▶ Decision
//!                                                          (condition ferrolb.io/Announced)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The interfaces an IP is announced on. Shared: a table holds the same few sets for
/// thousands of IPs, once by IP and once by Service, and the decider and the data plane
/// keep them too; a set of its own per IP and copy would cost about 300 bytes each
/// (docs/architecture.md#memory). `desired` gives equal sets one allocation.
pub type Interfaces = Arc<BTreeSet<String>>;

/// What should happen to one IP (or one Service's view of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `node` answers ARP/NDP for the IP on exactly these interfaces.
    Announce {
        /// The elected node.
        node: String,
        /// Interfaces the elected node answers on (never empty).
        interfaces: Interfaces,
    },
    /// No node answers; the reason is shown on the Service.
    NotAnnounced {
        /// Why, precise enough for a condition.
        reason: NotAnnouncedReason,
    },
}

impl Decision {
    /// The elected node, if any, so callers need not match.
    pub fn announcer(&self) -> Option<&str> {
        match self {
            Decision::Announce { node, .. } => Some(node),
            Decision::NotAnnounced { .. } => None,
        }
    }

    /// CamelCase reason for the `ferrolb.io/Announced` condition (`Announced` when announced).
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Announce { .. } => "Announced",
            Decision::NotAnnounced { reason } => reason.reason(),
        }
    }
}

impl fmt::Display for Decision {
    /// The condition message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Announce { node, interfaces } => {
                write!(f, "announced by node {node} on {}", join(interfaces, ", "))
            }
            Decision::NotAnnounced { reason } => write!(f, "not announced: {reason}"),
        }
    }
}

/// Why an IP is not announced; variants are ordered from "configuration" to "nodes".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAnnouncedReason {
    /// The IP lies in no known pool (pool deleted, shrunk or in conflict).
    NotInPool,
    /// No advertisement covers the IP's pools, or those that do exclude the Service.
    NoAdvertisement {
        /// Pools that hold the IP.
        pools: BTreeSet<String>,
        /// Advertisements covering those pools whose `serviceSelectors` exclude the Service.
        excluded_by_service_selectors: BTreeSet<String>,
    },
    /// The Service has no serving endpoint anywhere, so announcing would black-hole traffic.
    NoServingEndpoints,
    /// Configuration allows the IP, but no node qualifies for every Service and IP it is
    /// grouped with.
    NoEligibleNode {
        /// Why each known node was left out.
        detail: Exclusions,
    },
}

impl NotAnnouncedReason {
    /// CamelCase reason for the `ferrolb.io/Announced` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            NotAnnouncedReason::NotInPool => "NotInPool",
            NotAnnouncedReason::NoAdvertisement { .. } => "NoAdvertisement",
            NotAnnouncedReason::NoServingEndpoints => "NoServingEndpoints",
            NotAnnouncedReason::NoEligibleNode { .. } => "NoEligibleNode",
        }
    }
}

impl fmt::Display for NotAnnouncedReason {
    /// The condition message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAnnouncedReason::NotInPool => f.write_str("the IP is in no IPAddressPool"),
            NotAnnouncedReason::NoAdvertisement {
                pools,
                excluded_by_service_selectors,
            } if excluded_by_service_selectors.is_empty() => write!(
                f,
                "no L2Advertisement selects IPAddressPool {}",
                join(pools, ", ")
            ),
            NotAnnouncedReason::NoAdvertisement {
                pools,
                excluded_by_service_selectors,
            } => write!(
                f,
                "L2Advertisement {} selects IPAddressPool {} but its serviceSelectors exclude \
                 this Service",
                join(excluded_by_service_selectors, ", "),
                join(pools, ", ")
            ),
            NotAnnouncedReason::NoServingEndpoints => {
                f.write_str("the Service has no serving endpoint")
            }
            NotAnnouncedReason::NoEligibleNode { detail } => write!(f, "{detail}"),
        }
    }
}

/// Why one node may not announce an IP; ordered as the rules are checked (first wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeExclusion {
    /// A speaker is live there but its Node object is unknown.
    UnknownNode,
    /// The Node exists but runs no live speaker.
    NoSpeaker,
    /// The Node's `NetworkUnavailable` condition is True.
    NetworkUnavailable,
    /// The Node carries `node.kubernetes.io/exclude-from-external-load-balancers`.
    ExcludedByLabel,
    /// No advertisement for the IP's pool and Service selects the node (`nodeSelectors`).
    NotSelected,
    /// None of the node's usable interfaces is allowed by those advertisements.
    NoAllowedInterface,
    /// `externalTrafficPolicy: Local` and the node hosts no serving endpoint.
    NoLocalEndpoint,
    /// `externalTrafficPolicy: Local` and the node's kube-proxy health check for the
    /// Service fails (its speaker publishes it unhealthy): the endpoint is not reachable there.
    NoHealthyEndpoint,
}

impl NodeExclusion {
    fn describe(self) -> &'static str {
        match self {
            NodeExclusion::UnknownNode => "no Node object",
            NodeExclusion::NoSpeaker => "no live speaker",
            NodeExclusion::NetworkUnavailable => "NetworkUnavailable",
            NodeExclusion::ExcludedByLabel => "exclude-from-external-load-balancers label",
            NodeExclusion::NotSelected => "not selected by nodeSelectors",
            NodeExclusion::NoAllowedInterface => "no allowed usable interface",
            NodeExclusion::NoLocalEndpoint => "no local serving endpoint",
            NodeExclusion::NoHealthyEndpoint => "kube-proxy health check failing",
        }
    }
}

impl fmt::Display for NodeExclusion {
    /// A short phrase for messages and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why the known nodes were left out of a `NoEligibleNode`, so an operator sees what to fix.
///
/// A summary, not a list: per reason, how many nodes and the first few names (in name
/// order), which is all a message shows. Its size is bounded whatever the cluster, so a
/// correlated outage (no node eligible for any of 1,000 IPs in a 1,000-node cluster) costs
/// 1,000 small summaries, not a million (node, reason) entries in every speaker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    by_reason: BTreeMap<NodeExclusion, Excluded>,
}

/// The nodes one reason left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excluded {
    /// How many.
    pub count: usize,
    /// The [`NAMES_PER_REASON`] lowest names, ascending.
    pub first: Vec<String>,
}

/// How many node names are kept (and shown) per reason.
pub const NAMES_PER_REASON: usize = 3;

impl Exclusions {
    /// Records that `node` was left out for `why`. Each node is added once.
    pub fn add(&mut self, node: &str, why: NodeExclusion) {
        let e = self.by_reason.entry(why).or_default();
        e.count += 1;
        let at = e.first.partition_point(|n| n.as_str() < node);
        if at < NAMES_PER_REASON {
            e.first.insert(at, node.to_owned());
            e.first.truncate(NAMES_PER_REASON);
        }
    }

    /// How many nodes were left out in all.
    pub fn total(&self) -> usize {
        self.by_reason.values().map(|e| e.count).sum()
    }

    /// Per reason, in rule order: how many nodes and the first names.
    pub fn by_reason(&self) -> impl Iterator<Item = (NodeExclusion, &Excluded)> {
        self.by_reason.iter().map(|(why, e)| (*why, e))
    }

    /// Why `node` was left out, when it is among the names kept (always, for a node whose
    /// reason left out at most [`NAMES_PER_REASON`] nodes).
    pub fn reason_of(&self, node: &str) -> Option<NodeExclusion> {
        self.by_reason()
            .find(|(_, e)| e.first.iter().any(|n| n == node))
            .map(|(why, _)| why)
    }
}

impl FromIterator<(String, NodeExclusion)> for Exclusions {
    fn from_iter<I: IntoIterator<Item = (String, NodeExclusion)>>(iter: I) -> Self {
        let mut ex = Exclusions::default();
        for (node, why) in iter {
            ex.add(&node, why);
        }
        ex
    }
}

impl fmt::Display for Exclusions {
    /// Compact: `no eligible node (3 nodes): no live speaker: a, b; NetworkUnavailable: c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.total();
        if n == 0 {
            return f.write_str("no eligible node: no nodes known");
        }
        write!(
            f,
            "no eligible node ({n} node{}): ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, (why, e)) in self.by_reason().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{why}: {}", e.first.join(", "))?;
            if e.count > e.first.len() {
                write!(f, " and {} more", e.count - e.first.len())?;
            }
        }
        Ok(())
    }
}

/// The whole desired state, indexed by IP for the data plane and by Service for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub(crate) ips: BTreeMap<IpAddr, Decision>,
    pub(crate) services: BTreeMap<String, BTreeMap<IpAddr, Decision>>,
}

impl Table {
    /// The decision for an IP held by some Service (`None`: no Service holds it).
    pub fn get(&self, ip: IpAddr) -> Option<&Decision> {
        self.ips.get(&ip)
    }

    /// The node that answers for an IP, if any.
    pub fn announcer(&self, ip: IpAddr) -> Option<&str> {
        self.get(ip).and_then(Decision::announcer)
    }

    /// Every IP held by a Service and its decision, in IP order.
    pub fn ips(&self) -> &BTreeMap<IpAddr, Decision> {
        &self.ips
    }

    /// One Service's IPs as that Service sees them (its own reason when it is not announced,
    /// even if a sharing Service gets the IP announced).
    pub fn service(&self, key: &str) -> Option<&BTreeMap<IpAddr, Decision>> {
        self.services.get(key)
    }

    /// Every Service with at least one IP, by `namespace/name`.
    pub fn services(&self) -> &BTreeMap<String, BTreeMap<IpAddr, Decision>> {
        &self.services
    }
}

/// What `node` must answer for (IP → interfaces): the only thing its data plane consumes.
pub fn local_announcements(table: &Table, node: &str) -> BTreeMap<IpAddr, Interfaces> {
    table
        .ips
        .iter()
        .filter_map(|(ip, d)| match d {
            Decision::Announce {
                node: n,
                interfaces,
            } if n == node => Some((*ip, interfaces.clone())),
            _ => None,
        })
        .collect()
}

fn join(set: &BTreeSet<String>, sep: &str) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn messages_and_reasons() {
        let table: Vec<(Decision, &str, &str)> = vec![
            (
                Decision::Announce {
                    node: "n1".into(),
                    interfaces: set(&["eth0", "eth1"]).into(),
                },
                "Announced",
                "announced by node n1 on eth0, eth1",
            ),
            (
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NotInPool,
                },
                "NotInPool",
                "not announced: the IP is in no IPAddressPool",
            ),
            (
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NoAdvertisement {
                        pools: set(&["p"]),
                        excluded_by_service_selectors: set(&[]),
                    },
                },
                "NoAdvertisement",
                "not announced: no L2Advertisement selects IPAddressPool p",
            ),
            (
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NoAdvertisement {
                        pools: set(&["p"]),
                        excluded_by_service_selectors: set(&["a", "b"]),
                    },
                },
                "NoAdvertisement",
                "not announced: L2Advertisement a, b selects IPAddressPool p but its \
                 serviceSelectors exclude this Service",
            ),
            (
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NoServingEndpoints,
                },
                "NoServingEndpoints",
                "not announced: the Service has no serving endpoint",
            ),
            (
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NoEligibleNode {
                        detail: Exclusions::default(),
                    },
                },
                "NoEligibleNode",
                "not announced: no eligible node: no nodes known",
            ),
        ];
        for (d, reason, msg) in table {
            assert_eq!(d.reason(), reason);
            assert_eq!(d.to_string(), msg);
        }
    }

    #[test]
    fn exclusions_are_grouped_and_capped() {
        let nodes = [
            ("a", NodeExclusion::NoSpeaker),
            ("b", NodeExclusion::NoSpeaker),
            ("c", NodeExclusion::NoSpeaker),
            ("d", NodeExclusion::NoSpeaker),
            ("e", NodeExclusion::NoLocalEndpoint),
            ("f", NodeExclusion::NetworkUnavailable),
        ];
        // Added out of name order: the kept names are still the lowest.
        let ex: Exclusions = nodes
            .iter()
            .rev()
            .map(|(n, w)| (n.to_string(), *w))
            .collect();
        assert_eq!(ex.total(), 6);
        assert_eq!(ex.reason_of("e"), Some(NodeExclusion::NoLocalEndpoint));
        assert_eq!(ex.reason_of("d"), None, "beyond the names kept");
        assert_eq!(
            ex.to_string(),
            "no eligible node (6 nodes): no live speaker: a, b, c and 1 more; \
             NetworkUnavailable: f; no local serving endpoint: e"
        );
    }

    #[test]
    fn local_announcements_filter_by_node() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut t = Table::default();
        t.ips.insert(
            ip("203.0.113.1"),
            Decision::Announce {
                node: "n1".into(),
                interfaces: set(&["eth0"]).into(),
            },
        );
        t.ips.insert(
            ip("203.0.113.2"),
            Decision::Announce {
                node: "n2".into(),
                interfaces: set(&["eth1"]).into(),
            },
        );
        t.ips.insert(
            ip("203.0.113.3"),
            Decision::NotAnnounced {
                reason: NotAnnouncedReason::NoServingEndpoints,
            },
        );
        assert_eq!(
            local_announcements(&t, "n1"),
            BTreeMap::from([(ip("203.0.113.1"), set(&["eth0"]).into())])
        );
        assert_eq!(t.announcer(ip("203.0.113.2")), Some("n2"));
        assert_eq!(t.announcer(ip("203.0.113.3")), None);
        assert_eq!(t.announcer(ip("203.0.113.9")), None);
        assert!(local_announcements(&t, "n3").is_empty());
    }
}
