//! What the heartbeat thread allows others and itself: a token bucket per source address
//! and a global budget of signature checks, paced sends, socket buffer sizes. Pure: time
//! is passed in.
//!
//! ```text
//!   datagram from a member's address, HMAC valid ──▶ its source's bucket (40/s, burst 20)
//!        ──▶ the global budget (2 × the expected rate of all peers + one source's limit)
//!        ──▶ the Ed25519 check (~50–75 µs)          anything over: dropped, `rate_limited`
//!
//!   a round of heartbeats to N peers, every interval:
//!     N ≤ 32: one burst │ N > 32: ⌈N / 32⌉ slots, slot i at i × interval / slots
//! ```
//!
//! The buckets sit after the HMAC, not before: a LAN host without the key that floods
//! from a member's (spoofed) address would otherwise drain that member's bucket and have
//! its genuine heartbeats dropped. The HMAC costs about as much as reading the datagram;
//! the signature check, 50 times more, is what a bucket protects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most heartbeats sent back to back: more peers than this and a round is spread over the
/// interval in slots of at most this many.
pub const MAX_BURST: usize = 32;
/// What one heartbeat datagram may hold of a socket buffer: the kernel charges the whole
/// allocation (`truesize`), about 2.3 KiB for the largest (1,452-byte) heartbeat.
pub const DATAGRAM_TRUESIZE: usize = 2304;

/// A token bucket: `rate` tokens per second, at most `burst`, full at start.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock read before `at` (another thread's `now`) adds nothing, and takes nothing.
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Whether a token is there at `now` (without taking it).
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.ready(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Changes the rate and burst at `now`, keeping the tokens earned so far (up to the
    /// new burst); a larger burst comes with its extra tokens (new sources bring theirs).
    pub fn set(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        let grown = (burst - self.burst).max(0.0);
        self.rate = rate;
        self.burst = burst;
        self.tokens = (self.tokens + grown).min(burst);
    }
}

/// The rates of the heartbeat port's rate limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Datagrams per second one source address may have checked (4 × one heartbeat per
    /// interval: 40/s at 100 ms).
    pub per_source: f64,
    /// Burst of one source: 20, two seconds of heartbeats (a thread that was stalled reads
    /// what queued meanwhile).
    pub source_burst: f64,
    /// Signature checks per second per peer, for the global budget (2 × the expected rate;
    /// the budget adds one source's limit, so that one source alone, however it floods,
    /// never takes the others' share).
    pub global_per_peer: f64,
    /// Burst of the global budget, per peer.
    pub global_burst_per_peer: f64,
}

impl Limits {
    /// The limits for heartbeats every `interval`.
    pub fn for_interval(interval: Duration) -> Limits {
        let per_second = 1.0 / interval.as_secs_f64().max(1e-3);
        Limits {
            per_source: 4.0 * per_second,
            source_burst: 20.0,
            global_per_peer: 2.0 * per_second,
            global_burst_per_peer: 20.0,
        }
    }
}

/// Why a datagram was not let through to the signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead: a token of its source's bucket and of the global budget were taken.
    Admitted,
    /// Its source sent more than its rate (or is not a member's address).
    SourceLimited,
    /// Every source together asked for more signature checks than the global budget.
    GlobalLimited,
}

/// Per-source token buckets and the global budget of signature checks.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: Limits,
    sources: HashMap<IpAddr, TokenBucket>,
    global: TokenBucket,
}

impl RateLimiter {
    /// A limiter with no source yet.
    pub fn new(limits: Limits, now: Instant) -> RateLimiter {
        RateLimiter {
            limits,
            sources: HashMap::new(),
            global: TokenBucket::new(limits.per_source, limits.source_burst, now),
        }
    }

    /// The member addresses, one per member (an address several members share, as on a
    /// test's loopback, gets the rate of all of them): a new one gets a full bucket, one
    /// still there keeps its own, a gone one is forgotten; the global budget grows with
    /// the number of members.
    pub fn set_sources(&mut self, sources: impl IntoIterator<Item = IpAddr>, now: Instant) {
        let l = self.limits;
        let mut count: HashMap<IpAddr, usize> = HashMap::new();
        for ip in sources {
            *count.entry(ip).or_default() += 1;
        }
        self.sources.retain(|ip, _| count.contains_key(ip));
        for (ip, k) in &count {
            let k = *k as f64;
            let (rate, burst) = (k * l.per_source, k * l.source_burst);
            self.sources
                .entry(*ip)
                .and_modify(|b| b.set(rate, burst, now))
                .or_insert_with(|| TokenBucket::new(rate, burst, now));
        }
        let n = count.values().sum::<usize>() as f64;
        self.global.set(
            n * l.global_per_peer + l.per_source,
            n * l.global_burst_per_peer + l.source_burst,
            now,
        );
    }

