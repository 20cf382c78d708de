//! Allocator benchmark: the cost of one allocation and one release must not grow with the
//! pool size or with the number of assigned addresses (free-interval index, docs/design/allocation.md#choosing-an-ip).
//!
//! ```text
//!   fill pool with N Services ──▶ time B× assign(new) ──▶ time B× release ──▶ repeat
//!   N ∈ {1k, 10k, 100k} (up to 250 in IPv4);  pools: IPv4 /28 (baseline), /24;
//!   IPv6 /112, /104, /64;  + RSS of a 100k allocator
//! ```
//!
//! Test addresses come only from 203.0.113.0/24 and 2001:db8::/32 (lab rules), so no IPv4
//! pool is larger than a /24. IPv6 pools of the size of an IPv4 /16 (a /112) and of an IPv4
//! /8 (a /104) stand in for the large IPv4 pools: both families share one code path (u128
//! free-interval sets), so the cost is the same. avoidBuggyIPs is IPv4-only and is measured
//! on the /24 at its fullest.
//!
//! `harness = false`: a plain binary that prints its figures (`cargo bench -p
//! ferrolb-controller --bench allocator`); no external bench framework needed. Memory is
//! the growth of VmRSS (from /proc/self/status) while building the allocator, since the
//! workspace forbids the `unsafe` a counting global allocator would need.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_controller::allocator::{
    Allocator, Family, PoolConfig, Protocol, ServiceKey, ServiceRequest,
};
use ferrolb_crds::addresses::PoolAddresses;

/// Allocations (and releases) timed per scenario.
const SAMPLES: usize = 50_000;

fn pool(cidr: &str, avoid_buggy_ips: bool) -> PoolConfig {
    PoolConfig {
        avoid_buggy_ips,
        ..PoolConfig::new("bench", PoolAddresses::parse(&[cidr.to_owned()]).unwrap())
    }
}

fn request(prefix: &str, i: usize, family: Family) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new("bench", format!("{prefix}{i}")),
        families: vec![family],
        ports: vec![(Protocol::Tcp, 443)],
        ..Default::default()
    }
}

/// An allocator holding `n` assigned addresses from one pool.
fn filled(config: PoolConfig, n: usize, family: Family) -> Allocator {
    let mut a = Allocator::new();
    a.upsert_pool(config);
    for i in 0..n {
        a.assign(&request("held-", i, family))
            .expect("pool large enough");
    }
    a
}

/// A Service under the one sharing key "k", on the port all of them use.
fn sharing(prefix: &str, i: usize) -> ServiceRequest {
    ServiceRequest {
        sharing_key: Some("k".to_owned()),
        ..request(prefix, i, Family::V6)
    }
}

/// Mean time per assign and per release of fresh Services, in batches the pool can absorb.
fn measure(a: &mut Allocator, family: Family, free: usize) -> (Duration, Duration) {
    measure_with(a, |i| request("new-", i, family), free)
}

/// [`measure`] with the fresh Services made by `make`.
fn measure_with(
    a: &mut Allocator,
    make: impl Fn(usize) -> ServiceRequest,
    free: usize,
) -> (Duration, Duration) {
    let batch = free.clamp(1, 1000);
    let requests: Vec<ServiceRequest> = (0..batch).map(make).collect();
    let (mut t_assign, mut t_release) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < SAMPLES {
        let start = Instant::now();
        for r in &requests {
            black_box(a.assign(black_box(r)).expect("free address"));
        }
        t_assign += start.elapsed();
        let start = Instant::now();
        for r in &requests {
            black_box(a.release(black_box(&r.key)));
        }
        t_release += start.elapsed();
        done += batch;
    }
    (t_assign / done as u32, t_release / done as u32)
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn row(what: &str, assigned: usize, (assign, release): (Duration, Duration)) {
    println!(
        "{what:<40} {assigned:>8} assigned   assign {:>7.0} ns   release {:>7.0} ns",
        assign.as_nanos() as f64,
        release.as_nanos() as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { 1 } else { 100 };
    let started = Instant::now();
    println!(
        "IPv4 pools: 203.0.113.0/24 only (test address rules); IPv6 pools in 2001:db8::/32, \
         a /112 and a /104 standing in for an IPv4 /16 and /8 (same u128 interval code)"
    );

    // Memory first, before other scenarios leave freed heap behind for reuse.
    let n = 100_000 / scale;
    let before = rss_kib();
    let a = filled(pool("2001:db8::/64", false), n, Family::V6);
    let after = rss_kib();
    if let (Some(b), Some(f)) = (before, after) {
        let kib = f.saturating_sub(b);
        println!(
            "memory: {n} assigned IPv6 addresses (one Service each): RSS +{kib} KiB \
             ≈ {} bytes per assigned address",
            kib * 1024 / n as u64
        );
    }
    drop(a);

    let mut a = filled(pool("203.0.113.0/28", false), 8, Family::V4);
    row("IPv4 /28 (baseline)", 8, measure(&mut a, Family::V4, 8));

    for n in [16, 128, 250] {
        let mut a = filled(pool("203.0.113.0/24", false), n, Family::V4);
        row(
            "IPv4 /24 (203.0.113.0/24)",
            n,
            measure(&mut a, Family::V4, 256 - n),
        );
    }
    for n in [1_000, 10_000, 60_000] {
        let n = n / scale;
        let mut a = filled(pool("2001:db8::/112", false), n, Family::V6);
        row(
            "IPv6 /112 (size of an IPv4 /16)",
            n,
            measure(&mut a, Family::V6, 65_536 - n),
        );
    }
    for n in [1_000, 10_000, 100_000] {
        let n = n / scale;
        let mut a = filled(pool("2001:db8::/64", false), n, Family::V6);
        row("IPv6 /64", n, measure(&mut a, Family::V6, usize::MAX));
    }
    let n = 100_000 / scale;
    let mut a = filled(pool("2001:db8::/104", false), n, Family::V6);
    row(
        "IPv6 /104 (size of an IPv4 /8)",
        n,
        measure(&mut a, Family::V6, usize::MAX),
    );

    // 254 usable addresses (.0 and .255 avoided): 250 held, 4 left to allocate.
    let mut a = filled(pool("203.0.113.0/24", true), 250, Family::V4);
    row(
        "IPv4 /24 avoidBuggyIPs (203.0.113.0/24)",
        250,
        measure(&mut a, Family::V4, 4),
    );

    // Every other held address released: n/2 free fragments ahead of the tail.
    let mut a = filled(pool("2001:db8::/64", false), n, Family::V6);
    for i in (0..n).step_by(2) {
        a.release(&ServiceKey::new("bench", format!("held-{i}")));
    }
    row(
        "IPv6 /64, 50% holes",
        n / 2,
        measure(&mut a, Family::V6, n / 2),
    );

    // One sharing key, N holders that cannot share with each other (same port): each holds
    // its own IP, so a new Service under that key finds no IP to join. The sharing index
    // groups the key's IPs by what they hold, so this must not scan the N holders.
    for n in [1_000, 10_000, 60_000] {
        let n = n / scale;
        let mut a = Allocator::new();
        a.upsert_pool(pool("2001:db8::/112", false));
        for i in 0..n {
            a.assign(&sharing("held-", i)).expect("pool large enough");
        }
        row(
            "IPv6 /112, N holders of one sharing key",
            n,
            measure_with(&mut a, |i| sharing("new-", i), 65_536 - n),
        );
    }

    let first: IpAddr = a.assigned(&ServiceKey::new("bench", "held-1")).unwrap()[0];
    black_box(first);
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}
