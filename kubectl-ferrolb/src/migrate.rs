//! `kubectl ferrolb migrate`: MetalLB's `IPAddressPool` and `L2Advertisement`
//! (`metallb.io/v1beta1`) to FerroLB's, keeping MetalLB's meaning. Pure.
//!
//! ```text
//!   MetalLB objects (cluster or YAML) ──convert──▶ FerroLB pools + advertisements
//!                                          └──────▶ notes: changed (host bits masked,
//!                                                   priority 0 dropped), warnings (fields
//!                                                   FerroLB lacks, other kinds)
//! ```
//!
//! What MetalLB means and FerroLB spells differently:
//! - a CIDR with host bits (`203.0.113.250/29`) is the masked network to MetalLB; FerroLB's
//!   CRD rejects host bits, so the masked CIDR is written (and reported);
//! - `serviceAllocation.priority: 0` is MetalLB's "unset" (its Go zero value), while FerroLB
//!   reads 0 as the highest priority (docs/configuration.md), so it is dropped and reported.
//!
//! Objects already in `ferrolb.io/v1alpha1` pass through unchanged, so an edited result
//! can be fed back to `--check`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::{
    IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec, ServiceAllocation,
};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// MetalLB's API group.
pub const METALLB_GROUP: &str = "metallb.io";

/// How serious a note is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Level {
    /// The value was rewritten to keep MetalLB's meaning.
    Changed,
    /// Something MetalLB has that FerroLB does not, or will not accept as is.
    Warning,
}

/// One thing the conversion wants the operator to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    /// `Changed` or `Warning`.
    pub level: Level,
    /// `Kind namespace/name` of the source object.
    pub object: String,
    /// What happened, naming the field.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Changed => "changed",
            Level::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.object, self.message)
    }
}

/// The converted objects and what the operator should know about them.
#[derive(Clone, Debug, Default)]
pub struct Conversion {
    /// FerroLB pools, by name.
    pub pools: Vec<IPAddressPool>,
    /// FerroLB advertisements, by name.
    pub advertisements: Vec<L2Advertisement>,
    /// Changes and warnings, in input order.
    pub notes: Vec<Note>,
}

