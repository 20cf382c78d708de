//! FerroLB's API (`ferrolb.io/v1alpha1`) and the pure helpers every component shares.
//!
//! ```text
//!   IPAddressPool ──┐                      ┌── controller: allocates from pools
//!                   ├── ferrolb-crds ──────┤
//!   L2Advertisement ┘  (types, parsing,    └── speaker: announces per advertisement
//!                       selectors, names)
//! ```
//!
//! The CRD YAML under `deploy/crds/` is generated from these types by the `crdgen`
//! binary; CI regenerates it and fails on any difference.

pub mod addresses;
pub mod condition;
pub mod external_ips;
pub mod schema;
pub mod selector;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of every FerroLB resource.
pub const GROUP: &str = "ferrolb.io";

/// The default `spec.loadBalancerClass` FerroLB serves (besides Services with no class).
pub const DEFAULT_LB_CLASS: &str = "ferrolb.io/ferrolb";

/// Service annotations FerroLB reads. Each has MetalLB aliases so Services migrate unedited.
pub mod annotations {
    /// Comma-separated IPs to assign, at most one per family.
    pub const LOAD_BALANCER_IPS: &str = "ferrolb.io/loadBalancerIPs";
    /// Name of the pool to allocate from.
    pub const ADDRESS_POOL: &str = "ferrolb.io/address-pool";
    /// Sharing key: Services with the same key may share an IP.
    pub const ALLOW_SHARED_IP: &str = "ferrolb.io/allow-shared-ip";

    /// Prefixes honoured as aliases of `ferrolb.io/`, oldest last.
    pub const ALIAS_PREFIXES: [&str; 2] = ["metallb.io/", "metallb.universe.tf/"];
}

/// The speakers' Leases (`<ns>/ferrolb-speaker-<node>`), which the controller reads too.
pub mod speaker_lease {
    /// Lease name prefix; the rest is the node name.
    pub const PREFIX: &str = "ferrolb-speaker-";
    /// Annotation: the heartbeat address peers send to.
    pub const HEARTBEAT_ADDR_ANNOTATION: &str = "ferrolb.io/heartbeat-addr";
    /// Annotation: the speaker's incarnation (random per start).
    pub const INCARNATION_ANNOTATION: &str = "ferrolb.io/heartbeat-incarnation";
    /// Label selector matching every speaker Lease.
    pub const SELECTOR: &str = "app.kubernetes.io/component=speaker";
}

/// Condition types FerroLB writes.
pub mod conditions {
    /// On a Service: whether FerroLB allocated its external IPs.
    pub const IP_ALLOCATED: &str = "ferrolb.io/IPAllocated";
    /// On a Service: which node announces its IPs, or why none does.
    pub const ANNOUNCED: &str = "ferrolb.io/Announced";
    /// On a Service with `spec.externalIPs` inside FerroLB pools: which are announced, and
    /// why the others are not.
    pub const EXTERNAL_IPS: &str = "ferrolb.io/ExternalIPs";
    /// On a pool or advertisement: the object is valid and in use.
    pub const READY: &str = "Ready";
    /// On a pool or advertisement: the spec cannot be used; the message says why.
    pub const INVALID: &str = "Invalid";
    /// On a pool: its addresses overlap an older pool; it allocates nothing new.
    pub const CONFLICT: &str = "Conflict";
    /// Reason of [`ANNOUNCED`] (and of an IP in a speaker's `NodeAnnouncement`): another
    /// host, a MAC of no FerroLB node, uses the IP, so the elected node does not announce it.
    pub const ADDRESS_CONFLICT: &str = "AddressConflict";
}

fn default_true() -> bool {
    true
}