    /// Whether a datagram from `source` at `now` may have its signature checked; takes a
    /// token from both buckets only when both have one.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admission {
        let Some(bucket) = self.sources.get_mut(&source) else {
            return Admission::SourceLimited;
        };
        if !bucket.ready(now) {
            return Admission::SourceLimited;
        }
        if !self.global.take(now) {
            return Admission::GlobalLimited;
        }
        bucket.take(now);
        Admission::Admitted
    }
}

/// In how many slots a round of heartbeats to `peers` peers is sent: one up to
/// `max_burst` peers, then ⌈peers / max_burst⌉.
pub fn slots(peers: usize, max_burst: usize) -> usize {
    peers.div_ceil(max_burst.max(1)).max(1)
}

/// The peers (indices into the ordered target list) that slot `slot` of `slots` sends to:
/// contiguous ranges whose sizes differ by at most one, covering every peer once.
pub fn slot_targets(peers: usize, slots: usize, slot: usize) -> Range<usize> {
    let slots = slots.max(1);
    let slot = slot.min(slots);
    (peers * slot / slots)..(peers * (slot + 1) / slots).min(peers)
}

/// A whole round: when each slot starts within `interval`, and to whom it sends.
pub fn schedule(
    peers: usize,
    interval: Duration,
    max_burst: usize,
) -> Vec<(Duration, Range<usize>)> {
    let n = slots(peers, max_burst);
    (0..n)
        .map(|i| {
            let offset = interval.mul_f64(i as f64 / n as f64);
            (offset, slot_targets(peers, n, i))
        })
        .collect()
}

/// Send buffer for `peers` peers: a whole round at once (a LEAVING, or the catch-up after
/// a stall) must fit. Between 256 KiB and 8 MiB; the kernel caps it at `net.core.wmem_max`.
pub fn send_buffer(peers: usize) -> usize {
    (peers * DATAGRAM_TRUESIZE).clamp(256 << 10, 8 << 20)
}

