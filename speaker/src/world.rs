//! From watched Kubernetes objects to the core's plain [`World`]. Pure conversions.
//!
//! ```text
//!   Node ─────────────▶ core::Node          IPAddressPool ──▶ core::Pool (valid addresses only)
//!   L2Advertisement ──▶ core::Advertisement (valid selectors only; the controller reports the rest)
//!   Service + its EndpointSlices ──▶ core::Service (handled LoadBalancers with IPs, and
//!     Services with accepted externalIPs: ferrolb_crds::external_ips, judged in cache.rs)
//!     kept on arrival as LbService (LoadBalancers and Services with externalIPs only)
//!     + SliceSummary (every slice)
//!   Lease (ferrolb-speaker-<node>) ──▶ peer heartbeat address, incarnation, public key,
//!     MACs, and the Local Services failing its node's kube-proxy health check
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::parse_all;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::core;
use crate::dataplane::Fleet;
use crate::liveness::{PeerAddr, VerifyingKey};
use crate::wire::MacAddr;

/// Annotation on a speaker's Lease: where its peers send heartbeats.
pub const HEARTBEAT_ADDR_ANNOTATION: &str = "ferrolb.io/heartbeat-addr";
/// Annotation on a speaker's Lease: the incarnation its heartbeats carry (random per
/// start, decimal), so peers accept a restart whatever the clocks say.
pub const INCARNATION_ANNOTATION: &str = "ferrolb.io/heartbeat-incarnation";
/// Annotation on a speaker's Lease: the public half of the Ed25519 key it signs its
/// heartbeats with (drawn at each start; 32 bytes, standard base64 with padding, 44
/// characters). Peers reject heartbeats claiming this node that this key did not sign.
pub const PUBKEY_ANNOTATION: &str = "ferrolb.io/heartbeat-pubkey";
/// Annotation on a speaker's Lease: the MACs of its interfaces (lowercase, comma-separated,
/// ascending), so that peers tell a FerroLB node's ARP/NDP from another host's (address
/// conflict detection, `dataplane::conflict`).
pub const MACS_ANNOTATION: &str = "ferrolb.io/macs";
/// Annotation on a speaker's Lease: the `ns/name` of the Local Services whose kube-proxy
/// health check fails on its node (sorted, comma-separated; absent when none). In the
/// Lease rather than the heartbeat datagram: no wire-format change, and every speaker
/// learns it with the same API latency as the EndpointSlices Local eligibility already
/// rests on, so all rank from the same facts (crate::health).
pub const UNHEALTHY_SERVICES_ANNOTATION: &str = "ferrolb.io/unhealthy-services";
/// Annotation on a Service: `"false"` turns the kube-proxy health check off for it (its
/// nodes stay eligible while their check fails).
pub const HEALTH_CHECK_ANNOTATION: &str = "ferrolb.io/health-check";
/// Prefix of every speaker Lease name; the rest is the node name.
pub const LEASE_PREFIX: &str = "ferrolb-speaker-";
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// A Node as election sees it.
pub fn node(n: &K8sNode) -> core::Node {
    core::Node {
        name: name(n),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        network_unavailable: network_unavailable(n),
    }
}

/// The Node's `NetworkUnavailable` condition is `True`.
fn network_unavailable(n: &K8sNode) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
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

/// A pool as the speaker keeps it: its addresses when they parse, and whether it serves
/// externalIPs (to which namespaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptPool {
    /// [`pool`] of it.
    pub parsed: Option<core::Pool>,
    /// `spec.externalIPs.namespaces`, when marked.
    pub external_ips: Option<Vec<String>>,
}

/// What is kept of a pool.
pub fn kept_pool(p: &IPAddressPool) -> KeptPool {
    KeptPool {
        parsed: pool(p),
        external_ips: p.spec.external_ips.as_ref().map(|e| e.namespaces.clone()),
    }
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

/// A Service with IPs to announce, joined with its EndpointSlices: its status IPs when it
/// is a handled LoadBalancer, then its `accepted` externalIPs (the caller judged them:
/// [`ferrolb_crds::external_ips`]); `None` when there is nothing to announce. The speaker
/// keeps [`LbService`] and [`SliceSummary`] instead of the objects; [`LbService::to_core`]
/// must give what this gives (tested).
pub fn service<'a>(
    s: &K8sService,
    lb_class: &str,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    accepted: &[IpAddr],
) -> Option<core::Service> {
    let mut ips: Vec<IpAddr> = if is_handled(s, lb_class) {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    add_accepted(&mut ips, accepted);
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
        ignore_health_check: health_check_off(s),
    })
}