/// A set of addresses FerroLB may hand out to LoadBalancer Services.
// Each `printcolumn(..)` repeats keys such as `type_`; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "IPAddressPool",
    status = "IPAddressPoolStatus",
    category = "ferrolb",
    shortname = "ippool",
    doc = "A set of addresses FerroLB allocates to LoadBalancer Services.",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Auto Assign",
        type_ = "boolean",
        json_path = ".spec.autoAssign"
    ),
    printcolumn(
        name = "Assigned IPv4",
        type_ = "integer",
        json_path = ".status.assignedIPv4"
    ),
    printcolumn(
        name = "Assigned IPv6",
        type_ = "integer",
        json_path = ".status.assignedIPv6"
    ),
    printcolumn(
        name = "Available IPv4",
        type_ = "integer",
        json_path = ".status.availableIPv4"
    ),
    printcolumn(
        name = "Available IPv6",
        type_ = "integer",
        json_path = ".status.availableIPv6"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// CIDRs (`203.0.113.0/28`), ranges (`203.0.113.10-203.0.113.20`) or single IPs; IPv4
    /// and IPv6 may mix.
    #[schemars(schema_with = "schema::pool_addresses")]
    pub addresses: Vec<String>,
    /// When false, only Services that name this pool or request one of its IPs get addresses.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in .0 or .255.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Restricts the pool to some Services and orders it among pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
    /// Reserves the pool for Services' `spec.externalIPs` (opt-in, off when absent): an
    /// externalIP inside it is announced for a Service of a listed namespace, and the pool
    /// no longer hands addresses to LoadBalancer Services (`autoAssign` and
    /// `serviceAllocation` are then ignored; Services already holding one keep it).
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ips: Option<PoolExternalIPs>,
}

/// Who may have their `spec.externalIPs` announced from a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolExternalIPs {
    /// The namespaces whose Services may use the pool's addresses as externalIPs, by name.
    /// Names only, no label selectors: whoever may label a namespace must not be able to
    /// grant it addresses (CVE-2020-8554).
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
}

/// Which Services may take addresses from a pool, and in what order pools are tried.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; pools without a priority come last, then by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,
    /// Only Services in these namespaces (empty: any namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Only Services in namespaces matching one of these selectors (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::label_selectors")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Only Services whose labels match one of these selectors (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::label_selectors")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller observed about a pool: usage counts and health.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses of this pool held by Services.
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses of this pool held by Services.
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses still free (saturates at the int64 maximum).
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses still free (saturates at the int64 maximum).
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: i64,
    /// The generation of the spec these figures describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The addresses of the last spec that parsed. While the spec is invalid, Services keep
    /// the IPs they hold from these (and speakers keep announcing them), also across
    /// controller restarts and leader changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(max = 100)))]
    pub last_valid_addresses: Vec<String>,
    /// `Ready`, `Invalid` (with the parse error) and `Conflict` (overlap with an older pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Which pools are announced in layer 2 mode, from which nodes and interfaces.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "L2Advertisement",
    status = "L2AdvertisementStatus",
    category = "ferrolb",
    shortname = "l2adv",
    doc = "Announces the IPs of some pools on the LAN from some nodes, by ARP and NDP.",
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Pools by name. With no names and no selectors, every pool is announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub ip_address_pools: Vec<String>,
    /// Pools by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::label_selectors")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Nodes that may announce (empty: all nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::label_selectors")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces to announce on (empty: every eligible interface).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 15)))]
    pub interfaces: Vec<String>,
    /// Services announced through this advertisement (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::label_selectors")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller observed about an advertisement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementStatus {
    /// `Ready`, or `Invalid` naming unknown pools and invalid selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What one node's speaker announces, and how it sees its peers. Each speaker writes only
/// its own (named after its node; docs/security.md); the controller folds them into each
/// Service's `ferrolb.io/Announced` condition, so speakers need no write access to Services.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "NodeAnnouncement",
    category = "ferrolb",
    shortname = "nodeann",
    doc = "What one node's speaker announces, written by that speaker alone.",
    printcolumn(name = "Serving", type_ = "boolean", json_path = ".spec.serving"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeAnnouncementSpec {
    /// The writing speaker's heartbeat incarnation (as in its Lease): a report of an older
    /// start of the same node is stale.
    #[schemars(length(max = 20))]
    pub incarnation: String,
    /// Whether this speaker takes part in elections (heard by its peers, able to answer).
    pub serving: bool,
    /// Why it does not serve (`NotReady`, `HearNobody`, `NobodyHearsUs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reason: Option<String>,
    /// Known speakers (fresh Leases) this speaker does not count as serving, with the
    /// incarnation it last knew. Normally empty; after a crash it names the dead node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000))]
    pub down: Vec<PeerIncarnation>,
    /// Services this node announces (at least one IP), each with every IP's decision, and,
    /// from the lowest-named serving speaker only, Services nobody announces and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20000))]
    pub services: Vec<ServiceReport>,
}

/// A peer and the incarnation it was known by.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct PeerIncarnation {
    /// Node name.
    #[schemars(length(max = 253))]
    pub node: String,
    /// Its heartbeat incarnation.
    #[schemars(length(max = 20))]
    pub incarnation: String,
}

