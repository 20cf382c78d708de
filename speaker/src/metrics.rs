//! The speaker's Prometheus metrics. Data-plane counters (ARP/NDP requests, replies,
//! drops by reason, gratuitous sent) are read from the data plane at scrape time;
//! elections and takeovers are recorded as the speaker acts. The IPs this node announces
//! (`ferrolb_speaker_announced`, one series per IP and Service) are the last election
//! table's, replaced as a whole, so an IP this node gave up disappears at the next scrape.
//!
//! ```text
//!   set_table(table, me) ──▶ won/lost/none counts (ferrolb_speaker_elections)
//!                       └──▶ [(ip, service)] this node announces ──scrape──▶ ferrolb_speaker_announced
//! ```

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::Table;
use crate::dataplane::DataPlane;
use crate::liveness::Liveness;

type Labels = Vec<(String, String)>;

/// Handles to the speaker's metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct Metrics {
    api_errors: Family<Labels, Counter>,
    elections: Family<Labels, Gauge>,
    takeovers: Counter,
    takeover_seconds: Histogram,
    cut_off: Gauge,
    plane: Arc<OnceLock<Arc<DataPlane>>>,
    liveness: Arc<OnceLock<Arc<Liveness>>>,
    announced: Arc<Mutex<Announced>>,
}

/// What this node announced at the last election: its name and every (IP, Service) pair.
#[derive(Debug, Default)]
struct Announced {
    node: String,
    pairs: Vec<(IpAddr, String)>,
    /// IPs won but not answered: another host uses them (left out of the series).
    withheld: std::collections::BTreeSet<IpAddr>,
}

impl Metrics {
    /// Registers every speaker metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            api_errors: Family::default(),
            elections: Family::default(),
            takeovers: Counter::default(),
            takeover_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.35, 0.5, 1.0, 2.5, 5.0,
            ]),
            cut_off: Gauge::default(),
            plane: Arc::new(OnceLock::new()),
            liveness: Arc::new(OnceLock::new()),
            announced: Arc::default(),
        };
        registry.register(
            "ferrolb_speaker_api_errors",
            "Failed API calls, by class",
            m.api_errors.clone(),
        );
        registry.register(
            "ferrolb_speaker_elections",
            "IPs by election outcome on this node: won (this node announces), lost (a peer does), none (nobody)",
            m.elections.clone(),
        );
        registry.register(
            "ferrolb_speaker_takeovers",
            "Times this node took over IPs after a peer died or left",
            m.takeovers.clone(),
        );
        registry.register(
            "ferrolb_speaker_takeover_seconds",
            "From the departed peer's last heartbeat (or its LEAVING) to this node's first gratuitous ARP/unsolicited NA for its IPs",
            m.takeover_seconds.clone(),
        );
        registry.register(
            "ferrolb_speaker_cut_off",
            "1 while this speaker is cut off from its peers' heartbeats (it hears none, or none hears it) and so announces nothing",
            m.cut_off.clone(),
        );
        registry.register_collector(Box::new(PlaneCollector {
            plane: m.plane.clone(),
            liveness: m.liveness.clone(),
        }));
        registry.register_collector(Box::new(AnnouncedCollector {
            announced: m.announced.clone(),
        }));
        m
    }

    /// Reads data-plane counters from `plane` at every scrape.
    pub fn attach_dataplane(&self, plane: Arc<DataPlane>) {
        let _ = self.plane.set(plane);
    }

    /// Reads heartbeat counters from `liveness` at every scrape.
    pub fn attach_liveness(&self, liveness: Arc<Liveness>) {
        let _ = self.liveness.set(liveness);
    }

    /// Whether this speaker is cut off from its peers (and so announces nothing).
    pub fn set_cut_off(&self, cut_off: bool) {
        self.cut_off.set(i64::from(cut_off));
    }

    /// Counts a failed API call.
    pub fn api_error(&self, class: &str) {
        self.api_errors
            .get_or_create(&vec![("class".into(), class.into())])
            .inc();
    }

    /// Records a takeover of `ips` addresses that took `took` to announce.
    pub fn takeover(&self, _ips: u64, took: Duration) {
        self.takeovers.inc();
        self.takeover_seconds.observe(took.as_secs_f64());
    }

    /// Publishes the election outcome for this node.
    pub fn set_table(&self, table: &Table, me: &str) {
        let (mut won, mut lost, mut none) = (0, 0, 0);
        for d in table.ips().values() {
            match d.announcer() {
                Some(n) if n == me => won += 1,
                Some(_) => lost += 1,
                None => none += 1,
            }
        }
        for (k, v) in [("won", won), ("lost", lost), ("none", none)] {
            self.elections
                .get_or_create(&vec![("result".into(), k.into())])
                .set(v);
        }
        // Per Service, as each Service sees it: a sharing Service whose own view is "not
        // announced" is not listed even when a sibling gets the IP announced.
        let pairs = table
            .services()
            .iter()
            .flat_map(|(svc, ips)| {
                ips.iter()
                    .filter(|(_, d)| d.announcer() == Some(me))
                    .map(move |(ip, _)| (*ip, svc.clone()))
            })
            .collect();
        let mut a = self.announced.lock().expect("announced lock");
        a.node = me.to_owned();
        a.pairs = pairs;
    }
}