/// The Service opts out of the kube-proxy health check ([`HEALTH_CHECK_ANNOTATION`]).
pub fn health_check_off(s: &K8sService) -> bool {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HEALTH_CHECK_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

// The kept forms: what the speaker's caches hold instead of the watched objects, converted
// on arrival (docs/architecture.md#memory). A pool is kept as `Option<core::Pool>` ([`pool`]);
// the others below. Labels are kept whole but compact ([`Labels`]), and the core's World
// gets only those some valid advertisement's selectors read ([`LabelKeys`]): matching
// reads no other label, so election decides the same as with every label.

/// Labels as the speaker keeps them: one string of `key`, `value`, … each ended by a NUL
/// (one allocation instead of two per label plus a map). Kubernetes label keys and values
/// never hold a NUL; one that did is kept with U+FFFD instead, which no selector matches
/// either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<str>);

impl Labels {
    /// Keeps `labels`.
    pub fn new(labels: Option<&BTreeMap<String, String>>) -> Self {
        let mut s = String::new();
        for (k, v) in labels.into_iter().flatten() {
            for part in [k, v] {
                s.push_str(&part.replace('\0', "\u{fffd}"));
                s.push('\0');
            }
        }
        Self(s.into_boxed_str())
    }

    /// Every `(key, value)`, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split_terminator('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// The labels whose key is in `keys`, as the core takes them.
    pub fn only(&self, keys: &BTreeSet<String>) -> BTreeMap<String, String> {
        self.iter()
            .filter(|(k, _)| keys.contains(*k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The label keys read by the selectors of the valid advertisements: for Nodes
/// (`nodeSelectors`, and [`core::EXCLUDE_LB_LABEL`]) and for Services
/// (`serviceSelectors`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelKeys {
    /// Node label keys that matter.
    pub nodes: BTreeSet<String>,
    /// Service label keys that matter.
    pub services: BTreeSet<String>,
}

impl Default for LabelKeys {
    fn default() -> Self {
        Self {
            nodes: BTreeSet::from([core::EXCLUDE_LB_LABEL.to_owned()]),
            services: BTreeSet::new(),
        }
    }
}

impl LabelKeys {
    /// The keys `advertisements` read (the invalid ones read nothing: they are ignored).
    pub fn of<'a>(advertisements: impl IntoIterator<Item = &'a KeptAdvertisement>) -> Self {
        let mut keys = Self::default();
        for a in advertisements.into_iter().filter(|a| a.parsed.is_ok()) {
            keys.nodes.extend(a.node_keys.iter().cloned());
            keys.services.extend(a.service_keys.iter().cloned());
        }
        keys
    }
}

/// A Node as the speaker keeps it: what [`node`] reads of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptNode {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// Its `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
}

/// What is kept of a Node.
pub fn kept_node(n: &K8sNode) -> KeptNode {
    KeptNode {
        name: name(n),
        labels: Labels::new(n.metadata.labels.as_ref()),
        network_unavailable: network_unavailable(n),
    }
}

impl KeptNode {
    /// The core's Node: [`node`] of the object it was kept from, with the labels in `keys`.
    pub fn to_core(&self, keys: &LabelKeys) -> core::Node {
        core::Node {
            name: self.name.clone(),
            labels: self.labels.only(&keys.nodes),
            network_unavailable: self.network_unavailable,
        }
    }
}

/// An L2Advertisement as the speaker keeps it: [`advertisement`] of it, and the label
/// keys its selectors read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptAdvertisement {
    /// The advertisement, or why it is ignored.
    pub parsed: Result<core::Advertisement, String>,
    /// Keys `nodeSelectors` read.
    pub node_keys: BTreeSet<String>,
    /// Keys `serviceSelectors` read.
    pub service_keys: BTreeSet<String>,
}

/// What is kept of an L2Advertisement.
pub fn kept_advertisement(a: &L2Advertisement) -> KeptAdvertisement {
    fn keys(
        sels: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector],
    ) -> BTreeSet<String> {
        sels.iter()
            .flat_map(|s| {
                let labels = s.match_labels.iter().flatten().map(|(k, _)| k.clone());
                let exprs = s.match_expressions.iter().flatten().map(|e| e.key.clone());
                labels.chain(exprs)
            })
            .collect()
    }
    KeptAdvertisement {
        parsed: advertisement(a),
        node_keys: keys(&a.spec.node_selectors),
        service_keys: keys(&a.spec.service_selectors),
    }
}

