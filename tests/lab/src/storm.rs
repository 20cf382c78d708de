//! A bounded ARP or NDP storm from one lab client, every reply matched to its request.
//!
//! ```text
//!   sender (client ns, raw socket)    request k: target k mod T, source (k / T) mod S,
//!     paced at rate × elapsed,        sent time stored in slot k mod (T × S)
//!     in bursts of a few ────────────▶ LAN bridge ──▶ every node (kernels, speakers)
//!   receiver (client ns, ARP / IPv6   reply: (answered IP, asker's IP) → its slot
//!     packet socket, own frames not   → latency = read time − sent time
//!     looped back) ◀──────────────────
//! ```
//!
//! The requests come from addresses no lab host has (198.51.100.128–254 and
//! 2001:db8:100::1:0–1ff, [`SOURCES_V4`], [`SOURCES_V6`]): replies to different requests
//! can be told apart, and no host's neighbour entry for a real address is touched. A slot
//! is reused every T × S requests (the *period*): a request still unanswered then counts
//! as unanswered, and a reply finding no request waiting as unmatched (late or extra).
//!
//! Latency is from just before the request's `send` to when the reply is read on the
//! client: an upper bound of the answerer's own time, as in `observe::probe`. Bounded: at
//! most [`MAX_DURATION`], at most `rate × duration` requests, and the lab's own
//! namespaces only.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use pnet_base::MacAddr;
use pnet_datalink::{Channel, ChannelType, Config};

use crate::netns;
use crate::observe::Prober;
use crate::packet;
use crate::stats::{Summary, summarize};

/// Longest storm the lab allows (docs: a storm lasts at most 10 s).
pub const MAX_DURATION: Duration = Duration::from_secs(10);
/// How many IPv4 request sources a storm rotates through (198.51.100.128 onwards).
pub const SOURCES_V4: usize = 127;
/// How many IPv6 request sources a storm rotates through (2001:db8:100::1:0 onwards).
pub const SOURCES_V6: usize = 512;

/// How a storm runs.
#[derive(Clone, Copy, Debug)]
pub struct StormConfig {
    /// Requests per second.
    pub rate: u32,
    /// How long requests are sent (at most [`MAX_DURATION`]).
    pub duration: Duration,
    /// Pause of the sender between two bursts (a burst is whatever became due meanwhile).
    pub tick: Duration,
    /// How long the receiver keeps reading after the last request.
    pub linger: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            rate: 20_000,
            duration: Duration::from_secs(5),
            tick: Duration::from_micros(100),
            linger: Duration::from_millis(200),
        }
    }
}

/// Which request goes where: targets × sources, each pair one slot.
#[derive(Clone, Debug)]
pub struct Plan {
    targets: Vec<IpAddr>,
    sources: Vec<IpAddr>,
}

impl Plan {
    /// A plan over `targets`, all of one family, with that family's storm sources.
    pub fn new(targets: &[IpAddr]) -> Result<Plan> {
        let first = targets
            .first()
            .ok_or_else(|| anyhow!("a storm needs targets"))?;
        ensure!(
            targets.iter().all(|t| t.is_ipv4() == first.is_ipv4()),
            "a storm's targets are all IPv4 or all IPv6"
        );
        let sources = if first.is_ipv4() {
            (0..SOURCES_V4)
                .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, 128 + i as u8)))
                .collect()
        } else {
            let base = u128::from("2001:db8:100::1:0".parse::<Ipv6Addr>().expect("v6"));
            (0..SOURCES_V6)
                .map(|i| IpAddr::V6(Ipv6Addr::from(base + i as u128)))
                .collect()
        };
        Ok(Plan {
            targets: targets.to_vec(),
            sources,
        })
    }

    /// Number of slots (targets × sources).
    pub fn slots(&self) -> usize {
        self.targets.len() * self.sources.len()
    }

    /// Request `k`: its slot, target and source.
    pub fn request(&self, k: u64) -> (usize, IpAddr, IpAddr) {
        let t = self.targets.len() as u64;
        let ti = (k % t) as usize;
        let si = ((k / t) % self.sources.len() as u64) as usize;
        (
            si * self.targets.len() + ti,
            self.targets[ti],
            self.sources[si],
        )
    }

    /// The slot a reply for `answered`, sent to `to`, belongs to (`None`: not ours).
    pub fn slot_of(&self, answered: IpAddr, to: IpAddr) -> Option<usize> {
        let ti = self.targets.iter().position(|t| *t == answered)?;
        let si = self.sources.iter().position(|s| *s == to)?;
        Some(si * self.targets.len() + ti)
    }

    /// How long before a slot is reused at `rate` requests per second.
    pub fn period(&self, rate: u32) -> Duration {
        Duration::from_secs_f64(self.slots() as f64 / f64::from(rate.max(1)))
    }
}

