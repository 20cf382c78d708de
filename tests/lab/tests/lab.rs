//! Lab end-to-end tests: real speakers, controller and API server in network namespaces.
//!
//! Needs root (CAP_NET_ADMIN) and the workspace binaries: run
//! `cargo build --workspace --bins && cargo test -p ferrolb-lab`. Without root every test
//! fails with a message saying so; none passes silently. Timings are printed, never asserted.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_lab::objects::EXCLUDE_LB_LABEL;
use ferrolb_lab::packet::Kind;
use ferrolb_lab::stats::{ms, summarize};
use ferrolb_lab::{Family, Lab, LabConfig, Observer, ProbeConfig, Signal, Svc};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const CLIENT: &str = "client1";
const PORT: u16 = 80;

/// A 3-node lab with pool `default` announced everywhere.
fn lab() -> Lab {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.default_pool().expect("default pool");
    lab
}

/// Creates `svc` and waits for `want` ingress IPs.
fn service(lab: &Lab, svc: &Svc, want: usize) -> Vec<IpAddr> {
    lab.create_service(svc).expect("create service");
    lab.wait_ingress(svc, want, Duration::from_secs(20))
        .expect("ingress IPs")
}

/// Waits (≤ 15 s) until a TCP connection to `ip` is answered by a node `accept`s.
fn reach(
    lab: &Lab,
    ip: IpAddr,
    port: u16,
    accept: impl Fn(&str) -> bool + Send + 'static,
) -> String {
    lab.connect_until(
        CLIENT,
        ip,
        port,
        Instant::now() + Duration::from_secs(15),
        accept,
    )
    .unwrap_or_else(|e| panic!("client cannot reach {ip}:{port}: {e:#}"))
    .1
}

/// Sends `rounds` fresh ARP requests / NSs for `ip` and asserts each got exactly one reply,
/// from `node`'s MAC.
///
/// Right after a configuration edit (selectors, labels, endpoints) each speaker acts when
/// its own watch delivers the change, so the new node may answer a few milliseconds before
/// the old one stops: the rounds start once a single answer from `node` was seen (≤ 1 s).
fn assert_one_answer(lab: &Lab, ip: IpAddr, node: &str, rounds: usize) {
    let want = lab.node_mac(node);
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        let r = lab
            .probe(CLIENT, &[ip], 1, ProbeConfig::count())
            .expect("probe");
        if r[0].replies.len() == 1 && r[0].replies[0].mac == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for r in lab
        .probe(CLIENT, &[ip], rounds, ProbeConfig::count())
        .expect("probe")
    {
        let macs: Vec<String> = r
            .replies
            .iter()
            .map(|x| format!("{} ({:?})", x.mac, lab.node_by_mac(x.mac)))
            .collect();
        assert_eq!(
            r.replies.len(),
            1,
            "exactly one node must answer for {ip}; got {macs:?}"
        );
        assert_eq!(
            r.replies[0].mac, want,
            "{ip} must be answered by {node}; got {macs:?}"
        );
    }
}

