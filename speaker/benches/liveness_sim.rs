//! What liveness costs one speaker in a cluster of N:
//! `cargo bench -p ferrolb-speaker --bench liveness_sim [-- N… N/G…]` (default 100 300 1000
//! 1000/10; `N/G`: N speakers split by G L2Advertisements into groups of N/G, each
//! heartbeating only its group, docs/failover.md#who-heartbeats-whom).
//!
//! ```text
//!   simulation (no sockets, simulated time):
//!     speaker 0 = the real heartbeat engine (liveness::Engine: source check, HMAC, rate
//!                 limits, Ed25519, detector, paced signed heartbeats), every call timed
//!     speakers 1…N−1 = their heartbeats, built and signed like the engine's (heard lists
//!                 of everyone, windowed like the engine's), not timed
//!     warm-up 1 s, then SECS simulated seconds (env LIVENESS_SIM_SECS, default 3)
//!   loopback (N = 100, real sockets, 5 s): a real Liveness thread and 99 peers on
//!     127.0.0.2–100; the thread's own CPU time from /proc (schedstat)
//! ```
//!
//! Printed per speaker: CPU µs per second (receive = HMAC + rate limit + signature +
//! detector; tick = deadlines and the view; send = outgoing state + sign), datagrams and
//! bytes per second each way. The cost grows with N² over the cluster (every speaker hears
//! every other ten times a second), so at 1,000 it is mostly signature checks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;
use ferrolb_speaker::core::{Advertisement, Node, Pool, PoolSelection, World};
use ferrolb_speaker::liveness::engine::heard_window;
use ferrolb_speaker::liveness::{
    Config, Engine, Heard, Heartbeat, Key, Liveness, LivenessConfig, PeerAddr, SigningKey,
    decode_any, encode, node_id,
};
use ferrolb_speaker::scope::{Heartbeats, Scope};

const INTERVAL: Duration = Duration::from_millis(100);
const KEY: &[u8] = b"a-32-byte-cluster-heartbeat-key!";

struct Peer {
    name: String,
    inc: u64,
    signer: SigningKey,
    /// When it sends within each interval.
    phase: Duration,
    addr: SocketAddr,
    /// Whom it hears (everyone else), ascending by id, with a fixed age.
    heard: Vec<Heard>,
}

fn ifaces() -> BTreeSet<String> {
    ["eth0".to_string()].into()
}

/// `n` speakers named worker-NNNN with phases spread over the interval; speaker 0 first.
/// Each hears the others of its group (`group`).
fn cluster(
    n: usize,
    addr: impl Fn(usize) -> SocketAddr,
    group: impl Fn(usize) -> usize,
) -> Vec<Peer> {
    let phases: Vec<Duration> = (0..n)
        .map(|i| INTERVAL.mul_f64(((i * 7919) % 1000) as f64 / 1000.0))
        .collect();
    let ids: Vec<u32> = (0..n).map(|i| node_id(&format!("worker-{i:04}"))).collect();
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let mut heard: Vec<Heard> = (0..n)
                .filter(|k| *k != i && group(*k) == group(i))
                .map(|k| {
                    // It heard k's last heartbeat when k sent it (plus 0.1 ms).
                    let age = (phases[i] + INTERVAL - phases[k]).as_millis() % 100;
                    Heard {
                        id: ids[k],
                        age_ms: u16::try_from(age).unwrap_or(0),
                        serving: true,
                        settled: true,
                    }
                })
                .collect();
            heard.sort_by_key(|h| h.id);
            Peer {
                name: format!("worker-{i:04}"),
                inc: 1_000 + i as u64,
                signer: SigningKey::from_bytes(&seed),
                phase: phases[i],
                addr: addr(i),
                heard,
            }
        })
        .collect()
}

fn members(peers: &[Peer]) -> BTreeMap<String, PeerAddr> {
    peers
        .iter()
        .map(|p| {
            let a = PeerAddr {
                addr: p.addr,
                incarnation: Some(p.inc),
                fresh: true,
                pubkey: Some(p.signer.verifying_key()),
            };
            (p.name.clone(), a)
        })
        .collect()
}

