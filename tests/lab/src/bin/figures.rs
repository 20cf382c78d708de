//! `figures`: FerroLB's headline numbers, measured on the lab (needs root and the workspace
//! binaries: `cargo build --workspace --bins`, then run this as root).
//!
//! 1. API writes per minute per speaker in steady state (3 nodes, 1 Service).
//! 2. ARP and NDP reply latency from a client: speaker (VIP) vs kernel (node address).
//! 3. Failover: kill → first gratuitous ARP / unsolicited NA at the client, and kill → first
//!    TCP connect served by the new node, for SIGKILL and SIGTERM (p50 / p99).
//! 4. Speaker RSS with 1,000 announced IPs (1 node, 250 IPv4 + 750 IPv6 Services), and API
//!    writes per minute with those 1,000 Services.
//! 5. ARP and NDP storms from a client (20,000 requests/s for 5 s by default) at announced
//!    IPs: requests answered and unanswered, reply latency, every speaker's CPU. It runs
//!    right after 2, on the same lab, before the failovers restart speakers.
//! 6. Address conflict detection on vs off (a lab each): the delay from a Service's ingress
//!    write to a node's first gratuitous ARP / unsolicited NA for a new address (the probes'
//!    cost), and the SIGKILL failover of 3 (which must not wait for probes), p50 / p99.
//!
//! Environment: `FIGURES_ROUNDS` (failover rounds per signal, and the rounds of 6; default 20),
//! `FIGURES_WRITES_SECS` (steady-state window, default 60), `FIGURES_PROBES` (latency
//! probes per target, default 200), `FIGURES_STORM_RATE` (requests/s, default 20000),
//! `FIGURES_STORM_SECS` (default 5, at most 10), `FIGURES_STORM_VIPS` (announced IPs per
//! family the storm asks for, default 4), `FIGURES_ONLY` (sections to run, e.g. `2,5`;
//! default all).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_lab::lab::SPEAKER_METRICS;
use ferrolb_lab::stats::{ms, summarize};
use ferrolb_lab::status_log::StatusLog;
use ferrolb_lab::storm::{StormConfig, StormReport, storm};
use ferrolb_lab::{Family, Lab, LabConfig, ProbeConfig, Signal, Svc};
use k8s_openapi::api::coordination::v1::Lease;

const CLIENT: &str = "client1";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let rounds = env_num("FIGURES_ROUNDS", 20) as usize;
    let window = Duration::from_secs(env_num("FIGURES_WRITES_SECS", 60));
    let probes = env_num("FIGURES_PROBES", 200) as usize;
    let storm_cfg = StormConfig {
        rate: env_num("FIGURES_STORM_RATE", 20_000) as u32,
        duration: Duration::from_secs(env_num("FIGURES_STORM_SECS", 5)),
        ..StormConfig::default()
    };
    let storm_vips = env_num("FIGURES_STORM_VIPS", 4).max(1) as usize;
    let only: Option<Vec<u32>> = std::env::var("FIGURES_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let run = |section: u32| only.as_ref().is_none_or(|o| o.contains(&section));
    println!(
        "FerroLB figures — lab of network namespaces on one machine ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "(binaries from {})\n",
        ferrolb_lab::proc::bin_dir().display()
    );

    // Sections 1, 2, 5 and 3 share one lab, in that order (3 restarts speakers).
    if [1, 2, 5, 3].into_iter().any(&run) {
        let (mut lab, ips) = web_lab(Vec::new())?;
        if run(1) {
            println!(
                "== 1. API writes in steady state: 3 speakers, 1 dual-stack Service, {window:?} =="
            );
            std::thread::sleep(Duration::from_secs(5));
            writes(&lab, window, 3)?;
        }

        if run(2) {
            println!(
                "\n== 2. Neighbour reply latency from {CLIENT}: speaker (VIP) vs kernel (node address) =="
            );
            latency(&lab, &ips, probes)?;
        }

        if run(5) {
            println!(
                "\n== 5. ARP / NDP storm from {CLIENT}: {} requests/s for {:?} at {storm_vips} announced IPs per family ==",
                storm_cfg.rate, storm_cfg.duration
            );
            storms(&lab, &ips, storm_vips, storm_cfg)?;
        }

        if run(3) {
            println!(
                "\n== 3. Failover, {rounds} rounds per signal (dual-stack Service, TCP on port 80) =="
            );
            for sig in [Signal::SIGKILL, Signal::SIGTERM] {
                failover(&mut lab, &ips, sig, rounds)?;
            }
        }
    }

    if run(4) {
        println!("\n== 4. One speaker announcing 1,000 IPs ==");
        thousand(window)?;
    }

    if run(6) {
        println!(
            "\n== 6. Address conflict detection: added delay to a first announcement and to a SIGKILL failover, \
             {rounds} rounds, on vs off =="
        );
        conflict_detection(rounds)?;
    }
    Ok(())
}

