//! `kubectl ferrolb explain svc/NAME`: why a Service has its IP (or none), and which node
//! announces it and why the others do not. Pure.
//!
//! ```text
//!   Service ──controller core service::parse──▶ rule: requested IP / named pool / automatic
//!           ──controller core Allocator::pool_of──▶ the pool holding each IP
//!   Snapshot ──speaker world.rs──▶ World ──speaker core::desired──▶ winner
//!             (same World, one node at a time) ──desired──▶ why each node is (not) eligible
//!             (winner's speaker removed, again and again) ──▶ failover order
//! ```
//!
//! The plugin cannot hear heartbeats, so a speaker counts as alive when its Lease is fresh,
//! and its interfaces are those the API shows (the report says both).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_controller_core::allocator::ServiceRequest;
use ferrolb_controller_core::pool;
use ferrolb_controller_core::service::{self, status_ips};
use ferrolb_crds::{IPAddressPool, annotations, conditions};
use ferrolb_speaker::core::{self as speaker, Decision, NotAnnouncedReason, World};
use ferrolb_speaker::world;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::model::{
    CondView, Snapshot, SpeakerLease, announcements, key_of, seen_interfaces, service_condition,
    speaker_leases,
};

mod text;

pub use text::render;

/// Stands for "every usable interface" when the plugin cannot know a node's interfaces.
pub const ANY_INTERFACE: &str = "*";

/// The whole `explain` report.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainReport {
    /// `namespace/name`.
    pub service: String,
    /// Why FerroLB does not serve this Service at all (wrong type or class).
    pub not_served: Option<String>,
    /// Its IPs and the pool holding each.
    pub ips: Vec<IpOrigin>,
    /// The rule that gives (or would give) it addresses.
    pub rule: Option<Rule>,
    /// The controller's `ferrolb.io/IPAllocated` condition.
    pub allocated: Option<CondView>,
    /// Which node announces it and why (absent without IPs).
    pub announcement: Option<AnnounceExplain>,
}

/// One IP and its pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IpOrigin {
    /// The IP from `status.loadBalancer.ingress`.
    pub ip: IpAddr,
    /// The pool holding it (`None`: in no pool).
    pub pool: Option<String>,
}

/// Which allocation rule applies (docs/configuration.md "Which pool a Service gets").
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Rule {
    /// A requested IP is taken from the pool that holds it.
    RequestedIp {
        /// Where the request is written (annotation spelling or `spec.loadBalancerIP`).
        source: String,
        /// The requested IPs.
        ips: Vec<IpAddr>,
    },
    /// The Service names a pool.
    RequestedPool {
        /// The annotation spelling used.
        source: String,
        /// The pool named.
        pool: String,
    },
    /// The first ready autoAssign pool that admits the Service, in candidate order.
    Automatic {
        /// Every pool in candidate order with its verdict for this Service.
        candidates: Vec<Candidate>,
    },
    /// The request does not parse; the controller reports `InvalidRequest`.
    InvalidRequest {
        /// The parse error.
        message: String,
    },
}

/// One pool in candidate order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// Pool name.
    pub pool: String,
    /// `admits it`, or why the pool is skipped.
    pub verdict: String,
    /// The pool admits the Service.
    pub admits: bool,
}

/// The announcement side.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnounceExplain {
    /// What the speakers' election decides per IP, computed from the current objects.
    pub decisions: Vec<IpDecision>,
    /// The elected node (the same for every IP of the Service).
    pub winner: Option<String>,
    /// Every known node and its verdict for this Service.
    pub nodes: Vec<NodeVerdict>,
    /// Who takes over if the winner fails, then the next, and so on.
    pub failover_order: Vec<String>,
    /// What the speakers themselves reported (`ferrolb.io/Announced`).
    pub reported: Option<CondView>,
    /// Whether the reported announcer is the computed winner (`None`: nothing reported).
    pub agrees: Option<bool>,
    /// Speaker Leases and whether the plugin counts them alive.
    pub speakers: Vec<SpeakerLease>,
    /// Interfaces the computation assumed per live speaker (`*`: any usable one).
    pub assumed_interfaces: BTreeMap<String, Vec<String>>,
}