/// `accepted` externalIPs appended to `ips`, each once.
fn add_accepted(ips: &mut Vec<IpAddr>, accepted: &[IpAddr]) {
    for ip in accepted {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
}

/// A `type: LoadBalancer` Service, or one with `spec.externalIPs`, as the speaker keeps
/// it: what [`service`] reads of it. Any other Service is kept as nothing; should it
/// become one of those, the watch delivers it again and its EndpointSlices are already
/// kept (as [`SliceSummary`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbService {
    /// `namespace/name` ([`service_key`]).
    pub key: String,
    /// `spec.type` is `LoadBalancer`.
    pub lb: bool,
    /// `spec.loadBalancerClass`.
    pub class: Option<String>,
    /// `metadata.labels`, matched by `serviceSelectors`.
    pub labels: Labels,
    /// `status.loadBalancer.ingress[].ip` that parse, in order.
    pub ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `spec.externalIPs` that parse, sorted, each once (announced only once accepted).
    pub external_ips: Vec<IpAddr>,
    /// `spec.healthCheckNodePort`: where kube-proxy answers this Service's health check.
    pub health_check_node_port: Option<u16>,
    /// [`HEALTH_CHECK_ANNOTATION`] is `"false"`.
    pub ignore_health_check: bool,
}

/// What is kept of a Service: `None` unless it is `type: LoadBalancer` (of any class) or
/// lists `spec.externalIPs`.
pub fn lb_service(s: &K8sService) -> Option<LbService> {
    let spec = s.spec.as_ref()?;
    let lb = spec.type_.as_deref() == Some("LoadBalancer");
    let external_ips = spec
        .external_ips
        .as_deref()
        .map(ferrolb_crds::external_ips::parse)
        .unwrap_or_default();
    if !lb && external_ips.is_empty() {
        return None;
    }
    Some(LbService {
        key: service_key(s),
        lb,
        class: spec.load_balancer_class.clone(),
        labels: Labels::new(s.metadata.labels.as_ref()),
        ips: s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect(),
        local: spec.external_traffic_policy.as_deref() == Some("Local"),
        external_ips,
        health_check_node_port: spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
        ignore_health_check: health_check_off(s),
    })
}

/// The serving endpoints of one EndpointSlice, as election needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// At least one endpoint is serving (with or without a node name).
    pub serving: bool,
    /// The nodes of the serving endpoints, sorted, each once, separated by spaces (a node
    /// name is a DNS subdomain: it has none). One allocation per slice rather than one
    /// per node: every speaker keeps every slice of the cluster (docs/architecture.md#memory).
    nodes: Box<str>,
}

impl Endpoints {
    /// The nodes of the serving endpoints, sorted, each once.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.split(' ').filter(|n| !n.is_empty())
    }
}

/// The serving endpoints of `slice`. Per the EndpointSlice API, an unset `serving` means
/// the value of `ready`, and an unset `ready` means ready.
pub fn endpoints(slice: &EndpointSlice) -> Endpoints {
    let mut serving = false;
    let mut nodes = BTreeSet::new();
    for ep in &slice.endpoints {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        if c.and_then(|c| c.serving).unwrap_or(ready) {
            serving = true;
            if let Some(n) = &ep.node_name {
                nodes.insert(n.as_str());
            }
        }
    }
    Endpoints {
        serving,
        nodes: nodes.into_iter().collect::<Vec<_>>().join(" ").into(),
    }
}