/// A lab on the built-in API server whose speakers get `speaker_args`, with pool
/// `default` and the dual-stack Service `web` on port 80, reached by the client on both
/// IPs: (lab, those IPs).
fn web_lab(speaker_args: Vec<String>) -> Result<(Lab, Vec<IpAddr>)> {
    let lab = Lab::start(LabConfig {
        apiserver: None,
        speaker_args,
        ..LabConfig::default()
    })?;
    lab.default_pool()?;
    let svc = Svc::new("web", 80).family(Family::Dual);
    lab.create_service(&svc)?;
    let ips = lab.wait_ingress(&svc, 2, Duration::from_secs(20))?;
    for ip in &ips {
        lab.connect_until(
            CLIENT,
            *ip,
            80,
            Instant::now() + Duration::from_secs(15),
            |_| true,
        )?;
    }
    Ok((lab, ips))
}

/// Section 5: an ARP storm, then an NDP storm, from the client at `vips` announced IPs per
/// family (the Service `web`'s, plus dual-stack Services `storm-N` made for it and deleted
/// after), each request matched to its reply ([`ferrolb_lab::storm`]).
fn storms(lab: &Lab, ips: &[IpAddr], vips: usize, cfg: StormConfig) -> Result<()> {
    let extra: Vec<Svc> = (1..vips)
        .map(|i| Svc::new(&format!("storm-{i}"), 80).family(Family::Dual))
        .collect();
    let mut targets = ips.to_vec();
    for svc in &extra {
        lab.create_service(svc)?;
        targets.extend(lab.wait_ingress(svc, 2, Duration::from_secs(20))?);
    }
    // Every IP answered by exactly one node before the storm starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = lab.answerers(CLIENT, &targets, Duration::from_millis(200))?;
        if view.iter().all(|a| a.len() == 1) {
            let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &view {
                *owners.entry(a[0].as_str()).or_default() += 1;
            }
            println!("  announced IPs per node: {owners:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("storm IPs not answered by exactly one node each: {view:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let host = lab.host(CLIENT).clone();
    for (proto, metric, v4) in [("ARP", "arp", true), ("NDP", "ndp", false)] {
        let fam: Vec<IpAddr> = targets
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == v4)
            .collect();
        let before = speaker_counters(lab, metric);
        let (cpu0, t0, backlog0) = (lab.cpu_times(), Instant::now(), backlog_drops());
        let r = storm(&host.ns, "eth0", host.prober(), &fam, cfg)?;
        let (cpu1, wall, backlog1) = (lab.cpu_times(), t0.elapsed(), backlog_drops());
        let after = speaker_counters(lab, metric);
        print_storm(proto, &r, lab);
        println!(
            "  {proto}: frames the kernel dropped from full input backlogs meanwhile (softnet_stat, all CPUs): {}",
            backlog1.saturating_sub(backlog0)
        );
        for n in lab.nodes() {
            let key = format!("speaker-{}", n.name);
            let cpu = match (cpu0.get(&key), cpu1.get(&key)) {
                (Some(a), Some(b)) => b.saturating_sub(*a).as_secs_f64() / wall.as_secs_f64(),
                _ => f64::NAN,
            };
            let moved: Vec<String> = after[&n.name]
                .iter()
                .map(|(k, v)| (k, v - before[&n.name].get(k).copied().unwrap_or(0.0)))
                .filter(|(_, d)| *d != 0.0)
                .map(|(k, d)| format!("{k} {d:.0}"))
                .collect();
            println!(
                "  {proto}: speaker on {}: {:.1}% of one core over {}; counters: {}",
                n.name,
                cpu * 100.0,
                ms(wall),
                if moved.is_empty() {
                    "none moved".to_string()
                } else {
                    moved.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for svc in &extra {
        lab.delete_service(svc)?;
    }
    println!(
        "  (latency: from just before a request's send to its reply read on the client; unanswered: no reply \
         before the request's slot was reused; a speaker's `requests` below what was sent means frames lost \
         before it read them (its socket buffer full while it waited for a CPU); CPU: utime + stime from /proc \
         over the storm and its linger)"
    );
    Ok(())
}

/// Frames dropped so far because a CPU's input backlog was full (second column of
/// /proc/net/softnet_stat, summed over CPUs; read only).
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u64::from_str_radix(d, 16).ok())
        .sum()
}

/// Per node: every data-plane counter of `protocol` (`arp` / `ndp`) in its speaker's
/// /metrics, by series name without the protocol label (`requests`, `drops{not_announced}`).
fn speaker_counters(lab: &Lab, protocol: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    let label = format!("protocol=\"{protocol}\"");
    lab.nodes()
        .iter()
        .map(|n| {
            let body = lab
                .http_get(
                    &n.name,
                    SPEAKER_METRICS.parse().expect("addr"),
                    "/metrics",
                    Duration::from_secs(5),
                )
                .map(|(_, b)| b)
                .unwrap_or_default();
            let samples = body
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(&label))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    let (name, labels) = k.split_once('{')?;
                    let name = name
                        .trim_start_matches("ferrolb_speaker_")
                        .trim_end_matches("_total");
                    let rest: Vec<&str> = labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|l| !l.starts_with("protocol="))
                        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim_matches('"')))
                        .collect();
                    let key = if rest.is_empty() {
                        name.to_string()
                    } else {
                        format!("{name}{{{}}}", rest.join(","))
                    };
                    Some((key, v.parse().ok()?))
                })
                .collect();
            (n.name.clone(), samples)
        })
        .collect()
}