/// Waits (≤ 15 s) until a fresh request for `ip` is answered; returns the answering node.
fn wait_answered(lab: &Lab, ip: IpAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = lab
            .probe(CLIENT, &[ip], 1, ProbeConfig::count())
            .expect("probe");
        if let Some(first) = r[0].replies.first() {
            return lab
                .node_by_mac(first.mac)
                .expect("a node's MAC")
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "nobody answers for {ip} 15 s after it should be announced"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (≤ 15 s) until nobody answers requests for `ip`.
fn assert_withdrawn(lab: &Lab, ip: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = lab
            .probe(CLIENT, &[ip], 1, ProbeConfig::count())
            .expect("probe");
        if r[0].replies.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} still answered by {:?} 15 s after it should be withdrawn",
            r[0].replies
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the observer has seen no gratuitous ARP/NA for 1.5 s (at most 10 s).
fn settle(obs: &Observer) {
    obs.wait_quiet(Duration::from_millis(1500), Duration::from_secs(10));
}

fn check_family(family: Family) {
    let lab = lab();
    let obs = lab.observe_lan().expect("LAN observer");
    let svc = Svc::new("web", PORT).family(family);
    let ips = service(&lab, &svc, 1);
    let ip = ips[0];
    assert_eq!(ip.is_ipv6(), family == Family::V6);
    let node = reach(&lab, ip, PORT, |_| true);
    println!("{ip} is answered by {node}");
    assert_eq!(
        lab.client_neigh(CLIENT, ip),
        Some(lab.node_mac(&node)),
        "client's neighbour entry for {ip}"
    );
    assert_one_answer(&lab, ip, &node, 5);
    // Kernel-driven resolution too: forget, reconnect, and look at every reply on the LAN.
    let t = Instant::now();
    lab.client_forget(CLIENT, ip).unwrap();
    assert_eq!(
        lab.client_connect(CLIENT, ip, PORT, Duration::from_secs(3))
            .unwrap(),
        node
    );
    std::thread::sleep(Duration::from_millis(300));
    let answers: Vec<_> = obs
        .since(t)
        .into_iter()
        .filter(|e| {
            matches!(e.kind, Kind::ArpReply | Kind::NeighborAdvertisement)
                && e.answers_for(ip)
                && !e.gratuitous
        })
        .collect();
    assert!(
        !answers.is_empty(),
        "the client's kernel resolved {ip} without a reply on the LAN?"
    );
    assert!(
        answers.iter().all(|e| e.sender_mac == lab.node_mac(&node)),
        "only {node} may answer for {ip}: {answers:?}"
    );
    assert!(
        obs.events()
            .iter()
            .filter(|e| e.answers_for(ip))
            .all(|e| e.sender_mac == lab.node_mac(&node)),
        "another node answered or announced {ip}"
    );
}

#[test]
fn infra_controller_assigns_ip_and_client_reaches_api() {
    let lab = Lab::start(LabConfig {
        speakers: false,
        ..LabConfig::default()
    })
    .expect("lab starts");
    // Through the admin kubeconfig: TLS with a client certificate on a real server.
    let version = lab
        .api_version(CLIENT)
        .expect("client reaches the API server");
    println!(
        "{} API server {} reached from {CLIENT}",
        if lab.real_api() { "external" } else { "test" },
        version.git_version
    );
    // The Nodes look as kubelets and the node lifecycle controller leave them: Ready, with
    // addresses, and untainted (a real server's admission taints new Nodes not-ready).
    for node in lab.list::<Node>(None).expect("list Nodes") {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = node.spec.unwrap_or_default();
        assert_eq!(spec.taints.unwrap_or_default(), [], "taints of {name}");
        let status = node.status.unwrap_or_default();
        assert!(
            status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{name} is Ready"
        );
        assert_eq!(
            status.addresses.unwrap_or_default().len(),
            3,
            "addresses of {name}"
        );
    }
    lab.default_pool().unwrap();
    let ips = service(&lab, &Svc::new("web", PORT).family(Family::Dual), 2);
    println!("assigned {ips:?}");
    assert_eq!(
        ips,
        [
            "203.0.113.10".parse::<IpAddr>().unwrap(),
            "2001:db8:200::10".parse().unwrap()
        ]
    );
}

#[test]
fn ipv4_one_node_answers_and_client_connects() {
    check_family(Family::V4);
}

#[test]
fn ipv6_one_node_answers_and_client_connects() {
    check_family(Family::V6);
}

fn failover_rounds(sig: Signal, rounds: usize) {
    let mut lab = lab();
    let svc = Svc::new("web", PORT).family(Family::Dual);
    let ips = service(&lab, &svc, 2);
    reach(&lab, ips[0], PORT, |_| true);
    reach(&lab, ips[1], PORT, |_| true);
    let obs = lab.observe(CLIENT).expect("observer");
    settle(&obs);
    let (mut garp, mut una, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let f = lab
            .failover(CLIENT, &obs, &ips, PORT, sig, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        println!(
            "round {round}: {sig} {} → {}: connect {} announce {:?}",
            f.old,
            f.new,
            ms(f.connect),
            f.announce
                .iter()
                .map(|(ip, d)| format!("{ip}: {}", d.map(ms).unwrap_or("none".into())))
                .collect::<Vec<_>>()
        );
        assert_ne!(f.new, f.old, "round {round}");
        assert!(
            lab.speaker_alive(&f.new),
            "round {round}: the new announcer {} must run a live speaker",
            f.new
        );
        for (ip, d) in &f.announce {
            let d = d.unwrap_or_else(|| {
                panic!("round {round}: no gratuitous ARP/unsolicited NA for {ip} from the new node")
            });
            if ip.is_ipv4() {
                garp.push(d)
            } else {
                una.push(d)
            }
        }
        if sig == Signal::SIGTERM {
            assert!(
                f.exit.is_some(),
                "round {round}: the speaker did not exit within 10 s of SIGTERM"
            );
        }
        tcp.push(f.connect);
        lab.restart_speaker(&f.old).expect("restart speaker");
        settle(&obs);
    }
    println!(
        "{sig} ×{rounds}: kill → first gratuitous ARP at client: {}",
        summarize(&garp).unwrap()
    );
    println!(
        "{sig} ×{rounds}: kill → first unsolicited NA at client: {}",
        summarize(&una).unwrap()
    );
    println!(
        "{sig} ×{rounds}: kill → first TCP connect served by the new node: {}",
        summarize(&tcp).unwrap()
    );
}

#[test]
fn failover_sigkill_10_rounds() {
    failover_rounds(Signal::SIGKILL, 10);
}

#[test]
fn failover_sigterm_10_rounds() {
    failover_rounds(Signal::SIGTERM, 10);
}

#[test]
fn external_traffic_policy_local_follows_endpoints() {
    let lab = lab();
    // The lab runs no kube-proxy: on a real API server the Service gets a
    // healthCheckNodePort nobody answers (the health check has its own scenario, health.rs).
    let svc = Svc::new("local", PORT)
        .local()
        .endpoints(&["node2"])
        .annotate("ferrolb.io/health-check", "false");
    let ip = service(&lab, &svc, 1)[0];
    assert_eq!(reach(&lab, ip, PORT, |n| n == "node2"), "node2");
    assert_one_answer(&lab, ip, "node2", 3);

    lab.set_endpoints(&svc, &["node3"]).unwrap();
    assert_eq!(reach(&lab, ip, PORT, |n| n == "node3"), "node3");
    assert_one_answer(&lab, ip, "node3", 3);
    assert_eq!(lab.client_neigh(CLIENT, ip), Some(lab.node_mac("node3")));

    lab.set_endpoints(&svc, &[]).unwrap();
    assert_withdrawn(&lab, ip);
}

#[test]
fn exclude_label_moves_the_announcement() {
    let lab = lab();
    let svc = Svc::new("web", PORT);
    let ip = service(&lab, &svc, 1)[0];
    let first = reach(&lab, ip, PORT, |_| true);
    lab.label_node(&first, EXCLUDE_LB_LABEL, Some("true"))
        .unwrap();
    let f2 = first.clone();
    let second = reach(&lab, ip, PORT, move |n| n != f2);
    println!("{EXCLUDE_LB_LABEL} on {first}: {ip} moved to {second}");
    assert_one_answer(&lab, ip, &second, 3);
    // Exclude every node: nobody may answer.
    for n in ["node1", "node2", "node3"] {
        lab.label_node(n, EXCLUDE_LB_LABEL, Some("true")).unwrap();
    }
    assert_withdrawn(&lab, ip);
    lab.label_node(&second, EXCLUDE_LB_LABEL, None).unwrap();
    // The client's stale entry still points at the last announcer, whose kernel accepts the
    // VIP: only a fresh request shows whether the IP is announced again.
    assert_eq!(wait_answered(&lab, ip), second);
    assert_one_answer(&lab, ip, &second, 3);
    assert_eq!(reach(&lab, ip, PORT, |_| true), second);
}

fn on_node(node: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("kubernetes.io/hostname".to_string(), node.to_string())].into()),
        ..Default::default()
    }
}