/// The computed decision for one IP.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IpDecision {
    /// The IP.
    pub ip: IpAddr,
    /// `Announced` or the not-announced reason.
    pub reason: String,
    /// The speaker's own sentence for it.
    pub message: String,
}

/// One node's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeVerdict {
    /// Node name.
    pub node: String,
    /// May announce this Service's IPs.
    pub eligible: bool,
    /// `elected`, `eligible`, or the speaker's exclusion reason.
    pub why: String,
}

/// Options of the explanation the cluster cannot tell the plugin.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The speakers run with `--ignore-exclude-lb`.
    pub ignore_exclude_lb: bool,
}

/// Explains the Service `namespace/name`; `None` when it does not exist.
pub fn report(
    snap: &Snapshot,
    namespace: &str,
    name: &str,
    now: Timestamp,
    opts: &Options,
) -> Option<ExplainReport> {
    let svc = snap.services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata.name.as_deref() == Some(name)
    })?;
    let key = key_of(svc);
    let not_served = (!service::is_handled(svc, &snap.lb_class)).then(|| {
        let spec = svc.spec.clone().unwrap_or_default();
        match (spec.type_.as_deref(), spec.load_balancer_class.as_deref()) {
            (Some("LoadBalancer"), Some(class)) => format!(
                "its spec.loadBalancerClass is {class:?}; FerroLB serves Services with no class \
                 or {:?}",
                snap.lb_class
            ),
            (t, _) => format!(
                "it is of type {}, not LoadBalancer",
                t.unwrap_or("ClusterIP")
            ),
        }
    });
    let alloc = snap.allocator();
    let ips: Vec<IpOrigin> = status_ips(svc)
        .into_iter()
        .map(|ip| IpOrigin {
            ip,
            pool: alloc.pool_of(ip).map(str::to_owned),
        })
        .collect();
    let rule = not_served.is_none().then(|| rule(snap, svc, &ips));
    let announcement = (not_served.is_none() && !ips.is_empty())
        .then(|| announce(snap, svc, &key, now, opts))
        .flatten();
    Some(ExplainReport {
        service: key,
        not_served,
        ips,
        rule,
        allocated: service_condition(svc, conditions::IP_ALLOCATED).map(CondView::from),
        announcement,
    })
}

/// The annotation that carried a request: the FerroLB spelling or the alias used.
fn source(svc: &Service, canonical: &str, aliases: &[service::AliasUsed]) -> Option<String> {
    let set = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(canonical))
        .is_some_and(|v| !v.trim().is_empty());
    if set {
        return Some(format!("annotation {canonical}"));
    }
    aliases
        .iter()
        .find(|a| a.canonical == canonical)
        .map(|a| format!("annotation {}, MetalLB's spelling of {canonical}", a.found))
}

fn rule(snap: &Snapshot, svc: &Service, ips: &[IpOrigin]) -> Rule {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let parsed = match service::parse(svc, &snap.namespace_labels(&ns)) {
        Ok(p) => p,
        Err(message) => return Rule::InvalidRequest { message },
    };
    let req = parsed.request;
    if !req.requested_ips.is_empty() {
        return Rule::RequestedIp {
            source: source(svc, annotations::LOAD_BALANCER_IPS, &parsed.aliases)
                .unwrap_or_else(|| "spec.loadBalancerIP".into()),
            ips: req.requested_ips,
        };
    }
    if let Some(pool) = req.requested_pool.clone() {
        return Rule::RequestedPool {
            source: source(svc, annotations::ADDRESS_POOL, &parsed.aliases).unwrap_or_default(),
            pool,
        };
    }
    let holding: BTreeSet<&str> = ips.iter().filter_map(|i| i.pool.as_deref()).collect();
    let mut pools: Vec<&IPAddressPool> = snap.pools.iter().collect();
    pools.sort_by_key(|p| candidate_order(p));
    let candidates = pools
        .into_iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let verdict = verdict(p, &req);
            let admits = verdict.is_ok();
            let mut verdict = verdict.unwrap_or_else(|why| why);
            if holding.contains(name.as_str()) {
                verdict.push_str(" — holds its IP");
            }
            Candidate {
                pool: name,
                verdict,
                admits,
            }
        })
        .collect();
    Rule::Automatic { candidates }
}

