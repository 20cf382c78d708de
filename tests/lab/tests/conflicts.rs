//! Issue 12 (1), address conflict detection, against a rogue host's own kernel: a host on
//! the LAN that already uses a pool address keeps every FerroLB node silent for it, the
//! Service says so (`ferrolb.io/Announced=False`, `AddressConflict`, the rogue's MAC, a
//! Warning Event), and the address is announced once the rogue is gone; a rogue that shows
//! up later is defended against once, then yielded to; a FerroLB node's own takeover is
//! never taken for a conflict.
//!
//! ```text
//!   rogue1 (02:00:00:00:99:01)  hold(ip): its kernel answers ARP / NS, probes and DAD too
//!                               claim(ip): one gratuitous ARP / unsolicited NA
//!   client1 ── sweeps: who answers ip, every 250 ms        (nodes by name, the rogue by MAC)
//!   bridge  ── LAN observer: every node's announcement / answer for ip, timestamped
//!   api     ── StatusLog: every ingress / Announced change of every Service, timestamped
//! ```
//!
//! Speakers run with `--conflict-retry-max-ms 2000`, so an address in conflict is probed
//! again at most 2 s apart and the scenes stay short. Each scenario prints its figures: time
//! to detect, time to announce after the rogue left. Needs root and the workspace binaries,
//! like every lab test: `cargo build --workspace --bins && cargo nextest run -p ferrolb-lab
//! --test conflicts`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::annotations::LOAD_BALANCER_IPS;
use ferrolb_lab::lab::SPEAKER_METRICS;
use ferrolb_lab::observe;
use ferrolb_lab::packet::{self, Kind};
use ferrolb_lab::stats::ms;
use ferrolb_lab::status_log::{Change, StatusLog, events, reason_is, wait_event};
use ferrolb_lab::sweeps::{
    STABLE, Sweep, Sweeper, WINDOW, describe, node_names, one_each, single_ip_services,
    wait_settled,
};
use ferrolb_lab::{Family, Lab, LabConfig, Observer, Rogue, Signal, Svc};
use pnet_base::MacAddr;

const CLIENT: &str = "client1";
const PORT: u16 = 8080;
/// The reason FerroLB gives a Service whose address another host uses.
const CONFLICT: &str = "AddressConflict";
/// The speakers' longest wait between two probes of an address in conflict, for these
/// scenes (`--conflict-retry-max-ms`; the default is 30 s).
const RETRY_MAX_MS: u64 = 2000;
/// How long the rogue keeps an address after FerroLB has seen the conflict: the speakers
/// probe again after 1 s and then every 2 s, finding it each time.
const HELD: Duration = Duration::from_secs(5);
/// Longest from the controller's ingress write (or a second claim) to the condition
/// saying AddressConflict.
const DETECT_MAX: Duration = Duration::from_secs(15);
/// Longest from the rogue giving the address up to a node's first announcement: the
/// longest retry wait, a probe run (300 ms) and slack for a loaded runner.
const ANNOUNCE_MAX: Duration = Duration::from_secs(6);
/// Most a crash takeover or a failback may take to settle in scenario (c).
const SETTLE_MAX: Duration = Duration::from_secs(25);

/// A 3-node lab whose speakers retry conflicts at most 2 s apart, with pool `default`.
fn conflict_lab() -> Lab {
    let lab = Lab::start(LabConfig {
        speaker_args: vec!["--conflict-retry-max-ms".into(), RETRY_MAX_MS.to_string()],
        ..LabConfig::default()
    })
    .expect("lab starts");
    lab.default_pool().expect("default pool");
    wait_first_decisions(&lab);
    lab
}

