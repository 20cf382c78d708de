//! The `ferrolb.io/Announced` condition, folded by the controller from the speakers'
//! NodeAnnouncements, against the LAN: it names the node whose MAC answers the client, it
//! follows a crash failover without ever naming two nodes, and every speaker reports.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::NodeAnnouncement;
use ferrolb_crds::conditions::ANNOUNCED;
use ferrolb_lab::{Family, Lab, LabConfig, Svc};
use k8s_openapi::api::core::v1::Service;
use nix::sys::signal::Signal;

const CLIENT: &str = "client1";
const PORT: u16 = 8080;

/// The Announced condition's (status, reason, message), if any.
fn announced(lab: &Lab, svc: &Svc) -> Option<(String, String, String)> {
    let s: Service = lab.get(Some(&svc.namespace), &svc.name).ok()?;
    let c = s
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == ANNOUNCED)?;
    Some((c.status, c.reason, c.message))
}

/// Polls until the condition says `node` announces, failing with what it last said.
/// Every condition seen on the way is returned (none may name two nodes).
fn wait_announced_by(
    lab: &Lab,
    svc: &Svc,
    node: &str,
    timeout: Duration,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let c = announced(lab, svc);
        if let Some(c) = &c {
            if seen.last() != Some(c) {
                seen.push(c.clone());
            }
            if c.0 == "True" && c.2.starts_with(&format!("node {node} announces ")) {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the Announced condition never named {node}; last {c:?}, seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which nodes' reports claim `ip`.
fn claimers(lab: &Lab, ip: IpAddr) -> Vec<String> {
    let reports: Vec<NodeAnnouncement> = lab.list(None).expect("list NodeAnnouncements");
    reports
        .into_iter()
        .filter(|r| {
            let me = r.metadata.name.clone().unwrap_or_default();
            r.spec.services.iter().any(|s| {
                s.ips
                    .iter()
                    .any(|i| i.ip == ip.to_string() && i.node.as_deref() == Some(&me))
            })
        })
        .filter_map(|r| r.metadata.name)
        .collect()
}

/// A lab with one Service of `family` (`n` IPs), served on every node, once the client
/// reaches it and the condition names the node that answers: (lab, Service, IPs, node).
fn announced_service(family: Family, n: usize) -> (Lab, Svc, Vec<IpAddr>, String) {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.default_pool().expect("default pool");
    let svc = Svc::new("web", PORT).family(family);
    lab.create_service(&svc).expect("create service");
    let ips = lab
        .wait_ingress(&svc, n, Duration::from_secs(20))
        .expect("ingress IPs");
    lab.serve_port(PORT).expect("serve");
    let (_, node) = lab
        .connect_until(
            CLIENT,
            ips[0],
            PORT,
            Instant::now() + Duration::from_secs(15),
            |_| true,
        )
        .expect("the client reaches the Service");
    wait_announced_by(&lab, &svc, &node, Duration::from_secs(15));
    (lab, svc, ips, node)
}

#[test]
fn announced_condition_names_the_answering_node_and_follows_a_crash() {
    let (mut lab, svc, ips, node) = announced_service(Family::Dual, 2);
    let (_, reason, message) = announced(&lab, &svc).unwrap();
    assert_eq!(reason, "Announced", "{message}");
    for ip in &ips {
        assert!(message.contains(&ip.to_string()), "{message} names {ip}");
    }
    // Every speaker reports; exactly the answering node claims the IP.
    let reports: Vec<NodeAnnouncement> = lab.list(None).unwrap();
    let mut names: Vec<String> = reports
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    let mut nodes: Vec<String> = lab.nodes().iter().map(|h| h.name.clone()).collect();
    nodes.sort();
    assert_eq!(names, nodes, "one NodeAnnouncement per node");
    assert!(reports.iter().all(|r| r.spec.serving), "{reports:?}");
    assert_eq!(claimers(&lab, ips[0]), std::slice::from_ref(&node));

    // SIGKILL the announcer: its report still claims the IPs (it cannot withdraw), the
    // survivor that takes over counts it out, and the condition moves to the survivor
    // without ever saying SplitAnnouncement.
    lab.kill_speaker(&node, Signal::SIGKILL).expect("kill");
    let old = node.clone();
    let (_, next) = lab
        .connect_until(
            CLIENT,
            ips[0],
            PORT,
            Instant::now() + Duration::from_secs(15),
            move |n| n != old,
        )
        .expect("another node answers");
    let seen = wait_announced_by(&lab, &svc, &next, Duration::from_secs(15));
    assert!(
        seen.iter().all(|c| c.1 != "SplitAnnouncement"),
        "a crash takeover is not a split: {seen:?}"
    );
    let dead: NodeAnnouncement = lab.get(None, &node).unwrap();
    let survivor: NodeAnnouncement = lab.get(None, &next).unwrap();
    assert!(
        survivor
            .spec
            .down
            .iter()
            .any(|d| d.node == node && d.incarnation == dead.spec.incarnation),
        "the survivor counts the dead incarnation out: {:?}",
        survivor.spec.down
    );

    // The killed speaker restarts (new incarnation): it reports again, serving, and no
    // condition names two nodes for the IP.
    lab.restart_speaker(&node).expect("restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: NodeAnnouncement = lab.get(None, &node).unwrap();
        if r.spec.serving && r.spec.incarnation != dead.spec.incarnation {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted speaker never reported serving: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let (status, reason, message) = announced(&lab, &svc).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Announced"),
        "{message}"
    );
    assert_eq!(claimers(&lab, ips[0]).len(), 1);
}

/// Graceful shutdown: the leaving speaker's report says so and claims nothing.
#[test]
fn a_stopped_speaker_reports_that_it_announces_nothing() {
    let (mut lab, svc, ips, node) = announced_service(Family::V4, 1);
    lab.kill_speaker(&node, Signal::SIGTERM).expect("stop");
    lab.wait_speaker_exit(&node, Duration::from_secs(10));
    let r: NodeAnnouncement = lab.get(None, &node).unwrap();
    assert!(!r.spec.serving, "{r:?}");
    assert_eq!(r.spec.reason.as_deref(), Some("ShuttingDown"));
    assert!(r.spec.services.is_empty(), "{r:?}");
    let old = node.clone();
    let (_, next) = lab
        .connect_until(
            CLIENT,
            ips[0],
            PORT,
            Instant::now() + Duration::from_secs(15),
            move |n| n != old,
        )
        .expect("another node answers");
    wait_announced_by(&lab, &svc, &next, Duration::from_secs(15));
}
