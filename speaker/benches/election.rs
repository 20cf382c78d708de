//! How long one full election takes: `cargo bench -p ferrolb-speaker --bench election`.
//!
//! Every speaker recomputes the whole table on each change, so this bounds the reaction time
//! to a change of World (target: well under 100 ms for 1,000 Services × 100 nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;
use ferrolb_speaker::core::{
    Advertisement, Node, Pool, Service, Speaker, World, desired, local_announcements,
};

/// `nodes` nodes in 4 zones; two advertisements (one per half of the zones, one restricted
/// to eth0); `services` Services, every 3rd Local on 3 nodes, every 10th sharing its IPs
/// with its predecessor. Test IPv4 addresses are limited to 203.0.113.0/24, so at most 250
/// Services are dual-stack (every 4th at 1,000 Services, every 40th at 10,000), with their
/// IPv4 address from 203.0.113.1-250; all others are IPv6-only from 2001:db8:1::/112.
fn world(services: u32, nodes: u32) -> World {
    let mut w = World::default();
    let names: Vec<String> = (0..nodes).map(|i| format!("worker-{i:03}")).collect();
    for (i, n) in names.iter().enumerate() {
        w.apply_node(Node {
            name: n.clone(),
            labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 4))]),
            network_unavailable: i % 50 == 7,
        });
        w.apply_speaker(Speaker {
            node: n.clone(),
            interfaces: BTreeSet::from(["eth0".to_owned(), "eth1".to_owned()]),
            settling: false,
        });
    }
    w.apply_pool(Pool {
        name: "default".into(),
        labels: BTreeMap::new(),
        addresses: PoolAddresses::parse(&["203.0.113.0/24".into(), "2001:db8:1::/112".into()])
            .unwrap(),
    });
    let zone = |z: &str| Selector::from_labels([("zone", z)]);
    w.apply_advertisement(Advertisement {
        name: "low".into(),
        node_selectors: vec![zone("z0"), zone("z1")],
        ..Default::default()
    });
    w.apply_advertisement(Advertisement {
        name: "high".into(),
        node_selectors: vec![zone("z2"), zone("z3")],
        interfaces: BTreeSet::from(["eth0".to_owned()]),
        ..Default::default()
    });
    let v4 = Ipv4Addr::new(203, 0, 113, 1).to_bits();
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0).to_bits();
    let dual_every = services.div_ceil(250).max(1);
    for i in 0..services {
        let shared = i % 10 == 9;
        let n = if shared { i - 1 } else { i };
        let mut ips = Vec::new();
        if n % dual_every == 0 {
            ips.push(IpAddr::V4(Ipv4Addr::from_bits(v4 + n / dual_every)));
        }
        ips.push(IpAddr::V6(Ipv6Addr::from_bits(v6 + u128::from(n))));
        let local = n % 3 == 0;
        w.apply_service(Service {
            key: format!("ns/svc-{i}"),
            labels: BTreeMap::from([("app".to_owned(), format!("a{}", i % 7))]),
            ips,
            local,
            serving_nodes: (0..3)
                .map(|k| names[((n * 7 + k * 13) % nodes) as usize].clone())
                .collect(),
            has_serving_endpoints: true,
            ignore_health_check: false,
        });
    }
    w
}

fn measure(services: u32, nodes: u32) {
    let w = world(services, nodes);
    let runs = 20;
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    let mut announced = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let table = black_box(desired(black_box(&w)));
        let took = start.elapsed();
        best = best.min(took);
        total += took;
        announced = table
            .ips()
            .values()
            .filter(|d| d.announcer().is_some())
            .count();
        black_box(local_announcements(&table, "worker-000"));
    }
    println!(
        "desired: {services:>6} Services × {nodes} nodes: best {best:>10.2?}, mean {:>10.2?} \
         ({announced} of {} IPs announced)",
        total / runs,
        desired(&w).ips().len()
    );
}

fn main() {
    measure(1_000, 100);
    measure(10_000, 100);
}