#[test]
fn l2advertisement_node_selectors_and_interfaces() {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.create_pool("sel", &["203.0.113.200-203.0.113.210"])
        .unwrap();
    let pools = vec!["sel".to_string()];
    let adv = |nodes: Vec<LabelSelector>, interfaces: &[&str]| L2AdvertisementSpec {
        ip_address_pools: pools.clone(),
        node_selectors: nodes,
        interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    lab.apply_l2adv("sel", adv(vec![on_node("node3")], &[]))
        .unwrap();
    let svc = Svc::new("pinned", PORT).pool("sel");
    let ip = service(&lab, &svc, 1)[0];
    assert_eq!(reach(&lab, ip, PORT, |n| n == "node3"), "node3");
    assert_one_answer(&lab, ip, "node3", 3);

    lab.apply_l2adv("sel", adv(vec![on_node("node2")], &[]))
        .unwrap();
    assert_eq!(reach(&lab, ip, PORT, |n| n == "node2"), "node2");
    assert_one_answer(&lab, ip, "node2", 3);

    // No node has the only allowed interface: nobody announces.
    lab.apply_l2adv("sel", adv(vec![], &["eth9"])).unwrap();
    assert_withdrawn(&lab, ip);

    lab.apply_l2adv("sel", adv(vec![], &["eth0"])).unwrap();
    let node = wait_answered(&lab, ip);
    assert_one_answer(&lab, ip, &node, 3);
    assert_eq!(reach(&lab, ip, PORT, |_| true), node);
}

#[test]
fn shared_ip_lands_on_one_node() {
    let lab = lab();
    let a = Svc::new("a", 80).shared("k1");
    let b = Svc::new("b", 8080).shared("k1");
    let ip_a = service(&lab, &a, 1);
    let ip_b = service(&lab, &b, 1);
    assert_eq!(
        ip_a, ip_b,
        "Services with the same sharing key and disjoint ports share the IP"
    );
    let node = reach(&lab, ip_a[0], 80, |_| true);
    assert_eq!(
        lab.client_connect(CLIENT, ip_a[0], 8080, Duration::from_secs(3))
            .unwrap(),
        node
    );
    assert_one_answer(&lab, ip_a[0], &node, 3);
}

/// Keeps connecting for `secs` seconds (every 500 ms) and asserts `node` answers each time.
fn keep_connecting(lab: &Lab, ips: &[IpAddr], node: &str, secs: u64, what: &str) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < end {
        for ip in ips {
            let got = lab
                .client_connect(CLIENT, *ip, PORT, Duration::from_secs(2))
                .unwrap_or_else(|e| {
                    panic!("connection {n} to {ip} failed during the outage: {e:#}")
                });
            assert_eq!(
                got, node,
                "connection {n} to {ip} reached another node during the outage"
            );
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("{n} connections {what}, all answered by {node}");
}

fn assert_no_moves(lab: &Lab, obs: &Observer, ips: &[IpAddr], node: &str, since: Instant) {
    let mac = lab.node_mac(node);
    let moved: Vec<_> = obs
        .since(since)
        .into_iter()
        .filter(|e| ips.iter().any(|ip| e.answers_for(*ip)) && e.sender_mac != mac)
        .collect();
    assert!(
        moved.is_empty(),
        "another node announced or answered during the outage: {moved:?}"
    );
    for ip in ips {
        assert_eq!(
            lab.client_neigh(CLIENT, *ip),
            Some(mac),
            "client's neighbour entry for {ip} changed"
        );
    }
}

#[test]
fn api_frozen_30s_changes_nothing() {
    let mut lab = lab();
    let ips = service(&lab, &Svc::new("web", PORT).family(Family::Dual), 2);
    let node = reach(&lab, ips[0], PORT, |_| true);
    let obs = lab.observe(CLIENT).expect("observer");
    settle(&obs);
    let t = Instant::now();
    lab.freeze_api(true).unwrap();
    keep_connecting(&lab, &ips, &node, 30, "during the outage");
    assert_no_moves(&lab, &obs, &ips, &node, t);
    lab.freeze_api(false).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    keep_connecting(&lab, &ips, &node, 2, "after the outage");
    assert_no_moves(&lab, &obs, &ips, &node, t);
}

/// How long after an API server outage the controller and speakers may take to see a new
/// change. Their watchers back off at most 5 s (`ferrolb_ops::watch`), and a real
/// kube-apiserver's 410 Expired on the resumed watches (its watch cache starts at the
/// current etcd revision) re-lists at once. With kube-runtime's default backoff (cap 30 s,
/// full jitter, 410 counted as a failure) this took up to ~2 min on a real server; this
/// bound fails that.
const WATCH_RECOVERY: Duration = Duration::from_secs(20);

/// The API server stops for 30 s (SIGTERM) and starts again — on a real server on its kept
/// etcd data, on the test server restored by the lab: nothing moves meanwhile or after,
/// and a Service created afterwards is allocated and announced.
#[test]
fn api_stopped_30s_changes_nothing() {
    let mut lab = lab();
    let ips = service(&lab, &Svc::new("web", PORT).family(Family::Dual), 2);
    let node = reach(&lab, ips[0], PORT, |_| true);
    let obs = lab.observe(CLIENT).expect("observer");
    settle(&obs);
    let t = Instant::now();
    lab.stop_api().unwrap();
    let cpu0 = lab.cpu_times();
    keep_connecting(&lab, &ips, &node, 30, "during the outage");
    assert_no_moves(&lab, &obs, &ips, &node, t);
    // Refused connections must be retried with backoff, not in a hot loop.
    let elapsed = t.elapsed();
    let hot: Vec<String> = lab
        .cpu_times()
        .into_iter()
        .filter_map(|(name, cpu)| {
            let share = (cpu - cpu0.get(&name).copied().unwrap_or_default()).as_secs_f64()
                / elapsed.as_secs_f64();
            println!(
                "{name}: {:.1}% of a core while the API server was down",
                share * 100.0
            );
            (share > 0.2).then(|| format!("{name} {:.0}%", share * 100.0))
        })
        .collect();

    // A real server restarts on its etcd; a fresh in-memory one gets the lab's objects
    // back (with their status).
    lab.start_api().unwrap();
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    keep_connecting(&lab, &ips, &node, 2, "after the outage");
    assert_no_moves(&lab, &obs, &ips, &node, t);
    assert_eq!(
        lab.wait_ingress(&Svc::new("web", PORT), 2, Duration::from_secs(5))
            .unwrap(),
        ips,
        "the Service kept its IPs"
    );
    // Controller and speakers watch the new server: a new Service is allocated and announced.
    let after = Svc::new("after", 8080);
    lab.create_service(&after).unwrap();
    let ip2 = lab
        .wait_ingress(
            &after,
            1,
            (back + WATCH_RECOVERY).saturating_duration_since(Instant::now()),
        )
        .expect("a Service created after the restart gets an IP")[0];
    let allocated = back.elapsed();
    let (reached, n2) = lab
        .connect_until(CLIENT, ip2, 8080, back + WATCH_RECOVERY, |_| true)
        .unwrap_or_else(|e| panic!("a Service created after the restart is announced: {e:#}"));
    println!(
        "API server back → new Service allocated after {}, reachable after {}",
        ms(allocated),
        ms(reached - back)
    );
    assert_one_answer(&lab, ip2, &n2, 2);
    // The watchers re-listed (a real server answers the resumed watches with 410 Expired):
    // the Service that was there all along did not move.
    assert_no_moves(&lab, &obs, &ips, &node, t);
    assert!(
        hot.is_empty(),
        "API clients spin while the API server is down (no retry backoff): {hot:?}"
    );
}

/// The node answering `ip` now, by a fresh request that exactly one node must answer.
fn answerer(lab: &Lab, ip: IpAddr) -> String {
    let r = lab
        .probe(CLIENT, &[ip], 1, ProbeConfig::count())
        .expect("probe");
    assert_eq!(
        r[0].replies.len(),
        1,
        "exactly one node must answer for {ip}: {:?}",
        r[0].replies
    );
    lab.node_by_mac(r[0].replies[0].mac)
        .expect("a node's MAC")
        .to_string()
}

#[test]
fn restarted_speaker_announces_only_what_it_wins() {
    let mut lab = lab();
    let svcs: Vec<Svc> = (0..6).map(|i| Svc::new(&format!("s{i}"), PORT)).collect();
    let ips: Vec<IpAddr> = svcs.iter().map(|s| service(&lab, s, 1)[0]).collect();
    for ip in &ips {
        reach(&lab, *ip, PORT, |_| true);
    }
    let obs = lab.observe_lan().expect("LAN observer");
    let mut before: Vec<String> = ips.iter().map(|ip| answerer(&lab, *ip)).collect();
    for node in ["node1", "node2", "node3"] {
        let t = Instant::now();
        lab.restart_speaker(node).expect("restart speaker");
        // It comes back settling: it takes its IPs back after the hold-down (3 s).
        std::thread::sleep(Duration::from_millis(5500));
        let after: Vec<String> = ips.iter().map(|ip| answerer(&lab, *ip)).collect();
        for ((ip, old), new) in ips.iter().zip(&before).zip(&after) {
            assert!(
                new == old || new == node,
                "restarting {node} moved {ip} from {old} to {new}"
            );
            if old == node || new != old {
                // Handed over while it restarted, or won by it afterwards: moves are expected.
                continue;
            }
            let strays: Vec<_> = obs
                .since(t)
                .into_iter()
                .filter(|e| e.answers_for(*ip) && e.sender_mac != lab.node_mac(new))
                .collect();
            assert!(
                strays.is_empty(),
                "restarting {node}: {ip} stays on {new}, yet another node announced or answered it: {:?}",
                strays
                    .iter()
                    .map(|e| (lab.node_by_mac(e.sender_mac), e.kind, e.gratuitous))
                    .collect::<Vec<_>>()
            );
        }
        println!("restarted {node}: announcers {before:?} → {after:?}");
        before = after;
    }
}

#[test]
fn steady_state_api_writes_do_not_grow_with_services() {
    let lab = Lab::start(LabConfig {
        nodes: 2,
        ..LabConfig::default()
    })
    .expect("lab starts");
    lab.create_pool("bulk", &["203.0.113.0/24"]).unwrap();
    lab.apply_l2adv("bulk", L2AdvertisementSpec::default())
        .unwrap();
    let n = 200;
    for i in 0..n {
        lab.create_service(&Svc::new(&format!("s{i}"), PORT))
            .unwrap();
    }
    let won = "ferrolb_speaker_elections{result=\"won\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total: f64 = ["node1", "node2"]
            .iter()
            .map(|node| lab.speaker_metric(node, won).unwrap().unwrap_or(0.0))
            .sum();
        if total >= n as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {n} IPs elected after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));
    let window = Duration::from_secs(10);
    // Write requests (also those that change nothing), as the server counts them: the test
    // server's counters, or a real kube-apiserver's apiserver_request_total.
    let before = lab.write_requests().expect("API write counters");
    let services = lab
        .count_writes::<k8s_openapi::api::core::v1::Service>(window)
        .unwrap();
    let after = lab.write_requests().expect("API write counters");
    let changes: u64 = services.values().sum();
    let writes: Vec<(String, u64)> = after
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                a.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    let requests: u64 = writes.iter().map(|(_, d)| d).sum();
    println!(
        "{n} Services, 2 speakers, {window:?} of steady state: {requests} write requests {writes:?}, {changes} Service changes"
    );
    assert!(
        requests <= n / 10,
        "{requests} API write requests ({changes} Service changes) in {window:?} of steady state with {n} Services: \
         writes must stop once nothing changes (docs/design/election.md#api-writes: API writes never grow with the number of Services)"
    );
}