/// How many requests must have been sent `elapsed` into a storm of `total` at `rate`.
pub fn due(elapsed: Duration, rate: u32, total: u64) -> u64 {
    ((elapsed.as_secs_f64() * f64::from(rate)) as u64 + 1).min(total)
}

/// Send times waiting for their reply, one per slot (nanoseconds since the start + 1;
/// 0 = nothing waiting). Lock-free: the sender and the receiver run on two threads.
struct Slots {
    t0: Instant,
    slots: Vec<AtomicU64>,
    /// Requests whose slot was reused before they were answered.
    reused: AtomicU64,
}

impl Slots {
    fn new(n: usize, t0: Instant) -> Slots {
        Slots {
            t0,
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            reused: AtomicU64::new(0),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64 + 1
    }

    fn sent(&self, slot: usize, at: Instant) {
        if self.slots[slot].swap(self.stamp(at), Ordering::AcqRel) != 0 {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a request that could not be sent.
    fn unsent(&self, slot: usize) {
        self.slots[slot].store(0, Ordering::Release);
    }

    /// The latency of the request waiting in `slot`, if one is.
    fn answered(&self, slot: usize, at: Instant) -> Option<Duration> {
        match self.slots[slot].swap(0, Ordering::AcqRel) {
            0 => None,
            sent => Some(Duration::from_nanos(self.stamp(at).saturating_sub(sent))),
        }
    }

    fn waiting(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Acquire) != 0)
            .count() as u64
    }
}

/// What one storm did.
#[derive(Clone, Debug)]
pub struct StormReport {
    /// Requests sent.
    pub sent: u64,
    /// From the first request to the last.
    pub send_time: Duration,
    /// Sends the client's socket refused (not counted as sent).
    pub send_errors: u64,
    /// Requests answered (matched to their slot).
    pub answered: u64,
    /// Requests never answered within their slot's period.
    pub unanswered: u64,
    /// Replies that found no request waiting (late past the period, or a second answer).
    pub unmatched: u64,
    /// Reply latencies.
    pub latency: Option<Summary>,
    /// Replies per answering MAC.
    pub by_mac: BTreeMap<MacAddr, u64>,
    /// How long a request could wait for its reply before its slot was reused.
    pub period: Duration,
}

impl StormReport {
    /// Requests sent per second, as achieved.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.send_time.as_secs_f64().max(1e-9)
    }
}

/// What the receiver collected.
#[derive(Default)]
struct Received {
    latencies: Vec<Duration>,
    unmatched: u64,
    by_mac: BTreeMap<MacAddr, u64>,
}

