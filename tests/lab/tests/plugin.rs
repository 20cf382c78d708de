//! `kubectl ferrolb` against the lab: what the plugin says is what the LAN shows. The
//! announcing node that `status` and `explain` name is the node whose MAC answers the
//! client's ARP/NDP, and `explain` gives the pool the IP came from.
//!
//! Runs the workspace's `kubectl-ferrolb` binary (`cargo build --workspace --bins`) with the
//! lab's kubeconfig; needs root like the rest of the lab.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_lab::lab::LEASE_NAMESPACE;
use ferrolb_lab::{Family, Lab, LabConfig, Svc};

const CLIENT: &str = "client1";
const PORT: u16 = 8080;

/// Runs the plugin inside a node's namespace (where the lab's API server is reachable)
/// with the lab's kubeconfig; returns stdout, failing on a non-zero exit.
fn plugin(lab: &Lab, args: &[&str]) -> String {
    let bin = ferrolb_lab::proc::binary("kubectl-ferrolb").expect("kubectl-ferrolb is built");
    let kubeconfig = format!("KUBECONFIG={}", lab.kubeconfig().display());
    let bin = bin.to_string_lossy().into_owned();
    let mut cmd = vec!["env", kubeconfig.as_str(), bin.as_str()];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["--speaker-namespace", LEASE_NAMESPACE]);
    lab.exec("node1", &cmd)
        .unwrap_or_else(|e| panic!("kubectl ferrolb {args:?} failed: {e:#}"))
}

#[test]
fn status_and_explain_name_the_node_that_answers() {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.default_pool().expect("default pool");
    let svc = Svc::new("web", PORT).family(Family::Dual);
    lab.create_service(&svc).expect("create service");
    let ips: Vec<IpAddr> = lab
        .wait_ingress(&svc, 2, Duration::from_secs(20))
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
    // The speakers write their Announced condition shortly after they announce.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = plugin(&lab, &["status"]);
        let announced_line = s
            .lines()
            .find(|l| l.contains(&ips[0].to_string()) && l.contains(&node));
        if announced_line.is_some() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("$ kubectl ferrolb status\n{status}");
    for ip in &ips {
        let line = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&ip.to_string()))
            .unwrap_or_else(|| panic!("status lists {ip}:\n{status}"));
        assert!(
            line.contains("default/web") && line.contains(&node),
            "status names the Service and the node that answers ({node}) for {ip}: {line}"
        );
    }

    // Every node's speaker reports itself serving, and the answering node announces both IPs.
    let speakers = status
        .split("SPEAKERS")
        .nth(1)
        .unwrap_or_else(|| panic!("status lists the speakers:\n{status}"));
    for n in lab.nodes() {
        let row = speakers
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n.name.as_str()))
            .unwrap_or_else(|| panic!("no SPEAKERS row for {}:\n{status}", n.name));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "true", "{} serves: {row}", n.name);
        if n.name == node {
            assert_eq!(cols[2], "2", "{node} announces both IPs: {row}");
        }
    }

    let explain = plugin(&lab, &["explain", "svc/web", "-n", "default"]);
    println!("$ kubectl ferrolb explain svc/web -n default\n{explain}");
    assert!(
        explain.contains(&ips[0].to_string()),
        "explain gives the IP:\n{explain}"
    );
    let elected = explain
        .lines()
        .find(|l| l.contains("elected"))
        .unwrap_or_else(|| panic!("explain names an elected node:\n{explain}"));
    assert!(
        elected.contains(&node),
        "explain elects the node that answers ({node}): {elected}"
    );

    let json = plugin(&lab, &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("status -o json is JSON");
    assert!(v.is_object(), "{json}");
}