/// Receive buffer for `peers` peers: eight intervals of their heartbeats (a stall of
/// 0.8 s at 100 ms, longer than the timeout) plus room for a burst of strangers. Between
/// 1 MiB and 16 MiB; the kernel caps it at `net.core.rmem_max`.
pub fn recv_buffer(peers: usize) -> usize {
    (peers * 8 * DATAGRAM_TRUESIZE).clamp(1 << 20, 16 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(40.0, 20.0, t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 20);
        // 40/s: one token every 25 ms.
        assert!(!b.take(at(t0, 24)));
        assert!(b.take(at(t0, 25)));
        assert!(!b.take(at(t0, 26)));
        // Over one second, 40 more.
        let got = (1..=1000).filter(|ms| b.take(at(t0, 25 + ms))).count();
        assert_eq!(got, 40);
        // A long pause refills to the burst, not beyond.
        let t = at(t0, 60_000);
        assert_eq!((0..100).filter(|_| b.take(t)).count(), 20);
    }

    #[test]
    fn a_bucket_ignores_a_clock_read_before_its_last() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(10.0, 1.0, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn changing_a_bucket_keeps_what_it_earned_up_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        (0..10).for_each(|_| assert!(b.take(t0)));
        b.set(100.0, 5.0, at(t0, 300)); // 3 earned at the old rate
        assert_eq!((0..10).filter(|_| b.take(at(t0, 300))).count(), 3);
        assert!(b.take(at(t0, 310)));
        // A larger burst brings its extra tokens.
        b.set(100.0, 8.0, at(t0, 310));
        assert_eq!((0..10).filter(|_| b.take(at(t0, 310))).count(), 3);
    }

    fn ips(n: u8) -> Vec<IpAddr> {
        (1..=n).map(|i| IpAddr::from([198, 51, 100, i])).collect()
    }

    #[test]
    fn each_source_is_limited_to_its_rate_whatever_the_others_do() {
        let t0 = Instant::now();
        let limits = Limits::for_interval(Duration::from_millis(100));
        assert_eq!(limits.per_source, 40.0);
        let mut l = RateLimiter::new(limits, t0);
        l.set_sources(ips(3), t0);
        let flood = IpAddr::from([198, 51, 100, 1]);
        let quiet = IpAddr::from([198, 51, 100, 2]);
        // One second: the flooder sends every 0.1 ms, the quiet one every 100 ms.
        let (mut flood_ok, mut quiet_ok) = (0, 0);
        for us in (0..1_000_000u64).step_by(100) {
            let now = t0 + Duration::from_micros(us);
            if l.admit(flood, now) == Admission::Admitted {
                flood_ok += 1;
            }
            if us % 100_000 == 0 && l.admit(quiet, now) == Admission::Admitted {
                quiet_ok += 1;
            }
        }
        assert!((59..=61).contains(&flood_ok), "burst 20 + 40/s: {flood_ok}");
        assert_eq!(quiet_ok, 10, "the quiet source loses nothing");
        // Not a member's address: never admitted.
        let stranger = IpAddr::from([198, 51, 100, 99]);
        assert_eq!(l.admit(stranger, t0), Admission::SourceLimited);
    }

    #[test]
    fn the_global_budget_caps_all_sources_together() {
        let t0 = Instant::now();
        let limits = Limits::for_interval(Duration::from_millis(100));
        let mut l = RateLimiter::new(limits, t0);
        l.set_sources(ips(10), t0);
        // All ten at their own limit (40/s each, 400/s): the budget is 20/s each plus one
        // source's 40/s (240/s), plus its burst (220).
        let mut admitted = 0;
        let mut global = 0;
        for ms in 0..1000u64 {
            for i in 1..=10u8 {
                for _ in 0..2 {
                    match l.admit(IpAddr::from([198, 51, 100, i]), at(t0, ms)) {
                        Admission::Admitted => admitted += 1,
                        Admission::GlobalLimited => global += 1,
                        Admission::SourceLimited => {}
                    }
                }
            }
        }
        assert!((455..=465).contains(&admitted), "{admitted}");
        assert!(global > 0);
        // The normal rate (10/s each) always fits.
        let mut l = RateLimiter::new(limits, t0);
        l.set_sources(ips(10), t0);
        let ok = (0..100u64)
            .flat_map(|k| (1..=10u8).map(move |i| (k, i)))
            .filter(|(k, i)| {
                l.admit(IpAddr::from([198, 51, 100, *i]), at(t0, 100 * k)) == Admission::Admitted
            })
            .count();
        assert_eq!(ok, 1000);
    }

    #[test]
    fn sources_keep_their_bucket_across_a_membership_change() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Limits::for_interval(Duration::from_millis(100)), t0);
        l.set_sources(ips(2), t0);
        let a = IpAddr::from([198, 51, 100, 1]);
        while l.admit(a, t0) == Admission::Admitted {}
        l.set_sources(ips(3), t0);
        assert_eq!(
            l.admit(a, t0),
            Admission::SourceLimited,
            "no refill by re-adding"
        );
        assert_eq!(
            l.admit(IpAddr::from([198, 51, 100, 3]), t0),
            Admission::Admitted
        );
        l.set_sources(ips(1), t0);
        assert_eq!(
            l.admit(IpAddr::from([198, 51, 100, 3]), t0),
            Admission::SourceLimited
        );
        // Ten members on one address (a test's loopback): ten times the rate.
        let lo = IpAddr::from([127, 0, 0, 1]);
        l.set_sources(std::iter::repeat_n(lo, 10), t0);
        assert_eq!(
            (0..1000)
                .filter(|_| l.admit(lo, t0) == Admission::Admitted)
                .count(),
            200
        );
    }

    #[test]
    fn small_rounds_go_in_one_burst_and_large_ones_are_paced() {
        let interval = Duration::from_millis(100);
        assert_eq!(schedule(0, interval, 32), vec![(Duration::ZERO, 0..0)]);
        assert_eq!(schedule(32, interval, 32), vec![(Duration::ZERO, 0..32)]);
        let s = schedule(100, interval, 32);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.iter().map(|(t, _)| t.as_millis()).collect::<Vec<_>>(),
            [0, 25, 50, 75]
        );
        assert_eq!(
            s.iter().map(|(_, r)| r.len()).collect::<Vec<_>>(),
            [25, 25, 25, 25]
        );
        for peers in [1, 31, 33, 64, 65, 100, 999, 1000, 1001] {
            let s = schedule(peers, interval, 32);
            let mut covered = Vec::new();
            for (i, (t, r)) in s.iter().enumerate() {
                assert!(r.len() <= 32, "{peers}: slot {i} has {}", r.len());
                assert!(*t < interval);
                covered.extend(r.clone());
            }
            assert_eq!(covered, (0..peers).collect::<Vec<_>>(), "{peers}");
            let (min, max) = s
                .iter()
                .map(|(_, r)| r.len())
                .fold((usize::MAX, 0), |(a, b), n| (a.min(n), b.max(n)));
            assert!(max - min <= 1, "{peers}: balanced slots");
        }
        assert_eq!(slots(1000, 32), 32);
        assert_eq!(
            slot_targets(10, 4, 9),
            10..10,
            "a slot past the end is empty"
        );
    }

    #[test]
    fn buffers_grow_with_the_peers_within_bounds() {
        assert_eq!(send_buffer(2), 256 << 10);
        assert!(send_buffer(1000) >= 1000 * 1452);
        assert_eq!(send_buffer(100_000), 8 << 20);
        assert_eq!(recv_buffer(3), 1 << 20);
        assert!(
            recv_buffer(300) >= 300 * 4 * 1452,
            "a timeout of heartbeats fits"
        );
        assert_eq!(recv_buffer(100_000), 16 << 20);
    }
}
