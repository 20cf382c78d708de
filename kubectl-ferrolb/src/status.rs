//! `kubectl ferrolb status`: pools and their usage, every LoadBalancer IP with its
//! Services and announcer, and the Services still waiting for an IP. Pure.
//!
//! ```text
//!   Snapshot ──▶ pools:   IPAddressPool.status (counts, Ready/Invalid/Conflict)
//!            ──▶ ips:     Service status IPs ─ pool (controller core) ─ Announced condition
//!            ──▶ pending: handled Services without IPs ─ IPAllocated condition
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_controller_core::service::status_ips;
use ferrolb_crds::addresses::{Family, PoolAddresses};
use ferrolb_crds::{IPAddressPool, conditions};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::model::{Announcement, CondView, Snapshot, announcements, key_of, service_condition};
use crate::render::{age, or_dash, table};

/// The whole `status` report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    /// Every IPAddressPool, by name.
    pub pools: Vec<PoolView>,
    /// Every LoadBalancer IP FerroLB's Services hold, in IP order.
    pub ips: Vec<IpView>,
    /// Services FerroLB serves that have no IP yet.
    pub pending: Vec<PendingView>,
    /// Every node's speaker, from its NodeAnnouncement.
    pub speakers: Vec<SpeakerView>,
}

/// One node's speaker as its own report says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerView {
    /// Node name.
    pub node: String,
    /// Takes part in elections.
    pub serving: bool,
    /// Why not (`HearNobody`, `NobodyHearsUs`, `NotReady`, `ShuttingDown`).
    pub reason: Option<String>,
    /// How many IPs it says it announces.
    pub announces: usize,
    /// Known speakers it counts out (not heard, or not serving), by node.
    pub counts_out: Vec<String>,
}

fn speaker_view(r: &ferrolb_crds::NodeAnnouncement) -> SpeakerView {
    let node = r.metadata.name.clone().unwrap_or_default();
    let announces = r
        .spec
        .services
        .iter()
        .flat_map(|s| &s.ips)
        .filter(|i| i.node.as_deref() == Some(node.as_str()))
        .map(|i| i.ip.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    SpeakerView {
        serving: r.spec.serving,
        reason: r.spec.reason.clone(),
        announces,
        counts_out: r.spec.down.iter().map(|d| d.node.clone()).collect(),
        node,
    }
}

/// One pool's usage and health.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// `spec.addresses` as written.
    pub addresses: Vec<String>,
    /// IPv4 usage; `None` when the pool has no IPv4 addresses.
    pub ipv4: Option<Usage>,
    /// IPv6 usage; `None` when the pool has no IPv6 addresses.
    pub ipv6: Option<Usage>,
    /// The `Ready` condition's status (`Unknown` before the controller wrote one).
    pub ready: String,
    /// The `Ready` condition's reason and message when not ready.
    pub problem: Option<String>,
    /// Every condition of the pool.
    pub conditions: Vec<CondView>,
}

/// Addresses of one family in one pool, as the controller counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Held by Services.
    pub assigned: i64,
    /// Still free (`9223372036854775807` means at least that many).
    pub available: i64,
}

/// One LoadBalancer IP.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpView {
    /// The IP.
    pub ip: IpAddr,
    /// The pool it belongs to (`None`: in no pool).
    pub pool: Option<String>,
    /// The Services holding it (several when shared), `namespace/name`.
    pub services: Vec<String>,
    /// Who announces it, from the speakers' `ferrolb.io/Announced` condition.
    pub announced: Option<Announcement>,
    /// Why it is not announced (reason: message), when the speakers say so.
    pub not_announced: Option<String>,
}

/// A Service waiting for an IP.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingView {
    /// `namespace/name`.
    pub service: String,
    /// The `ferrolb.io/IPAllocated` reason, or `NoCondition` when none was written.
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// Since when (condition `lastTransitionTime`, or the Service's creation).
    pub since: Option<String>,
}