/// Microseconds, whole: neighbour replies take tens of them.
fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

fn print_storm(proto: &str, r: &StormReport, lab: &Lab) {
    println!(
        "  {proto}: sent {} requests in {} = {:.0}/s ({} send errors); answered {}, unanswered {} \
         (slot period {}), unmatched replies {}",
        r.sent,
        ms(r.send_time),
        r.rate(),
        r.send_errors,
        r.answered,
        r.unanswered,
        ms(r.period),
        r.unmatched
    );
    match &r.latency {
        Some(s) => println!(
            "  {proto}: reply latency p50 {} p99 {} max {} (n={})",
            us(s.p50),
            us(s.p99),
            ms(s.max),
            s.n
        ),
        None => println!("  {proto}: no replies"),
    }
    let by: Vec<String> = r
        .by_mac
        .iter()
        .map(|(mac, n)| format!("{} {n}", lab.node_by_mac(*mac).unwrap_or("?")))
        .collect();
    println!("  {proto}: replies by node: {}", by.join(", "));
}

/// Counts Lease writes (watch) and, on the built-in server, all writes (`/_testapi/counts`).
fn writes(lab: &Lab, window: Duration, speakers: usize) -> Result<()> {
    let before = lab.api_counts().ok();
    let per_lease = lab.count_writes::<Lease>(window)?;
    let after = lab.api_counts().ok();
    let per_min = |n: u64| n as f64 * 60.0 / window.as_secs_f64();
    let mut controller = 0;
    let mut speaker_leases = 0;
    for (name, n) in &per_lease {
        println!("  Lease {name}: {n} writes ({:.1}/min)", per_min(*n));
        if name.ends_with("/ferrolb-controller") {
            controller += n;
        } else {
            speaker_leases += n;
        }
    }
    println!(
        "  Speaker Lease writes: {:.2} per minute per speaker (measured: Lease resourceVersion changes seen by a watch)",
        per_min(speaker_leases) / speakers as f64
    );
    if let (Some(b), Some(a)) = (before, after) {
        let total = ["create", "update", "patch", "delete"]
            .iter()
            .map(|k| a[k].as_u64().unwrap_or(0) - b[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        println!(
            "  All API writes: {total} ({:.1}/min); minus the controller's lease renewals: {:.2} per minute per speaker \
             (measured: the test API server's write counters; the lab itself writes nothing in the window)",
            per_min(total),
            per_min(total.saturating_sub(controller)) / speakers as f64
        );
    }
    Ok(())
}

fn latency(lab: &Lab, ips: &[IpAddr], probes: usize) -> Result<()> {
    let node = lab.announcer(CLIENT, ips[0], 80)?;
    let host = lab.host(&node).clone();
    let targets = [ips[0], IpAddr::V4(host.ipv4), ips[1], IpAddr::V6(host.ipv6)];
    let results = lab.probe(CLIENT, &targets, probes, ProbeConfig::latency())?;
    let mut by_target: BTreeMap<IpAddr, (Vec<Duration>, usize, usize)> = BTreeMap::new();
    for r in results {
        let e = by_target.entry(r.target).or_default();
        match r.replies.first() {
            Some(first) => e.0.push(first.after),
            None => e.1 += 1,
        }
        e.2 = e.2.max(r.replies.len());
    }
    let mut p50 = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        let who = if i % 2 == 0 {
            format!("speaker on {node}")
        } else {
            format!("{node}'s kernel")
        };
        let (samples, missed, most) = &by_target[t];
        match summarize(samples) {
            Some(s) => {
                println!(
                    "  {:<18} {:<22} n={} p50={} p99={} min={} max={}; unanswered {missed}; most replies to one request {most}",
                    t.to_string(),
                    who,
                    s.n,
                    us(s.p50),
                    us(s.p99),
                    us(s.min),
                    us(s.max)
                );
                p50.insert(*t, s);
            }
            None => println!(
                "  {:<18} {:<22} no replies to {probes} requests",
                t.to_string(),
                who
            ),
        }
    }
    for (proto, vip, kernel) in [
        ("ARP", targets[0], targets[1]),
        ("NDP", targets[2], targets[3]),
    ] {
        if let (Some(v), Some(k)) = (p50.get(&vip), p50.get(&kernel)) {
            println!(
                "  {proto}: VIP/kernel ratio p50 {:.2}×, p99 {:.2}×",
                v.p50.as_secs_f64() / k.p50.as_secs_f64(),
                v.p99.as_secs_f64() / k.p99.as_secs_f64()
            );
        }
    }
    println!(
        "  (time from just before the request is sent to the reply read on the client's packet socket; {probes} requests per target)"
    );
    Ok(())
}

/// One signal's failover samples (section 3), each from just before the kill.
#[derive(Default)]
struct FailoverSamples {
    /// → first gratuitous ARP at the client from another node.
    garp: Vec<Duration>,
    /// → first unsolicited NA at the client from another node.
    una: Vec<Duration>,
    /// → first TCP connect served by another node.
    tcp: Vec<Duration>,
    /// Takeovers without a gratuitous ARP/NA seen at the client.
    missing: usize,
}

/// `p50 … p99 … (n=…, max …)`, or `none seen`.
fn show(s: &[Duration]) -> String {
    summarize(s)
        .map(|s| {
            format!(
                "p50 {} p99 {} (n={}, max {})",
                ms(s.p50),
                ms(s.p99),
                s.n,
                ms(s.max)
            )
        })
        .unwrap_or("none seen".into())
}

/// `rounds` failovers of the dual-stack Service at `ips` by `sig` to its announcer (which
/// is restarted after each); prints and returns the samples.
fn failover(lab: &mut Lab, ips: &[IpAddr], sig: Signal, rounds: usize) -> Result<FailoverSamples> {
    let obs = lab.observe(CLIENT)?;
    obs.wait_quiet(Duration::from_millis(1500), Duration::from_secs(10));
    let mut out = FailoverSamples::default();
    for round in 1..=rounds {
        let f = lab
            .failover(CLIENT, &obs, ips, 80, sig, Duration::from_secs(15))
            .with_context(|| format!("{sig} round {round}"))?;
        if f.new == f.old {
            bail!("{sig} round {round}: no failover");
        }
        for (ip, d) in &f.announce {
            match d {
                Some(d) if ip.is_ipv4() => out.garp.push(*d),
                Some(d) => out.una.push(*d),
                None => out.missing += 1,
            }
        }
        out.tcp.push(f.connect);
        lab.restart_speaker(&f.old)?;
        obs.wait_quiet(Duration::from_millis(1500), Duration::from_secs(10));
    }
    println!(
        "  {sig}: kill → first gratuitous ARP at client:   {}",
        show(&out.garp)
    );
    println!(
        "  {sig}: kill → first unsolicited NA at client:   {}",
        show(&out.una)
    );
    println!(
        "  {sig}: kill → first TCP connect to new node:    {}",
        show(&out.tcp)
    );
    if out.missing > 0 {
        println!(
            "  {sig}: {} takeovers without a gratuitous ARP/NA seen at the client",
            out.missing
        );
    }
    Ok(out)
}

/// Section 6, one mode: a lab whose speakers run with `--conflict-detection=<on>` (and the
/// Service `web`), then `rounds` first announcements (dual-stack Services `first-<i>` asking for addresses no
/// node has announced before, each deleted after) and `rounds` SIGKILL failovers.
/// Returns (ingress → first gratuitous ARP, ingress → first unsolicited NA, failovers).
fn conflict_mode(
    on: bool,
    rounds: usize,
) -> Result<(Vec<Duration>, Vec<Duration>, FailoverSamples)> {
    let (mut lab, web) = web_lab(vec![format!("--conflict-detection={on}")])?;
    let log = StatusLog::start(&lab)?;
    let obs = lab.observe_lan()?;
    let macs: Vec<_> = lab.nodes().iter().map(|n| n.mac).collect();
    let (mut garp, mut una) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // 203.0.113.20… and 2001:db8:200::20…: never the `web` Service's (.10, ::10).
        let ips: Vec<IpAddr> = vec![
            format!("203.0.113.{}", 20 + i).parse()?,
            format!("2001:db8:200::{}", 20 + i).parse()?,
        ];
        let svc = Svc::new(&format!("first-{i}"), 80)
            .family(Family::Dual)
            .annotate(
                ferrolb_crds::annotations::LOAD_BALANCER_IPS,
                &format!("{},{}", ips[0], ips[1]),
            );
        lab.create_service(&svc)?;
        let written = log
            .ingress_written(&svc, &ips, Duration::from_secs(20))
            .with_context(|| format!("round {i}: no ingress {ips:?} for {}", svc.name))?;
        for ip in &ips {
            let first = obs
                .wait_for(Duration::from_secs(10), |e| {
                    e.at >= written
                        && e.gratuitous
                        && e.answers_for(*ip)
                        && macs.contains(&e.sender_mac)
                })
                .with_context(|| format!("round {i}: no node announced {ip} within 10 s"))?;
            if ip.is_ipv4() {
                garp.push(first.at - written);
            } else {
                una.push(first.at - written);
            }
        }
        lab.delete_service(&svc)?;
        obs.wait_quiet(Duration::from_millis(500), Duration::from_secs(10));
    }
    let failovers = failover(&mut lab, &web, Signal::SIGKILL, rounds)?;
    Ok((garp, una, failovers))
}

