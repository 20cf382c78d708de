//! Watching and probing the LAN at layer 2 from inside a lab namespace.
//!
//! ```text
//!   Observer: thread in ns ── pnet channel on iface ── packet::parse ── bounded ring of Seen
//!   probe():  thread in ns ── send ARP request / NS ── collect replies (timeout + linger)
//!   send():   thread in ns ── send the given frames once each
//! ```
//! All stop by themselves: the observer when dropped (its reads time out every 50 ms), a
//! probe after `rounds × targets` requests, each bounded by `timeout + linger`, a send after
//! its frames.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pnet_base::MacAddr;
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};

use crate::netns;
use crate::packet::{self, Kind, Seen};

/// Most events an observer keeps; older ones are dropped first.
pub const OBSERVER_CAPACITY: usize = 100_000;

struct Ring {
    /// Absolute index of `events[0]` (how many were dropped before it).
    base: usize,
    events: VecDeque<Seen>,
}

/// Records every ARP request/reply and NS/NA seen on one interface of one namespace.
pub struct Observer {
    ring: Arc<Mutex<Ring>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

fn open(
    iface: &str,
    read_timeout: Duration,
    promiscuous: bool,
) -> Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    let nic = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| anyhow!("no interface {iface} in this namespace"))?;
    let config = Config {
        read_timeout: Some(read_timeout),
        promiscuous,
        ..Config::default()
    };
    match pnet_datalink::channel(&nic, config)
        .with_context(|| format!("packet socket on {iface}"))?
    {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => bail!("unexpected channel type on {iface}"),
    }
}