impl Metrics {
    /// The IPs this node won but does not answer for because another host uses them: they
    /// leave `ferrolb_speaker_announced` (which says what this node answers for).
    pub fn set_withheld(&self, ips: std::collections::BTreeSet<IpAddr>) {
        self.announced.lock().expect("announced lock").withheld = ips;
    }
}

/// `ferrolb_speaker_announced{ip, service, node}`: 1 for every IP this node answers for,
/// per Service holding it. Across all speakers, `count by (ip)` of distinct nodes above 1
/// means two announcers; a Service IP absent here has none.
#[derive(Debug)]
struct AnnouncedCollector {
    announced: Arc<Mutex<Announced>>,
}

impl Collector for AnnouncedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<Labels> = {
            let a = self.announced.lock().expect("announced lock");
            a.pairs
                .iter()
                .filter(|(ip, _)| !a.withheld.contains(ip))
                .map(|(ip, svc)| {
                    vec![
                        ("ip".to_string(), ip.to_string()),
                        ("service".to_string(), svc.clone()),
                        ("node".to_string(), a.node.clone()),
                    ]
                })
                .collect()
        };
        let probe: ConstGauge<i64> = ConstGauge::new(1);
        let mut m = encoder.encode_descriptor(
            "ferrolb_speaker_announced",
            "1 for every IP this node announces (answers ARP/NDP for), per Service holding it",
            None,
            probe.metric_type(),
        )?;
        for labels in rows {
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Data-plane and heartbeat counters, copied at scrape time.
struct PlaneCollector {
    plane: Arc<OnceLock<Arc<DataPlane>>>,
    liveness: Arc<OnceLock<Arc<Liveness>>>,
}

impl std::fmt::Debug for PlaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaneCollector").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let probe: ConstCounter<u64> = ConstCounter::new(0);
    let mut m = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels (`name_total v`, not `name_total{} v`).
fn plain_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c: ConstCounter<u64> = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

impl Collector for PlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(live) = self.liveness.get() {
            let c = live.counters();
            let one = |v| vec![(Vec::new(), v)];
            counter(
                &mut encoder,
                "ferrolb_speaker_heartbeats_sent",
                "Heartbeats sent to peers",
                &one(c.sent),
            )?;
            counter(
                &mut encoder,
                "ferrolb_speaker_heartbeats_accepted",
                "Valid heartbeats received",
                &one(c.accepted),
            )?;
            let rejected: Vec<(Labels, u64)> = [
                ("bad_tag", c.rejected_bad_tag),
                ("bad_signature", c.rejected_bad_signature),
                ("stale", c.rejected_stale),
                ("malformed", c.rejected_malformed),
                ("version", c.rejected_version),
                ("unknown_node", c.rejected_unknown_node),
                ("unknown_source", c.rejected_unknown_source),
                ("rate_limited", c.rejected_rate_limited),
            ]
            .into_iter()
            .map(|(r, v)| (vec![("reason".to_string(), r.to_string())], v))
            .collect();
            counter(
                &mut encoder,
                "ferrolb_speaker_heartbeats_rejected",
                "Heartbeats rejected, by reason (bad_tag = wrong key or forgery)",
                &rejected,
            )?;
            let (sum, count, buckets) = c.gap_histogram();
            encoder
                .encode_descriptor(
                    "ferrolb_speaker_heartbeat_gap_seconds",
                    "Time between two heartbeats received from one peer (above the timeout, it looked dead)",
                    None,
                    prometheus_client::metrics::MetricType::Histogram,
                )?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
            counter(
                &mut encoder,
                "ferrolb_speaker_peer_deaths",
                "Peers declared dead (silence or LEAVING)",
                &one(c.peer_deaths),
            )?;
            counter(
                &mut encoder,
                "ferrolb_speaker_isolations",
                "Times this speaker suspected its own network and froze its view",
                &one(c.isolations),
            )?;
        }
        let Some(plane) = self.plane.get() else {
            return Ok(());
        };
        let s = plane.counters();
        let lbl = |p: &str| vec![("protocol".to_string(), p.to_string())];
        let protos = [("arp", &s.arp), ("ndp", &s.ndp)];
        let rows = |f: fn(&crate::dataplane::ProtoSnapshot) -> u64| -> Vec<(Labels, u64)> {
            protos.iter().map(|(p, c)| (lbl(p), f(c))).collect()
        };
        counter(
            &mut encoder,
            "ferrolb_speaker_requests",
            "ARP requests / Neighbor Solicitations received",
            &rows(|c| c.requests),
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_replies",
            "ARP replies / Neighbor Advertisements sent",
            &rows(|c| c.replies),
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_gratuitous",
            "Gratuitous ARP / unsolicited Neighbor Advertisements sent",
            &rows(|c| c.announcements),
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_send_errors",
            "Frames the socket refused",
            &rows(|c| c.send_errors),
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_receive_errors",
            "Responder socket read errors other than timeouts (the responder retries after 20 ms)",
            &rows(|c| c.recv_errors),
        )?;
        plain_counter(
            &mut encoder,
            "ferrolb_speaker_responder_open_errors",
            "ARP/NDP responder sockets (or their threads) that could not be opened; the interface stays dark until the next change",
            s.open_errors,
        )?;
        plain_counter(
            &mut encoder,
            "ferrolb_speaker_multicast_join_errors",
            "Solicited-node multicast groups the NDP responder could not join (Neighbor Solicitations for those IPv6 addresses may be filtered by the NIC)",
            s.join_errors,
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_conflict_probes",
            "Address conflict probes sent (ARP probes from 0.0.0.0, DAD Neighbor Solicitations from ::)",
            &rows(|c| c.probes),
        )?;
        counter(
            &mut encoder,
            "ferrolb_speaker_address_conflicts_detected",
            "Times another host (a MAC of no FerroLB node) was found using an IP this node was to announce",
            &rows(|c| c.conflicts),
        )?;
        let withheld = ConstGauge::new(i64::try_from(plane.conflict_count()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "ferrolb_speaker_address_conflicts",
            "IPs this node wins but does not announce because another host uses them (docs/troubleshooting.md#address-conflicts)",
            None,
            withheld.metric_type(),
        )?;
        withheld.encode(m)?;
        let mut drops = Vec::new();
        for (p, c) in protos {
            for (reason, v) in &c.drops {
                let mut l = lbl(p);
                l.push(("reason".into(), (*reason).into()));
                drops.push((l, *v));
            }
        }
        counter(
            &mut encoder,
            "ferrolb_speaker_drops",
            "Received frames not answered, by reason",
            &drops,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::core::{Decision, NotAnnouncedReason};

    fn announce(node: &str) -> Decision {
        Decision::Announce {
            node: node.into(),
            interfaces: BTreeSet::from(["eth0".to_string()]).into(),
        }
    }

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn announced_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("ferrolb_speaker_announced"))
            .collect()
    }

    #[test]
    fn announced_lists_this_nodes_ips_per_service_and_forgets_given_up_ones() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let v4: IpAddr = "203.0.113.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        let other: IpAddr = "203.0.113.11".parse().unwrap();
        let lonely: IpAddr = "203.0.113.12".parse().unwrap();
        let table = Table {
            ips: BTreeMap::from([
                (v4, announce("node1")),
                (v6, announce("node1")),
                (other, announce("node2")),
                (
                    lonely,
                    Decision::NotAnnounced {
                        reason: NotAnnouncedReason::NoServingEndpoints,
                    },
                ),
            ]),
            services: BTreeMap::from([
                (
                    "default/a".to_string(),
                    BTreeMap::from([(v4, announce("node1")), (v6, announce("node1"))]),
                ),
                (
                    "default/b".to_string(),
                    BTreeMap::from([(v4, announce("node1"))]),
                ),
                (
                    "default/c".to_string(),
                    BTreeMap::from([(other, announce("node2"))]),
                ),
            ]),
        };
        m.set_table(&table, "node1");
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE ferrolb_speaker_announced gauge"),
            "{text}"
        );
        assert_eq!(
            announced_lines(&text),
            [
                r#"ferrolb_speaker_announced{ip="203.0.113.10",service="default/a",node="node1"} 1"#,
                r#"ferrolb_speaker_announced{ip="2001:db8::10",service="default/a",node="node1"} 1"#,
                r#"ferrolb_speaker_announced{ip="203.0.113.10",service="default/b",node="node1"} 1"#,
            ]
        );

        // Another host uses v4: node1 does not answer for it, so it is not listed.
        m.set_withheld(BTreeSet::from([v4]));
        assert_eq!(
            announced_lines(&encode(&registry)),
            [r#"ferrolb_speaker_announced{ip="2001:db8::10",service="default/a",node="node1"} 1"#]
        );
        m.set_withheld(BTreeSet::new());

        // node2 takes everything over: node1's series vanish instead of staying at 1.
        let mut moved = table.clone();
        for d in moved
            .ips
            .values_mut()
            .chain(moved.services.values_mut().flat_map(|m| m.values_mut()))
        {
            if d.announcer().is_some() {
                *d = announce("node2");
            }
        }
        m.set_table(&moved, "node1");
        assert_eq!(announced_lines(&encode(&registry)), Vec::<&str>::new());
    }

    #[test]
    fn responder_error_counters_are_exported() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.attach_dataplane(Arc::new(DataPlane::new(Default::default())));
        let text = encode(&registry);
        for line in [
            "# TYPE ferrolb_speaker_receive_errors counter",
            r#"ferrolb_speaker_receive_errors_total{protocol="arp"} 0"#,
            r#"ferrolb_speaker_receive_errors_total{protocol="ndp"} 0"#,
            "# TYPE ferrolb_speaker_responder_open_errors counter",
            "ferrolb_speaker_responder_open_errors_total 0",
            "# TYPE ferrolb_speaker_multicast_join_errors counter",
            "ferrolb_speaker_multicast_join_errors_total 0",
            r#"ferrolb_speaker_drops_total{protocol="arp",reason="vlan_tagged"} 0"#,
            r#"ferrolb_speaker_drops_total{protocol="ndp",reason="withheld"} 0"#,
            r#"ferrolb_speaker_conflict_probes_total{protocol="arp"} 0"#,
            r#"ferrolb_speaker_address_conflicts_detected_total{protocol="ndp"} 0"#,
            "# TYPE ferrolb_speaker_address_conflicts gauge",
            "ferrolb_speaker_address_conflicts 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