/// Section 6: what conflict detection costs. A first announcement waits for the probes
/// (`--conflict-probe-ms`, 300 ms by default); a crash takeover probes in parallel and
/// should cost nothing. Each mode on a lab of its own.
fn conflict_detection(rounds: usize) -> Result<()> {
    if rounds > 70 {
        bail!("section 6 runs at most 70 rounds (one pool address per family and round)");
    }
    let mut modes = Vec::new();
    for on in [true, false] {
        println!(
            "  -- conflict detection {} --",
            if on { "on (default)" } else { "off" }
        );
        modes.push(conflict_mode(on, rounds)?);
    }
    let (on, off) = (&modes[0], &modes[1]);
    let added = |a: &[Duration], b: &[Duration]| match (summarize(a), summarize(b)) {
        (Some(a), Some(b)) => format!(
            "added p50 {:+.2} ms, p99 {:+.2} ms",
            (a.p50.as_secs_f64() - b.p50.as_secs_f64()) * 1000.0,
            (a.p99.as_secs_f64() - b.p99.as_secs_f64()) * 1000.0
        ),
        _ => "no comparison".into(),
    };
    let rows: [(&str, &[Duration], &[Duration]); 5] = [
        ("ingress written → first gratuitous ARP", &on.0, &off.0),
        ("ingress written → first unsolicited NA", &on.1, &off.1),
        (
            "SIGKILL → first gratuitous ARP at client",
            &on.2.garp,
            &off.2.garp,
        ),
        (
            "SIGKILL → first unsolicited NA at client",
            &on.2.una,
            &off.2.una,
        ),
        (
            "SIGKILL → first TCP connect to new node",
            &on.2.tcp,
            &off.2.tcp,
        ),
    ];
    println!("  summary, detection on vs off ({rounds} rounds each):");
    for (what, a, b) in rows {
        println!(
            "  {what}:\n    on  {}\n    off {}\n    {}",
            show(a),
            show(b),
            added(a, b)
        );
    }
    println!(
        "  (first announcement: from the controller's ingress write, as a watch of the lab's delivered it, to the \
         first gratuitous ARP / unsolicited NA from a node seen on the bridge, for addresses no node announced \
         before; failover: as section 3)"
    );
    Ok(())
}