/// Builds the report from what the cluster shows.
pub fn report(snap: &Snapshot) -> StatusReport {
    let mut speakers: Vec<SpeakerView> = snap.reports.iter().map(speaker_view).collect();
    speakers.sort_by(|a, b| a.node.cmp(&b.node));
    let mut pools: Vec<PoolView> = snap.pools.iter().map(pool_view).collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));

    let alloc = snap.allocator();
    let mut holders: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    let mut announced: BTreeMap<IpAddr, Announcement> = BTreeMap::new();
    let mut silent: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut pending = Vec::new();
    for svc in snap.handled_services() {
        let key = key_of(svc);
        let ips = status_ips(svc);
        if ips.is_empty() {
            let c = service_condition(svc, conditions::IP_ALLOCATED);
            pending.push(PendingView {
                service: key,
                reason: c.map_or("NoCondition".into(), |c| c.reason.clone()),
                message: c.map_or(
                    "no ferrolb.io/IPAllocated condition yet: is ferrolb-controller running?"
                        .into(),
                    |c| c.message.clone(),
                ),
                since: c.map(|c| c.last_transition_time.0.to_string()).or_else(|| {
                    svc.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                }),
            });
            continue;
        }
        let ann = announcements(svc);
        let off = service_condition(svc, conditions::ANNOUNCED).filter(|c| c.status != "True");
        for ip in ips {
            holders.entry(ip).or_default().insert(key.clone());
            if let Some(a) = ann.get(&ip) {
                announced.entry(ip).or_insert_with(|| a.clone());
            } else if let Some(c) = off {
                silent
                    .entry(ip)
                    .or_insert_with(|| format!("{}: {}", c.reason, c.message));
            }
        }
    }
    let ips = holders
        .into_iter()
        .map(|(ip, services)| {
            let announced = announced.remove(&ip);
            IpView {
                ip,
                pool: alloc.pool_of(ip).map(str::to_owned),
                services: services.into_iter().collect(),
                not_announced: if announced.is_some() {
                    None
                } else {
                    silent.remove(&ip).or_else(|| {
                        Some("no ferrolb.io/Announced condition: are the speakers running?".into())
                    })
                },
                announced,
            }
        })
        .collect();
    pending.sort_by(|a, b| a.service.cmp(&b.service));
    StatusReport {
        pools,
        ips,
        pending,
        speakers,
    }
}

fn pool_view(p: &IPAddressPool) -> PoolView {
    let status = p.status.clone().unwrap_or_default();
    let addrs = PoolAddresses::parse(&p.spec.addresses)
        .ok()
        .or_else(|| PoolAddresses::parse(&status.last_valid_addresses).ok())
        .unwrap_or_default();
    let usage = |f: Family, assigned: i64, available: i64| {
        (addrs.has(f) || assigned > 0 || available > 0).then_some(Usage {
            assigned,
            available,
        })
    };
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY);
    PoolView {
        name: p.metadata.name.clone().unwrap_or_default(),
        addresses: p.spec.addresses.clone(),
        ipv4: usage(Family::V4, status.assigned_ipv4, status.available_ipv4),
        ipv6: usage(Family::V6, status.assigned_ipv6, status.available_ipv6),
        ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
        problem: ready
            .filter(|c| c.status != "True")
            .map(|c| format!("{}: {}", c.reason, c.message)),
        conditions: status.conditions.iter().map(CondView::from).collect(),
    }
}

fn usage_cell(u: Option<Usage>) -> String {
    match u {
        None => "-".into(),
        Some(u) if u.available == i64::MAX => format!("{} used, 2^63+ free", u.assigned),
        Some(u) => format!("{} used, {} free", u.assigned, u.available),
    }
}