/// Candidate order as docs/configuration.md states it (the allocator keeps its own copy
/// private): a `serviceAllocation.priority` first, lowest number first; then pools that
/// restrict themselves with `serviceAllocation`; then general pools; ties by name.
fn candidate_order(p: &IPAddressPool) -> (u8, i32, String) {
    let alloc = p.spec.service_allocation.clone().unwrap_or_default();
    let restricted = !alloc.namespaces.is_empty()
        || !alloc.namespace_selectors.is_empty()
        || !alloc.service_selectors.is_empty();
    let tier = match alloc.priority {
        Some(_) => 0,
        None if restricted => 1,
        None => 2,
    };
    (
        tier,
        alloc.priority.unwrap_or(0),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// `Ok("admits it")` or why the pool is skipped for automatic allocation.
fn verdict(p: &IPAddressPool, req: &ServiceRequest) -> Result<String, String> {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY));
    if let Some(c) = ready.filter(|c| c.status != "True") {
        return Err(format!("not ready ({}: {})", c.reason, c.message));
    }
    let cfg = pool::parse(p).map_err(|e| format!("not ready (Invalid: {e})"))?;
    if !cfg.auto_assign {
        return Err("autoAssign is false (only Services naming it or requesting its IPs)".into());
    }
    cfg.admits(req)
        .map(|()| "admits it".into())
        .map_err(|why| format!("excludes it: {why}"))
}