impl Conversion {
    /// The objects as a multi-document YAML stream, ready for `kubectl apply -f`.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        let mut out = String::from("# Converted from MetalLB by `kubectl ferrolb migrate`.\n");
        for p in &self.pools {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(p)?);
        }
        for a in &self.advertisements {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(a)?);
        }
        Ok(out)
    }

    /// Whether any note is a warning.
    pub fn has_warnings(&self) -> bool {
        self.notes.iter().any(|n| n.level == Level::Warning)
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetallbPoolSpec {
    #[serde(default)]
    addresses: Vec<String>,
    auto_assign: Option<bool>,
    #[serde(rename = "avoidBuggyIPs")]
    avoid_buggy_ips: Option<bool>,
    service_allocation: Option<MetallbServiceAllocation>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetallbServiceAllocation {
    priority: Option<i64>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    namespace_selectors: Vec<LabelSelector>,
    #[serde(default)]
    service_selectors: Vec<LabelSelector>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetallbL2Spec {
    #[serde(default)]
    ip_address_pools: Vec<String>,
    #[serde(default)]
    ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default)]
    node_selectors: Vec<LabelSelector>,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Parses a YAML stream (several documents, `kind: List` expanded) into objects.
pub fn parse_yaml(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(expand(docs))
}

/// `kind: List` (and `…List`) documents replaced by their items; empty documents dropped.
pub fn expand(docs: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for d in docs {
        if d.is_null() {
            continue;
        }
        let is_list = d["kind"].as_str().is_some_and(|k| k.ends_with("List"));
        match d.get("items").and_then(Value::as_array) {
            Some(items) if is_list => out.extend(expand(items.clone())),
            _ => out.push(d),
        }
    }
    out
}

fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn group_of(obj: &Value) -> &str {
    obj["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(g, _)| g)
}

/// Converts MetalLB objects (and passes FerroLB ones through).
pub fn convert(objects: &[Value]) -> Conversion {
    let mut c = Conversion::default();
    let mut namespaces = BTreeSet::new();
    for obj in objects {
        let what = describe(obj);
        let note = |c: &mut Conversion, level, message: String| {
            c.notes.push(Note {
                level,
                object: what.clone(),
                message,
            })
        };
        let kind = obj["kind"].as_str().unwrap_or_default();
        match (group_of(obj), kind) {
            (METALLB_GROUP, "IPAddressPool") => {
                if let Some(ns) = obj["metadata"]["namespace"].as_str() {
                    namespaces.insert(ns.to_owned());
                }
                match convert_pool(obj, &mut |level, m| note(&mut c, level, m)) {
                    Some(p) => add_unique(&mut c.pools, p, &what, &mut c.notes),
                    None => note(&mut c, Level::Warning, "not converted".into()),
                }
            }
            (METALLB_GROUP, "L2Advertisement") => {
                if let Some(ns) = obj["metadata"]["namespace"].as_str() {
                    namespaces.insert(ns.to_owned());
                }
                match convert_l2(obj, &mut |level, m| note(&mut c, level, m)) {
                    Some(a) => add_unique(&mut c.advertisements, a, &what, &mut c.notes),
                    None => note(&mut c, Level::Warning, "not converted".into()),
                }
            }
            (METALLB_GROUP, "BGPAdvertisement" | "BGPPeer" | "BFDProfile" | "Community") => note(
                &mut c,
                Level::Warning,
                "not converted: FerroLB does layer 2 only; keep MetalLB for BGP".into(),
            ),
            (ferrolb_crds::GROUP, "IPAddressPool") => {
                match serde_json::from_value::<IPAddressPool>(obj.clone()) {
                    Ok(p) => add_unique(&mut c.pools, p, &what, &mut c.notes),
                    Err(e) => note(&mut c, Level::Warning, format!("not readable: {e}")),
                }
            }
            (ferrolb_crds::GROUP, "L2Advertisement") => {
                match serde_json::from_value::<L2Advertisement>(obj.clone()) {
                    Ok(a) => add_unique(&mut c.advertisements, a, &what, &mut c.notes),
                    Err(e) => note(&mut c, Level::Warning, format!("not readable: {e}")),
                }
            }
            _ => note(
                &mut c,
                Level::Warning,
                format!(
                    "ignored: not a MetalLB IPAddressPool or L2Advertisement ({})",
                    obj["apiVersion"].as_str().unwrap_or("no apiVersion")
                ),
            ),
        }
    }
    if namespaces.len() > 1 {
        c.notes.push(Note {
            level: Level::Warning,
            object: "input".into(),
            message: format!(
                "objects come from several namespaces ({}); MetalLB reads only its own \
                 namespace, FerroLB's objects are cluster-scoped: all were converted",
                namespaces.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    check_references(&mut c);
    c.pools
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    c.advertisements
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    c
}

/// Adds an object unless one of that name exists (FerroLB's objects are cluster-scoped).
fn add_unique<K: kube::Resource>(list: &mut Vec<K>, obj: K, what: &str, notes: &mut Vec<Note>) {
    if list.iter().any(|o| o.meta().name == obj.meta().name) {
        notes.push(Note {
            level: Level::Warning,
            object: what.to_owned(),
            message: "skipped: an object of this name was already converted (FerroLB's are \
                      cluster-scoped, one name for all namespaces)"
                .into(),
        });
    } else {
        list.push(obj);
    }
}

/// Name and labels; everything else in MetalLB's metadata is the cluster's, not the spec's.
fn metadata(obj: &Value) -> Option<ObjectMeta> {
    let name = obj["metadata"]["name"].as_str()?.to_owned();
    let labels: Option<BTreeMap<String, String>> =
        serde_json::from_value(obj["metadata"]["labels"].clone()).ok();
    Some(ObjectMeta {
        name: Some(name),
        labels: labels.filter(|l| !l.is_empty()),
        ..Default::default()
    })
}

fn warn_unknown(
    prefix: &str,
    other: &BTreeMap<String, Value>,
    note: &mut dyn FnMut(Level, String),
) {
    for (k, v) in other {
        note(
            Level::Warning,
            format!("{prefix}{k} ({v}) has no FerroLB equivalent; dropped"),
        );
    }
}

/// One `spec.addresses` entry as FerroLB accepts it: a CIDR's host bits masked, as MetalLB
/// reads it. `Some(new)` when it changed.
pub fn mask_host_bits(entry: &str) -> Option<String> {
    let e = entry.trim();
    if e.contains('-') || !e.contains('/') {
        return None;
    }
    let net: IpNet = e.parse().ok()?;
    let masked = net.trunc();
    (masked != net).then(|| masked.to_string())
}

fn convert_pool(obj: &Value, note: &mut dyn FnMut(Level, String)) -> Option<IPAddressPool> {
    let metadata = metadata(obj)?;
    let spec: MetallbPoolSpec = match serde_json::from_value(obj["spec"].clone()) {
        Ok(s) => s,
        Err(e) => {
            note(Level::Warning, format!("spec not readable: {e}"));
            return None;
        }
    };
    warn_unknown("spec.", &spec.other, note);
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        match mask_host_bits(a) {
            Some(masked) => {
                note(
                    Level::Changed,
                    format!(
                        "spec.addresses[{i}] {a} -> {masked}: MetalLB masks host bits, \
                         FerroLB's CRD rejects them"
                    ),
                );
                addresses.push(masked);
            }
            None => addresses.push(a.trim().to_owned()),
        }
    }
    if addresses.is_empty() {
        note(
            Level::Warning,
            "spec.addresses is empty; FerroLB's CRD requires at least one".into(),
        );
    } else if let Err(e) = PoolAddresses::parse(&addresses) {
        note(
            Level::Warning,
            format!("FerroLB will not accept the addresses: {e}"),
        );
    }
    let service_allocation = spec.service_allocation.and_then(|sa| {
        warn_unknown("spec.serviceAllocation.", &sa.other, note);
        let priority = match sa.priority {
            None => None,
            Some(0) => {
                note(
                    Level::Changed,
                    "spec.serviceAllocation.priority 0 dropped: MetalLB reads 0 as unset, \
                     FerroLB would read it as the highest priority"
                        .into(),
                );
                None
            }
            Some(p) if p < 0 => {
                note(
                    Level::Warning,
                    format!(
                        "spec.serviceAllocation.priority {p} dropped: FerroLB accepts only \
                         priorities >= 0"
                    ),
                );
                None
            }
            Some(p) => match i32::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    note(
                        Level::Warning,
                        format!("spec.serviceAllocation.priority {p} is out of range; dropped"),
                    );
                    None
                }
            },
        };
        let out = ServiceAllocation {
            priority,
            namespaces: sa.namespaces,
            namespace_selectors: sa.namespace_selectors,
            service_selectors: sa.service_selectors,
        };
        (out != ServiceAllocation::default()).then_some(out)
    });
    Some(IPAddressPool {
        metadata,
        spec: IPAddressPoolSpec {
            addresses,
            auto_assign: spec.auto_assign.unwrap_or(true),
            avoid_buggy_ips: spec.avoid_buggy_ips.unwrap_or(false),
            service_allocation,
            external_ips: None,
        },
        status: None,
    })
}

fn convert_l2(obj: &Value, note: &mut dyn FnMut(Level, String)) -> Option<L2Advertisement> {
    let metadata = metadata(obj)?;
    let raw = match &obj["spec"] {
        Value::Null => Value::Object(Default::default()),
        v => v.clone(),
    };
    let spec: MetallbL2Spec = match serde_json::from_value(raw) {
        Ok(s) => s,
        Err(e) => {
            note(Level::Warning, format!("spec not readable: {e}"));
            return None;
        }
    };
    warn_unknown("spec.", &spec.other, note);
    for i in spec.interfaces.iter().filter(|i| i.len() > 15) {
        note(
            Level::Warning,
            format!(
                "spec.interfaces {i:?} is longer than a Linux interface name (15); FerroLB's CRD rejects it"
            ),
        );
    }
    Some(L2Advertisement {
        metadata,
        spec: L2AdvertisementSpec {
            ip_address_pools: spec.ip_address_pools,
            ip_address_pool_selectors: spec.ip_address_pool_selectors,
            node_selectors: spec.node_selectors,
            interfaces: spec.interfaces,
            service_selectors: Vec::new(),
        },
        status: None,
    })
}

/// Advertisements naming pools that are not in the result would announce nothing for them.
fn check_references(c: &mut Conversion) {
    let names: BTreeSet<&str> = c
        .pools
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let mut notes = Vec::new();
    for a in &c.advertisements {
        for p in &a.spec.ip_address_pools {
            if !names.contains(p.as_str()) {
                notes.push(Note {
                    level: Level::Warning,
                    object: format!(
                        "L2Advertisement {}",
                        a.metadata.name.as_deref().unwrap_or("?")
                    ),
                    message: format!("spec.ipAddressPools names {p:?}, which is not converted"),
                });
            }
        }
    }
    c.notes.extend(notes);
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: lan
  namespace: metallb-system
  labels: {announce: l2}
  uid: 1234
  resourceVersion: "99"
spec:
  addresses:
    - 203.0.113.250/29
    - " 203.0.113.10-203.0.113.20 "
    - 2001:db8:5::7/126
    - 203.0.113.99
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 0
    namespaces: [web]
status:
  assignedIPv4: 3
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: gold, namespace: metallb-system}
spec:
  addresses: [203.0.113.128/28]
  autoAssign: false
  serviceAllocation:
    priority: 5
    serviceSelectors: [{matchLabels: {tier: gold}}]
    futureField: 1
  allocateTo: something
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec:
  ipAddressPools: [lan, missing]
  ipAddressPoolSelectors: [{matchLabels: {announce: l2}}]
  nodeSelectors: [{matchLabels: {edge: "true"}}]
  interfaces: [eth0, bond0]
  nodeSelectorsExtra: true
---
apiVersion: metallb.io/v1beta1
kind: BGPPeer
metadata: {name: router, namespace: metallb-system}
spec: {}
"#;

    fn converted() -> Conversion {
        convert(&parse_yaml(INPUT).unwrap())
    }

    #[test]
    fn host_bits_are_masked_as_metallb_reads_them() {
        assert_eq!(
            mask_host_bits("203.0.113.250/29").as_deref(),
            Some("203.0.113.248/29")
        );
        assert_eq!(
            mask_host_bits("2001:db8:5::7/126").as_deref(),
            Some("2001:db8:5::4/126")
        );
        assert_eq!(mask_host_bits("203.0.113.248/29"), None);
        assert_eq!(mask_host_bits("203.0.113.1-203.0.113.9"), None);
        assert_eq!(mask_host_bits("203.0.113.1"), None);
        let c = converted();
        let lan = c
            .pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("lan"))
            .unwrap();
        assert_eq!(
            lan.spec.addresses,
            [
                "203.0.113.248/29",
                "203.0.113.10-203.0.113.20",
                "2001:db8:5::4/126",
                "203.0.113.99"
            ]
        );
        PoolAddresses::parse(&lan.spec.addresses).expect("FerroLB accepts the result");
        let changed: Vec<&Note> = c
            .notes
            .iter()
            .filter(|n| n.level == Level::Changed)
            .collect();
        assert!(
            changed[0]
                .to_string()
                .starts_with("changed: IPAddressPool metallb-system/lan: spec.addresses[0] 203.0.113.250/29 -> 203.0.113.248/29"),
            "{changed:?}"
        );
    }

    #[test]
    fn priority_zero_means_unset_and_other_priorities_stay() {
        let c = converted();
        let lan = &c.pools[1];
        assert_eq!(lan.metadata.name.as_deref(), Some("lan"));
        let sa = lan.spec.service_allocation.as_ref().unwrap();
        assert_eq!(sa.priority, None, "MetalLB's 0 is unset");
        assert_eq!(sa.namespaces, ["web"]);
        assert!(c.notes.iter().any(|n| {
            n.message
                .starts_with("spec.serviceAllocation.priority 0 dropped")
        }));
        let gold = &c.pools[0];
        assert_eq!(
            gold.spec.service_allocation.as_ref().unwrap().priority,
            Some(5)
        );
        assert!(!gold.spec.auto_assign);
        assert!(lan.spec.auto_assign, "autoAssign defaults to true");
        assert!(lan.spec.avoid_buggy_ips);
        // A pool whose only serviceAllocation was priority 0 is a general pool.
        let only_zero = convert(
            &parse_yaml(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\n\
                 spec: {addresses: [203.0.113.0/30], serviceAllocation: {priority: 0}}\n",
            )
            .unwrap(),
        );
        assert_eq!(only_zero.pools[0].spec.service_allocation, None);
    }

    #[test]
    fn fields_ferrolb_lacks_are_reported_not_dropped_silently() {
        let c = converted();
        let warnings: Vec<String> = c
            .notes
            .iter()
            .filter(|n| n.level == Level::Warning)
            .map(ToString::to_string)
            .collect();
        let want = [
            "IPAddressPool metallb-system/gold: spec.allocateTo",
            "IPAddressPool metallb-system/gold: spec.serviceAllocation.futureField",
            "L2Advertisement metallb-system/l2: spec.nodeSelectorsExtra",
            "BGPPeer metallb-system/router: not converted",
            "L2Advertisement l2: spec.ipAddressPools names \"missing\"",
        ];
        for w in want {
            assert!(
                warnings.iter().any(|got| got.contains(w)),
                "{w} missing in {warnings:#?}"
            );
        }
        assert!(
            !warnings
                .iter()
                .any(|w| w.contains("status") || w.contains("uid")),
            "metadata and status are not spec: {warnings:#?}"
        );
    }

    #[test]
    fn advertisements_keep_pools_nodes_and_interfaces() {
        let c = converted();
        let a = &c.advertisements[0];
        assert_eq!(a.spec.ip_address_pools, ["lan", "missing"]);
        assert_eq!(a.spec.ip_address_pool_selectors.len(), 1);
        assert_eq!(a.spec.node_selectors.len(), 1);
        assert_eq!(a.spec.interfaces, ["eth0", "bond0"]);
        assert_eq!(
            a.metadata.namespace, None,
            "FerroLB's objects are cluster-scoped"
        );
    }

    #[test]
    fn yaml_output_reads_back_as_ferrolb_objects() {
        let c = converted();
        let yaml = c.to_yaml().unwrap();
        assert!(!yaml.contains("namespace:"), "{yaml}");
        assert!(!yaml.contains("status"), "{yaml}");
        let back = convert(&parse_yaml(&yaml).unwrap());
        assert_eq!(
            serde_json::to_value(&back.pools).unwrap(),
            serde_json::to_value(&c.pools).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&back.advertisements).unwrap(),
            serde_json::to_value(&c.advertisements).unwrap()
        );
        assert!(back.notes.iter().all(|n| !n.message.contains("dropped")));
    }

    #[test]
    fn lists_and_duplicates() {
        let list = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: metallb.io/v1beta1, kind: IPAddressPool, metadata: {name: a, namespace: team-a}, spec: {addresses: [203.0.113.0/30]}}
- {apiVersion: metallb.io/v1beta1, kind: IPAddressPool, metadata: {name: a, namespace: team-b}, spec: {addresses: [203.0.113.4/30]}}
"#;
        let c = convert(&parse_yaml(list).unwrap());
        assert_eq!(c.pools.len(), 1);
        assert!(c.notes.iter().any(|n| n.message.starts_with("skipped")));
        assert!(
            c.notes
                .iter()
                .any(|n| n.message.contains("several namespaces"))
        );
    }
}