/// The report as aligned tables.
pub fn render(r: &StatusReport, now: Timestamp) -> String {
    let mut out = String::new();
    out.push_str("POOLS\n");
    if r.pools.is_empty() {
        out.push_str("(no IPAddressPool)\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.addresses.join(","),
                    usage_cell(p.ipv4),
                    usage_cell(p.ipv6),
                    match &p.problem {
                        Some(why) => format!("{} ({why})", p.ready),
                        None => p.ready.clone(),
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["NAME", "ADDRESSES", "IPV4", "IPV6", "READY"],
            &rows,
        ));
    }
    out.push_str("\nLOADBALANCER IPS\n");
    if r.ips.is_empty() {
        out.push_str("(none)\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .ips
            .iter()
            .map(|i| {
                let (node, ifs, since) = match &i.announced {
                    Some(a) => (
                        a.node.clone(),
                        or_dash(&a.interfaces.join(",")),
                        format!("{} ({})", a.since, age(&a.since, now)),
                    ),
                    None => (
                        "-".into(),
                        "-".into(),
                        i.not_announced.clone().unwrap_or_default(),
                    ),
                };
                vec![
                    i.ip.to_string(),
                    i.pool.clone().unwrap_or_else(|| "(none)".into()),
                    i.services.join(","),
                    node,
                    ifs,
                    since,
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "IP",
                "POOL",
                "SERVICES",
                "ANNOUNCED BY",
                "INTERFACES",
                "SINCE / WHY NOT",
            ],
            &rows,
        ));
    }
    out.push_str("\nPENDING SERVICES\n");
    if r.pending.is_empty() {
        out.push_str("(none)\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .pending
            .iter()
            .map(|p| {
                vec![
                    p.service.clone(),
                    p.reason.clone(),
                    p.since.as_deref().map_or("-".into(), |s| age(s, now)),
                    p.message.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["SERVICE", "REASON", "FOR", "MESSAGE"], &rows));
    }
    out.push_str("\nSPEAKERS (NodeAnnouncements)\n");
    if r.speakers.is_empty() {
        out.push_str("(none: no speaker has reported; are the speakers running?)\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .speakers
            .iter()
            .map(|s| {
                vec![
                    s.node.clone(),
                    s.serving.to_string(),
                    s.announces.to_string(),
                    or_dash(&s.counts_out.join(",")),
                    s.reason.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&table(
            &["NODE", "SERVING", "ANNOUNCES", "COUNTS OUT", "WHY NOT"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;

    fn snapshot() -> Snapshot {
        let lan = with_status(
            pool("lan", &["203.0.113.0/28", "2001:db8:1::/126"]),
            (2, 14),
            true,
        );
        let bad = with_status(pool("bad", &["203.0.113.64/26"]), (0, 0), false);
        let web = add_cond(
            svc("default", "web", &["203.0.113.1"]),
            cond(
                "ferrolb.io/Announced",
                true,
                "Announced",
                "node n1 announces 203.0.113.1 on eth0",
                "2025-01-01T11:00:00Z",
            ),
        );
        let dns_a = add_cond(
            svc("dns", "udp", &["203.0.113.2"]),
            cond(
                "ferrolb.io/Announced",
                false,
                "NoEligibleNode",
                "not announced: no eligible node (1 node): no live speaker: n1",
                "2025-01-01T11:00:00Z",
            ),
        );
        let dns_b = svc("dns", "tcp", &["203.0.113.2"]);
        let pending = add_cond(
            svc("default", "waiting", &[]),
            cond(
                "ferrolb.io/IPAllocated",
                false,
                "PoolExhausted",
                "no free address for default/waiting: pool \"lan\" has no free IPv4 address",
                "2025-01-01T11:30:00Z",
            ),
        );
        let mut other_class = svc("default", "other", &["203.0.113.3"]);
        other_class.spec.as_mut().unwrap().load_balancer_class = Some("example.com/x".into());
        Snapshot {
            pools: vec![lan, bad],
            services: vec![web, dns_b, dns_a, pending, other_class],
            lb_class: ferrolb_crds::DEFAULT_LB_CLASS.into(),
            ..Default::default()
        }
    }

    #[test]
    fn speakers_are_listed_from_their_reports() {
        use ferrolb_crds::{
            IpReport, NodeAnnouncement, NodeAnnouncementSpec, PeerIncarnation, ServiceReport,
        };
        let mut snap = snapshot();
        let mut a = NodeAnnouncement::new(
            "n1",
            NodeAnnouncementSpec {
                incarnation: "1".into(),
                serving: true,
                services: vec![ServiceReport {
                    service: "default/web".into(),
                    ips: vec![
                        IpReport {
                            ip: "203.0.113.1".into(),
                            node: Some("n1".into()),
                            ..Default::default()
                        },
                        IpReport {
                            ip: "2001:db8::1".into(),
                            node: Some("n2".into()),
                            ..Default::default()
                        },
                    ],
                }],
                down: vec![PeerIncarnation {
                    node: "n3".into(),
                    incarnation: "9".into(),
                }],
                ..Default::default()
            },
        );
        a.metadata.name = Some("n1".into());
        let mut b = NodeAnnouncement::new(
            "n2",
            NodeAnnouncementSpec {
                incarnation: "2".into(),
                reason: Some("HearNobody".into()),
                ..Default::default()
            },
        );
        b.metadata.name = Some("n2".into());
        snap.reports = vec![b, a];
        let r = report(&snap);
        assert_eq!(
            r.speakers,
            [
                SpeakerView {
                    node: "n1".into(),
                    serving: true,
                    reason: None,
                    announces: 1,
                    counts_out: vec!["n3".into()],
                },
                SpeakerView {
                    node: "n2".into(),
                    serving: false,
                    reason: Some("HearNobody".into()),
                    announces: 0,
                    counts_out: vec![],
                }
            ]
        );
        let text = render(&r, Timestamp::from_second(1_735_732_800).unwrap());
        assert!(text.contains("SPEAKERS"), "{text}");
        let n2 = text.lines().find(|l| l.starts_with("n2 ")).unwrap();
        assert!(n2.contains("false") && n2.contains("HearNobody"), "{n2}");
    }

    #[test]
    fn report_joins_pools_ips_announcers_and_pending() {
        let r = report(&snapshot());
        assert_eq!(
            r.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["bad", "lan"]
        );
        let lan = &r.pools[1];
        assert_eq!(
            lan.ipv4,
            Some(Usage {
                assigned: 2,
                available: 14
            })
        );
        assert!(lan.ipv6.is_some(), "the pool has IPv6 addresses");
        assert_eq!(r.pools[0].ready, "False");
        assert!(
            r.pools[0]
                .problem
                .as_deref()
                .unwrap()
                .starts_with("Invalid")
        );
        assert_eq!(r.pools[0].ipv6, None);

        assert_eq!(r.ips.len(), 2, "another class's Service is not ours");
        let web = &r.ips[0];
        assert_eq!(web.pool.as_deref(), Some("lan"));
        assert_eq!(web.announced.as_ref().unwrap().node, "n1");
        let shared = &r.ips[1];
        assert_eq!(shared.services, ["dns/tcp", "dns/udp"]);
        assert!(
            shared
                .not_announced
                .as_deref()
                .unwrap()
                .starts_with("NoEligibleNode")
        );
        assert_eq!(r.pending.len(), 1);
        assert_eq!(r.pending[0].reason, "PoolExhausted");
    }

    #[test]
    fn table_is_aligned_and_says_since_when() {
        let now = t("2025-01-01T12:00:00Z");
        let text = render(&report(&snapshot()), now);
        assert!(text.contains("2 used, 14 free"), "{text}");
        assert!(
            text.contains("eth0        2025-01-01T11:00:00Z (60m)"),
            "{text}"
        );
        assert!(
            text.contains("default/waiting  PoolExhausted  30m"),
            "{text}"
        );
        let header = text.lines().find(|l| l.starts_with("IP ")).unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("203.0.113.1 "))
            .unwrap();
        assert_eq!(header.find("POOL"), row.find("lan"), "{text}");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(report(&snapshot())).unwrap();
        assert_eq!(v["pools"][1]["ipv4"]["assigned"], 2);
        assert_eq!(v["ips"][0]["announced"]["node"], "n1");
        assert_eq!(v["pending"][0]["service"], "default/waiting");
    }
}
