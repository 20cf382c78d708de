//! The data plane against real kernels: two network namespaces joined by a veth pair.
//!
//! ```text
//!   flb<pid>dp<n>-node                              flb<pid>dp<n>-client
//!   eth0 198.51.100.11/24, 2001:db8:100::11/64 ═══ eth0 198.51.100.21/24, 2001:db8:100::21/64
//!   lo: local route 203.0.113.0/24,                 on-link 203.0.113.0/24, 2001:db8:200::/64
//!       VIPs 2001:db8:200::x/128 (nodad)            kernel ARP/NDP, ping, ip neigh
//!   arp_ignore=1 (the kernel stays silent)
//!   responder = this test binary re-executed under `ip netns exec` (FLB_DATAPLANE_CHILD=1),
//!               driven over stdin, printing counters as JSON on exit
//! ```
//!
//! Needs root, iproute2 and ping (iputils-ping); without them the tests fail saying so.
//! Only the documentation ranges of docs/design/lab-addresses.md are used; the root namespace is never touched.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ferrolb_speaker::dataplane::{DataPlane, DataPlaneConfig, LinkWatcher};

const CHILD_ENV: &str = "FLB_DATAPLANE_CHILD";
const NODE_MAC: &str = "02:f1:b0:00:00:11";
const CLIENT_MAC: &str = "02:f1:b0:00:00:21";
/// Longest a child responder lives, whatever happens to the parent.
const CHILD_LIFETIME: Duration = Duration::from_secs(40);

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------- lab plumbing

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_lab_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the dataplane netns tests need root (network namespaces, AF_PACKET); run them as \
         root, as CI does — they do not pass silently without it"
    );
    for tool in ["ip", "ping"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "the dataplane netns tests need `{tool}` (Debian: iproute2, iputils-ping)"
        );
    }
}

