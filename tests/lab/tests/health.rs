//! Data-path health for `externalTrafficPolicy: Local` against the LAN: each node's
//! kube-proxy health check (played by [`ferrolb_lab::health_server`] on the Service's
//! `healthCheckNodePort`) answers 200, then 503, then refuses; the IP leaves the failing
//! node for a healthy one with a local endpoint within the probe interval (1 s) plus a
//! Lease round trip, and comes back only after the 3 s hold-down of passing checks. When no
//! node with an endpoint passes, nobody answers and the Announced condition says why.
//!
//! Needs root and the workspace binaries (`cargo build --workspace --bins`), like every
//! lab test.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_lab::health_server::{HealthChecks, Mode};
use ferrolb_lab::status_log::announced;
use ferrolb_lab::{Lab, LabConfig, ProbeConfig, Svc};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

const CLIENT: &str = "client1";
const PORT: u16 = 80;
/// The health-check port when the API server allocates none (the built-in one does not).
const CHECK_PORT: u16 = 31_256;
/// The speaker's hold-down of passing checks (crate::health::DEFAULT_HOLD_DOWN).
const HOLD_DOWN: Duration = Duration::from_secs(3);
/// Probe interval (1 s) + probe timeout (0.5 s) + Lease write and watch, with margin.
const MOVE_WITHIN: Duration = Duration::from_secs(3);

/// Creates the Local Service with endpoints on node1 and node2, gives it a health-check
/// port, and starts the health checks (all passing). Returns its IP and the checks.
fn setup(lab: &Lab) -> (Svc, IpAddr, HealthChecks) {
    lab.default_pool().expect("default pool");
    let svc = Svc::new("web", PORT).local().endpoints(&["node1", "node2"]);
    lab.create_service(&svc).expect("create service");
    let s: Service = lab.get(Some(&svc.namespace), &svc.name).expect("service");
    let port = match s.spec.and_then(|sp| sp.health_check_node_port) {
        Some(p) => u16::try_from(p).expect("a port"),
        None => {
            lab.patch::<Service>(
                Some(&svc.namespace),
                &svc.name,
                json!({"spec": {"healthCheckNodePort": CHECK_PORT}}),
            )
            .expect("set healthCheckNodePort");
            CHECK_PORT
        }
    };
    let checks = HealthChecks::start(lab, &svc, port).expect("health checks");
    let ip = lab
        .wait_ingress(&svc, 1, Duration::from_secs(20))
        .expect("ingress")[0];
    (svc, ip, checks)
}

/// Connects until a node `accept`s answers (≤ `within`); returns when and who.
fn reach_within(
    lab: &Lab,
    ip: IpAddr,
    within: Duration,
    accept: impl Fn(&str) -> bool + Send + 'static,
) -> (Instant, String) {
    lab.connect_until(CLIENT, ip, PORT, Instant::now() + within, accept)
        .unwrap_or_else(|e| panic!("{ip}: {e:#}"))
}

/// Connects every 50 ms for `during` and asserts `node` answers each time.
fn stays_on(lab: &Lab, ip: IpAddr, node: &str, during: Duration) {
    let end = Instant::now() + during;
    while Instant::now() < end {
        let got = lab
            .client_connect(CLIENT, ip, PORT, Duration::from_millis(500))
            .unwrap_or_else(|e| format!("no answer: {e:#}"));
        assert_eq!(got, node, "{ip} must stay on {node} during the hold-down");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_health_check_moves_the_ip_and_the_hold_down_brings_it_back() {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    let (svc, ip, checks) = setup(&lab);
    // A speaker may probe the port before the checks listen (refused: failing) and then
    // pass only after the hold-down; the IP settles on its ranked node after that.
    std::thread::sleep(HOLD_DOWN + Duration::from_millis(1500));
    let (_, first) = reach_within(&lab, ip, Duration::from_secs(15), |_| true);
    assert_ne!(first, "node3", "node3 has no local endpoint");
    let other = if first == "node1" { "node2" } else { "node1" };

    for failure in [Mode::NotServing, Mode::Refused] {
        // Fails: the IP moves to the healthy node with an endpoint.
        let t0 = Instant::now();
        checks.set(&first, failure);
        let want = other.to_string();
        let (at, node) = reach_within(&lab, ip, MOVE_WITHIN, move |n| n == want);
        println!(
            "{failure:?} on {first}: {ip} served by {node} after {:?}",
            at - t0
        );

        // Passes again: not back before the hold-down, back after it.
        let t1 = Instant::now();
        checks.set(&first, Mode::Serving);
        stays_on(&lab, ip, other, HOLD_DOWN - Duration::from_millis(200));
        let want = first.clone();
        let (at, _) = reach_within(&lab, ip, HOLD_DOWN + MOVE_WITHIN, move |n| n == want);
        println!(
            "{first} healthy again: {ip} back after {:?} (hold-down {HOLD_DOWN:?})",
            at - t1
        );
        assert!(at - t1 >= HOLD_DOWN - Duration::from_millis(200));
    }

    // No node with an endpoint passes: nobody answers, and the condition says why.
    checks.set("node1", Mode::NotServing);
    checks.set("node2", Mode::Refused);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = lab
            .probe(CLIENT, &[ip], 1, ProbeConfig::count())
            .expect("probe");
        let cond = announced(&lab, &svc);
        let says = cond.as_ref().is_some_and(|c| {
            c.status == "False" && c.message.contains("kube-proxy health check failing")
        });
        if r[0].replies.is_empty() && says {
            println!("no healthy node: {cond:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} still answered ({:?}) or condition {cond:?}",
            r[0].replies
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ferrolb.io/health-check: "false"`: a failing check moves nothing.
#[test]
fn an_opted_out_service_ignores_the_health_check() {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.default_pool().expect("default pool");
    let svc = Svc::new("web", PORT)
        .local()
        .endpoints(&["node1", "node2"])
        .annotate("ferrolb.io/health-check", "false");
    lab.create_service(&svc).expect("create service");
    lab.patch::<Service>(
        Some(&svc.namespace),
        &svc.name,
        json!({"spec": {"healthCheckNodePort": CHECK_PORT}}),
    )
    .ok();
    let s: Service = lab.get(Some(&svc.namespace), &svc.name).expect("service");
    let port = s
        .spec
        .and_then(|sp| sp.health_check_node_port)
        .map_or(CHECK_PORT, |p| u16::try_from(p).expect("a port"));
    let checks = HealthChecks::start(&lab, &svc, port).expect("health checks");
    let ip = lab
        .wait_ingress(&svc, 1, Duration::from_secs(20))
        .expect("ingress")[0];
    let (_, first) = reach_within(&lab, ip, Duration::from_secs(15), |_| true);
    checks.set(&first, Mode::NotServing);
    stays_on(&lab, ip, &first, Duration::from_secs(3));
}
