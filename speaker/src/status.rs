//! This node's `NodeAnnouncement`: what it announces, whether it serves, and which known
//! speakers it counts out. The controller folds every node's report into each Service's
//! `ferrolb.io/Announced` condition (`controller/core/src/announced.rs`): the speaker writes
//! no Service, and one writer per condition means no two speakers can fight over it.
//!
//! ```text
//!   Table ──▶ report(): Services with an IP this node announces (every IP's decision),
//!             and, from the lowest-named serving speaker of its view, Services nobody
//!             announces whose IPs it judges (it hears every node that may announce them)
//!   liveness ─▶ serving / why not, peers counted out (fresh Lease, in our heartbeat scope,
//!             not serving in our view)
//!        ──▶ NodeAnnouncement <node> (server-side apply, only when it changed)
//! ```
//!
//! Writes grow with changes of what this node announces, never with the number of Services
//! it does not announce (only housekeepers list those: one per group of speakers that hear
//! each other, docs/failover.md#who-heartbeats-whom) nor with time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_crds::{
    IpReport, NodeAnnouncement, NodeAnnouncementSpec, PeerIncarnation, ServiceReport,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::core::{Decision, Table};
use crate::liveness::NotServing;
use crate::metrics::Metrics;

/// The field manager the speaker writes its report as.
pub const MANAGER: &str = "ferrolb-speaker";

fn ip_report(ip: std::net::IpAddr, d: &Decision) -> IpReport {
    match d {
        Decision::Announce { node, interfaces } => IpReport {
            ip: ip.to_string(),
            node: Some(node.clone()),
            interfaces: interfaces.iter().cloned().collect(),
            ..Default::default()
        },
        Decision::NotAnnounced { .. } => IpReport {
            ip: ip.to_string(),
            reason: Some(d.reason().to_owned()),
            message: Some(d.to_string()),
            ..Default::default()
        },
    }
}

/// The reason word of a [`NotServing`].
pub fn not_serving_reason(w: NotServing) -> &'static str {
    match w {
        NotServing::NotReady => "NotReady",
        NotServing::HearNobody => "HearNobody",
        NotServing::NobodyHearsUs => "NobodyHearsUs",
    }
}

/// Whether this speaker's decision for an IP is right (it hears every node that decides
/// it: `scope::Scope::judges_decision`).
pub type Judge<'a> = &'a dyn Fn(IpAddr, &Decision) -> bool;

/// This node's report. `housekeeper` is given to the lowest-named serving speaker of its
/// view, which also lists the Services nobody announces (with why) whose every IP it
/// judges; `down` are the known peers (fresh Leases, in its heartbeat scope) this speaker
/// does not count as serving, with their incarnations.
pub fn report(
    table: &Table,
    me: &str,
    housekeeper: Option<Judge<'_>>,
    incarnation: u64,
    not_serving: Option<NotServing>,
    down: &BTreeMap<String, u64>,
) -> NodeAnnouncementSpec {
    let services = table
        .services()
        .iter()
        .filter(|(_, decisions)| {
            let mine = decisions.values().any(|d| d.announcer() == Some(me));
            let nobodys = decisions.values().all(|d| d.announcer().is_none());
            let judged =
                || housekeeper.is_some_and(|judge| decisions.iter().all(|(ip, d)| judge(*ip, d)));
            mine || (nobodys && judged())
        })
        .map(|(key, decisions)| ServiceReport {
            service: key.clone(),
            ips: decisions.iter().map(|(ip, d)| ip_report(*ip, d)).collect(),
        })
        .collect();
    NodeAnnouncementSpec {
        incarnation: incarnation.to_string(),
        serving: not_serving.is_none(),
        reason: not_serving.map(|w| not_serving_reason(w).to_owned()),
        down: down
            .iter()
            .map(|(node, inc)| PeerIncarnation {
                node: node.clone(),
                incarnation: inc.to_string(),
            })
            .collect(),
        services,
    }
}