/// Deletes namespaces of earlier runs of this test (shape `flb<pid>dp<n>-…`) whose process
/// is gone; parallel runs (live pids) and other tests' namespaces are left alone.
fn remove_leftovers() {
    for line in sh(&["ip", "netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("flb") else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once("dp") else {
            continue;
        };
        let ours = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && (tail.ends_with("-node") || tail.ends_with("-client"));
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A node and a client namespace; everything is removed on drop, also after a panic.
struct Lab {
    node: String,
    client: String,
    responder: Option<Responder>,
}

impl Lab {
    /// `learn_gratuitous`: the client creates neighbour entries from gratuitous ARP and
    /// unsolicited NA; otherwise it learns only by asking (request → reply).
    fn new(learn_gratuitous: bool) -> Lab {
        require_lab_tools();
        remove_leftovers();
        let run_id = format!(
            "flb{}dp{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            node: format!("{run_id}-node"),
            client: format!("{run_id}-client"),
            responder: None,
        };
        sh(&["ip", "netns", "add", &lab.node]);
        sh(&["ip", "netns", "add", &lab.client]);
        lab.node_ip(&[
            "link",
            "add",
            "name",
            "eth0",
            "address",
            NODE_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            CLIENT_MAC,
            "netns",
            &lab.client,
        ]);
        for ns in [&lab.node, &lab.client] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Node: the kernel accepts VIP traffic but never answers ARP/NDP for it itself.
        lab.sysctl(&lab.node, "net.ipv4.conf.all.arp_ignore=1");
        lab.sysctl(&lab.node, "net.ipv4.conf.eth0.arp_ignore=1");
        lab.node_ip(&["addr", "add", "198.51.100.11/24", "dev", "eth0"]);
        lab.node_ip(&["addr", "add", "2001:db8:100::11/64", "dev", "eth0", "nodad"]);
        lab.node_ip(&["route", "add", "local", "203.0.113.0/24", "dev", "lo"]);
        for vip in ["2001:db8:200::10", "2001:db8:200::20", "2001:db8:200::99"] {
            lab.node_ip(&["addr", "add", &format!("{vip}/128"), "dev", "lo", "nodad"]);
        }
        // Client: the pool is on-link. accept_untracked_na acts only where forwarding is on,
        // as on a router.
        lab.client_ip(&["addr", "add", "198.51.100.21/24", "dev", "eth0"]);
        lab.client_ip(&["addr", "add", "2001:db8:100::21/64", "dev", "eth0", "nodad"]);
        if learn_gratuitous {
            lab.sysctl(&lab.client, "net.ipv4.conf.eth0.arp_accept=1");
            lab.sysctl(&lab.client, "net.ipv6.conf.eth0.forwarding=1");
            lab.sysctl(&lab.client, "net.ipv6.conf.eth0.accept_untracked_na=1");
        }
        // No DAD for the link-local addresses either: a tentative one delays the kernels'
        // own neighbour resolution by seconds.
        lab.sysctl(&lab.node, "net.ipv6.conf.eth0.accept_dad=0");
        lab.sysctl(&lab.client, "net.ipv6.conf.eth0.accept_dad=0");
        lab.node_ip(&["link", "set", "eth0", "up"]);
        lab.client_ip(&["link", "set", "eth0", "up"]);
        lab.client_ip(&["route", "add", "203.0.113.0/24", "dev", "eth0"]);
        lab.client_ip(&["-6", "route", "add", "2001:db8:200::/64", "dev", "eth0"]);
        lab
    }

    fn sysctl(&self, ns: &str, kv: &str) {
        sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", kv]);
    }

    fn node_ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.node];
        a.extend_from_slice(args);
        sh(&a)
    }

    fn client_ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.client];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// One ping from the client (1 s timeout); the RTT in ms if it was answered.
    fn ping(&self, ip: &str) -> Option<f64> {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            &self.client,
            "ping",
            "-n",
            "-c1",
            "-W1",
        ];
        if ip.contains(':') {
            args.push("-6");
        }
        args.push(ip);
        let out = run(&args);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let rtt = text
            .split("time=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok());
        Some(rtt.unwrap_or(f64::NAN))
    }

    /// Like [`Lab::ping`], but up to 3 attempts, so a loaded CI machine does not flake.
    fn ping_ok(&self, ip: &str) -> Option<f64> {
        (0..3).find_map(|_| self.ping(ip))
    }

    /// The client's neighbour entry for `ip` (e.g. `… lladdr 02:… STALE`), if any.
    fn client_neigh(&self, ip: &str) -> Option<String> {
        let out = self.client_ip(&["neigh", "show", ip, "dev", "eth0"]);
        let line = out.lines().next()?.trim().to_string();
        (!line.is_empty()).then_some(line)
    }

    /// Polls the client's neighbour table (bounded) until `ip` maps to the node's MAC.
    fn wait_client_learns(&self, ip: &str, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.client_neigh(ip).is_some_and(|l| l.contains(NODE_MAC)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Starts the responder inside the node namespace, announcing `spec`.
    fn start_responder(&mut self, spec: &str) -> &mut Responder {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(exe)
            .args([
                "--exact",
                "child_responder",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env("FLB_ANNOUNCE", spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn responder");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have printed "test child_responder ... " on the same line.
                if let Some(at) = line.find("FLB ") {
                    let _ = tx.send(line[at + 4..].to_string());
                }
            }
        });
        self.responder = Some(Responder {
            child,
            stdin,
            lines: rx,
        });
        let r = self.responder.as_mut().expect("just set");
        let ready = r.expect("READY", Duration::from_secs(10));
        assert!(ready.starts_with("READY"), "unexpected: {ready}");
        r
    }

    fn responder(&mut self) -> &mut Responder {
        self.responder.as_mut().expect("responder started")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut r) = self.responder.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.node]);
        let _ = run(&["ip", "netns", "del", &self.client]);
    }
}