/// One Service as a speaker sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    /// `namespace/name`.
    #[schemars(length(max = 317))]
    pub service: String,
    /// Each of its IPs.
    #[schemars(length(max = 2))]
    pub ips: Vec<IpReport>,
}

/// One IP of a Service: announced here (on `interfaces`), or not and why.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpReport {
    /// The IP.
    #[schemars(length(max = 45))]
    pub ip: String,
    /// The node announcing it, when one is elected (this node, in its own entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node: Option<String>,
    /// Interfaces it is announced on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 15)))]
    pub interfaces: Vec<String>,
    /// When not announced: the CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reason: Option<String>,
    /// When not announced: why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Every CRD of the API with the file name `crdgen` writes it under.
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    vec![
        ("ferrolb.io_ipaddresspools.yaml", IPAddressPool::crd()),
        ("ferrolb.io_l2advertisements.yaml", L2Advertisement::crd()),
        ("ferrolb.io_nodeannouncements.yaml", NodeAnnouncement::crd()),
    ]
}

/// Renders one CRD as the YAML file `crdgen` writes (with a do-not-edit header).
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let body = serde_saphyr::to_string(crd).expect("a CRD always serializes");
    format!("# Generated by `cargo run -p ferrolb-crds --bin crdgen`. Do not edit.\n---\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let spec: IPAddressPoolSpec =
            serde_json::from_value(serde_json::json!({"addresses": ["203.0.113.0/28"]})).unwrap();
        assert!(spec.auto_assign, "autoAssign defaults to true");
        assert!(!spec.avoid_buggy_ips);
        assert!(spec.service_allocation.is_none());
    }

    #[test]
    fn field_names_are_the_documented_ones() {
        let status = IPAddressPoolStatus {
            assigned_ipv4: 1,
            assigned_ipv6: 2,
            available_ipv4: 3,
            available_ipv6: 4,
            ..Default::default()
        };
        let v = serde_json::to_value(&status).unwrap();
        for k in [
            "assignedIPv4",
            "assignedIPv6",
            "availableIPv4",
            "availableIPv6",
        ] {
            assert!(v.get(k).is_some(), "status field {k} missing: {v}");
        }
        let spec = IPAddressPoolSpec {
            addresses: vec!["203.0.113.1".into()],
            auto_assign: true,
            avoid_buggy_ips: true,
            service_allocation: None,
            external_ips: None,
        };
        assert_eq!(serde_json::to_value(&spec).unwrap()["avoidBuggyIPs"], true);
    }

    /// Golden facts about the generated schema: scope, status subresource, print columns,
    /// validation rules. (The full YAML is checked against deploy/crds by CI's drift check.)
    #[test]
    fn generated_crds_are_cluster_scoped_with_status_and_rules() {
        for (file, crd) in crds() {
            assert_eq!(crd.spec.scope, "Cluster", "{file}");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1alpha1");
            // A NodeAnnouncement is a report its speaker writes whole: no status.
            let want_status = crd.spec.names.kind != "NodeAnnouncement";
            assert_eq!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                want_status,
                "{file}"
            );
        }
        let pool = IPAddressPool::crd();
        let cols: Vec<_> = pool.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Addresses",
                "Auto Assign",
                "Assigned IPv4",
                "Assigned IPv6",
                "Available IPv4",
                "Available IPv6",
                "Ready",
                "Age"
            ]
        );
        let schema = serde_json::to_value(&pool.spec.versions[0].schema).unwrap();
        let addresses = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["addresses"];
        assert_eq!(addresses["minItems"], 1, "{addresses}");
        assert_eq!(
            addresses["items"]["maxLength"], 100,
            "CEL cost needs bounded strings"
        );
        assert_eq!(addresses["maxItems"], 1024, "CEL cost needs bounded lists");
        let rules = &addresses["items"]["x-kubernetes-validations"];
        assert!(
            rules[0]["rule"]
                .as_str()
                .unwrap()
                .starts_with("isCIDR(self)"),
            "rules run per item, not on the whole list: {addresses}"
        );
        assert!(rules[1]["rule"].as_str().unwrap().contains("masked()"));
        assert_eq!(pool.spec.names.plural, "ipaddresspools");
    }
}