/// An EndpointSlice as the speaker keeps it: its Service and serving endpoints. Kept for
/// every Service, LoadBalancer or not, since any Service may become one later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceSummary {
    /// The key of its Service ([`slice_service_key`]).
    pub service: String,
    /// Its serving endpoints.
    pub endpoints: Endpoints,
}

/// What is kept of an EndpointSlice: `None` without the label naming its Service (no
/// Service reads it).
pub fn slice_summary(slice: &EndpointSlice) -> Option<SliceSummary> {
    Some(SliceSummary {
        service: slice_service_key(slice)?,
        endpoints: endpoints(slice),
    })
}

impl LbService {
    /// Whether the speaker serves it as a LoadBalancer ([`is_handled`]).
    pub fn is_handled(&self, lb_class: &str) -> bool {
        self.lb && self.class.as_deref().is_none_or(|c| c == lb_class)
    }

    /// The LoadBalancer IPs its status shows (of any class), which no externalIP may take.
    pub fn lb_ips(&self) -> &[IpAddr] {
        if self.lb { &self.ips } else { &[] }
    }

    /// The core's Service, joined with the endpoints of its EndpointSlices; `None` when
    /// there is nothing to announce. [`service`] of the object it was kept from, with the
    /// labels in `keys`.
    pub fn to_core<'a>(
        &self,
        lb_class: &str,
        keys: &LabelKeys,
        slices: impl IntoIterator<Item = &'a Endpoints>,
        accepted: &[IpAddr],
    ) -> Option<core::Service> {
        let mut ips = if self.is_handled(lb_class) {
            self.ips.clone()
        } else {
            Vec::new()
        };
        add_accepted(&mut ips, accepted);
        if ips.is_empty() {
            return None;
        }
        let mut serving_nodes = BTreeSet::new();
        let mut has_serving_endpoints = false;
        for e in slices {
            has_serving_endpoints |= e.serving;
            serving_nodes.extend(e.nodes().map(str::to_owned));
        }
        Some(core::Service {
            key: self.key.clone(),
            labels: self.labels.only(&keys.services),
            ips,
            local: self.local,
            serving_nodes,
            has_serving_endpoints,
            ignore_health_check: self.ignore_health_check,
        })
    }
}

/// Why a Lease's [`PUBKEY_ANNOTATION`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPubkey {
    /// Not standard, padded base64.
    #[error("not base64")]
    NotBase64,
    /// Decodes to something else than 32 bytes.
    #[error("{len} bytes, not 32")]
    Length {
        /// Decoded length.
        len: usize,
    },
    /// 32 bytes that are no Ed25519 public key, or a weak (small-order) one no signature
    /// could be verified with.
    #[error("not a usable Ed25519 public key")]
    Invalid,
}

/// The value of [`PUBKEY_ANNOTATION`] for `key`.
pub fn encode_pubkey(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// Parses a [`PUBKEY_ANNOTATION`] value (strict: no whitespace, padding required).
pub fn decode_pubkey(value: &str) -> Result<VerifyingKey, BadPubkey> {
    let raw = BASE64.decode(value).map_err(|_| BadPubkey::NotBase64)?;
    let bytes: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| BadPubkey::Length { len: raw.len() })?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| BadPubkey::Invalid)?;
    if key.is_weak() {
        return Err(BadPubkey::Invalid);
    }
    Ok(key)
}

/// The node a speaker Lease belongs to, and the heartbeat address, incarnation and public
/// key it publishes. A Lease whose key annotation is present but malformed is no usable
/// peer (logged): guessing would either accept forgeries for that node (no key) or turn
/// its heartbeats away (some other key).
pub fn peer(lease: &Lease) -> Option<(String, PeerAddr)> {
    let node = name(lease).strip_prefix(LEASE_PREFIX)?.to_owned();
    let annotations = lease.metadata.annotations.as_ref()?;
    let addr: SocketAddr = annotations.get(HEARTBEAT_ADDR_ANNOTATION)?.parse().ok()?;
    let incarnation = annotations
        .get(INCARNATION_ANNOTATION)
        .and_then(|v| v.parse().ok());
    let pubkey = match annotations.get(PUBKEY_ANNOTATION).map(|v| decode_pubkey(v)) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(error)) => {
            tracing::warn!(lease = %name(lease), %error,
                "speaker Lease publishes a malformed heartbeat key: not a usable peer");
            return None;
        }
    };
    // Freshness is judged by the glue, on its own clock, from when it saw renewals.
    let fresh = true;
    Some((
        node,
        PeerAddr {
            addr,
            incarnation,
            fresh,
            pubkey,
        },
    ))
}