/// The responder child, driven over stdin (`announce <spec>`; EOF = stop).
struct Responder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Responder {
    fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(e) => panic!("responder never said {prefix}: {e}"),
            }
        }
    }

    fn announce(&mut self, spec: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "announce {spec}").expect("write to responder");
        stdin.flush().expect("flush");
        self.expect("ANNOUNCED", Duration::from_secs(5));
    }

    /// Stops the responder; returns (shutdown time in ms, counters).
    fn stop(&mut self) -> (u64, serde_json::Value) {
        drop(self.stdin.take());
        let ms = self.expect("SHUTDOWN_MS", Duration::from_secs(5));
        let counters = self.expect("COUNTERS", Duration::from_secs(5));
        let _ = self.child.wait();
        let ms = ms["SHUTDOWN_MS ".len()..].trim().parse().expect("ms");
        let json = serde_json::from_str(&counters["COUNTERS ".len()..]).expect("counters JSON");
        (ms, json)
    }
}

fn counter(c: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = c;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {c}"))
}

// ---------------------------------------------------------------- the responder child

/// `203.0.113.10=eth0;2001:db8:200::10=eth0,eth1` → IP → interfaces.
fn parse_spec(spec: &str) -> ferrolb_speaker::dataplane::Announcements {
    spec.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (ip, ifaces) = item.split_once('=').expect("ip=iface[,iface]");
            (
                ip.trim().parse().expect("IP"),
                std::sync::Arc::new(ifaces.split(',').map(|s| s.trim().to_string()).collect()),
            )
        })
        .collect()
}

/// Not a test: the responder process the lab tests start inside the node namespace.
#[test]
#[ignore = "helper: started by the other tests inside a network namespace"]
fn child_responder() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "only the netns tests run this, inside the node namespace"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The lab's node interface is a veth called eth0: exclude only loopback.
        let watcher = LinkWatcher::start(vec!["lo".into()])
            .await
            .expect("link watcher");
        let plane = Arc::new(DataPlane::new(DataPlaneConfig::default()));
        plane.set_links(watcher.links());
        let follower = plane.follow_links(watcher.subscribe());
        plane.set_announcements(
            parse_spec(&std::env::var("FLB_ANNOUNCE").unwrap_or_default()),
            Default::default(),
        );
        println!("FLB READY {:?}", plane.active());

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = tokio::time::sleep(CHILD_LIFETIME);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(l) => {
                        if let Some(spec) = l.strip_prefix("announce ") {
                            plane.set_announcements(parse_spec(spec), Default::default());
                            println!("FLB ANNOUNCED {:?}", plane.active());
                        }
                    }
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        follower.abort();
        let t = Instant::now();
        plane.shutdown();
        println!("FLB SHUTDOWN_MS {}", t.elapsed().as_millis());
        println!(
            "FLB COUNTERS {}",
            serde_json::to_string(&plane.counters()).expect("json")
        );
        drop(watcher);
    });
}

// ---------------------------------------------------------------- the tests