#[test]
fn speakers_starting_together_elect_one_announcer() {
    let mut lab = lab();
    let ips: Vec<IpAddr> = (0..3)
        .map(|i| service(&lab, &Svc::new(&format!("s{i}"), PORT), 1)[0])
        .collect();
    for ip in &ips {
        reach(&lab, *ip, PORT, |_| true);
    }
    let obs = lab.observe_lan().expect("LAN observer");
    for attempt in 1..=3 {
        let all = ["node1", "node2", "node3"];
        lab.stop_speakers(&all, Signal::SIGKILL);
        let t = Instant::now();
        lab.start_speakers(&all).expect("start speakers");
        std::thread::sleep(Duration::from_secs(2));
        for ip in &ips {
            let now = answerer(&lab, *ip);
            let others: Vec<_> = obs
                .since(t)
                .into_iter()
                .filter(|e| {
                    e.gratuitous && e.answers_for(*ip) && e.sender_mac != lab.node_mac(&now)
                })
                .map(|e| lab.node_by_mac(e.sender_mac).unwrap_or("?").to_string())
                .collect();
            assert!(
                others.is_empty(),
                "attempt {attempt}: after all speakers restarted together, {ip} ended on {now} but {others:?} announced it too"
            );
        }
    }
}

/// Both binaries' `/metrics` move as the lab acts: allocations and pool usage on the
/// controller; elections, ARP replies, gratuitous ARP and peer deaths on the speakers.
#[test]
fn metrics_move_as_the_lab_acts() {
    let mut lab = lab();
    let metric = |lab: &Lab, node: &str, series: &str| {
        lab.speaker_metric(node, series)
            .expect("scrape speaker")
            .unwrap_or(0.0)
    };
    let allocated = "ferrolb_allocations_total{result=\"allocated\",reason=\"Allocated\"}";
    let before = lab
        .controller_metric(allocated)
        .expect("scrape controller")
        .unwrap_or(0.0);
    let ip = service(&lab, &Svc::new("metrics", PORT), 1)[0];
    let node = reach(&lab, ip, PORT, |_| true);
    // Counted once the write returned, which can be a moment after its watch event.
    let deadline = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let n = lab.controller_metric(allocated).unwrap().unwrap_or(0.0);
        if n > before || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counted, before + 1.0, "one allocation counted");
    let assigned = "ferrolb_pool_addresses{pool=\"default\",family=\"IPv4\",state=\"assigned\"}";
    assert_eq!(lab.controller_metric(assigned).unwrap(), Some(1.0));
    assert_eq!(
        metric(&lab, &node, "ferrolb_speaker_elections{result=\"won\"}"),
        1.0
    );

    // A client's ARP requests are counted and answered by the announcer only.
    let arp_replies = "ferrolb_speaker_replies_total{protocol=\"arp\"}";
    let replies0 = metric(&lab, &node, arp_replies);
    assert_one_answer(&lab, ip, &node, 3);
    assert!(
        metric(&lab, &node, arp_replies) >= replies0 + 3.0,
        "ARP replies counted"
    );

    // A failover: the new announcer counts gratuitous ARP and a peer death.
    let grat = "ferrolb_speaker_gratuitous_total{protocol=\"arp\"}";
    let others: Vec<String> = lab
        .nodes()
        .iter()
        .map(|h| h.name.clone())
        .filter(|n| *n != node)
        .collect();
    let grat0: Vec<f64> = others.iter().map(|n| metric(&lab, n, grat)).collect();
    lab.kill_speaker(&node, Signal::SIGKILL).expect("kill");
    let new = reach(&lab, ip, PORT, {
        let old = node.clone();
        move |n| n != old
    });
    let i = others
        .iter()
        .position(|n| *n == new)
        .expect("a surviving node took over");
    assert!(
        metric(&lab, &new, grat) > grat0[i],
        "gratuitous ARP counted on {new}"
    );
    assert!(metric(&lab, &new, "ferrolb_speaker_peer_deaths_total") >= 1.0);
    assert!(metric(&lab, &new, "ferrolb_speaker_heartbeats_accepted_total") > 0.0);
}