/// The externalIPs of `svc` the speakers announce: the shared rule
/// ([`ferrolb_crds::external_ips`]) over the pools of `w` and the snapshot's Services.
fn accepted_external_ips(snap: &Snapshot, w: &World, svc: &Service) -> Vec<IpAddr> {
    let Some(listed) = svc.spec.as_ref().and_then(|s| s.external_ips.as_deref()) else {
        return Vec::new();
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    ferrolb_crds::external_ips::parse(listed)
        .into_iter()
        .filter(|ip| {
            let holder = snap.services.iter().find(|o| {
                o.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
                    && world::lb_service(o).is_some_and(|k| k.ips.contains(ip))
            });
            let holder = holder.map(world::service_key);
            let rule = w.pools.values().map(|p| {
                let marked = snap
                    .pools
                    .iter()
                    .find(|sp| sp.metadata.name.as_deref() == Some(p.name.as_str()))
                    .and_then(|sp| sp.spec.external_ips.as_ref());
                ferrolb_crds::external_ips::Pool {
                    name: &p.name,
                    addresses: &p.addresses,
                    namespaces: marked.map(|e| e.namespaces.as_slice()),
                }
            });
            ferrolb_crds::external_ips::judge(*ip, ns, rule, holder.as_deref()).is_accepted()
        })
        .collect()
}

/// The speakers' World as the plugin can see it, and the interfaces it assumed per speaker.
pub fn world_of(
    snap: &Snapshot,
    now: Timestamp,
    opts: &Options,
) -> (World, BTreeMap<String, BTreeSet<String>>) {
    let mut w = World {
        ignore_exclude_lb: opts.ignore_exclude_lb,
        ..Default::default()
    };
    for n in &snap.nodes {
        w.apply_node(world::node(n));
    }
    let mut named: BTreeSet<String> = BTreeSet::new();
    for a in &snap.advertisements {
        if let Ok(a) = world::advertisement(a) {
            named.extend(a.interfaces.iter().cloned());
            w.apply_advertisement(a);
        }
    }
    for p in &snap.pools {
        let last_valid = || {
            let addresses = ferrolb_crds::addresses::PoolAddresses::parse(
                &p.status.as_ref()?.last_valid_addresses,
            )
            .ok()?;
            Some(speaker::Pool {
                name: p.metadata.name.clone().unwrap_or_default(),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                addresses,
            })
        };
        if let Some(pool) = world::pool(p).or_else(last_valid) {
            w.apply_pool(pool);
        }
    }
    for svc in &snap.services {
        let key = world::service_key(svc);
        let slices = snap
            .slices
            .iter()
            .filter(|s| world::slice_service_key(s).as_deref() == Some(key.as_str()));
        let accepted = accepted_external_ips(snap, &w, svc);
        if let Some(s) = world::service(svc, &snap.lb_class, slices, &accepted) {
            w.apply_service(s);
        }
    }
    let seen = seen_interfaces(&snap.services);
    let mut assumed = BTreeMap::new();
    for l in speaker_leases(&snap.leases, now)
        .into_iter()
        .filter(|l| l.fresh)
    {
        let mut interfaces: BTreeSet<String> = seen.get(&l.node).cloned().unwrap_or_default();
        interfaces.extend(named.iter().cloned());
        if interfaces.is_empty() {
            interfaces.insert(ANY_INTERFACE.into());
        }
        assumed.insert(l.node.clone(), interfaces.clone());
        // Other facts of a live speaker (e.g. a failback hold-down) travel in heartbeats
        // only: the plugin leaves them at their defaults.
        w.apply_speaker(speaker::Speaker {
            node: l.node,
            interfaces,
            ..Default::default()
        });
    }
    (w, assumed)
}

/// `world` with only `node` (its Node object and its speaker, if any).
fn only(world: &World, node: &str) -> World {
    let mut w = world.clone();
    w.nodes.retain(|n, _| n == node);
    w.speakers.retain(|n, _| n == node);
    w
}

fn announce(
    snap: &Snapshot,
    svc: &Service,
    key: &str,
    now: Timestamp,
    opts: &Options,
) -> Option<AnnounceExplain> {
    let (w, assumed) = world_of(snap, now, opts);
    let table = speaker::desired(&w);
    let mine = table.service(key)?;
    let decisions = mine
        .iter()
        .map(|(ip, d)| IpDecision {
            ip: *ip,
            reason: d.reason().into(),
            message: d.to_string(),
        })
        .collect();
    let winner = mine
        .values()
        .find_map(Decision::announcer)
        .map(str::to_owned);

    let names: BTreeSet<&String> = w.nodes.keys().chain(w.speakers.keys()).collect();
    let mut nodes: Vec<NodeVerdict> = names
        .into_iter()
        .map(|n| {
            let alone = speaker::desired(&only(&w, n));
            let ds: Vec<&Decision> = alone
                .service(key)
                .map(|m| m.values().collect())
                .unwrap_or_default();
            let excluded = ds.iter().find_map(|d| match d {
                Decision::NotAnnounced {
                    reason: NotAnnouncedReason::NoEligibleNode { detail },
                } => Some(
                    detail
                        .reason_of(n)
                        .map_or_else(|| "not eligible".into(), |why| why.to_string()),
                ),
                _ => None,
            });
            let (eligible, why) = match excluded {
                Some(why) => (false, why),
                None if ds.iter().any(|d| d.announcer().is_some()) => (
                    true,
                    if winner.as_deref() == Some(n.as_str()) {
                        "elected".into()
                    } else {
                        "eligible".into()
                    },
                ),
                None => (
                    false,
                    ds.first()
                        .map_or("nothing to announce".into(), |d| d.reason().to_owned()),
                ),
            };
            NodeVerdict {
                node: n.clone(),
                eligible,
                why,
            }
        })
        .collect();
    nodes.sort_by_key(|v| (!v.eligible, v.why != "elected", v.node.clone()));

    let mut failover_order = Vec::new();
    let mut rest = w.clone();
    while let Some(next) = speaker::desired(&rest)
        .service(key)
        .and_then(|m| m.values().find_map(Decision::announcer))
        .map(str::to_owned)
    {
        rest.speakers.remove(&next);
        failover_order.push(next);
    }

    let reported = service_condition(svc, conditions::ANNOUNCED).map(CondView::from);
    let reported_node = announcements(svc).into_values().next().map(|a| a.node);
    let agrees = reported.as_ref().map(|_| reported_node == winner);
    Some(AnnounceExplain {
        decisions,
        winner,
        nodes,
        failover_order,
        reported,
        agrees,
        speakers: speaker_leases(&snap.leases, now),
        assumed_interfaces: assumed
            .into_iter()
            .map(|(n, i)| (n, i.into_iter().collect()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;
    use ferrolb_crds::ServiceAllocation;

    const NOW: &str = "2025-01-01T12:00:00Z";

    fn base() -> Snapshot {
        let mut gold = with_status(pool("gold", &["203.0.113.16/28"]), (0, 16), true);
        gold.spec.service_allocation = Some(ServiceAllocation {
            priority: Some(1),
            namespaces: vec!["prod".into()],
            ..Default::default()
        });
        let lan = with_status(pool("lan", &["203.0.113.0/28"]), (1, 15), true);
        let mut excluded = node("n3");
        excluded.metadata.labels = Some(BTreeMap::from([(
            speaker::EXCLUDE_LB_LABEL.to_string(),
            String::new(),
        )]));
        Snapshot {
            pools: vec![lan, gold],
            advertisements: vec![adv("all")],
            nodes: vec![node("n1"), node("n2"), excluded, node("n4")],
            leases: vec![
                lease("n1", "2025-01-01T11:59:30Z", 90),
                lease("n2", "2025-01-01T11:59:30Z", 90),
                lease("n3", "2025-01-01T11:59:30Z", 90),
                lease("n4", "2025-01-01T10:00:00Z", 90),
            ],
            services: vec![svc("default", "web", &["203.0.113.1"])],
            slices: vec![slice("default", "web", &["n1"])],
            lb_class: ferrolb_crds::DEFAULT_LB_CLASS.into(),
            ..Default::default()
        }
    }

    fn explain(s: &Snapshot, ns: &str, name: &str) -> ExplainReport {
        report(s, ns, name, t(NOW), &Options::default()).unwrap()
    }

    /// The plugin's World announces the externalIPs the speakers would (the shared rule):
    /// from a marked pool, for a listed namespace, not held by a LoadBalancer.
    #[test]
    fn the_world_holds_accepted_external_ips_only() {
        let mut s = base();
        let mut ext = with_status(pool("ext", &["198.51.100.0/28"]), (0, 0), true);
        ext.spec.external_ips = Some(ferrolb_crds::PoolExternalIPs {
            namespaces: vec!["default".into()],
        });
        s.pools.push(ext);
        let listing = |ns: &str, name: &str, ips: &[&str]| {
            let mut l = svc(ns, name, &[]);
            let spec = l.spec.as_mut().unwrap();
            spec.type_ = Some("ClusterIP".into());
            spec.external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
            l
        };
        s.services.extend([
            listing("default", "ok", &["198.51.100.3"]),
            listing("other", "no", &["198.51.100.4"]),
            // In pool lan, not marked (and held by default/web anyway).
            listing("default", "held", &["203.0.113.1"]),
        ]);
        let (w, _) = world_of(&s, t(NOW), &Options::default());
        let ok = &w.services["default/ok"];
        assert_eq!(ok.ips, ["198.51.100.3".parse::<IpAddr>().unwrap()]);
        assert!(!w.services.contains_key("other/no"));
        assert!(!w.services.contains_key("default/held"));
    }

    #[test]
    fn automatic_allocation_lists_candidates_in_order() {
        let r = explain(&base(), "default", "web");
        assert_eq!(r.ips[0].pool.as_deref(), Some("lan"));
        let Some(Rule::Automatic { candidates }) = &r.rule else {
            panic!("{:?}", r.rule)
        };
        assert_eq!(candidates[0].pool, "gold", "a priority pool comes first");
        assert!(!candidates[0].admits);
        assert!(
            candidates[0].verdict.contains("namespaces"),
            "{candidates:?}"
        );
        assert_eq!(candidates[1].verdict, "admits it — holds its IP");
    }

    #[test]
    fn requested_ip_and_pool_name_their_source() {
        let mut s = base();
        s.services = vec![
            annotate(
                svc("default", "a", &["203.0.113.5"]),
                "metallb.universe.tf/loadBalancerIPs",
                "203.0.113.5",
            ),
            annotate(
                svc("default", "b", &["203.0.113.2"]),
                "ferrolb.io/address-pool",
                "lan",
            ),
        ];
        s.services.push({
            let mut c = svc("default", "c", &["203.0.113.3"]);
            c.spec.as_mut().unwrap().load_balancer_ip = Some("203.0.113.3".into());
            c
        });
        let r = explain(&s, "default", "a");
        assert!(
            matches!(&r.rule, Some(Rule::RequestedIp { source, .. }) if source.contains("metallb.universe.tf/loadBalancerIPs")),
            "{:?}",
            r.rule
        );
        let r = explain(&s, "default", "b");
        assert_eq!(
            r.rule,
            Some(Rule::RequestedPool {
                source: "annotation ferrolb.io/address-pool".into(),
                pool: "lan".into()
            })
        );
        let r = explain(&s, "default", "c");
        assert!(
            matches!(&r.rule, Some(Rule::RequestedIp { source, .. }) if source == "spec.loadBalancerIP")
        );
    }

    #[test]
    fn election_names_the_winner_and_why_others_lose() {
        let r = explain(&base(), "default", "web");
        let a = r.announcement.unwrap();
        let winner = a.winner.clone().unwrap();
        assert!(winner == "n1" || winner == "n2");
        let why: BTreeMap<&str, &str> = a
            .nodes
            .iter()
            .map(|v| (v.node.as_str(), v.why.as_str()))
            .collect();
        assert_eq!(why[winner.as_str()], "elected");
        assert_eq!(why["n3"], "exclude-from-external-load-balancers label");
        assert_eq!(why["n4"], "no live speaker", "a stale Lease is not alive");
        assert_eq!(a.failover_order.len(), 2);
        assert_eq!(a.failover_order[0], winner);
        assert_eq!(a.agrees, None, "nothing reported yet");
        assert_eq!(a.assumed_interfaces["n1"], ["*"]);
        // The speakers' report is compared with the computation.
        let mut s = base();
        s.services[0] = add_cond(
            s.services[0].clone(),
            cond(
                "ferrolb.io/Announced",
                true,
                "Announced",
                &format!("node {winner} announces 203.0.113.1 on eth0"),
                "2025-01-01T11:00:00Z",
            ),
        );
        let r = explain(&s, "default", "web");
        let a = r.announcement.unwrap();
        assert_eq!(a.agrees, Some(true));
        assert_eq!(a.assumed_interfaces[&winner], ["eth0"]);
        let text = render(&explain(&s, "default", "web"), t(NOW));
        assert!(text.contains("elected"), "{text}");
        assert!(text.contains("Failover order"), "{text}");
    }

    #[test]
    fn pending_and_unserved_services_say_why() {
        let mut s = base();
        s.services.push(add_cond(
            svc("default", "waiting", &[]),
            cond(
                "ferrolb.io/IPAllocated",
                false,
                "NoMatchingPool",
                "no IPAddressPool can serve default/waiting: pool \"x\" (named by the Service) does not exist",
                "2025-01-01T11:00:00Z",
            ),
        ));
        let mut other = svc("default", "other", &[]);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        s.services.push(other);
        let r = explain(&s, "default", "waiting");
        assert!(r.announcement.is_none());
        assert_eq!(r.allocated.as_ref().unwrap().reason, "NoMatchingPool");
        let text = render(&r, t(NOW));
        assert!(text.contains("IPAllocated=False NoMatchingPool"), "{text}");
        let r = explain(&s, "default", "other");
        assert!(r.not_served.unwrap().contains("example.com/lb"));
        assert!(report(&s, "default", "missing", t(NOW), &Options::default()).is_none());
    }

    #[test]
    fn advertisement_node_selectors_show_per_node() {
        let mut s = base();
        let mut a = adv("edge");
        a.spec.node_selectors = vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(BTreeMap::from([("edge".to_string(), "true".to_string())])),
                ..Default::default()
            },
        ];
        a.spec.interfaces = vec!["eth1".into()];
        s.advertisements = vec![a];
        s.nodes[1]
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("edge".into(), "true".into());
        let r = explain(&s, "default", "web");
        let a = r.announcement.unwrap();
        assert_eq!(a.winner.as_deref(), Some("n2"));
        let n1 = a.nodes.iter().find(|v| v.node == "n1").unwrap();
        assert_eq!(n1.why, "not selected by nodeSelectors");
        assert_eq!(a.decisions[0].message, "announced by node n2 on eth1");
    }
}