#[test]
fn answers_arp_and_ndp_only_for_announced_ips() {
    let mut lab = Lab::new(false);
    lab.start_responder("203.0.113.10=eth0;2001:db8:200::10=eth0");
    assert!(lab.client_neigh("203.0.113.10").is_none());
    assert!(lab.client_neigh("2001:db8:200::10").is_none());

    // IPv4: the client resolves the VIP to the node's MAC and the node's kernel answers.
    let rtt = lab
        .ping_ok("203.0.113.10")
        .expect("ping 203.0.113.10 answered");
    let neigh = lab.client_neigh("203.0.113.10").expect("neighbour entry");
    assert!(neigh.contains(NODE_MAC), "client neighbour entry: {neigh}");
    let warm = lab.ping_ok("203.0.113.10").expect("second ping");
    println!("IPv4: first ping {rtt} ms (with ARP resolution), then {warm} ms");

    // IPv6 likewise, through a Neighbor Solicitation to the solicited-node group.
    let rtt6 = lab
        .ping_ok("2001:db8:200::10")
        .expect("ping 2001:db8:200::10 answered");
    let neigh6 = lab
        .client_neigh("2001:db8:200::10")
        .expect("neighbour entry");
    assert!(
        neigh6.contains(NODE_MAC),
        "client neighbour entry: {neigh6}"
    );
    let warm6 = lab.ping_ok("2001:db8:200::10").expect("second ping");
    println!("IPv6: first ping {rtt6} ms (with NDP resolution), then {warm6} ms");

    // Addresses the node could serve but does not announce get no answer at all.
    assert_eq!(lab.ping("203.0.113.99"), None, "unannounced IPv4 answered");
    assert_eq!(
        lab.ping("2001:db8:200::99"),
        None,
        "unannounced IPv6 answered"
    );

    // Withdrawal: once the client forgets the entry, the VIP is unreachable.
    lab.responder().announce("2001:db8:200::10=eth0");
    lab.client_ip(&["neigh", "flush", "dev", "eth0"]);
    assert_eq!(
        lab.ping("203.0.113.10"),
        None,
        "withdrawn IPv4 still answered"
    );
    assert!(lab.ping_ok("2001:db8:200::10").is_some(), "IPv6 VIP lost");

    let (shutdown_ms, c) = lab.responder().stop();
    println!("shutdown {shutdown_ms} ms; counters: {c}");
    assert!(counter(&c, &["arp", "replies"]) >= 1);
    assert!(counter(&c, &["ndp", "replies"]) >= 1);
    assert!(counter(&c, &["arp", "drops", "not_announced"]) >= 1);
    assert!(counter(&c, &["ndp", "drops", "not_announced"]) >= 1);
    assert_eq!(counter(&c, &["open_errors"]), 0);
    assert_eq!(counter(&c, &["join_errors"]), 0);
    for proto in ["arp", "ndp"] {
        let drops: u64 = c[proto]["drops"]
            .as_object()
            .expect("drops")
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum();
        assert_eq!(
            counter(&c, &[proto, "requests"]),
            counter(&c, &[proto, "replies"]) + drops + counter(&c, &[proto, "send_errors"]),
            "{proto}: every frame read is answered or dropped"
        );
    }
    assert!(shutdown_ms < 200, "shutdown took {shutdown_ms} ms");
}

#[test]
fn gratuitous_announcements_reach_the_client() {
    let mut lab = Lab::new(true);
    lab.start_responder("");
    assert!(lab.client_neigh("203.0.113.20").is_none());

    // Takeover: the client learns both VIPs without sending anything itself.
    let t0 = Instant::now();
    lab.responder()
        .announce("203.0.113.20=eth0;2001:db8:200::20=eth0");
    let v4 = lab
        .wait_client_learns("203.0.113.20", Duration::from_secs(3))
        .expect("client learned the IPv4 VIP from gratuitous ARP");
    let v6 = lab
        .wait_client_learns("2001:db8:200::20", Duration::from_secs(3))
        .expect("client learned the IPv6 VIP from unsolicited NA");
    println!(
        "takeover → client neighbour entry: IPv4 {} ms, IPv6 {} ms (command sent {} ms before)",
        v4.as_millis(),
        v6.as_millis(),
        t0.elapsed().as_millis()
    );

    // The node's interface bounces: announcements are repeated when it is back up.
    lab.node_ip(&["link", "set", "eth0", "down"]);
    lab.client_ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(
        lab.client_neigh("203.0.113.20")
            .is_none_or(|l| !l.contains(NODE_MAC))
    );
    lab.node_ip(&["link", "set", "eth0", "up"]);
    let again = lab
        .wait_client_learns("203.0.113.20", Duration::from_secs(3))
        .expect("re-announced after link up");
    let again6 = lab
        .wait_client_learns("2001:db8:200::20", Duration::from_secs(3))
        .expect("re-announced (IPv6) after link up");
    println!(
        "link up → client neighbour entry: IPv4 {} ms, IPv6 {} ms",
        again.as_millis(),
        again6.as_millis()
    );

    let (shutdown_ms, c) = lab.responder().stop();
    println!("shutdown {shutdown_ms} ms; counters: {c}");
    // Two rounds at least (takeover, link up), each a request and a reply form.
    assert!(counter(&c, &["arp", "announcements"]) >= 4);
    assert!(counter(&c, &["ndp", "announcements"]) >= 2);
    assert_eq!(counter(&c, &["arp", "send_errors"]), 0);
    assert!(shutdown_ms < 200, "shutdown took {shutdown_ms} ms");
}