/// Storms `targets` (one family) from `who` on `iface` in `ns` and matches the replies.
pub fn storm(
    ns: &str,
    iface: &str,
    who: Prober,
    targets: &[IpAddr],
    cfg: StormConfig,
) -> Result<StormReport> {
    ensure!(
        cfg.duration <= MAX_DURATION,
        "a storm lasts at most {MAX_DURATION:?}"
    );
    let plan = Plan::new(targets)?;
    let v4 = targets[0].is_ipv4();
    let frames: Vec<Vec<u8>> = (0..plan.slots() as u64)
        .map(|k| match plan.request(k) {
            (_, IpAddr::V4(t), IpAddr::V4(s)) => packet::arp_request(who.mac, s, t),
            (_, IpAddr::V6(t), IpAddr::V6(s)) => packet::neighbor_solicitation(who.mac, s, t),
            _ => unreachable!("one family per plan"),
        })
        .collect();
    let total = (f64::from(cfg.rate) * cfg.duration.as_secs_f64()) as u64;
    let slots = Arc::new(Slots::new(plan.slots(), Instant::now()));
    let stop = Arc::new(AtomicBool::new(false));

    // The receiver: a packet socket bound to ARP or IPv6 only, so the storm's own requests
    // (looped back only to ETH_P_ALL sockets) never reach it.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let receiver = {
        let (plan, slots, stop, iface) =
            (plan.clone(), slots.clone(), stop.clone(), iface.to_string());
        netns::spawn_in_ns(ns, "storm-rx", move || -> Result<Received> {
            let ethertype = if v4 { 0x0806 } else { 0x86dd };
            let opened = open(
                &iface,
                ChannelType::Layer3(ethertype),
                Some(Duration::from_millis(1)),
            );
            let (_tx, mut rx) = match opened {
                Ok(ch) => {
                    let _ = ready_tx.send(Ok(()));
                    ch
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let mut got = Received {
                latencies: Vec::with_capacity(total as usize),
                ..Received::default()
            };
            while !stop.load(Ordering::Acquire) {
                let Ok(l3) = rx.next() else { continue };
                let now = Instant::now();
                let answer = if v4 {
                    packet::arp_answer(l3, who.mac)
                } else {
                    packet::na_answer(l3)
                };
                let Some(a) = answer else { continue };
                let Some(slot) = plan.slot_of(a.answered, a.to) else {
                    continue;
                };
                *got.by_mac.entry(a.mac).or_default() += 1;
                match slots.answered(slot, now) {
                    Some(d) => got.latencies.push(d),
                    None => got.unmatched += 1,
                }
            }
            Ok(got)
        })?
    };
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("storm receiver in {ns} did not start"),
    }

    // The sender: every request built beforehand, stamped just before its send.
    let sender = {
        let (plan, slots, iface) = (plan.clone(), slots.clone(), iface.to_string());
        netns::spawn_in_ns(ns, "storm-tx", move || -> Result<(u64, u64, Duration)> {
            let (mut tx, _rx) = open(&iface, ChannelType::Layer2, None)?;
            let start = Instant::now();
            let hard_stop = start + MAX_DURATION;
            let (mut k, mut sent, mut errors) = (0u64, 0u64, 0u64);
            while k < total && Instant::now() < hard_stop {
                let now_due = due(start.elapsed(), cfg.rate, total);
                while k < now_due {
                    let (slot, _, _) = plan.request(k);
                    slots.sent(slot, Instant::now());
                    match tx.send_to(&frames[slot], None) {
                        Some(Ok(())) => sent += 1,
                        _ => {
                            slots.unsent(slot);
                            errors += 1;
                        }
                    }
                    k += 1;
                }
                if k < total {
                    std::thread::sleep(cfg.tick);
                }
            }
            Ok((sent, errors, start.elapsed()))
        })
    };
    let sent = match sender {
        Ok(thread) => thread.join(),
        Err(e) => {
            stop.store(true, Ordering::Release);
            let _ = receiver.join();
            return Err(e);
        }
    };
    std::thread::sleep(cfg.linger);
    stop.store(true, Ordering::Release);
    let received = receiver.join();
    let (sent, send_errors, send_time) = sent
        .map_err(|_| anyhow!("storm sender panicked"))?
        .context("storm sender")?;
    let got = received
        .map_err(|_| anyhow!("storm receiver panicked"))?
        .context("storm receiver")?;
    Ok(StormReport {
        sent,
        send_time,
        send_errors,
        answered: got.latencies.len() as u64,
        unanswered: slots.reused.load(Ordering::Relaxed) + slots.waiting(),
        unmatched: got.unmatched,
        latency: summarize(&got.latencies),
        by_mac: got.by_mac,
        period: plan.period(cfg.rate),
    })
}