/// `report` with the interfaces of the IPs `me` announces narrowed as the data plane
/// narrows them ([`crate::dataplane::narrow_to_subnets`]: the one allowed interface whose
/// subnet holds the IP, when exactly one does), so the report names the interfaces that
/// really answer, not every one the election allowed.
pub fn on_link(
    mut report: NodeAnnouncementSpec,
    me: &str,
    links: &crate::dataplane::Links,
) -> NodeAnnouncementSpec {
    for ip in report.services.iter_mut().flat_map(|s| s.ips.iter_mut()) {
        let Ok(addr) = ip.ip.parse::<IpAddr>() else {
            continue;
        };
        if ip.node.as_deref() == Some(me) {
            let allowed = ip.interfaces.iter().cloned().collect();
            ip.interfaces = crate::dataplane::links::on_link_interfaces(addr, &allowed, links)
                .into_iter()
                .collect();
        }
    }
    report
}

pub use ferrolb_crds::conditions::ADDRESS_CONFLICT;

/// Reason of an IP `me` wins and probes for before its first announcement (while a
/// Service with another IP announced still lists it).
pub const PROBING: &str = "Probing";

/// Reason of an IP `me` wins but holds back for a warm-up while a peer joins its heartbeat
/// group (step.rs), when a Service with another IP announced still lists it.
pub const WAITING: &str = "WaitingForPeer";

/// `report` with the IPs `me` wins but does not answer for ([`crate::dataplane::Withheld`])
/// marked so. An IP another host uses: no announcer, reason [`ADDRESS_CONFLICT`], and a
/// message naming the other host's MAC (the controller then says so on the Service). An IP
/// still probed for before its first announcement: not claimed either, and a Service left
/// with nothing this node announces is not reported until the probe ends (a new Service's
/// condition then says Announced once, when it is, instead of before).
pub fn withheld(
    report: NodeAnnouncementSpec,
    me: &str,
    withheld: &crate::dataplane::Withheld,
) -> NodeAnnouncementSpec {
    if withheld.conflicts.is_empty() && withheld.probing.is_empty() {
        return report;
    }
    not_yet(report, me, |addr| {
        if let Some(c) = withheld.conflicts.get(&addr) {
            return Some(Mark::Final(
                ADDRESS_CONFLICT,
                format!(
                    "{addr} is in use by another host: {} claims it (seen by {me} on {}; not \
                     a FerroLB node); not announced until it is free",
                    c.mac, c.iface
                ),
            ));
        }
        withheld.probing.contains_key(&addr).then(|| {
            Mark::Pending(
                PROBING,
                format!("{addr}: {me} probes whether another host uses it before announcing it"),
            )
        })
    })
}

/// `report` with the IPs `me` wins but holds back (`held`: a peer joined its heartbeat
/// group and is waited for) not claimed, like IPs still probed for.
pub fn held_back(
    report: NodeAnnouncementSpec,
    me: &str,
    held: &std::collections::BTreeSet<IpAddr>,
) -> NodeAnnouncementSpec {
    if held.is_empty() {
        return report;
    }
    not_yet(report, me, |addr| {
        held.contains(&addr).then(|| {
            Mark::Pending(
                WAITING,
                format!("{addr}: {me} waits a warm-up for a peer that joined its group"),
            )
        })
    })
}

