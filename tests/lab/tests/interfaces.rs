//! Issue 10 item 5 in the lab: which of a node's interfaces answer for an IP.
//!
//! ```text
//!   client1 eth0 ─┬─ raw frames: ARP / NS tagged 802.1Q 100, 802.1ad 200, QinQ 200/100
//!                 │      ▼ bridge (switch namespace)
//!   node1   eth0 ─┴─ (+ eth0.100 in part 2, not allowed by the advertisement)
//!           eth1 ─── a second port on the same bridge: `arp off`, then on, then with a
//!                    subnet holding the pool
//! ```
//!
//! - `vlan_tagged_requests_on_the_parent_are_not_answered_untagged`: a tagged request for
//!   an announced IP reaches the node's `eth0` (the node's own capture sees it) but nothing
//!   answers it, neither when the node has no VLAN device for the tag (the kernel marks the
//!   frame OTHERHOST) nor when it has one that the advertisement does not allow (this part
//!   needs a kernel with 802.1Q, CONFIG_VLAN_8021Q; without it, it prints SKIPPED and why).
//! - `noarp_interfaces_are_skipped`: an `arp off` port is not used (the speaker logs why);
//!   once `arp on`, it answers too (both allowed interfaces answer when neither holds the IP's
//!   subnet).
//! - `the_interface_whose_subnet_holds_the_ip_answers_alone`: with a pool subnet on `eth1`,
//!   only `eth1` answers for the pool's IPs; without it, both again.
//!
//! One node, so the announcer is known. Needs root and the workspace binaries:
//! `cargo build --workspace --bins && cargo nextest run -p ferrolb-lab --test interfaces`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_lab::Observer;
use ferrolb_lab::packet::{self, Kind, Seen};
use ferrolb_lab::{Family, Lab, LabConfig, Svc, netns};
use pnet_base::MacAddr;
use serde_json::Value;

const CLIENT: &str = "client1";
const NODE: &str = "node1";
const PORT: u16 = 80;
/// How long a sweep listens for replies.
const WINDOW: Duration = Duration::from_millis(300);
/// Longest wait for the speaker to follow a link or address change.
const FOLLOW: Duration = Duration::from_secs(10);

/// A one-node lab with a dual-stack Service announced by it; returns the lab and the
/// Service's IPv4 and IPv6 addresses, once the client gets exactly node1's answer for both.
fn one_node_dual_stack() -> (Lab, Vec<IpAddr>) {
    let lab = Lab::start(LabConfig {
        nodes: 1,
        ..Default::default()
    })
    .expect("lab starts");
    lab.default_pool().expect("default pool");
    let svc = Svc::new("web", PORT).family(Family::Dual);
    lab.create_service(&svc).expect("create service");
    let ips = lab
        .wait_ingress(&svc, 2, Duration::from_secs(20))
        .expect("ingress IPs");
    let node_only = vec![vec![NODE.to_string()]; ips.len()];
    wait_answerers(&lab, &ips, &node_only, "before the test");
    (lab, ips)
}