fn thousand(window: Duration) -> Result<()> {
    let lab = Lab::start(LabConfig {
        nodes: 1,
        apiserver: None,
        ..LabConfig::default()
    })?;
    // 1,000 IPs: TEST-NET-3 has only 256 addresses, so 250 come from it and 750 from
    // the IPv6 documentation prefix (a /118 holds 1,024).
    lab.create_pool("bulk", &["203.0.113.0/24", "2001:db8:200::/118"])?;
    lab.apply_l2adv(
        "bulk",
        L2AdvertisementSpec {
            ip_address_pools: vec!["bulk".into()],
            ..Default::default()
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let base = lab.speaker_rss("node1").unwrap_or(0);
    let t = Instant::now();
    let svcs: Vec<Svc> = (0..250)
        .map(|i| Svc::new(&format!("v4-{i}"), 80))
        .chain((0..750).map(|i| Svc::new(&format!("v6-{i}"), 80).family(Family::V6)))
        .collect();
    for s in &svcs {
        lab.create_service(s)?;
    }
    println!(
        "  created 1,000 Services and EndpointSlices in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let won = loop {
        let won = lab
            .speaker_metric("node1", "ferrolb_speaker_elections{result=\"won\"}")?
            .unwrap_or(0.0);
        if won >= 1000.0 || Instant::now() > deadline {
            break won;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "  node1 announces {won} IPs ({:.1} s after the first Service was created)",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss = lab.speaker_rss("node1").unwrap_or(0);
    println!(
        "  speaker RSS: {:.1} MiB with 0 IPs → {:.1} MiB with {won} IPs ({:.1} KiB per IP)",
        mib(base),
        mib(rss),
        (rss.saturating_sub(base)) as f64 / 1024.0 / won.max(1.0)
    );
    let sample: Vec<IpAddr> = [
        "203.0.113.5",
        "203.0.113.200",
        "2001:db8:200::5",
        "2001:db8:200::2e0",
    ]
    .iter()
    .map(|s| s.parse().expect("ip"))
    .collect();
    let answered = lab
        .probe(CLIENT, &sample, 1, ProbeConfig::count())?
        .iter()
        .filter(|r| r.replies.len() == 1)
        .count();
    println!(
        "  spot check: {answered}/{} sampled IPs answered by exactly one node",
        sample.len()
    );
    println!(
        "\n== 4b. API writes in steady state with those 1,000 Services (1 speaker), {window:?} =="
    );
    writes(&lab, window, 1)?;
    Ok(())
}
