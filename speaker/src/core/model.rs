//! The speaker's view of the cluster as plain data: what the watchers saw, minus Kubernetes.
//!
//! ```text
//!   Node, Lease/liveness, L2Advertisement, IPAddressPool, Service + EndpointSlices
//!        │ glue converts (validated selectors, parsed addresses, unhealthy Service sets)
//!        ▼
//!   World { nodes, speakers, advertisements, pools, services, unhealthy }  ──▶  election::desired
//! ```
//!
//! Every map is keyed by the object's name (`ns/name` for Services); use the `apply_*` /
//! `delete_*` helpers so keys and names always agree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;

/// Nodes carrying this label never announce (Kubernetes' own convention), unless the speaker
/// runs with `--ignore-exclude-lb`.
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// A cluster node, reduced to what decides whether it may announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`, the identity every speaker ranks by.
    pub name: String,
    /// `metadata.labels`, matched by `L2Advertisement.nodeSelectors` and the exclude label.
    pub labels: BTreeMap<String, String>,
    /// The `NetworkUnavailable` condition is `True`: the node's network is not set up.
    pub network_unavailable: bool,
}

/// A live speaker and its usable interfaces, as known to every peer so all rank alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Speaker {
    /// The node the speaker runs on.
    pub node: String,
    /// Interfaces that are up, broadcast-capable and not excluded (docs/design/election.md#interfaces).
    pub interfaces: BTreeSet<String>,
    /// Came back less than a hold-down ago: wins an IP only when no settled node is
    /// eligible for it, so a flapping node takes nothing back (docs/failover.md).
    pub settling: bool,
}

/// Which pools an advertisement covers (docs/design/allocation.md#pools-and-advertisements: nothing given = every pool).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSelection {
    /// `ipAddressPools`: pools by name.
    pub names: BTreeSet<String>,
    /// `ipAddressPoolSelectors`: pools by label; any match selects.
    pub selectors: Vec<Selector>,
}

impl PoolSelection {
    /// Whether a pool is covered: named, or matched by a selector, or nothing was given.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.names.is_empty() && self.selectors.is_empty())
            || self.names.contains(name)
            || self.selectors.iter().any(|s| s.matches(labels))
    }
}

/// A validated `L2Advertisement`: which pools are announced, from where, for which Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertisement {
    /// `metadata.name`, reported when its selectors exclude a Service.
    pub name: String,
    /// Pools this advertisement announces.
    pub pools: PoolSelection,
    /// `nodeSelectors`: empty = every node, else any match.
    pub node_selectors: Vec<Selector>,
    /// `interfaces`: empty = every usable interface, else only these.
    pub interfaces: BTreeSet<String>,
    /// `serviceSelectors`: empty = every Service, else any match.
    pub service_selectors: Vec<Selector>,
}

impl Advertisement {
    /// Whether this advertisement announces the given pool.
    pub fn selects_pool(&self, pool: &Pool) -> bool {
        self.pools.selects(&pool.name, &pool.labels)
    }

    /// Whether a node with these labels may announce through this advertisement.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        any_or_empty(&self.node_selectors, labels)
    }

    /// Whether a Service with these labels is announced through this advertisement.
    pub fn selects_service(&self, labels: &BTreeMap<String, String>) -> bool {
        any_or_empty(&self.service_selectors, labels)
    }

    /// The usable interfaces this advertisement lets a speaker announce on.
    pub fn allowed_interfaces<'a>(
        &'a self,
        usable: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        usable
            .iter()
            .filter(move |i| self.interfaces.is_empty() || self.interfaces.contains(*i))
    }
}

fn any_or_empty(selectors: &[Selector], labels: &BTreeMap<String, String>) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| s.matches(labels))
}

/// An `IPAddressPool` reduced to what the speaker needs: which IPs it holds, and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    /// `metadata.name`, matched by `ipAddressPools`.
    pub name: String,
    /// `metadata.labels`, matched by `ipAddressPoolSelectors`.
    pub labels: BTreeMap<String, String>,
    /// The parsed `spec.addresses`; an IP is in the pool when `contains` says so.
    pub addresses: PoolAddresses,
}

/// A LoadBalancer Service FerroLB handles, with the endpoint facts election needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`, the key conditions and the table use.
    pub key: String,
    /// `metadata.labels`, matched by `serviceSelectors`.
    pub labels: BTreeMap<String, String>,
    /// `status.loadBalancer.ingress[].ip`; order and duplicates do not matter.
    pub ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`: only nodes with a serving endpoint may announce.
    pub local: bool,
    /// Nodes hosting at least one serving endpoint (from EndpointSlices).
    pub serving_nodes: BTreeSet<String>,
    /// At least one serving endpoint exists anywhere; without one nothing is announced.
    pub has_serving_endpoints: bool,
    /// `ferrolb.io/health-check: "false"`: a node's failing kube-proxy health check
    /// ([`World::unhealthy`]) does not make it ineligible for this Service.
    pub ignore_health_check: bool,
}

/// Everything election reads; the glue keeps it current from watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    /// Known Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Live speakers by node name.
    pub speakers: BTreeMap<String, Speaker>,
    /// Valid L2Advertisements by name.
    pub advertisements: BTreeMap<String, Advertisement>,
    /// Valid, non-conflicting IPAddressPools by name.
    pub pools: BTreeMap<String, Pool>,
    /// Handled LoadBalancer Services by `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// `--ignore-exclude-lb`: announce from nodes carrying [`EXCLUDE_LB_LABEL`] too.
    pub ignore_exclude_lb: bool,
    /// Per node, the `ns/name` of the Local Services whose kube-proxy health check fails
    /// there (published by each speaker in its Lease): such a node is not eligible for them.
    pub unhealthy: BTreeMap<String, BTreeSet<String>>,
}

impl World {
    /// Inserts or replaces a Node, keyed by its name.
    pub fn apply_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Forgets a Node.
    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Marks a speaker live (or updates its interfaces), keyed by its node.
    pub fn apply_speaker(&mut self, speaker: Speaker) {
        self.speakers.insert(speaker.node.clone(), speaker);
    }

    /// Marks the speaker on a node dead.
    pub fn delete_speaker(&mut self, node: &str) {
        self.speakers.remove(node);
    }

    /// Inserts or replaces an advertisement, keyed by its name.
    pub fn apply_advertisement(&mut self, adv: Advertisement) {
        self.advertisements.insert(adv.name.clone(), adv);
    }

    /// Forgets an advertisement.
    pub fn delete_advertisement(&mut self, name: &str) {
        self.advertisements.remove(name);
    }

    /// Inserts or replaces a pool, keyed by its name.
    pub fn apply_pool(&mut self, pool: Pool) {
        self.pools.insert(pool.name.clone(), pool);
    }

    /// Forgets a pool.
    pub fn delete_pool(&mut self, name: &str) {
        self.pools.remove(name);
    }

    /// Inserts or replaces a Service, keyed by `namespace/name`.
    pub fn apply_service(&mut self, svc: Service) {
        self.services.insert(svc.key.clone(), svc);
    }

    /// Forgets a Service.
    pub fn delete_service(&mut self, key: &str) {
        self.services.remove(key);
    }
}