/// Polls the client's view of who answers `ips` until it is `want`, or fails after
/// [`FOLLOW`] with the last view.
fn wait_answerers(lab: &Lab, ips: &[IpAddr], want: &[Vec<String>], when: &str) {
    let deadline = Instant::now() + FOLLOW;
    let started = Instant::now();
    loop {
        let got = lab.answerers(CLIENT, ips, WINDOW).expect("sweep");
        if got == want {
            println!("{when}: answerers {got:?} after {:?}", started.elapsed());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: answerers of {ips:?} are {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip(ns: &str, args: &[&str]) {
    netns::ip_in(ns, args).unwrap_or_else(|e| panic!("ip {args:?} in {ns}: {e:#}"));
}

/// The MAC of `iface` in `ns`.
fn mac_of(ns: &str, iface: &str) -> MacAddr {
    let out = netns::ip_in(ns, &["-j", "link", "show", "dev", iface]).expect("ip link show");
    let links: Vec<Value> = serde_json::from_str(&out).expect("ip -j output");
    links[0]["address"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MAC on {iface}: {out}"))
}

/// Adds a second port `eth1` to `node`, on the lab bridge (created down, with `arp off`
/// when `noarp`, then brought up); returns its MAC. It goes with the namespaces.
fn second_port(lab: &Lab, node: &str, noarp: bool) -> MacAddr {
    let switch = lab.ns("switch");
    let bridges: Vec<Value> = serde_json::from_str(
        &netns::ip_in(&switch, &["-j", "link", "show", "type", "bridge"]).expect("bridges"),
    )
    .expect("ip -j output");
    let bridge = bridges[0]["ifname"]
        .as_str()
        .expect("the lab bridge")
        .to_string();
    let node_ns = lab.ns(node);
    let port = format!("p-{node}-e1");
    ip(
        &switch,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth1", "netns", &node_ns,
        ],
    );
    ip(&switch, &["link", "set", &port, "master", &bridge, "up"]);
    if noarp {
        ip(&node_ns, &["link", "set", "eth1", "arp", "off"]);
    }
    ip(&node_ns, &["link", "set", "eth1", "up"]);
    mac_of(&node_ns, "eth1")
}

/// The speaker's log without terminal colour codes.
fn speaker_log(lab: &Lab, node: &str) -> String {
    let raw =
        std::fs::read_to_string(lab.dir().join(format!("speaker-{node}.log"))).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until a line of the speaker's log contains every one of `parts`; returns it.
fn wait_log_line(lab: &Lab, node: &str, parts: &[&str]) -> String {
    let deadline = Instant::now() + FOLLOW;
    loop {
        let log = speaker_log(lab, node);
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no speaker log line with {parts:?}; last lines:\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replies (ARP reply / solicited NA, not announcements) for one of `ips` seen since `t`.
fn replies_since(obs: &Observer, t: Instant, ips: &[IpAddr]) -> Vec<Seen> {
    obs.since(t)
        .into_iter()
        .filter(|s| {
            matches!(s.kind, Kind::ArpReply | Kind::NeighborAdvertisement)
                && !s.gratuitous
                && ips.iter().any(|ip| s.answers_for(*ip))
        })
        .collect()
}

/// `frame` with a VLAN tag (`tpid`, `vid`) inserted after the Ethernet addresses.
fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Sends every frame as is on `iface` in `ns` (a raw socket: the kernel adds nothing).
fn send_raw(ns: &str, iface: &str, frames: Vec<Vec<u8>>) {
    let iface = iface.to_string();
    netns::in_ns(ns, move || {
        let nic = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
            .expect("interface in the namespace");
        let mut tx = match pnet_datalink::channel(&nic, Default::default()).expect("raw socket") {
            pnet_datalink::Channel::Ethernet(tx, _) => tx,
            _ => panic!("not an Ethernet channel"),
        };
        for f in &frames {
            tx.send_to(f, None)
                .expect("a buffer")
                .expect("raw frame sent");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .expect("enter the client namespace");
}

/// Tags: 802.1Q VLAN 100, 802.1ad VLAN 200, and 802.1ad 200 over 802.1Q 100 (QinQ).
const TAGS: [&[(u16, u16)]; 3] = [
    &[(0x8100, 100)],
    &[(0x88a8, 200)],
    &[(0x88a8, 200), (0x8100, 100)],
];
/// Each tagged request is sent this often.
const REPEAT: usize = 3;

/// Sends VLAN-tagged ARP requests / NSs for `ips` from the client's eth0 (raw frames) and
/// checks that they reach the node's eth0 and that nothing answers them.
fn tagged_requests_go_unanswered(lab: &Lab, ips: &[IpAddr], when: &str) {
    let client = lab.host(CLIENT).clone();
    let node_obs = Observer::start(&lab.ns(NODE), "eth0", false).expect("observe node eth0");
    let client_obs = lab.observe(CLIENT).expect("observe client eth0");
    let mut frames = Vec::new();
    for _ in 0..REPEAT {
        for ip in ips {
            let plain = match ip {
                IpAddr::V4(v4) => packet::arp_request(client.mac, client.ipv4, *v4),
                IpAddr::V6(v6) => packet::neighbor_solicitation(client.mac, client.ipv6, *v6),
            };
            for tags in TAGS {
                // Innermost tag first, so the outer one ends up first on the wire.
                let frame = tags
                    .iter()
                    .rev()
                    .fold(plain.clone(), |f, (tpid, vid)| tagged(&f, *tpid, *vid));
                frames.push(frame);
            }
        }
    }
    let t = Instant::now();
    let sent = frames.len();
    send_raw(&client.ns, "eth0", frames);
    std::thread::sleep(Duration::from_millis(500));
    // The requests did reach the node's eth0 (the kernel strips the outer tag before a
    // capture sees it; QinQ frames keep the inner one and do not parse here)…
    let arrived = node_obs.since(t);
    for ip in ips {
        let n = arrived
            .iter()
            .filter(|s| {
                matches!(s.kind, Kind::ArpRequest | Kind::NeighborSolicitation)
                    && s.target_ip == *ip
                    && s.eth_src == client.mac
            })
            .count();
        assert!(
            n >= 2 * REPEAT,
            "{when}: only {n} tagged requests for {ip} seen on {NODE}'s eth0"
        );
        println!("{when}: {n} single-tagged requests for {ip} reached {NODE}'s eth0");
    }
    // …and nothing answered them.
    let answered = replies_since(&client_obs, t, ips);
    assert!(
        answered.is_empty(),
        "{when}: tagged requests were answered untagged: {answered:#?}"
    );
    println!("{when}: 0 replies to {sent} tagged requests");
    // Untagged requests are still answered.
    assert_eq!(
        lab.answerers(CLIENT, ips, WINDOW).expect("sweep"),
        vec![vec![NODE.to_string()]; ips.len()],
        "{when}: untagged requests"
    );
}

#[test]
fn vlan_tagged_requests_on_the_parent_are_not_answered_untagged() {
    let (lab, ips) = one_node_dual_stack();

    // 1. The node has no VLAN device: the kernel hands the frame to eth0's sockets as
    //    PACKET_OTHERHOST with the tag cleared.
    tagged_requests_go_unanswered(&lab, &ips, "no VLAN device");

    // 2. The node has eth0.100, which the advertisement does not allow: the kernel delivers
    //    the frame to eth0's sockets from eth0.100 (skb->dev), untagged-looking. Needs
    //    802.1Q support in the kernel (CONFIG_VLAN_8021Q).
    let node_ns = lab.ns(NODE);
    let vlan = netns::ip_in(
        &node_ns,
        &[
            "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100",
        ],
    );
    if let Err(e) = vlan {
        println!(
            "SKIPPED part 2 (a VLAN device on the node): this kernel cannot create one \
             ({e:#}); the socket filter's ifindex check is covered by the speaker's unit tests"
        );
        return;
    }
    ip(&node_ns, &["link", "set", "eth0.100", "up"]);
    lab.apply_l2adv(
        "default",
        L2AdvertisementSpec {
            ip_address_pools: vec!["default".into()],
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
    )
    .expect("advertisement on eth0 only");
    wait_log_line(&lab, NODE, &["usable interfaces changed", "eth0.100"]);
    wait_answerers(
        &lab,
        &ips,
        &vec![vec![NODE.to_string()]; ips.len()],
        "eth0 only",
    );
    tagged_requests_go_unanswered(&lab, &ips, "VLAN device not allowed");
}

#[test]
fn noarp_interfaces_are_skipped() {
    let (lab, ips) = one_node_dual_stack();
    let eth1 = second_port(&lab, NODE, true);
    let line = wait_log_line(
        &lab,
        NODE,
        &["interface not usable for announcements", "eth1", "noarp"],
    );
    println!("speaker: {line}");
    // Only eth0 answers, also a while after the speaker saw eth1.
    let node_only = vec![vec![NODE.to_string()]; ips.len()];
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(
            lab.answerers(CLIENT, &ips, WINDOW).expect("sweep"),
            node_only,
            "an arp-off interface answered"
        );
    }
    // Control: the same port with ARP on is used (no allowed interface holds the pool's
    // subnet, so both answer).
    ip(&lab.ns(NODE), &["link", "set", "eth1", "arp", "on"]);
    let mut both = vec![NODE.to_string(), eth1.to_string()];
    both.sort();
    wait_answerers(&lab, &ips, &vec![both; ips.len()], "arp on");
}

#[test]
fn the_interface_whose_subnet_holds_the_ip_answers_alone() {
    let (lab, ips) = one_node_dual_stack();
    let eth1 = second_port(&lab, NODE, false);
    let mut both = vec![NODE.to_string(), eth1.to_string()];
    both.sort();
    wait_answerers(&lab, &ips, &vec![both.clone(); ips.len()], "no subnet");

    // The pool's subnets on eth1 (outside the pool's ranges .10–.99 / ::10–::99).
    let node_ns = lab.ns(NODE);
    ip(
        &node_ns,
        &["addr", "add", "203.0.113.200/24", "dev", "eth1"],
    );
    ip(
        &node_ns,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:200::200/64",
            "dev",
            "eth1",
            "nodad",
        ],
    );
    wait_answerers(
        &lab,
        &ips,
        &vec![vec![eth1.to_string()]; ips.len()],
        "subnets on eth1",
    );
    // Removing them: both again.
    ip(
        &node_ns,
        &["addr", "del", "203.0.113.200/24", "dev", "eth1"],
    );
    ip(
        &node_ns,
        &["-6", "addr", "del", "2001:db8:200::200/64", "dev", "eth1"],
    );
    wait_answerers(&lab, &ips, &vec![both; ips.len()], "subnets removed");
}

/// Each answering thread of the speaker: its name and the CPUs it may run on
/// (`Cpus_allowed_list` of /proc/<pid>/task/<tid>/status), by thread name.
fn answering_threads(pid: nix::unistd::Pid) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !(name.starts_with("flb-arp-") || name.starts_with("flb-ndp-")) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.insert(name.to_string(), cpus);
    }
    out
}

/// Issue 10 item 4's wake-up path: the speaker answers on `--answer-threads` threads per
/// interface and family (by default one per CPU, up to 8), a PACKET_FANOUT_CPU group
/// whose member `i` runs on the CPUs numbered `i` modulo their count. Requests sent from
/// each CPU of the client (whose kernel carries them through the lab's links on that CPU)
/// are all answered, each exactly once: a frame that reached two sockets of the group
/// would be answered twice.
#[test]
fn requests_from_every_cpu_are_answered_once_by_the_thread_pinned_to_it() {
    let (lab, ips) = one_node_dual_stack();
    let cpus: Vec<usize> = {
        let allowed =
            nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
        (0..nix::sched::CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect()
    };
    // As the speaker counts them (`--answer-threads` 0): CPUs it may use, a CPU quota
    // included, at most 8.
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let pid = lab.speaker_pid(NODE).expect("node1's speaker runs");
    let threads = answering_threads(pid);
    let mut want = std::collections::BTreeMap::new();
    for proto in ["arp", "ndp"] {
        for i in 0..n {
            let name = match i {
                0 => format!("flb-{proto}-eth0"),
                i => format!("flb-{proto}-eth0-{i}"),
            };
            // Member i's CPUs: those numbered i modulo n (all of them with one thread).
            let mine: Vec<String> = cpus
                .iter()
                .filter(|&&c| n == 1 || c % n == i)
                .map(|c| c.to_string())
                .collect();
            want.insert(name, mine);
        }
    }
    let got: std::collections::BTreeMap<String, Vec<String>> = threads
        .iter()
        .map(|(name, list)| (name.clone(), expand_cpu_list(list)))
        .collect();
    assert_eq!(
        got, want,
        "answering threads and their CPUs ({cpus:?} allowed)"
    );

    for &cpu in &cpus {
        let cfg = ferrolb_lab::ProbeConfig {
            cpu: Some(cpu),
            linger: Duration::from_millis(50),
            ..ferrolb_lab::ProbeConfig::count()
        };
        let results = lab.probe(CLIENT, &ips, 25, cfg).expect("probe");
        for r in &results {
            assert_eq!(
                r.replies.len(),
                1,
                "request for {} sent from CPU {cpu}: {} replies",
                r.target,
                r.replies.len()
            );
        }
        println!("CPU {cpu}: {} requests, each answered once", results.len());
    }
}

/// `0-2,5` → ["0", "1", "2", "5"].
fn expand_cpu_list(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                (a..=b).map(|c| c.to_string()).collect::<Vec<_>>()
            }
            None => vec![p.to_string()],
        })
        .collect()
}