/// Peer `p`'s heartbeat of round `round` (sequence `seq`), signed.
fn beat(p: &Peer, key: &Key, seq: u64, round: u64) -> Vec<u8> {
    let hb = Heartbeat::new(p.name.clone(), p.inc, seq, ifaces())
        .unwrap()
        .with_state(true, true)
        .with_established(true);
    let window = heard_window(
        p.heard.clone(),
        hb.heard_capacity(),
        round,
        node_id(&p.name),
    );
    encode(&hb.with_heard(window).unwrap(), key, &p.signer)
}

#[derive(Default)]
struct Figures {
    receive: Duration,
    tick: Duration,
    send: Duration,
    rx: u64,
    rx_bytes: u64,
    tx: u64,
    tx_bytes: u64,
    /// Views rebuilt (the detector said it may have changed).
    views: u64,
    /// Of `receive`: decoding and checking the signature alone (the same datagrams again).
    crypto: Duration,
    secs: f64,
}

impl Figures {
    fn per_s(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.secs
    }
}

enum Event {
    /// Speaker 0's next slot of heartbeats.
    Slot,
    /// Peer j's heartbeat.
    Beat(usize),
}

/// The World of `n` nodes labelled by group (`i * groups / n`), one pool and one
/// L2Advertisement per group.
fn grouped_world(peers: &[Peer], groups: usize) -> World {
    let n = peers.len();
    let mut w = World::default();
    for (i, p) in peers.iter().enumerate() {
        w.apply_node(Node {
            name: p.name.clone(),
            labels: BTreeMap::from([("group".to_string(), (i * groups / n).to_string())]),
            ..Default::default()
        });
    }
    for g in 0..groups {
        w.apply_pool(Pool {
            name: format!("p{g}"),
            labels: BTreeMap::new(),
            addresses: PoolAddresses::parse(&[format!("10.{g}.0.0/24")]).unwrap(),
        });
        let gs = g.to_string();
        w.apply_advertisement(Advertisement {
            name: format!("a{g}"),
            pools: PoolSelection {
                names: [format!("p{g}")].into(),
                selectors: Vec::new(),
            },
            node_selectors: vec![Selector::from_labels([("group", gs.as_str())])],
            ..Default::default()
        });
    }
    w
}