/// The value of [`MACS_ANNOTATION`] for `macs`.
pub fn encode_macs(macs: &BTreeSet<MacAddr>) -> String {
    macs.iter()
        .map(MacAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a [`MACS_ANNOTATION`] value (`None` when any entry is not a MAC).
pub fn decode_macs(value: &str) -> Option<BTreeSet<MacAddr>> {
    value
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| m.trim().parse().ok())
        .collect()
}

/// Every FerroLB node's MACs: `own` and what each other speaker Lease publishes. Complete
/// when every other speaker Lease publishes a readable list (a speaker of a version before
/// conflict detection publishes none: then no claim can be judged foreign).
pub fn fleet<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    me: &str,
    own: &BTreeSet<MacAddr>,
) -> Fleet {
    let mut fleet = Fleet {
        macs: own.clone(),
        complete: true,
    };
    for l in leases {
        let lease_name = name(l);
        let Some(node) = lease_name.strip_prefix(LEASE_PREFIX) else {
            continue;
        };
        if node == me {
            continue;
        }
        let published = l
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MACS_ANNOTATION))
            .and_then(|v| decode_macs(v));
        match published {
            Some(macs) => fleet.macs.extend(macs),
            None => fleet.complete = false,
        }
    }
    fleet
}

/// The value of [`UNHEALTHY_SERVICES_ANNOTATION`] for `keys` (`None` when there are none:
/// the annotation is left out).
pub fn encode_unhealthy(keys: &BTreeSet<String>) -> Option<String> {
    (!keys.is_empty()).then(|| keys.iter().cloned().collect::<Vec<_>>().join(","))
}

