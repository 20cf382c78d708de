use super::*;
use ferrolb_crds::{IpReport, PeerIncarnation};

mod conflicts;

const IP4: &str = "203.0.113.5";
const IP6: &str = "2001:db8::5";

fn ip(ip: &str, node: Option<&str>) -> IpReport {
    match node {
        Some(n) => IpReport {
            ip: ip.into(),
            node: Some(n.into()),
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
        None => IpReport {
            ip: ip.into(),
            reason: Some("NoServingEndpoints".into()),
            message: Some("not announced: no serving endpoints".into()),
            ..Default::default()
        },
    }
}

fn report(incarnation: &str, serving: bool, services: Vec<ServiceReport>) -> NodeAnnouncementSpec {
    NodeAnnouncementSpec {
        incarnation: incarnation.into(),
        serving,
        reason: (!serving).then(|| "HearNobody".into()),
        down: Vec::new(),
        services,
    }
}

fn web(ips: Vec<IpReport>) -> ServiceReport {
    ServiceReport {
        service: "ns/web".into(),
        ips,
    }
}

fn down(mut r: NodeAnnouncementSpec, node: &str, incarnation: &str) -> NodeAnnouncementSpec {
    r.down.push(PeerIncarnation {
        node: node.into(),
        incarnation: incarnation.into(),
    });
    r
}

fn fresh(pairs: &[(&str, &str)]) -> BTreeMap<String, SpeakerLease> {
    pairs
        .iter()
        .map(|(n, i)| {
            (
                n.to_string(),
                SpeakerLease {
                    incarnation: Some(i.to_string()),
                    fresh: true,
                },
            )
        })
        .collect()
}

fn reports(r: Vec<(&str, NodeAnnouncementSpec)>) -> BTreeMap<String, NodeAnnouncementSpec> {
    r.into_iter().map(|(n, r)| (n.to_string(), r)).collect()
}

fn set(v: &Verdict) -> (bool, &str, &str) {
    match v {
        Verdict::Set {
            status,
            reason,
            message,
            ..
        } => (*status, reason, message),
        Verdict::Unknown => panic!("unknown"),
    }
}

#[test]
fn the_announcing_node_is_named_with_its_interfaces() {
    let r = reports(vec![
        (
            "n1",
            report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
        ),
        ("n2", report("2", true, vec![])),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    let v = f.verdict("ns/web");
    assert_eq!(
        set(&v),
        (true, "Announced", "node n1 announces 203.0.113.5 on eth0")
    );
    assert_eq!(
        v,
        Verdict::Set {
            status: true,
            reason: "Announced".into(),
            message: "node n1 announces 203.0.113.5 on eth0".into(),
            holder: Some("n1".into()),
            conflicts: Vec::new(),
        }
    );
    assert_eq!(
        f.verdict("ns/other"),
        Verdict::Unknown,
        "nobody reports it yet"
    );
}

#[test]
fn one_family_announced_is_partial_and_says_why() {
    let r = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![ip(IP4, Some("n1")), ip(IP6, None)])],
        ),
    )]);
    let f = Fold::new(&r, &fresh(&[("n1", "1")]));
    assert_eq!(
        set(&f.verdict("ns/web")),
        (
            true,
            "PartiallyAnnounced",
            "node n1 announces 203.0.113.5 on eth0; 2001:db8::5 not announced: no serving endpoints"
        )
    );
}