/// How an IP this node wins but does not answer for is reported.
enum Mark {
    /// Not announced, for the reason and message given.
    Final(&'static str, String),
    /// Not announced yet: a Service with nothing else this node announces is left out of
    /// the report (the controller keeps its condition as it is) until it is.
    Pending(&'static str, String),
}

fn not_yet(
    mut report: NodeAnnouncementSpec,
    me: &str,
    mark: impl Fn(IpAddr) -> Option<Mark>,
) -> NodeAnnouncementSpec {
    let mut pending = false;
    for ip in report.services.iter_mut().flat_map(|s| s.ips.iter_mut()) {
        let Ok(addr) = ip.ip.parse::<IpAddr>() else {
            continue;
        };
        if ip.node.as_deref() != Some(me) {
            continue;
        }
        let (reason, message) = match mark(addr) {
            Some(Mark::Final(r, m)) => (r, m),
            Some(Mark::Pending(r, m)) => {
                pending = true;
                (r, m)
            }
            None => continue,
        };
        ip.reason = Some(reason.to_owned());
        ip.message = Some(message);
        ip.node = None;
        ip.interfaces.clear();
    }
    if pending {
        report.services.retain(|s| {
            let waits = s
                .ips
                .iter()
                .any(|i| matches!(i.reason.as_deref(), Some(PROBING | WAITING)));
            !waits || s.ips.iter().any(|i| i.node.as_deref() == Some(me))
        });
    }
    report
}

/// The report of a speaker that is shutting down: it announces nothing any more.
pub fn leaving(incarnation: u64) -> NodeAnnouncementSpec {
    NodeAnnouncementSpec {
        incarnation: incarnation.to_string(),
        serving: false,
        reason: Some("ShuttingDown".into()),
        ..Default::default()
    }
}

/// The object as the speaker applies it, owned by its Node (deleting the Node deletes it).
pub fn object(node: &str, node_uid: Option<&str>, spec: NodeAnnouncementSpec) -> NodeAnnouncement {
    let mut o = NodeAnnouncement::new(node, spec);
    o.metadata = ObjectMeta {
        name: Some(node.into()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".into(), "ferrolb".into()),
            ("app.kubernetes.io/component".into(), "speaker".into()),
        ])),
        owner_references: node_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.into(),
                uid: uid.into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    o
}

/// Applies this node's report (server-side apply, one call).
pub async fn apply(
    client: &Client,
    node: &str,
    node_uid: Option<&str>,
    spec: &NodeAnnouncementSpec,
) -> Result<(), kube::Error> {
    let api: Api<NodeAnnouncement> = Api::all(client.clone());
    let obj = object(node, node_uid, spec.clone());
    api.patch(
        node,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .map(|_| ())
}

/// Keeps this node's report equal to the newest one on `rx`: writes each change once,
/// retries a failed write with backoff (1 s doubling to 30 s) until it lands or a newer
/// report replaces it. API errors never touch announcing (fail-static).
pub async fn writer(
    client: Client,
    node: String,
    mut rx: watch::Receiver<Arc<NodeAnnouncementSpec>>,
    metrics: Metrics,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_uid: Option<String> = None;
    // Shares the channel's report: this node's report is kept twice (the decider's and
    // this, narrowed), not once per copy made on the way.
    let mut written: Option<Arc<NodeAnnouncementSpec>> = None;
    let mut pause = Duration::from_secs(1);
    loop {
        let want = rx.borrow_and_update().clone();
        if written.as_ref() != Some(&want) {
            if node_uid.is_none() {
                node_uid = nodes.get(&node).await.ok().and_then(|n| n.metadata.uid);
            }
            match apply(&client, &node, node_uid.as_deref(), &want).await {
                Ok(()) => {
                    written = Some(want);
                    pause = Duration::from_secs(1);
                }
                Err(e) => {
                    metrics.api_error(ferrolb_ops::retry::metric_label(&e));
                    tracing::warn!(error = %e, ?pause, "cannot write this node's NodeAnnouncement; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{self, World};
    use ferrolb_crds::addresses::PoolAddresses;
    use std::collections::{BTreeMap as Map, BTreeSet};

    /// A housekeeper that judges every IP (all-to-all).
    const ALL: Judge<'static> = &|_, _| true;

    fn world(nodes: &[&str], svc_ips: &[&str], endpoints: bool) -> World {
        let mut w = World::default();
        for n in nodes {
            w.apply_node(core::Node {
                name: n.to_string(),
                ..Default::default()
            });
            w.apply_speaker(core::Speaker {
                node: n.to_string(),
                interfaces: BTreeSet::from(["eth0".to_string()]),
                settling: false,
            });
        }
        w.apply_pool(core::Pool {
            name: "p".into(),
            labels: Map::new(),
            addresses: PoolAddresses::parse(&["203.0.113.0/24".to_string()]).unwrap(),
        });
        w.apply_advertisement(core::Advertisement {
            name: "all".into(),
            ..Default::default()
        });
        w.apply_service(core::Service {
            key: "ns/web".into(),
            ips: svc_ips.iter().map(|s| s.parse().unwrap()).collect(),
            has_serving_endpoints: endpoints,
            ..Default::default()
        });
        w
    }

    #[test]
    fn the_report_names_the_interface_that_answers() {
        use crate::dataplane::{LinkInfo, Links};
        let mut w = world(&["n1"], &["203.0.113.5", "203.0.113.200"], true);
        w.apply_speaker(core::Speaker {
            node: "n1".into(),
            interfaces: BTreeSet::from(["eth0".to_string(), "eth1".to_string()]),
            settling: false,
        });
        let table = core::desired(&w);
        let r = report(&table, "n1", Some(ALL), 1, None, &Map::new());
        let link = |index: u32, subnet: &str| LinkInfo {
            index,
            mac: crate::wire::MacAddr::new(2, 0, 0, 0, 0, index as u8),
            up: true,
            carrier_ups: 0,
            subnets: BTreeSet::from([subnet.parse().unwrap()]),
        };
        let links = Links::from([
            ("eth0".to_string(), link(2, "203.0.113.0/25")),
            ("eth1".to_string(), link(3, "2001:db8:1::/64")),
        ]);
        let r = on_link(r, "n1", &links);
        let ifaces: Map<&str, &[String]> = r.services[0]
            .ips
            .iter()
            .map(|i| (i.ip.as_str(), i.interfaces.as_slice()))
            .collect();
        // On eth0's subnet: eth0 alone answers. On no subnet: every allowed interface.
        assert_eq!(ifaces["203.0.113.5"], ["eth0"]);
        assert_eq!(ifaces["203.0.113.200"], ["eth0", "eth1"]);
        // Another node's IPs are left as its report says.
        let theirs = report(&table, "n1", Some(ALL), 1, None, &Map::new());
        let other = on_link(theirs.clone(), "n2", &links);
        assert_eq!(other, theirs);
    }

    /// The report of n1, the one speaker (on eth0), announcing 203.0.113.5 and .200.
    fn n1_announces_both() -> NodeAnnouncementSpec {
        let mut w = world(&["n1"], &["203.0.113.5", "203.0.113.200"], true);
        w.apply_speaker(core::Speaker {
            node: "n1".into(),
            interfaces: BTreeSet::from(["eth0".to_string()]),
            settling: false,
        });
        report(&core::desired(&w), "n1", Some(ALL), 1, None, &Map::new())
    }

    #[test]
    fn an_ip_in_conflict_is_reported_not_announced_naming_the_other_host() {
        let r = n1_announces_both();
        let held = crate::dataplane::Withheld {
            conflicts: crate::dataplane::Conflicts::from([(
                "203.0.113.5".parse().unwrap(),
                crate::dataplane::Conflict {
                    mac: crate::wire::MacAddr::new(2, 0, 0, 0, 0, 0x99),
                    iface: "eth0".into(),
                    since: std::time::Instant::now(),
                },
            )]),
            ..Default::default()
        };
        let marked = withheld(r.clone(), "n1", &held);
        let ips = &marked.services[0].ips;
        let hit = ips.iter().find(|i| i.ip == "203.0.113.5").unwrap();
        assert_eq!(hit.node, None);
        assert!(hit.interfaces.is_empty());
        assert_eq!(hit.reason.as_deref(), Some(ADDRESS_CONFLICT));
        let msg = hit.message.as_deref().unwrap();
        assert!(
            msg.contains("02:00:00:00:00:99") && msg.contains("n1 on eth0"),
            "{msg}"
        );
        let other = ips.iter().find(|i| i.ip == "203.0.113.200").unwrap();
        assert_eq!(
            other.node.as_deref(),
            Some("n1"),
            "the other IP stays announced"
        );
        // Only our own entries: a report of another node is left alone.
        assert_eq!(withheld(r.clone(), "n2", &held), r);
        assert_eq!(withheld(r.clone(), "n1", &Default::default()), r);
    }

    #[test]
    fn a_service_still_probed_for_is_not_reported_as_announced() {
        let r = n1_announces_both();
        let probing = |ips: &[&str]| crate::dataplane::Withheld {
            probing: ips
                .iter()
                .map(|ip| (ip.parse().unwrap(), "eth0".to_string()))
                .collect(),
            ..Default::default()
        };
        // Both IPs probed for: the Service is not reported until the probe ends.
        let both = withheld(r.clone(), "n1", &probing(&["203.0.113.5", "203.0.113.200"]));
        assert!(both.services.is_empty(), "{both:?}");
        // One of two: the announced one is claimed, the other says it is probed for.
        let one = withheld(r.clone(), "n1", &probing(&["203.0.113.5"]));
        let ips = &one.services[0].ips;
        assert_eq!(ips.iter().filter(|i| i.node.is_some()).count(), 1);
        let p = ips.iter().find(|i| i.ip == "203.0.113.5").unwrap();
        assert_eq!(
            (p.node.as_deref(), p.reason.as_deref()),
            (None, Some(PROBING))
        );
    }

    #[test]
    fn only_the_announcer_reports_an_announced_service() {
        let w = world(&["n1", "n2", "n3"], &["203.0.113.5"], true);
        let table = core::desired(&w);
        let winner = table
            .announcer("203.0.113.5".parse().unwrap())
            .unwrap()
            .to_owned();
        let none = Map::new();
        let mut reporters = Vec::new();
        for n in ["n1", "n2", "n3"] {
            let r = report(&table, n, (n == "n1").then_some(ALL), 7, None, &none);
            assert!(r.serving);
            assert_eq!(r.incarnation, "7");
            if !r.services.is_empty() {
                reporters.push(n);
                assert_eq!(r.services[0].service, "ns/web");
                let ip = &r.services[0].ips[0];
                assert_eq!(ip.node.as_deref(), Some(n));
                assert_eq!(ip.interfaces, ["eth0"]);
            }
        }
        assert_eq!(
            reporters,
            [winner.as_str()],
            "the housekeeper does not repeat it"
        );
    }

    #[test]
    fn the_housekeeper_reports_why_nothing_is_announced() {
        let w = world(&["n1", "n2"], &["203.0.113.5"], false);
        let table = core::desired(&w);
        let none = Map::new();
        assert!(
            report(&table, "n2", None, 1, None, &none)
                .services
                .is_empty()
        );
        let r = report(&table, "n1", Some(ALL), 1, None, &none);
        let ip = &r.services[0].ips[0];
        assert_eq!(ip.node, None);
        assert_eq!(ip.reason.as_deref(), Some("NoServingEndpoints"));
        assert!(
            ip.message.as_deref().unwrap().starts_with("not announced"),
            "{ip:?}"
        );
        // A housekeeper that does not hear every node that may announce an IP does not
        // list its Service (its table may be wrong there).
        let judges_nothing: Judge<'_> = &|_, _| false;
        let r = report(&table, "n1", Some(judges_nothing), 1, None, &none);
        assert!(r.services.is_empty());
    }

    #[test]
    fn a_dual_stack_service_reports_both_families_with_the_missing_ones_reason() {
        let w = world(&["n1"], &["203.0.113.5", "2001:db8::5"], true);
        let table = core::desired(&w);
        let r = report(&table, "n1", Some(ALL), 1, None, &Map::new());
        let ips = &r.services[0].ips;
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0].node.as_deref(), Some("n1"));
        assert_eq!(ips[1].node, None, "the pool has no IPv6: {ips:?}");
        assert!(ips[1].reason.is_some());
    }

    #[test]
    fn a_speaker_that_does_not_serve_says_why_and_whom_it_counts_out() {
        let table = Table::default();
        let down = Map::from([("n2".to_string(), 42u64), ("n3".to_string(), 7u64)]);
        let r = report(&table, "n1", None, 1, Some(NotServing::HearNobody), &down);
        assert!(!r.serving);
        assert_eq!(r.reason.as_deref(), Some("HearNobody"));
        assert_eq!(
            r.down,
            [
                PeerIncarnation {
                    node: "n2".into(),
                    incarnation: "42".into()
                },
                PeerIncarnation {
                    node: "n3".into(),
                    incarnation: "7".into()
                }
            ]
        );
        let l = leaving(1);
        assert!(!l.serving && l.services.is_empty());
        let o = object("n1", Some("u1"), l);
        assert_eq!(o.metadata.name.as_deref(), Some("n1"));
        assert_eq!(o.metadata.owner_references.unwrap()[0].uid, "u1");
    }
}