type Ends = (
    Box<dyn pnet_datalink::DataLinkSender>,
    Box<dyn pnet_datalink::DataLinkReceiver>,
);

/// A packet socket on `iface` of the calling thread's namespace: `Layer2` sends whole
/// frames (and is bound to every protocol), `Layer3(type)` reads that protocol's packets
/// without their Ethernet header.
fn open(iface: &str, channel_type: ChannelType, read_timeout: Option<Duration>) -> Result<Ends> {
    let nic = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| anyhow!("no interface {iface} in this namespace"))?;
    let config = Config {
        read_timeout,
        channel_type,
        promiscuous: false,
        ..Config::default()
    };
    match pnet_datalink::channel(&nic, config)
        .with_context(|| format!("packet socket on {iface}"))?
    {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => bail!("unexpected channel type on {iface}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_slot_maps_back_to_itself() {
        for targets in [
            ips(&["203.0.113.1", "203.0.113.2", "203.0.113.3"]),
            ips(&["2001:db8:200::1", "2001:db8:200::2"]),
        ] {
            let plan = Plan::new(&targets).unwrap();
            let mut seen = vec![false; plan.slots()];
            for k in 0..plan.slots() as u64 {
                let (slot, target, source) = plan.request(k);
                assert_eq!(slot as u64, k, "slot k mod (T × S)");
                assert_eq!(plan.slot_of(target, source), Some(slot));
                seen[slot] = true;
            }
            assert!(seen.iter().all(|s| *s));
            let (again, _, _) = plan.request(plan.slots() as u64 + 5);
            assert_eq!(again, 5);
        }
    }

    #[test]
    fn sources_are_no_lab_hosts() {
        let plan = Plan::new(&ips(&["203.0.113.1"])).unwrap();
        for s in &plan.sources {
            let IpAddr::V4(v4) = s else { panic!() };
            let last = v4.octets()[3];
            // Hosts are .2, .11–.49, .51–.99 and rogues .101–.109; .255 is the broadcast.
            assert!((128..255).contains(&last), "{v4}");
        }
        let plan = Plan::new(&ips(&["2001:db8:200::1"])).unwrap();
        assert_eq!(
            plan.sources[0],
            "2001:db8:100::1:0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            plan.sources[511],
            "2001:db8:100::1:1ff".parse::<IpAddr>().unwrap()
        );
        assert!(Plan::new(&ips(&["203.0.113.1", "2001:db8:200::1"])).is_err());
        assert!(Plan::new(&[]).is_err());
    }

    #[test]
    fn pacing_and_matching() {
        assert_eq!(due(Duration::ZERO, 20_000, 100_000), 1);
        assert_eq!(due(Duration::from_millis(1), 20_000, 100_000), 21);
        assert_eq!(due(Duration::from_secs(9), 20_000, 100_000), 100_000);
        let t0 = Instant::now();
        let slots = Slots::new(2, t0);
        slots.sent(0, t0 + Duration::from_micros(10));
        assert_eq!(
            slots.answered(0, t0 + Duration::from_micros(60)),
            Some(Duration::from_micros(50))
        );
        assert_eq!(slots.answered(0, t0 + Duration::from_micros(70)), None);
        slots.sent(1, t0);
        slots.sent(1, t0 + Duration::from_millis(1));
        assert_eq!(slots.reused.load(Ordering::Relaxed), 1);
        assert_eq!(slots.waiting(), 1);
        slots.unsent(1);
        assert_eq!(slots.waiting(), 0);
    }
}