#[test]
fn nobody_announcing_is_explained_by_the_serving_reporter() {
    let r = reports(vec![
        ("n1", report("1", true, vec![web(vec![ip(IP4, None)])])),
        ("n2", report("2", true, vec![])),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    assert_eq!(
        set(&f.verdict("ns/web")),
        (
            false,
            "NoServingEndpoints",
            "not announced: no serving endpoints"
        )
    );
}

/// After a crash, the dead node's report still claims its IPs; the peer that took them over
/// counts that incarnation out, so only the new announcer is named: no false split.
#[test]
fn a_crashed_nodes_stale_claim_is_counted_out_by_the_peer_that_took_over() {
    let r = reports(vec![
        (
            "n1",
            report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
        ),
        (
            "n2",
            down(
                report("2", true, vec![web(vec![ip(IP4, Some("n2"))])]),
                "n1",
                "1",
            ),
        ),
    ]);
    let leases = fresh(&[("n1", "1"), ("n2", "2")]);
    let f = Fold::new(&r, &leases);
    assert_eq!(f.counted().collect::<Vec<_>>(), ["n2"]);
    assert_eq!(
        set(&f.verdict("ns/web")),
        (true, "Announced", "node n2 announces 203.0.113.5 on eth0")
    );
    // n1 restarted (new incarnation): n2's judgement was about the old one; n1's old
    // report is stale until it writes a new one.
    let leases = fresh(&[("n1", "9"), ("n2", "2")]);
    let f = Fold::new(&r, &leases);
    assert_eq!(f.counted().collect::<Vec<_>>(), ["n2"]);
}

/// Two serving nodes that count each other out and both claim the IP: that is the
/// two-announcer state issue 9 forbids, shown as such, never hidden.
#[test]
fn two_nodes_counting_each_other_out_and_claiming_one_ip_is_a_split() {
    let r = reports(vec![
        (
            "n1",
            down(
                report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
                "n2",
                "2",
            ),
        ),
        (
            "n2",
            down(
                report("2", true, vec![web(vec![ip(IP4, Some("n2"))])]),
                "n1",
                "1",
            ),
        ),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    let v = f.verdict("ns/web");
    let (status, reason, message) = set(&v);
    assert!(!status);
    assert_eq!(reason, SPLIT);
    assert!(
        message.starts_with("203.0.113.5 is announced by n1 and n2 at once"),
        "{message}"
    );
}

/// A speaker that is itself cut off hears nobody and counts everyone out: its judgement
/// must not silence the serving nodes' reports.
#[test]
fn a_cut_off_speaker_counts_nobody_out() {
    let cut = down(down(report("3", false, vec![]), "n1", "1"), "n2", "2");
    let r = reports(vec![
        (
            "n1",
            report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
        ),
        ("n2", report("2", true, vec![])),
        ("n3", cut),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2"), ("n3", "3")]));
    assert_eq!(f.counted().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert_eq!(
        set(&f.verdict("ns/web")),
        (true, "Announced", "node n1 announces 203.0.113.5 on eth0")
    );
}

/// Every speaker cut off: the condition says so, naming each one's cause.
#[test]
fn when_no_speaker_serves_the_condition_names_each_ones_cause() {
    let r = reports(vec![
        ("n1", report("1", false, vec![])),
        ("n2", {
            let mut r = report("2", false, vec![]);
            r.reason = Some("NobodyHearsUs".into());
            r
        }),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    assert_eq!(
        set(&f.verdict("ns/web")),
        (
            false,
            NO_SPEAKER,
            "no speaker is serving (n1: HearNobody, n2: NobodyHearsUs)"
        )
    );
}

#[test]
fn reports_without_a_fresh_lease_do_not_count() {
    let r = reports(vec![(
        "n1",
        report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
    )]);
    let mut leases = fresh(&[("n1", "1")]);
    leases.get_mut("n1").unwrap().fresh = false;
    let f = Fold::new(&r, &leases);
    assert_eq!(f.counted().count(), 0);
    assert_eq!(set(&f.verdict("ns/web")).1, NO_SPEAKER);
    // No speaker Lease at all (no speaker was ever installed): nothing to say.
    let f = Fold::new(&r, &BTreeMap::new());
    assert_eq!(f.verdict("ns/web"), Verdict::Unknown);
    // A Lease without an incarnation (an older speaker) counts its report.
    let leases = BTreeMap::from([(
        "n1".to_string(),
        SpeakerLease {
            incarnation: None,
            fresh: true,
        },
    )]);
    assert_eq!(
        set(&Fold::new(&r, &leases).verdict("ns/web")).1,
        "Announced"
    );
}

/// Dual-stack Services whose families two nodes announce (each its own) name both.
#[test]
fn families_announced_by_different_nodes_name_both() {
    let r = reports(vec![
        (
            "n1",
            report(
                "1",
                true,
                vec![web(vec![ip(IP4, Some("n1")), ip(IP6, Some("n2"))])],
            ),
        ),
        (
            "n2",
            report(
                "2",
                true,
                vec![web(vec![ip(IP4, Some("n1")), ip(IP6, Some("n2"))])],
            ),
        ),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    assert_eq!(
        set(&f.verdict("ns/web")),
        (
            true,
            "Announced",
            "node n1 announces 203.0.113.5 on eth0; node n2 announces 2001:db8::5 on eth0"
        )
    );
}

#[test]
fn the_transition_time_moves_with_the_announcer_and_a_takeover_is_noted() {
    let t1 = Timestamp::from_second(100).unwrap();
    let t2 = Timestamp::from_second(200).unwrap();
    let by = |n: &str| Verdict::Set {
        status: true,
        reason: "Announced".into(),
        message: format!("node {n} announces 203.0.113.5 on eth0"),
        holder: Some(n.into()),
        conflicts: Vec::new(),
    };
    let (c1, note) = condition(&by("n1"), None, Some(3), t1).unwrap();
    assert_eq!(c1.last_transition_time.0, t1);
    assert_eq!(c1.observed_generation, Some(3));
    assert!(note.unwrap().ends_with("(took over)"));
    assert_eq!(
        condition(&by("n1"), Some(&c1), Some(3), t2),
        None,
        "no change"
    );
    let (c2, note) = condition(&by("n2"), Some(&c1), Some(3), t2).unwrap();
    assert_eq!(c2.last_transition_time.0, t2, "a new announcer");
    assert!(note.is_some());
    // The same holder on another interface: the time stays, no takeover.
    let mut v = by("n2");
    if let Verdict::Set { message, .. } = &mut v {
        *message = "node n2 announces 203.0.113.5 on eth1".into();
    }
    let (c3, note) = condition(
        &v,
        Some(&c2),
        Some(3),
        t2 + k8s_openapi::jiff::SignedDuration::from_secs(5),
    )
    .unwrap();
    assert_eq!(c3.last_transition_time.0, t2);
    assert_eq!(note, None);
    assert_eq!(condition(&Verdict::Unknown, Some(&c3), None, t2), None);
}

fn lease(node: &str, renew: i64, incarnation: &str) -> LeaseInfo {
    LeaseInfo {
        node: node.into(),
        renew: Some(Timestamp::from_second(renew).unwrap()),
        duration: Duration::from_secs(90),
        incarnation: Some(incarnation.into()),
    }
}

/// Freshness is judged on the controller's clock from when a renewal is seen; the first
/// sight is back-dated by the age renewTime shows, so a long-dead speaker is not fresh
/// because the controller restarted.
#[test]
fn lease_freshness_follows_renewals_seen_on_the_controllers_clock() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let wall = |secs: i64| Timestamp::from_second(1_000_000 + secs).unwrap();
    let mut clock = LeaseClock::default();
    clock.observe(
        [
            lease("alive", 1_000_000 - 10, "1"),
            lease("dead", 1_000_000 - 3600, "2"),
            lease("skewed", 1_000_000 + 600, "3"),
        ],
        t0,
        wall(0),
    );
    let sp = clock.speakers(t0);
    assert!(sp["alive"].fresh && !sp["dead"].fresh && sp["skewed"].fresh);
    assert_eq!(sp["alive"].incarnation.as_deref(), Some("1"));
    // 80 s later, "alive" (renewed 10 s before first sight) is 90 s old: stale; "skewed"
    // counts from first sight (its renewTime lies in the future).
    let sp = clock.speakers(t0 + s(80));
    assert!(!sp["alive"].fresh && sp["skewed"].fresh);
    assert_eq!(clock.next_expiry(t0 + s(1)), Some(t0 + s(80)));
    // A renewal seen brings it back, whatever its renewTime says (the node's clock).
    clock.observe(
        [lease("alive", 5, "1"), lease("dead", 1_000_000 - 3600, "2")],
        t0 + s(85),
        wall(85),
    );
    let sp = clock.speakers(t0 + s(100));
    assert!(sp["alive"].fresh && !sp["dead"].fresh);
    assert!(!sp.contains_key("skewed"), "a deleted Lease is forgotten");
}

fn svc(name: &str, ips: &[&str], rv: &str) -> Service {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..Default::default()
        }),
        status: Some(ServiceStatus {
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
        }),
    }
}

#[test]
fn the_planner_writes_each_change_once_and_waits_out_a_brief_split() {
    let t = Timestamp::from_second(100).unwrap();
    let c0 = Instant::now();
    let one = reports(vec![(
        "n1",
        report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
    )]);
    let leases = fresh(&[("n1", "1"), ("n2", "2")]);
    let mut p = Planner::default();
    let web_svc = svc("web", &[IP4], "5");
    let ws = p.plan(&Fold::new(&one, &leases), [&web_svc], "x", t, c0);
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].resource_version.as_deref(), Some("5"));
    assert_eq!(ws[0].conditions[0].reason, "Announced");
    assert!(ws[0].takeover.is_some());
    // Same version again (the watch has not shown our write yet): nothing.
    assert!(
        p.plan(&Fold::new(&one, &leases), [&web_svc], "x", t, c0)
            .is_empty()
    );
    // A failed write is retried.
    p.failed(&ws[0].key);
    assert_eq!(
        p.plan(&Fold::new(&one, &leases), [&web_svc], "x", t, c0)
            .len(),
        1
    );

    // Both claim the IP: nothing is written during the grace, the split after it.
    let both = reports(vec![
        (
            "n1",
            down(
                report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
                "n2",
                "2",
            ),
        ),
        (
            "n2",
            down(
                report("2", true, vec![web(vec![ip(IP4, Some("n2"))])]),
                "n1",
                "1",
            ),
        ),
    ]);
    let f = Fold::new(&both, &leases);
    assert!(p.plan(&f, [&web_svc], "x", t, c0).is_empty());
    assert!(
        p.plan(&f, [&web_svc], "x", t, c0 + Duration::from_secs(2))
            .is_empty()
    );
    let ws = p.plan(&f, [&web_svc], "x", t, c0 + SPLIT_GRACE);
    assert_eq!(ws[0].conditions[0].reason, SPLIT);

    // A Service without IPs loses the condition it carries; others' conditions stay.
    let mut gone = svc("gone", &[], "9");
    let other = Condition {
        type_: "example.com/Other".into(),
        ..ws[0].conditions[0].clone()
    };
    gone.status.as_mut().unwrap().conditions =
        Some(vec![other.clone(), ws[0].conditions[0].clone()]);
    let ws = p.plan(&Fold::new(&one, &leases), [&gone], "x", t, c0);
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].conditions, [other]);
}

#[test]
fn a_service_with_accepted_external_ips_gets_the_condition_too() {
    let t = Timestamp::from_second(100).unwrap();
    let one = reports(vec![(
        "n1",
        report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
    )]);
    let leases = fresh(&[("n1", "1")]);
    let ext = |reason: &str| {
        let mut s = svc("web", &[], "5");
        let spec = s.spec.as_mut().unwrap();
        spec.type_ = Some("ClusterIP".into());
        spec.external_ips = Some(vec![IP4.into()]);
        s.status.as_mut().unwrap().conditions = Some(vec![crate::pool::condition(
            &[],
            ferrolb_crds::conditions::EXTERNAL_IPS,
            reason != "NamespaceNotAllowed",
            reason,
            "",
            None,
            t,
        )]);
        s
    };
    let mut p = Planner::default();
    let accepted = ext("Accepted");
    let ws = p.plan(
        &Fold::new(&one, &leases),
        [&accepted],
        "x",
        t,
        Instant::now(),
    );
    assert_eq!(ws.len(), 1);
    assert!(ws[0].conditions.iter().any(|c| c.reason == "Announced"));
    // Refused: no Announced condition (nothing of ours to announce).
    let mut p = Planner::default();
    let refused = ext("NamespaceNotAllowed");
    assert!(
        p.plan(
            &Fold::new(&one, &leases),
            [&refused],
            "x",
            t,
            Instant::now()
        )
        .is_empty()
    );
}

/// Speakers heartbeat only their group (docs/failover.md#who-heartbeats-whom): when every
/// node that may announce a Service is down, the speakers that serve do not report it.
/// Once the announcer's report stops counting, the condition says so after the grace,
/// instead of naming a dead announcer forever; a Service never reported stays untouched.
#[test]
fn an_announced_service_no_serving_speaker_reports_turns_false_after_the_grace() {
    let t = Timestamp::from_second(100).unwrap();
    let c0 = Instant::now();
    let claimed = reports(vec![
        (
            "n1",
            report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
        ),
        ("n9", report("9", true, vec![])),
    ]);
    let leases = fresh(&[("n1", "1"), ("n9", "9")]);
    let mut p = Planner::default();
    let mut web_svc = svc("web", &[IP4], "5");
    let ws = p.plan(&Fold::new(&claimed, &leases), [&web_svc], "x", t, c0);
    assert_eq!(ws[0].conditions[0].status, "True");
    web_svc.status.as_mut().unwrap().conditions = Some(ws[0].conditions.clone());
    web_svc.metadata.resource_version = Some("6".into());
    // n1's Lease goes stale; n9 serves in another group and does not mention web.
    let mut stale = leases.clone();
    stale.get_mut("n1").unwrap().fresh = false;
    let f = Fold::new(&claimed, &stale);
    assert_eq!(f.verdict("ns/web"), Verdict::Unknown);
    assert!(p.plan(&f, [&web_svc], "x", t, c0).is_empty());
    let ws = p.plan(&f, [&web_svc], "x", t, c0 + SPLIT_GRACE);
    assert_eq!(ws.len(), 1);
    let c = &ws[0].conditions[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", NOT_REPORTED)
    );
    // Reported again (n1 restarted): announced again.
    let ws = p.plan(
        &Fold::new(&claimed, &leases),
        [&web_svc],
        "x",
        t,
        c0 + SPLIT_GRACE * 2,
    );
    assert!(
        ws.is_empty(),
        "the condition still says True on this version"
    );
    // A Service never reported (no condition yet) is left alone.
    let new_svc = svc("new", &[IP4], "7");
    assert!(
        p.plan(&f, [&new_svc], "x", t, c0 + SPLIT_GRACE * 3)
            .is_empty()
    );
}