fn simulate(n: usize, groups: usize, secs: f64) -> (Figures, bool, usize) {
    let key = Key::new(KEY).unwrap();
    let group = |i: usize| i * groups / n;
    let peers = cluster(
        n,
        |i| {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16);
            SocketAddr::new(IpAddr::V6(ip), 7473)
        },
        group,
    );
    let t0 = Instant::now();
    let me = &peers[0];
    let mut engine = Engine::new(
        me.name.clone(),
        me.inc,
        INTERVAL,
        Config {
            grace: INTERVAL * 3,
            ..Config::default()
        },
        vec![key.clone()],
        me.signer.clone(),
        Arc::default(),
        t0,
    );
    // Whom speaker 0 heartbeats: the glue's own rule (scope.rs) on the grouped World.
    let scope = Scope::of(&grouped_world(&peers, groups), &peers[0].name);
    let to = Heartbeats::default().peers(&members(&peers[1..]), &scope, t0);
    engine.set_peers(&to, t0);
    engine.set_interfaces(&ifaces());
    engine.set_ready(true);
    let warm = Duration::from_secs(1);
    let end = warm + Duration::from_secs_f64(secs);
    // Every event in time order: speaker 0's slots and everyone else's heartbeats.
    let slots = engine.slots();
    let mut events: Vec<(Duration, Event)> = Vec::new();
    let mut t = me.phase;
    while t < end {
        for s in 0..slots {
            events.push((t + INTERVAL.mul_f64(s as f64 / slots as f64), Event::Slot));
        }
        t += INTERVAL;
    }
    for (j, p) in peers.iter().enumerate().skip(1) {
        if group(j) != group(0) {
            continue; // its group's scope leaves speaker 0 out
        }
        let mut t = p.phase;
        while t < end {
            events.push((t, Event::Beat(j)));
            t += INTERVAL;
        }
    }
    events.sort_by_key(|(t, _)| *t);
    let mut f = Figures::default();
    let mut seq = vec![0u64; n];
    let mut last = t0;
    for (at, event) in events {
        let now = t0 + at;
        let measure = at >= warm;
        // Deadlines that pass before this event: the thread wakes up and ticks.
        while let Some(d) = engine.next_deadline(last).filter(|d| *d <= now) {
            let s = Instant::now();
            let u = engine.tick(d);
            if measure {
                f.tick += s.elapsed();
                f.views += u64::from(u.view.is_some());
            }
            last = d;
        }
        last = now;
        match event {
            Event::Slot => {
                let s = Instant::now();
                let b = engine.next_slot(now);
                if measure {
                    f.send += s.elapsed();
                    f.tx += b.sends.len() as u64;
                    f.tx_bytes += b
                        .sends
                        .iter()
                        .map(|(_, i)| b.payloads[*i].len() as u64)
                        .sum::<u64>();
                }
            }
            Event::Beat(j) => {
                seq[j] += 1;
                let bytes = beat(&peers[j], &key, seq[j], seq[j]);
                let s = Instant::now();
                engine.receive(&bytes, peers[j].addr, now);
                let r = Instant::now();
                let u = engine.tick(now);
                let r2 = Instant::now();
                if measure {
                    let c = Instant::now();
                    let hb = decode_any(&bytes, std::slice::from_ref(&key))
                        .and_then(|u| u.verify(Some(&peers[j].signer.verifying_key())));
                    f.crypto += c.elapsed();
                    assert!(hb.is_ok());
                    f.views += u64::from(u.view.is_some());
                    f.receive += r - s;
                    f.tick += r2 - r;
                    f.rx += 1;
                    f.rx_bytes += bytes.len() as u64;
                }
            }
        }
    }
    f.secs = secs;
    let c = engine.counters().snapshot();
    assert_eq!(
        c.rejected_rate_limited + c.rejected_bad_signature,
        0,
        "{c:?}"
    );
    let alive = engine.detector().alive(t0 + end).len();
    (f, engine.detector().serving(), alive)
}

/// CPU time (ns) of this process's thread named `name`, from /proc (schedstat).
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == name {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// A real heartbeat thread on 127.0.0.1 and `n − 1` peers on 127.0.0.2… for `secs`.
fn loopback(n: usize, secs: u64) -> Result<(), Box<dyn std::error::Error>> {
    let key = Key::new(KEY)?;
    let sockets: Vec<std::net::UdpSocket> = (1..n)
        .map(|i| std::net::UdpSocket::bind((IpAddr::from([127, 0, 0, 1 + i as u8]), 0)))
        .collect::<Result<_, _>>()?;
    let mut cfg = LivenessConfig::new("worker-0000", "127.0.0.1:0".parse()?, KEY.to_vec());
    cfg.incarnation = 1_000;
    let peers_addr: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let (peers_tx, peers_rx) = tokio::sync::watch::channel(BTreeMap::new());
    let (_ifaces_tx, ifaces_rx) = tokio::sync::watch::channel(ifaces());
    let (_ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let (live, view) = Liveness::spawn(cfg, peers_rx, ifaces_rx, ready_rx)?;
    let me = live.local_addr();
    let mut all = cluster(n, |i| if i == 0 { me } else { peers_addr[i - 1] }, |_| 0);
    // Speaker 0's key is the thread's own (drawn at start), not the one made up here.
    let mut m = members(&all);
    if let Some(p) = m.get_mut("worker-0000") {
        p.pubkey = Some(live.public_key());
    }
    peers_tx.send_replace(m);
    all.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    // The 99 peers: every 100 ms each sends its signed heartbeat, and drains what it got.
    let generator = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (mut seq, mut got) = (0u64, 0u64);
        for s in &sockets {
            let _ = s.set_nonblocking(true);
        }
        let start = Instant::now();
        while !stop2.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            seq += 1;
            let round_start = Instant::now();
            for (p, s) in all.iter().zip(&sockets) {
                let _ = s.send_to(&beat(p, &key, seq, seq), me);
                while s.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            std::thread::sleep(INTERVAL.saturating_sub(round_start.elapsed()));
        }
        got
    });
    std::thread::sleep(Duration::from_secs(2));
    let (c0, cpu0, t) = (
        live.counters(),
        thread_cpu_ns("flb-heartbeats"),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, cpu1, el) = (
        live.counters(),
        thread_cpu_ns("flb-heartbeats"),
        t.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    let got = generator.join().unwrap_or(0);
    let el = el.as_secs_f64();
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => format!("{:.0}", (b - a) as f64 / 1e3 / el),
        _ => "?".into(),
    };
    println!(
        "loopback N={n}: thread CPU {cpu} µs/s; received {:.0}/s (accepted {:.0}/s), sent {:.0}/s \
         (peers read {got} in all); view {} speakers; rejected {:?}",
        (c1.received - c0.received) as f64 / el,
        (c1.accepted - c0.accepted) as f64 / el,
        (c1.sent - c0.sent) as f64 / el,
        view.borrow().len(),
        (
            c1.rejected_bad_signature,
            c1.rejected_rate_limited,
            c1.rejected_stale,
            c1.rejected_unknown_source
        ),
    );
    let (_, gaps, buckets) = c1.gap_histogram();
    let over = buckets
        .iter()
        .filter(|(le, _)| *le > 0.15)
        .map(|(_, n)| n)
        .sum::<u64>();
    println!(
        "loopback N={n}: {gaps} heartbeat gaps, {over} longer than 150 ms; max bucket {:?}",
        c1.gap_max_bucket()
    );
    Ok(())
}