/// The Services a speaker Lease publishes unhealthy on its node ([`UNHEALTHY_SERVICES_ANNOTATION`]);
/// `None` for a Lease that is no speaker's, or that publishes none.
pub fn unhealthy(lease: &Lease) -> Option<(String, BTreeSet<String>)> {
    let node = name(lease).strip_prefix(LEASE_PREFIX)?.to_owned();
    let value = lease
        .metadata
        .annotations
        .as_ref()?
        .get(UNHEALTHY_SERVICES_ANNOTATION)?;
    let keys: BTreeSet<String> = value
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    (!keys.is_empty()).then_some((node, keys))
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

    /// `spec.externalIPs` are settable by anyone who can create a Service (CVE-2020-8554):
    /// they are kept, but announced only once accepted (by the rule of
    /// `ferrolb_crds::external_ips`, applied in cache.rs), never just because they are set.
    #[test]
    fn external_ips_are_announced_only_when_accepted() {
        let class = ferrolb_crds::DEFAULT_LB_CLASS;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut with_status = lb_service(&["203.0.113.5"], false);
        with_status.spec.as_mut().unwrap().external_ips =
            Some(vec!["203.0.113.99".into(), "198.51.100.7".into()]);
        let core = service(&with_status, class, [], &[]).unwrap();
        assert_eq!(core.ips, [ip("203.0.113.5")]);
        let kept = super::lb_service(&with_status).unwrap();
        assert_eq!(kept.external_ips, [ip("198.51.100.7"), ip("203.0.113.99")]);
        assert_eq!(
            kept.to_core(class, &LabelKeys::default(), [], &[]),
            Some(core)
        );
        // Accepted: after the status IPs, each once.
        let core = service(
            &with_status,
            class,
            [],
            &[ip("198.51.100.7"), ip("203.0.113.5")],
        );
        assert_eq!(core.unwrap().ips, [ip("203.0.113.5"), ip("198.51.100.7")]);

        // A ClusterIP Service: kept for its externalIPs, announced only when accepted, and
        // a stale status ingress of it is no LoadBalancer IP.
        let mut cluster_ip = lb_service(&["203.0.113.6"], false);
        let spec = cluster_ip.spec.as_mut().unwrap();
        spec.type_ = Some("ClusterIP".into());
        spec.external_ips = Some(vec!["203.0.113.99".into()]);
        let kept = super::lb_service(&cluster_ip).expect("kept for its externalIPs");
        assert!(kept.lb_ips().is_empty());
        assert_eq!(service(&cluster_ip, class, [], &[]), None);
        assert_eq!(kept.to_core(class, &LabelKeys::default(), [], &[]), None);
        let accepted = [ip("203.0.113.99")];
        let core = service(&cluster_ip, class, [], &accepted).unwrap();
        assert_eq!(core.ips, accepted);
        assert_eq!(
            kept.to_core(class, &LabelKeys::default(), [], &accepted),
            Some(core)
        );
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
            &[],
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
            &[],
        )
        .unwrap();
        assert!(!s.has_serving_endpoints);
    }

    #[test]
    fn the_health_check_opt_out_and_port_are_kept() {
        let class = "ferrolb.io/ferrolb";
        for (value, off) in [
            (None, false),
            (Some("false"), true),
            (Some(" False "), true),
            (Some("true"), false),
            (Some("no"), false),
        ] {
            let mut s = lb_service(&["203.0.113.1"], true);
            s.metadata.annotations = value
                .map(|v| BTreeMap::from([(HEALTH_CHECK_ANNOTATION.to_string(), v.to_string())]));
            s.spec.as_mut().unwrap().health_check_node_port = Some(30_123);
            let kept = super::lb_service(&s).unwrap();
            assert_eq!(kept.ignore_health_check, off, "{value:?}");
            assert_eq!(kept.health_check_node_port, Some(30_123));
            let core = service(&s, class, [], &[]).unwrap();
            assert_eq!(core.ignore_health_check, off, "{value:?}");
            assert_eq!(
                kept.to_core(class, &LabelKeys::default(), [], &[]),
                Some(core)
            );
        }
        let mut s = lb_service(&["203.0.113.1"], true);
        for bad in [0, 70_000, -1] {
            s.spec.as_mut().unwrap().health_check_node_port = Some(bad);
            assert_eq!(
                super::lb_service(&s).unwrap().health_check_node_port,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn unhealthy_services_are_read_from_speaker_leases_only() {
        let mk = |name: &str, value: Option<&str>| {
            let mut l = Lease::default();
            l.metadata.name = Some(name.into());
            l.metadata.annotations = value.map(|v| {
                BTreeMap::from([(UNHEALTHY_SERVICES_ANNOTATION.to_string(), v.to_string())])
            });
            l
        };
        let keys: BTreeSet<String> = ["a/x".to_string(), "b/y".to_string()].into();
        assert_eq!(encode_unhealthy(&keys).as_deref(), Some("a/x,b/y"));
        assert_eq!(encode_unhealthy(&BTreeSet::new()), None);
        assert_eq!(
            unhealthy(&mk("ferrolb-speaker-n1", Some("b/y, a/x,"))),
            Some(("n1".into(), keys))
        );
        assert_eq!(unhealthy(&mk("ferrolb-speaker-n1", Some(""))), None);
        assert_eq!(unhealthy(&mk("ferrolb-speaker-n1", None)), None);
        assert_eq!(unhealthy(&mk("ferrolb-controller", Some("a/x"))), None);
    }

    #[test]
    fn services_without_ips_or_of_another_class_are_skipped() {
        assert!(service(&lb_service(&[], false), "ferrolb.io/ferrolb", [], &[]).is_none());
        let mut other = lb_service(&["203.0.113.1"], false);
        other.spec.as_mut().unwrap().load_balancer_class = Some("x/y".into());
        assert!(service(&other, "ferrolb.io/ferrolb", [], &[]).is_none());
    }

    /// The kept forms against the objects, on these fixtures (cache.rs checks whole Worlds
    /// built from random objects).
    #[test]
    fn kept_forms_give_what_the_objects_give() {
        let slices = [
            slice(&[
                ("n3", None, None),
                ("n1", Some(true), None),
                ("n1", Some(false), Some(true)),
                ("n2", Some(false), None),
            ]),
            slice(&[("n4", Some(false), Some(false))]),
        ];
        let kept: Vec<SliceSummary> = slices.iter().filter_map(slice_summary).collect();
        assert_eq!(kept[0].service, "ns/web");
        assert_eq!(kept[0].endpoints.nodes().collect::<Vec<_>>(), ["n1", "n3"]);
        assert!(!kept[1].endpoints.serving && kept[1].endpoints.nodes().next().is_none());
        let eps = || kept.iter().map(|k| &k.endpoints);
        let class = "ferrolb.io/ferrolb";
        let mut other = lb_service(&["203.0.113.1"], false);
        other.spec.as_mut().unwrap().load_balancer_class = Some("x/y".into());
        let mut ours = lb_service(&["203.0.113.1", "bogus", "2001:db8::1"], true);
        ours.spec.as_mut().unwrap().load_balancer_class = Some(class.into());
        ours.metadata.labels = Some(BTreeMap::from([("tier".into(), "web".into())]));
        let keys = LabelKeys {
            services: BTreeSet::from(["tier".to_string()]),
            ..Default::default()
        };
        for s in [
            lb_service(&["203.0.113.1"], true),
            lb_service(&["2001:db8::1", "203.0.113.1"], false),
            lb_service(&[], false),
            other,
            ours,
        ] {
            let k = super::lb_service(&s).expect("a LoadBalancer is kept");
            assert_eq!(
                k.to_core(class, &keys, eps(), &[]),
                service(&s, class, &slices, &[])
            );
            assert_eq!(
                k.to_core(class, &keys, [], &[]),
                service(&s, class, [], &[])
            );
        }
        let mut cluster_ip = lb_service(&["203.0.113.1"], false);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(super::lb_service(&cluster_ip), None, "nothing kept");
        let mut unlabelled = slice(&[("n1", None, None)]);
        unlabelled.metadata.labels = None;
        assert_eq!(slice_summary(&unlabelled), None, "nothing kept");
    }

    #[test]
    fn labels_are_kept_whole_and_given_to_the_core_by_key() {
        let all = BTreeMap::from([
            ("a".to_string(), String::new()),
            ("kubernetes.io/hostname".to_string(), "n1".to_string()),
            ("nul".to_string(), "x\0y".to_string()),
            (core::EXCLUDE_LB_LABEL.to_string(), String::new()),
        ]);
        let kept = Labels::new(Some(&all));
        let back: Vec<(&str, &str)> = kept.iter().collect();
        assert_eq!(
            back,
            [
                ("a", ""),
                ("kubernetes.io/hostname", "n1"),
                (core::EXCLUDE_LB_LABEL, ""),
                ("nul", "x\u{fffd}y"),
            ]
        );
        assert_eq!(Labels::new(None).iter().count(), 0);
        let keys = BTreeSet::from(["a".to_string(), "zone".to_string()]);
        assert_eq!(
            kept.only(&keys),
            BTreeMap::from([("a".into(), String::new())])
        );

        let mut n = K8sNode::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(all.clone());
        let want = node(&n);
        let got = kept_node(&n).to_core(&LabelKeys::default());
        assert_eq!(got.name, want.name);
        assert_eq!(got.network_unavailable, want.network_unavailable);
        assert_eq!(
            got.labels,
            BTreeMap::from([(core::EXCLUDE_LB_LABEL.into(), String::new())]),
            "the exclude label is always kept"
        );
    }

    #[test]
    fn an_advertisement_names_the_label_keys_its_selectors_read() {
        let a: L2Advertisement = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": "a"},
            "spec": {
                "nodeSelectors": [{"matchLabels": {"zone": "z1"}},
                                  {"matchExpressions": [{"key": "rack", "operator": "Exists"}]}],
                "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}],
            },
        }))
        .unwrap();
        let k = kept_advertisement(&a);
        assert_eq!(k.parsed, advertisement(&a));
        let keys = LabelKeys::of([&k]);
        assert_eq!(
            keys.nodes,
            BTreeSet::from([core::EXCLUDE_LB_LABEL.into(), "rack".into(), "zone".into()])
        );
        assert_eq!(keys.services, BTreeSet::from(["tier".to_string()]));
        let mut bad = a.clone();
        bad.spec.node_selectors[1]
            .match_expressions
            .as_mut()
            .unwrap()[0]
            .operator = "Maybe".into();
        let bad = kept_advertisement(&bad);
        assert!(bad.parsed.is_err());
        assert_eq!(
            LabelKeys::of([&bad]),
            LabelKeys::default(),
            "an ignored one reads nothing"
        );
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
        assert_eq!(
            p["node2"].pubkey, None,
            "a previous-version speaker: no key"
        );
    }

    fn keyed_lease(key: &str) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some("ferrolb-speaker-node5".into());
        l.metadata.annotations = Some(BTreeMap::from([
            (
                HEARTBEAT_ADDR_ANNOTATION.into(),
                "198.51.100.15:7473".into(),
            ),
            (INCARNATION_ANNOTATION.into(), "9".into()),
            (PUBKEY_ANNOTATION.into(), key.into()),
        ]));
        l
    }

    #[test]
    fn the_fleet_is_every_speakers_published_macs_and_complete_only_if_all_publish() {
        let mac = |b: u8| MacAddr::new(2, 0, 0, 0, 0, b);
        let own = BTreeSet::from([mac(1)]);
        let with_macs = |node: &str, v: &str| {
            let mut l = keyed_lease("k");
            l.metadata.name = Some(format!("{LEASE_PREFIX}{node}"));
            l.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(MACS_ANNOTATION.into(), v.into());
            l
        };
        let macs = BTreeSet::from([mac(2), mac(3)]);
        assert_eq!(encode_macs(&macs), "02:00:00:00:00:02,02:00:00:00:00:03");
        assert_eq!(decode_macs(&encode_macs(&macs)), Some(macs));
        assert_eq!(decode_macs(""), Some(BTreeSet::new()));
        let leases = [
            with_macs("node2", "02:00:00:00:00:02,02:00:00:00:00:03"),
            // Our own Lease is not read: `own` is what we have now.
            with_macs("node1", "02:00:00:00:00:09"),
        ];
        let f = fleet(&leases, "node1", &own);
        assert!(f.complete);
        assert_eq!(f.macs, BTreeSet::from([mac(1), mac(2), mac(3)]));
        // A previous-version speaker publishes none; a garbled list counts as none.
        for other in [
            keyed_lease("k"),
            with_macs("node3", "02:00:00:00:00:04,banana"),
        ] {
            let leases = [leases[0].clone(), other];
            let f = fleet(&leases, "node1", &own);
            assert!(!f.complete);
            assert!(f.macs.contains(&mac(2)));
        }
    }

    #[test]
    fn the_public_key_annotation_is_parsed() {
        let key = crate::liveness::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let value = encode_pubkey(&key);
        assert_eq!(value.len(), 44);
        assert_eq!(decode_pubkey(&value), Ok(key));
        let (node, p) = peer(&keyed_lease(&value)).unwrap();
        assert_eq!(node, "node5");
        assert_eq!(p.pubkey, Some(key));
        assert_eq!(p.incarnation, Some(9));
    }

    #[test]
    fn a_lease_with_a_malformed_key_is_not_a_usable_peer_and_is_logged() {
        let key = crate::liveness::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let good = encode_pubkey(&key);
        // The identity point: a valid encoding, but small order (no signature verifies).
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let cases = [
            ("not base64", "!!!!".to_string(), BadPubkey::NotBase64),
            (
                "unpadded",
                good.trim_end_matches('=').to_string(),
                BadPubkey::NotBase64,
            ),
            ("whitespace", format!(" {good}"), BadPubkey::NotBase64),
            ("hex", hex(key.as_bytes()), BadPubkey::Length { len: 48 }),
            (
                "short",
                BASE64.encode([7u8; 31]),
                BadPubkey::Length { len: 31 },
            ),
            ("weak", BASE64.encode(weak), BadPubkey::Invalid),
        ];
        for (what, value, want) in cases {
            assert_eq!(decode_pubkey(&value), Err(want), "{what}");
            let logs = captured(|| assert_eq!(peer(&keyed_lease(&value)), None, "{what}"));
            assert!(
                logs.contains("malformed heartbeat key") && logs.contains("ferrolb-speaker-node5"),
                "{what}: {logs}"
            );
        }
        // Not a peer at all, so not among the peers either.
        assert!(peers([&keyed_lease("!!!!")], "node1").is_empty());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What `f` logs (warn and above), as text.
    fn captured(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