impl Observer {
    /// Starts observing `iface` in `ns`; returns once the capture socket is open.
    /// `promiscuous` makes a bridge device see frames forwarded between its ports.
    pub fn start(ns: &str, iface: &str, promiscuous: bool) -> Result<Observer> {
        let ring = Arc::new(Mutex::new(Ring {
            base: 0,
            events: VecDeque::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (ring2, stop2, iface2) = (ring.clone(), stop.clone(), iface.to_string());
        let thread = netns::spawn_in_ns(ns, &format!("observe-{iface}"), move || {
            let (_tx, mut rx) = match open(&iface2, Duration::from_millis(50), promiscuous) {
                Ok(ch) => {
                    let _ = ready_tx.send(Ok(()));
                    ch
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                let Ok(frame) = rx.next() else { continue };
                let Some(seen) = packet::parse(frame, Instant::now()) else {
                    continue;
                };
                let mut r = ring2.lock().expect("observer ring");
                if r.events.len() == OBSERVER_CAPACITY {
                    r.events.pop_front();
                    r.base += 1;
                }
                r.events.push_back(seen);
            }
            Ok(())
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Observer {
                ring,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow!("observer on {iface} in {ns} did not start"),
            }),
        }
    }

    /// Everything recorded so far (oldest first).
    pub fn events(&self) -> Vec<Seen> {
        self.ring
            .lock()
            .expect("observer ring")
            .events
            .iter()
            .cloned()
            .collect()
    }

    /// Everything recorded at or after `t`.
    pub fn since(&self, t: Instant) -> Vec<Seen> {
        self.events().into_iter().filter(|e| e.at >= t).collect()
    }

    /// Events dropped because the ring was full.
    pub fn dropped(&self) -> usize {
        self.ring.lock().expect("observer ring").base
    }

    /// Waits until no gratuitous ARP / unsolicited NA has been seen for `quiet` (at most
    /// `max`); returns whether it got quiet. Takeovers repeat announcements for a few
    /// seconds, so measurements start from a quiet LAN.
    pub fn wait_quiet(&self, quiet: Duration, max: Duration) -> bool {
        let start = Instant::now();
        loop {
            let last = self
                .ring
                .lock()
                .expect("observer ring")
                .events
                .iter()
                .rev()
                .find(|e| e.gratuitous)
                .map(|e| e.at);
            if last.is_none_or(|t| t.elapsed() >= quiet) {
                return true;
            }
            if start.elapsed() >= max {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for an event (recorded at any time, oldest first) matching
    /// `pred`, polling every 2 ms.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        let mut cursor = 0usize;
        loop {
            {
                let r = self.ring.lock().expect("observer ring");
                let start = cursor.max(r.base) - r.base;
                if let Some(e) = r.events.iter().skip(start).find(|e| pred(e)) {
                    return Some(e.clone());
                }
                cursor = r.base + r.events.len();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a probe behaves.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// How long to wait for the first reply.
    pub timeout: Duration,
    /// How long to keep listening after the first reply (to count extra repliers).
    pub linger: Duration,
    /// Pause between two requests.
    pub spacing: Duration,
    /// Send from this CPU only (the client's kernel then takes the request through the
    /// lab's links on it, as a NIC's receive queue would on a real node).
    pub cpu: Option<usize>,
}

impl ProbeConfig {
    /// For latency: stop listening 2 ms after the first reply.
    pub fn latency() -> ProbeConfig {
        ProbeConfig {
            timeout: Duration::from_millis(500),
            linger: Duration::from_millis(2),
            spacing: Duration::from_millis(5),
            cpu: None,
        }
    }

    /// For counting repliers: listen 300 ms after the first reply.
    pub fn count() -> ProbeConfig {
        ProbeConfig {
            timeout: Duration::from_millis(1000),
            linger: Duration::from_millis(300),
            spacing: Duration::from_millis(20),
            cpu: None,
        }
    }
}

/// Who sends the probes: a lab host's `eth0` identity.
#[derive(Clone, Copy, Debug)]
pub struct Prober {
    /// Source MAC.
    pub mac: MacAddr,
    /// Source IPv4 address (ARP SPA).
    pub ipv4: Ipv4Addr,
    /// Source IPv6 address (NS source).
    pub ipv6: Ipv6Addr,
}

/// One reply to one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Who answered (ARP SHA / NA target link-layer address).
    pub mac: MacAddr,
    /// From just before the request was sent to when the reply was read.
    pub after: Duration,
}

/// One request and the replies it got.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// The address asked for.
    pub target: IpAddr,
    /// Replies in arrival order.
    pub replies: Vec<Reply>,
}

/// Sends `rounds` ARP requests (IPv4 targets) or Neighbor Solicitations (IPv6 targets) for
/// each target in turn, from `who` on `iface` in `ns`, and collects the replies addressed
/// to `who`. Bounded: `rounds × targets.len()` requests, each waited on at most
/// `timeout + linger`.
pub fn probe(
    ns: &str,
    iface: &str,
    who: Prober,
    targets: &[IpAddr],
    rounds: usize,
    cfg: ProbeConfig,
) -> Result<Vec<ProbeResult>> {
    let targets = targets.to_vec();
    let iface = iface.to_string();
    netns::in_ns(ns, move || -> Result<Vec<ProbeResult>> {
        if let Some(cpu) = cfg.cpu {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .with_context(|| format!("pin the prober to CPU {cpu}"))?;
        }
        let (mut tx, mut rx) = open(&iface, Duration::from_millis(1), false)?;
        let mut results = Vec::with_capacity(rounds * targets.len());
        for _ in 0..rounds {
            for &target in &targets {
                let frame = match target {
                    IpAddr::V4(t) => packet::arp_request(who.mac, who.ipv4, t),
                    IpAddr::V6(t) => packet::neighbor_solicitation(who.mac, who.ipv6, t),
                };
                let sent = Instant::now();
                match tx.send_to(&frame, None) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => bail!("send probe: {e}"),
                    None => bail!("send probe: no buffer"),
                }
                let mut deadline = sent + cfg.timeout;
                let mut replies = Vec::new();
                while Instant::now() < deadline {
                    let Ok(frame) = rx.next() else { continue };
                    let now = Instant::now();
                    let Some(seen) = packet::parse(frame, now) else {
                        continue;
                    };
                    let reply_kind =
                        matches!(seen.kind, Kind::ArpReply | Kind::NeighborAdvertisement);
                    if reply_kind && seen.eth_dst == who.mac && seen.answers_for(target) {
                        if replies.is_empty() {
                            deadline = now + cfg.linger;
                        }
                        replies.push(Reply {
                            mac: seen.sender_mac,
                            after: now - sent,
                        });
                    }
                }
                results.push(ProbeResult { target, replies });
                std::thread::sleep(cfg.spacing);
            }
        }
        Ok(results)
    })?
}

/// Sends `frames` as they are, one after the other, from `iface` in `ns` (a host's own
/// claims or probes, built by [`packet`]). Bounded: one send per frame.
pub fn send(ns: &str, iface: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let iface = iface.to_string();
    netns::in_ns(ns, move || -> Result<()> {
        let (mut tx, _rx) = open(&iface, Duration::from_millis(1), false)?;
        for frame in &frames {
            match tx.send_to(frame, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("send frame on {iface}: {e}"),
                None => bail!("send frame on {iface}: no buffer"),
            }
        }
        Ok(())
    })?
}

/// Asks for every target at once and returns, per target (in order), the distinct MACs that
/// answered `who` within `window` of the last request: one ARP request (IPv4) or NS (IPv6)
/// per target, sent back to back, then one shared listening window. Counting answerers
/// this way takes `window` whatever the number of targets. Bounded: `targets.len()`
/// requests, then `window`.
pub fn sweep(
    ns: &str,
    iface: &str,
    who: Prober,
    targets: &[IpAddr],
    window: Duration,
) -> Result<Vec<Vec<MacAddr>>> {
    let targets = targets.to_vec();
    let iface = iface.to_string();
    netns::in_ns(ns, move || -> Result<Vec<Vec<MacAddr>>> {
        let (mut tx, mut rx) = open(&iface, Duration::from_millis(1), false)?;
        for &target in &targets {
            let frame = match target {
                IpAddr::V4(t) => packet::arp_request(who.mac, who.ipv4, t),
                IpAddr::V6(t) => packet::neighbor_solicitation(who.mac, who.ipv6, t),
            };
            match tx.send_to(&frame, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("send probe: {e}"),
                None => bail!("send probe: no buffer"),
            }
        }
        let deadline = Instant::now() + window;
        let mut macs: Vec<Vec<MacAddr>> = vec![Vec::new(); targets.len()];
        while Instant::now() < deadline {
            let Ok(frame) = rx.next() else { continue };
            let Some(seen) = packet::parse(frame, Instant::now()) else {
                continue;
            };
            if !matches!(seen.kind, Kind::ArpReply | Kind::NeighborAdvertisement)
                || seen.eth_dst != who.mac
            {
                continue;
            }
            for (i, &target) in targets.iter().enumerate() {
                if seen.answers_for(target) && !macs[i].contains(&seen.sender_mac) {
                    macs[i].push(seen.sender_mac);
                }
            }
        }
        Ok(macs)
    })?
}