/// One node cut from its peers (heartbeats blackholed both ways; ARP still flows): it
/// hears none of them, so it answers nothing while the others take its IPs. After the cut
/// heals it settles for the hold-down, then exactly one node answers each IP — the one
/// the ranking picks — and the client's neighbour entries point at it again.
#[test]
fn partition_between_speakers_heals_to_one_announcer() {
    let lab = lab();
    let ips: Vec<IpAddr> = (0..6)
        .map(|i| service(&lab, &Svc::new(&format!("p{i}"), PORT), 1)[0])
        .collect();
    for ip in &ips {
        reach(&lab, *ip, PORT, |_| true);
    }
    let before: Vec<String> = ips.iter().map(|ip| answerer(&lab, *ip)).collect();
    // Isolate the node announcing the first IP from its peers' heartbeats.
    let cut = before[0].clone();
    let peers: Vec<(String, String)> = lab
        .nodes()
        .iter()
        .map(|h| (h.name.clone(), h.ipv4.to_string()))
        .collect();
    let cut_ip = peers.iter().find(|(n, _)| *n == cut).unwrap().1.clone();
    let routes = |op: &str| {
        for (node, addr) in &peers {
            if *node == cut {
                continue;
            }
            lab.exec(
                &cut,
                &["ip", "route", op, "blackhole", &format!("{addr}/32")],
            )
            .expect("route on the cut node");
            lab.exec(
                node,
                &["ip", "route", op, "blackhole", &format!("{cut_ip}/32")],
            )
            .expect("route on a peer");
        }
    };
    let obs = lab.observe(CLIENT).expect("observer");
    routes("add");
    std::thread::sleep(Duration::from_secs(3));
    // The cut node hears none of its peers: it is the one cut off, so it answers nothing
    // and the others, which still hear each other, take its IPs: one answerer each.
    for ip in &ips {
        let now = answerer(&lab, *ip);
        assert_ne!(now, cut, "{ip}: the cut-off node must not answer");
    }
    let healed = Instant::now();
    routes("del");
    // Back, it settles for the hold-down (3 s) before it takes its IPs back, then announces.
    std::thread::sleep(Duration::from_secs(5));
    // Every owner announced its IPs again after the heal, so clients that learned the
    // other side's MAC come back.
    let after = obs.since(healed);
    for (ip, owner) in ips.iter().zip(&before) {
        assert!(
            after.iter().any(|e| e.gratuitous
                && e.answers_for(*ip)
                && lab.node_by_mac(e.sender_mac) == Some(owner.as_str())),
            "{owner} must announce {ip} again after the heal (cut node: {cut})"
        );
    }
    for (ip, owner) in ips.iter().zip(&before) {
        assert_eq!(
            &answerer(&lab, *ip),
            owner,
            "{ip} after the partition healed"
        );
        let mac = lab.client_neigh(CLIENT, *ip);
        assert_eq!(
            mac,
            Some(lab.node_mac(owner)),
            "the client's neighbour entry for {ip} points at {owner} again"
        );
    }
}