fn main() {
    // `N` (all-to-all) or `N/G` (G advertisement groups).
    let sizes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter_map(|a| match a.split_once('/') {
            Some((n, g)) => Some((n.parse().ok()?, g.parse().ok()?)),
            None => Some((a.parse().ok()?, 1)),
        })
        .filter(|(n, g)| *g >= 1 && g <= n)
        .collect();
    let sizes = if sizes.is_empty() {
        vec![(100, 1), (300, 1), (1000, 1), (1000, 10)]
    } else {
        sizes
    };
    let secs: f64 = std::env::var("LIVENESS_SIM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!(
        "per speaker, {secs} simulated s after 1 s of warm-up (CPU: wall time of its calls on one thread)"
    );
    println!(
        "{:>7} | {:>9} | {:>8} {:>8} {:>6} {:>6} | {:>7} {:>7} | {:>10} {:>10} | {:>7}",
        "N/G",
        "CPU µs/s",
        "receive",
        "(crypto)",
        "tick",
        "send",
        "in /s",
        "out /s",
        "in B/s",
        "out B/s",
        "µs/dgram"
    );
    for (n, groups) in sizes {
        let wall = Instant::now();
        let (f, serving, alive) = simulate(n, groups, secs);
        let total = f.receive + f.tick + f.send;
        let label = if groups == 1 {
            n.to_string()
        } else {
            format!("{n}/{groups}")
        };
        println!(
            "{label:>7} | {:>9.0} | {:>8.0} {:>8.0} {:>6.0} {:>6.0} | {:>7.0} {:>7.0} | {:>10.0} {:>10.0} | {:>7.1}   ({:.0} views/s, serving {serving}, {alive} alive, {:.1} s)",
            f.per_s(total),
            f.per_s(f.receive),
            f.per_s(f.crypto),
            f.per_s(f.tick),
            f.per_s(f.send),
            f.rx as f64 / f.secs,
            f.tx as f64 / f.secs,
            f.rx_bytes as f64 / f.secs,
            f.tx_bytes as f64 / f.secs,
            (f.receive + f.tick).as_secs_f64() * 1e6 / f.rx.max(1) as f64,
            f.views as f64 / f.secs,
            wall.elapsed().as_secs_f64(),
        );
    }
    if std::env::var_os("LIVENESS_SIM_NO_LOOPBACK").is_none()
        && let Err(e) = loopback(100, 5)
    {
        println!("loopback bench skipped: {e}");
    }
}