/// Waits until every speaker has made its first decision (its NodeAnnouncement says it
/// serves). An IP a speaker finds at its first decision counts as announced before (its
/// previous start may have announced it) and is taken at once, probed alongside; a
/// scenario's new Service must come after, to be probed for first.
fn wait_first_decisions(lab: &Lab) {
    let nodes = node_names(lab);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let serving: Vec<String> = lab
            .kube(|c| async move {
                let api: kube::Api<ferrolb_crds::NodeAnnouncement> = kube::Api::all(c);
                let list = api.list(&Default::default()).await?;
                Ok(list
                    .items
                    .into_iter()
                    .filter(|r| r.spec.serving)
                    .filter_map(|r| r.metadata.name)
                    .collect())
            })
            .expect("list NodeAnnouncements");
        if nodes.iter().all(|n| serving.contains(n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "speakers did not all serve within 20 s: {serving:?} of {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A single-stack Service asking for `ip` (`ferrolb.io/loadBalancerIPs`).
fn requesting(name: &str, ip: IpAddr) -> Svc {
    let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
    Svc::new(name, PORT)
        .family(family)
        .annotate(LOAD_BALANCER_IPS, &ip.to_string())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP")
}

/// The FerroLB nodes among one IP's answerers in a sweep (the rogue shows as its MAC).
fn node_answerers<'a>(nodes: &[String], answerers: &'a [String]) -> Vec<&'a String> {
    answerers.iter().filter(|a| nodes.contains(a)).collect()
}

/// The lab's node MACs.
fn node_macs(lab: &Lab) -> Vec<MacAddr> {
    lab.nodes().iter().map(|h| h.mac).collect()
}

/// The sum of every sample of a speaker's metric family `name` (counters with their
/// `_total`), or `None` when its `/metrics` does not describe the family at all.
fn speaker_family_sum(lab: &Lab, node: &str, name: &str) -> Option<f64> {
    let (_, body) = lab
        .http_get(
            node,
            SPEAKER_METRICS.parse().expect("addr"),
            "/metrics",
            Duration::from_secs(5),
        )
        .expect("speaker /metrics");
    let base = name.trim_end_matches("_total");
    let described = body
        .lines()
        .any(|l| l.starts_with(&format!("# TYPE {base} ")));
    let samples: Vec<f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (described || !samples.is_empty()).then(|| samples.iter().sum())
}

/// Per node of `nodes` (all when empty), `ferrolb_speaker_address_conflicts_detected_total`
/// (all protocols) and the `ferrolb_speaker_address_conflicts` gauge; panics when a speaker
/// does not export both.
fn conflict_metrics(lab: &Lab, nodes: &[&str]) -> Vec<(String, f64, f64)> {
    node_names(lab)
        .into_iter()
        .filter(|n| nodes.is_empty() || nodes.contains(&n.as_str()))
        .map(|n| {
            let detected = speaker_family_sum(
                lab,
                &n,
                "ferrolb_speaker_address_conflicts_detected_total",
            );
            let now = speaker_family_sum(lab, &n, "ferrolb_speaker_address_conflicts");
            match (detected, now) {
                (Some(d), Some(g)) => (n, d, g),
                _ => panic!(
                    "the speaker on {n} does not export ferrolb_speaker_address_conflicts_detected_total \
                     and ferrolb_speaker_address_conflicts (got {detected:?}, {now:?})"
                ),
            }
        })
        .collect()
}

/// Sweeps `ip` until the same single FerroLB node has answered for a second (≤ 20 s),
/// ignoring a rogue; returns it.
fn wait_one_node(lab: &Lab, ip: IpAddr) -> String {
    let nodes = node_names(lab);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<(Instant, String)> = None;
    loop {
        let view = lab
            .answerers(CLIENT, &[ip], WINDOW)
            .expect("sweep")
            .remove(0);
        let now = Instant::now();
        let answering = node_answerers(&nodes, &view);
        match (&since, answering.as_slice()) {
            (Some((t, n)), [one]) if *n == **one => {
                if now - *t >= Duration::from_secs(1) {
                    return n.clone();
                }
            }
            (_, [one]) => since = Some((now, (*one).clone())),
            _ => since = None,
        }
        assert!(
            now < deadline,
            "{ip}: never one steady node answering; last {view:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the LAN and the Service showed after the rogue gave `ip` up at `t_release`.
struct Recovery {
    /// The node whose announcement came first.
    node: String,
    /// Release → that node's first gratuitous ARP / unsolicited NA for `ip`.
    announce: Duration,
    /// Release → the first sweep of the steady single answerer.
    answered: Duration,
    /// Release → the condition saying Announced again.
    condition: Duration,
}

/// The rogue has just given `ip` up: waits for one node to announce it (≤ [`ANNOUNCE_MAX`]),
/// for the sweeps to show that node alone for [`STABLE`], and for the condition to say
/// Announced; asserts all three.
fn recovers(
    lab: &Lab,
    svc: &Svc,
    ip: IpAddr,
    t_release: Instant,
    obs: &Observer,
    sweeper: &Sweeper,
    log: &StatusLog,
) -> Recovery {
    let macs = node_macs(lab);
    let first = obs
        .wait_for(ANNOUNCE_MAX, |e| {
            e.at >= t_release && e.gratuitous && e.answers_for(ip) && macs.contains(&e.sender_mac)
        })
        .unwrap_or_else(|| {
            panic!(
                "{ip}: no node announced it within {ANNOUNCE_MAX:?} after the rogue gave it up \
                 (retries at most {RETRY_MAX_MS} ms apart)"
            )
        });
    let node = lab
        .node_by_mac(first.sender_mac)
        .expect("a node's MAC")
        .to_string();
    let n2 = node.clone();
    let alone = move |v: &[Vec<String>]| v[0] == [n2.clone()];
    sweeper.wait_stable(t_release, STABLE, Duration::from_secs(15), &alone);
    let sweeps = sweeper.since(t_release);
    let last = sweeps.last().expect("sweeps after the release");
    assert!(
        alone(&last.view),
        "{ip}: after the rogue left, {node} announced it but the sweeps end with {}",
        describe(&[ip], &last.view)
    );
    for s in sweeps.iter().filter(|s| s.at + STABLE >= last.at) {
        assert!(
            alone(&s.view),
            "{ip}: in the last {} of sweeps, not {node} alone at +{}: {}",
            ms(STABLE),
            ms(s.at - t_release),
            describe(&[ip], &s.view)
        );
    }
    let steady_from = sweeps
        .iter()
        .rposition(|s| !alone(&s.view))
        .map_or(0, |i| i + 1);
    let c = log
        .wait_for(svc, Duration::from_secs(15), |c| {
            c.at >= t_release
                && c.announced
                    .as_ref()
                    .is_some_and(|a| a.status == "True" && a.reason == "Announced")
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: the Announced condition never became True after the rogue left; changes {:?}",
                svc.name,
                log.of(svc)
            )
        });
    let a = c.announced.as_ref().expect("condition");
    assert!(
        a.message.contains(&node),
        "the condition names the announcing node {node}: {a:?}"
    );
    Recovery {
        node,
        announce: first.at - t_release,
        answered: sweeps[steady_from].at - t_release,
        condition: c.at - t_release,
    }
}

/// Asserts that no sweep that ended before `until` saw a FerroLB node answer `ip`, and that
/// the rogue answered in some (the sweeper works); returns (sweeps, sweeps the rogue answered).
fn assert_no_node_answered(
    nodes: &[String],
    rogue: &Rogue,
    ip: IpAddr,
    sweeps: &[Sweep],
    from: Instant,
    until: Instant,
    what: &str,
) -> (usize, usize) {
    let window: Vec<&Sweep> = sweeps
        .iter()
        .filter(|s| s.at >= from && s.at + WINDOW <= until)
        .collect();
    for s in &window {
        let n = node_answerers(nodes, &s.view[0]);
        assert!(
            n.is_empty(),
            "{what}: at +{} a FerroLB node answered {ip}, which {} uses: {}",
            ms(s.at - from),
            rogue.mac(),
            describe(&[ip], &s.view)
        );
    }
    let rogue_mac = rogue.mac().to_string();
    let by_rogue = window
        .iter()
        .filter(|s| s.view[0].contains(&rogue_mac))
        .count();
    assert!(
        by_rogue > 0,
        "{what}: the rogue answered {ip} in none of {} sweeps",
        window.len()
    );
    (window.len(), by_rogue)
}

/// Asserts that the LAN observer saw no FerroLB node announce or answer `ip` in [from, until).
fn assert_no_node_frames(
    lab: &Lab,
    obs: &Observer,
    ip: IpAddr,
    from: Instant,
    until: Instant,
    what: &str,
) {
    let macs = node_macs(lab);
    let show = |e: &packet::Seen| {
        format!(
            "+{} {:?} {} → {} from {}{}",
            ms(e.at - from),
            e.kind,
            e.sender_ip,
            e.target_ip,
            lab.node_by_mac(e.sender_mac).unwrap_or("?"),
            if e.gratuitous { " (gratuitous)" } else { "" }
        )
    };
    let seen = obs.since(from);
    let about_ip = |e: &&packet::Seen| e.at < until && (e.sender_ip == ip || e.target_ip == ip);
    let frames: Vec<String> = seen
        .iter()
        .filter(about_ip)
        .filter(|e| e.answers_for(ip) && macs.contains(&e.sender_mac))
        .map(show)
        .collect();
    if !frames.is_empty() {
        let context: Vec<String> = seen
            .iter()
            .filter(about_ip)
            .filter(|e| macs.contains(&e.sender_mac) || e.eth_dst != lab.host(CLIENT).mac)
            .map(show)
            .collect();
        panic!(
            "{what}: FerroLB nodes announced or answered {ip} on the LAN: {frames:?}; every node's \
             frame about it and every frame not to the client: {context:#?}"
        );
    }
}

/// The condition says AddressConflict (False) naming the rogue's MAC, and a Warning Event
/// AddressConflict was recorded.
fn assert_conflict_reported(lab: &Lab, svc: &Svc, c: &Change, rogue: &Rogue) {
    let a = c.announced.as_ref().expect("condition");
    assert_eq!(a.status, "False", "{a:?}");
    let mac = rogue.mac().to_string();
    assert!(
        a.message.contains(&mac),
        "the AddressConflict message names the rogue's MAC {mac}: {a:?}"
    );
    let ev =
        wait_event(lab, svc, "Warning", CONFLICT, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "no Warning Event {CONFLICT} for {}; events {:?}",
                svc.name,
                events(lab, svc)
            )
        });
    println!("{}: Warning {CONFLICT}: {}", svc.name, ev.note);
    println!("{}: condition False {CONFLICT}: {}", svc.name, a.message);
}

// ------------------------------------------------------------------ the rogue itself

/// The rogue behaves as a forgotten host does, through its own kernel: taking an address
/// sends nothing; it then answers a client's ARP request / NS for it and a probe as a
/// speaker sends it (an ARP probe from 0.0.0.0, a DAD NS from `::`, answered to all nodes);
/// `claim` puts one gratuitous ARP / unsolicited NA on the LAN; once it gives the address up
/// nobody answers. (No speakers: this checks the lab, so that the scenarios below fail only
/// for FerroLB's reasons.)
#[test]
fn a_rogue_host_answers_for_its_address_and_claims_it() {
    let mut lab = Lab::start(LabConfig {
        speakers: false,
        controller: false,
        ..LabConfig::default()
    })
    .expect("lab starts");
    let rogue = Rogue::join(&mut lab, 1).expect("the rogue joins the LAN");
    let mac = rogue.mac();
    assert_eq!(mac.to_string(), "02:00:00:00:99:01");
    let client = lab.host(CLIENT).clone();
    let obs = lab.observe_lan().expect("LAN observer");
    for addr in ["203.0.113.70", "2001:db8:200::70"] {
        let vip = ip(addr);
        let t0 = Instant::now();
        rogue.hold(vip).expect("hold");
        let view = lab.answerers(CLIENT, &[vip], WINDOW).expect("sweep");
        assert_eq!(
            view[0],
            [mac.to_string()],
            "{vip}: the rogue's kernel answers"
        );

        let probe = match vip {
            IpAddr::V4(v4) => packet::arp_probe(client.mac, v4),
            IpAddr::V6(v6) => packet::dad_solicitation(client.mac, v6),
        };
        let t_probe = Instant::now();
        observe::send(&client.ns, "eth0", vec![probe]).expect("probe");
        let reply = obs
            .wait_for(Duration::from_secs(1), |e| {
                e.at >= t_probe
                    && e.sender_mac == mac
                    && matches!(e.kind, Kind::ArpReply | Kind::NeighborAdvertisement)
                    && e.answers_for(vip)
            })
            .unwrap_or_else(|| panic!("{vip}: the rogue's kernel did not answer a probe"));
        match vip {
            IpAddr::V4(_) => assert_eq!(
                reply.eth_dst, client.mac,
                "ARP probe answered to the prober"
            ),
            IpAddr::V6(_) => assert_eq!(
                reply.eth_dst,
                MacAddr::new(0x33, 0x33, 0, 0, 0, 1),
                "DAD answered to all nodes (RFC 4862 §5.4.3)"
            ),
        }

        let silent: Vec<_> = obs
            .since(t0)
            .into_iter()
            .filter(|e| e.at < t_probe && e.gratuitous && e.sender_mac == mac)
            .collect();
        assert!(silent.is_empty(), "{vip}: taking it sent {silent:?}");

        let t_claim = rogue.claim(vip).expect("claim");
        let claim = obs
            .wait_for(Duration::from_secs(1), |e| {
                e.at >= t_claim && e.gratuitous && e.sender_mac == mac && e.answers_for(vip)
            })
            .unwrap_or_else(|| panic!("{vip}: the claim never showed on the LAN"));
        println!(
            "{vip}: rogue answers sweeps and probes; claim seen as {:?} after {}",
            claim.kind,
            ms(claim.at - t_claim)
        );

        rogue.release(vip).expect("release");
        let view = lab.answerers(CLIENT, &[vip], WINDOW).expect("sweep");
        assert!(view[0].is_empty(), "{vip}: still answered by {view:?}");
    }
}

// ------------------------------------------------------------------ (a) rogue first

/// (a) The rogue already uses the address a new Service asks for: no FerroLB node ever
/// answers it (the sweeps see the rogue alone, the LAN no node's announcement or answer),
/// the condition says AddressConflict with the rogue's MAC and a Warning Event is recorded;
/// once the rogue gives it up, exactly one node announces it within the retry backoff and
/// the condition says Announced.
fn rogue_holds_the_address_first(addr: &str) {
    let vip = ip(addr);
    let mut lab = conflict_lab();
    let nodes = node_names(&lab);
    let rogue = Rogue::join(&mut lab, 1).expect("the rogue joins the LAN");
    rogue.hold(vip).expect("the rogue takes the address");
    let log = StatusLog::start(&lab).expect("status log");
    let obs = lab.observe_lan().expect("LAN observer");
    let sweeper = Sweeper::start(&lab, CLIENT, &[vip]);

    let svc = requesting("rogue-first", vip);
    let t0 = Instant::now();
    lab.create_service(&svc).expect("create service");
    let ingress = lab
        .wait_ingress(&svc, 1, Duration::from_secs(20))
        .expect("ingress");
    assert_eq!(ingress, [vip], "the Service gets the address it asked for");
    let t_ingress = log
        .ingress_written(&svc, &[vip], Duration::from_secs(5))
        .expect("the log saw the ingress write");
    let conflict = log
        .wait_for(&svc, DETECT_MAX, |c| reason_is(c, CONFLICT))
        .unwrap_or_else(|| {
            panic!(
                "{vip}: the Announced condition never said {CONFLICT} while {} uses it; changes {:?}",
                rogue.mac(),
                log.of(&svc)
            )
        });
    assert_conflict_reported(&lab, &svc, &conflict, &rogue);
    // The rogue keeps it through a few re-probes.
    std::thread::sleep(HELD);
    let metrics = conflict_metrics(&lab, &[]);
    println!(
        "conflict metrics while the rogue holds {vip} (node, detected, in conflict now): {metrics:?}"
    );
    assert!(
        metrics.iter().any(|(_, d, g)| *d >= 1.0 && *g >= 1.0),
        "some speaker counts the conflict and reports it ongoing: {metrics:?}"
    );
    let still = log
        .of(&svc)
        .into_iter()
        .last()
        .and_then(|c| c.announced)
        .expect("a condition");
    assert_eq!(
        still.reason, CONFLICT,
        "{vip}: still a conflict while held: {still:?}"
    );

    let t_release = Instant::now();
    rogue.release(vip).expect("the rogue gives the address up");
    let held = sweeper.since(t0);
    let (swept, by_rogue) =
        assert_no_node_answered(&nodes, &rogue, vip, &held, t0, t_release, "rogue holds it");
    assert_no_node_frames(&lab, &obs, vip, t0, t_release, "rogue holds it");

    let r = recovers(&lab, &svc, vip, t_release, &obs, &sweeper, &log);
    drop(sweeper);
    println!(
        "{vip} (rogue first): {swept} sweeps while the rogue held it, {by_rogue} answered by the rogue, none by a node"
    );
    println!(
        "{vip} (rogue first): time to detect: ingress written → condition {CONFLICT} {} (Service created → {})",
        ms(conflict.at - t_ingress),
        ms(conflict.at - t0)
    );
    println!(
        "{vip} (rogue first): rogue left → first announcement by {} {}, → steady single answerer in sweeps {}, → condition Announced {}",
        r.node,
        ms(r.announce),
        ms(r.answered),
        ms(r.condition)
    );
    // Last, as the strictest: while the rogue held the address the condition never said a
    // node announced it (no node did).
    let announced_before: Vec<String> = log
        .of(&svc)
        .into_iter()
        .filter(|c| c.at < t_release)
        .filter_map(|c| {
            let a = c.announced?;
            (a.status == "True").then(|| format!("+{} {}: {}", ms(c.at - t0), a.reason, a.message))
        })
        .collect();
    assert!(
        announced_before.is_empty(),
        "{vip}: while the rogue used it the condition said True (Service created at +0, \
         {CONFLICT} at +{}): {announced_before:?}",
        ms(conflict.at - t0)
    );
}

#[test]
fn rogue_first_ipv4_no_node_answers_until_it_leaves() {
    rogue_holds_the_address_first("203.0.113.77");
}

#[test]
fn rogue_first_ipv6_no_node_answers_until_it_leaves() {
    rogue_holds_the_address_first("2001:db8:200::77");
}

// ------------------------------------------------------------------ (b) rogue later

/// (b) The Service is announced by one node; the rogue takes the address and claims it
/// once: the node defends it (its own gratuitous ARP / NA follows) and stays the only
/// FerroLB answerer, the condition still Announced. A second claim 3 s later (within RFC
/// 5227's 10 s): no FerroLB node answers any more, the condition says AddressConflict with
/// the rogue's MAC, a Warning Event. The rogue leaves: announced again.
fn rogue_appears_later(addr: &str) {
    let vip = ip(addr);
    let mut lab = conflict_lab();
    let nodes = node_names(&lab);
    let rogue = Rogue::join(&mut lab, 1).expect("the rogue joins the LAN");
    let log = StatusLog::start(&lab).expect("status log");
    let svc = requesting("rogue-later", vip);
    lab.create_service(&svc).expect("create service");
    let ingress = lab
        .wait_ingress(&svc, 1, Duration::from_secs(20))
        .expect("ingress");
    assert_eq!(ingress, [vip]);
    let owner = wait_one_node(&lab, vip);
    let owner_mac = lab.node_mac(&owner);
    log.wait_for(&svc, Duration::from_secs(15), |c| {
        c.announced
            .as_ref()
            .is_some_and(|a| a.status == "True" && a.message.contains(&owner))
    })
    .unwrap_or_else(|| {
        panic!(
            "the condition never said {owner} announces; {:?}",
            log.of(&svc)
        )
    });
    let obs = lab.observe_lan().expect("LAN observer");
    // The takeover's repeats (+0.5, 1, 2, 4 s) are over: what the owner sends next answers
    // the rogue.
    assert!(
        obs.wait_quiet(Duration::from_millis(2500), Duration::from_secs(15)),
        "the LAN never went quiet"
    );
    let sweeper = Sweeper::start(&lab, CLIENT, &[vip]);
    rogue.hold(vip).expect("the rogue takes the address");

    // First claim: defended.
    let t1 = rogue.claim(vip).expect("first claim");
    let defence = obs
        .wait_for(Duration::from_secs(2), |e| {
            e.at >= t1 && e.gratuitous && e.answers_for(vip) && e.sender_mac == owner_mac
        })
        .unwrap_or_else(|| {
            panic!("{vip}: {owner} did not defend it against the rogue's first claim within 2 s")
        });
    std::thread::sleep((t1 + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    let after_one = sweeper.since(t1);
    for s in after_one
        .iter()
        .filter(|s| s.at >= t1 + Duration::from_millis(300))
    {
        assert_eq!(
            node_answerers(&nodes, &s.view[0]),
            [&owner],
            "{vip}: after one claim, {owner} alone of FerroLB answers it (+{}): {}",
            ms(s.at - t1),
            describe(&[vip], &s.view)
        );
    }
    let early: Vec<_> = log
        .of(&svc)
        .into_iter()
        .filter(|c| c.at >= t1 && reason_is(c, CONFLICT))
        .collect();
    assert!(
        early.is_empty(),
        "{vip}: one claim made a conflict: {early:?}"
    );

    // Second claim within 10 s: yielded.
    let t2 = rogue.claim(vip).expect("second claim");
    let conflict = log
        .wait_for(&svc, DETECT_MAX, |c| c.at >= t2 && reason_is(c, CONFLICT))
        .unwrap_or_else(|| {
            panic!(
                "{vip}: the condition never said {CONFLICT} after the rogue's second claim; changes {:?}",
                log.of(&svc)
            )
        });
    assert_conflict_reported(&lab, &svc, &conflict, &rogue);
    std::thread::sleep(HELD);
    let t_release = Instant::now();
    rogue.release(vip).expect("the rogue gives the address up");
    let silent_from = sweeper
        .since(t2)
        .into_iter()
        .find(|s| node_answerers(&nodes, &s.view[0]).is_empty())
        .map(|s| s.at);
    let (swept, by_rogue) = assert_no_node_answered(
        &nodes,
        &rogue,
        vip,
        &sweeper.since(conflict.at),
        conflict.at,
        t_release,
        "after the second claim",
    );
    assert_no_node_frames(
        &lab,
        &obs,
        vip,
        conflict.at,
        t_release,
        "after the second claim",
    );

    let r = recovers(&lab, &svc, vip, t_release, &obs, &sweeper, &log);
    drop(sweeper);
    println!(
        "{vip} (rogue later): {owner} defended the first claim after {}",
        ms(defence.at - t1)
    );
    println!(
        "{vip} (rogue later): time to detect: second claim → condition {CONFLICT} {}, → first sweep with no node answering {} (sweeps every 250 ms)",
        ms(conflict.at - t2),
        silent_from.map_or("never".into(), |t| ms(t - t2))
    );
    println!(
        "{vip} (rogue later): {swept} sweeps after the conflict was reported, {by_rogue} answered by the rogue, none by a node"
    );
    println!(
        "{vip} (rogue later): rogue left → first announcement by {} {}, → steady single answerer in sweeps {}, → condition Announced {}",
        r.node,
        ms(r.announce),
        ms(r.answered),
        ms(r.condition)
    );
}

#[test]
fn rogue_later_ipv4_defended_once_then_yielded() {
    rogue_appears_later("203.0.113.78");
}

#[test]
fn rogue_later_ipv6_defended_once_then_yielded() {
    rogue_appears_later("2001:db8:200::78");
}

// ------------------------------------------------------------------ (c) own takeover

/// (c) A FerroLB node's own takeover is never a conflict: with twelve Services announced
/// (8 IPv4, 4 IPv6), SIGKILL the busiest speaker; its peers take its IPs at once, and after
/// it is restarted it takes them back after the hold-down. Every IP ends with exactly one
/// answerer each time, no Service's condition ever says AddressConflict, no such Event is
/// recorded, and no speaker counts a conflict.
#[test]
fn own_takeover_and_failback_are_never_a_conflict() {
    let mut lab = conflict_lab();
    let ips = single_ip_services(&lab, 8, 4, PORT);
    let log = StatusLog::start(&lab).expect("status log");
    let owners = wait_settled(&lab, CLIENT, &ips, Duration::from_secs(30));
    let nodes = node_names(&lab);
    let busiest = nodes
        .iter()
        .max_by_key(|n| {
            (
                owners.iter().filter(|o| o == n).count(),
                std::cmp::Reverse(*n),
            )
        })
        .expect("a node")
        .clone();
    let owned = owners.iter().filter(|o| **o == busiest).count();
    let before = conflict_metrics(&lab, &[]);
    println!("before: conflict metrics (node, detected, now) {before:?}");

    let sweeper = Sweeper::start(&lab, CLIENT, &ips);
    let t_kill = lab
        .kill_speaker(&busiest, Signal::SIGKILL)
        .expect("SIGKILL");
    lab.wait_speaker_exit(&busiest, Duration::from_secs(10));
    let b2 = busiest.clone();
    let without = move |v: &[Vec<String>]| one_each(v) && v.iter().all(|a| a[0] != b2);
    sweeper.wait_stable(t_kill, STABLE, SETTLE_MAX, &without);
    let took_over = sweeper
        .since(t_kill)
        .into_iter()
        .find(|s| without(&s.view))
        .map(|s| s.at - t_kill);
    let crashed = sweeper.since(t_kill);
    let last = crashed.last().expect("sweeps");
    assert!(
        without(&last.view),
        "after {busiest} crashed, not every IP has one answerer other than it: {}",
        describe(&ips, &last.view)
    );
    let alive: Vec<&str> = nodes
        .iter()
        .map(String::as_str)
        .filter(|n| *n != busiest)
        .collect();
    let survivors = conflict_metrics(&lab, &alive);

    let t_restart = Instant::now();
    lab.restart_speaker(&busiest).expect("restart");
    let b3 = busiest.clone();
    let back = move |v: &[Vec<String>]| one_each(v) && v.iter().any(|a| a[0] == b3);
    sweeper.wait_stable(t_restart, Duration::from_secs(8), SETTLE_MAX, &back);
    let sweeps = sweeper.stop();
    let failed_back = sweeps
        .iter()
        .filter(|s| s.at >= t_restart)
        .find(|s| back(&s.view))
        .map(|s| s.at - t_restart);
    let end = sweeps.last().expect("sweeps");
    assert!(
        back(&end.view),
        "after {busiest} came back, not every IP has one answerer (and {busiest} some): {}",
        describe(&ips, &end.view)
    );
    for s in sweeps.iter().filter(|s| s.at + STABLE >= end.at) {
        assert!(
            one_each(&s.view),
            "at the end, not every IP has exactly one answerer: {}",
            describe(&ips, &s.view)
        );
    }
    let after = conflict_metrics(&lab, &[]);

    let changes = log.changes();
    let conflicts: Vec<_> = changes.iter().filter(|c| reason_is(c, CONFLICT)).collect();
    println!(
        "{busiest} (answered {owned} of {} IPs) SIGKILLed: every IP answered by another node after {}; \
         restarted: failback settled after {}; {} status changes seen, {} saying {CONFLICT}",
        ips.len(),
        took_over.map_or("never".into(), ms),
        failed_back.map_or("never".into(), ms),
        changes.len(),
        conflicts.len()
    );
    println!(
        "conflict metrics (node, detected, now): survivors after the crash {survivors:?}, all after the failback {after:?}"
    );
    assert!(
        conflicts.is_empty(),
        "a FerroLB takeover was taken for a conflict: {conflicts:?}"
    );
    for svc in (0..8)
        .map(|i| Svc::new(&format!("v4-{i}"), PORT))
        .chain((0..4).map(|i| Svc::new(&format!("v6-{i}"), PORT)))
    {
        let evs: Vec<_> = events(&lab, &svc)
            .expect("events")
            .into_iter()
            .filter(|e| e.reason == CONFLICT)
            .collect();
        assert!(evs.is_empty(), "{}: {CONFLICT} Events {evs:?}", svc.name);
    }
    for (n, detected, now) in before.iter().chain(&survivors).chain(&after) {
        assert_eq!(
            (*detected, *now),
            (0.0, 0.0),
            "the speaker on {n} counted an address conflict with no rogue on the LAN"
        );
    }
}
