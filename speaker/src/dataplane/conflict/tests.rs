use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const OURS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x11);
const PEER: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x12);
const ROGUE: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x99);
const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x10);

fn vip() -> IpAddr {
    IpAddr::V4(VIP4)
}

fn fleet() -> Fleet {
    Fleet {
        macs: BTreeSet::from([OURS, PEER]),
        complete: true,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn uses(mac: MacAddr) -> Claim {
    Claim::Uses { ip: vip(), mac }
}

/// Ticks every 10 ms from `from` to `to` (exclusive), collecting what is due, with times.
fn run(d: &mut Detector, t0: Instant, from: u64, to: u64) -> Vec<(u64, Out)> {
    (from..to)
        .step_by(10)
        .flat_map(|t| {
            d.tick(t0 + ms(t))
                .into_iter()
                .map(move |o| (t, o))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_fresh_ip_is_probed_then_announced_and_not_answered_before() {
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    assert_eq!(d.add(vip(), true, t0), vec![Out::Probe(vip())]);
    assert!(!d.answers(vip()));
    assert_eq!(d.withheld(), BTreeSet::from([vip()]));
    assert_eq!(
        run(&mut d, t0, 0, 400),
        vec![
            (100, Out::Probe(vip())),
            (200, Out::Probe(vip())),
            (300, Out::Announce(vip())),
        ]
    );
    assert!(d.answers(vip()));
    assert!(d.withheld().is_empty());
    assert!(run(&mut d, t0, 400, 60_000).is_empty(), "nothing more");
}

#[test]
fn a_takeover_announces_at_once_and_probes_alongside() {
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    assert_eq!(
        d.add(vip(), false, t0),
        vec![Out::Announce(vip()), Out::Probe(vip())]
    );
    assert!(d.answers(vip()));
    // The previous announcer (a FerroLB node) still answers for a moment: no conflict.
    assert!(d.claim(uses(PEER), &fleet(), t0 + ms(20)).is_empty());
    assert_eq!(
        run(&mut d, t0, 0, 400),
        vec![(100, Out::Probe(vip())), (200, Out::Probe(vip()))]
    );
    assert!(d.answers(vip()));
}

#[test]
fn a_stranger_answering_a_takeover_probe_is_a_conflict() {
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    d.add(vip(), false, t0);
    assert_eq!(
        d.claim(uses(ROGUE), &fleet(), t0 + ms(5)),
        vec![Out::Conflict(vip(), ROGUE)]
    );
    assert!(!d.answers(vip()));
    assert_eq!(
        d.conflicts(),
        BTreeMap::from([(
            vip(),
            Seen {
                mac: ROGUE,
                since: t0 + ms(5)
            }
        )])
    );
}

#[test]
fn a_conflict_is_probed_again_with_backoff_and_announced_once_free() {
    let config = ConflictConfig {
        retry_max: Duration::from_secs(4),
        ..ConflictConfig::default()
    };
    let mut d = Detector::new(config);
    let t0 = Instant::now();
    d.add(vip(), true, t0);
    assert_eq!(
        d.claim(uses(ROGUE), &fleet(), t0 + ms(1)),
        vec![Out::Conflict(vip(), ROGUE)]
    );
    // The rogue answers every re-probe: retries after 1, 2, 4, then 4 s (the cap).
    let mut starts = Vec::new();
    let mut t = 0;
    while t < 16_000 {
        let now = t0 + ms(t);
        for o in d.tick(now) {
            // A run's first probe (the rogue answers at once; no run reaches a second).
            assert_eq!(o, Out::Probe(vip()));
            starts.push(t);
            assert!(d.claim(uses(ROGUE), &fleet(), now).is_empty());
        }
        assert!(!d.answers(vip()), "never answered while the rogue is there");
        t += 10;
    }
    assert_eq!(starts, vec![1_010, 3_010, 7_010, 11_010, 15_010]);
    assert_eq!(
        d.conflicts()[&vip()].since,
        t0 + ms(1),
        "one conflict all along"
    );
    // The rogue left: the next run hears nothing and the IP is announced.
    let outs = run(&mut d, t0, 16_000, 20_000);
    assert_eq!(
        outs.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        vec![
            Out::Probe(vip()),
            Out::Probe(vip()),
            Out::Probe(vip()),
            Out::Announce(vip()),
            Out::Cleared(vip()),
        ]
    );
    assert_eq!(outs[0].0, 19_010);
    assert!(d.answers(vip()));
    assert!(d.conflicts().is_empty());
}

#[test]
fn an_unsolicited_claim_is_defended_once_then_yielded_to() {
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    d.add(vip(), true, t0);
    run(&mut d, t0, 0, 400);
    assert!(d.answers(vip()));
    let t = t0 + Duration::from_secs(60);
    assert_eq!(d.claim(uses(ROGUE), &fleet(), t), vec![Out::Defend(vip())]);
    assert!(d.answers(vip()), "defending keeps the address");
    // Once more after DEFEND_INTERVAL: defended again.
    let t = t + DEFEND_INTERVAL + ms(1);
    assert_eq!(d.claim(uses(ROGUE), &fleet(), t), vec![Out::Defend(vip())]);
    // Again within it: the other host insists.
    assert_eq!(
        d.claim(uses(ROGUE), &fleet(), t + Duration::from_secs(3)),
        vec![Out::Conflict(vip(), ROGUE)]
    );
    assert!(!d.answers(vip()));
}

#[test]
fn another_hosts_probe_counts_only_while_we_probe() {
    let probe = Claim::Probes {
        ip: vip(),
        mac: ROGUE,
    };
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    d.add(vip(), false, t0);
    assert!(
        d.claim(probe, &fleet(), t0 + ms(10)).is_empty(),
        "we announce it: our answer tells the prober"
    );
    let mut d = Detector::new(ConflictConfig::default());
    d.add(vip(), true, t0);
    assert_eq!(
        d.claim(probe, &fleet(), t0 + ms(10)),
        vec![Out::Conflict(vip(), ROGUE)]
    );
}

#[test]
fn claims_on_other_addresses_from_the_fleet_or_with_an_incomplete_fleet_are_ignored() {
    let t0 = Instant::now();
    let mut d = Detector::new(ConflictConfig::default());
    d.add(vip(), true, t0);
    let other = Claim::Uses {
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11)),
        mac: ROGUE,
    };
    assert!(d.claim(other, &fleet(), t0).is_empty());
    assert!(d.claim(uses(PEER), &fleet(), t0).is_empty());
    let partial = Fleet {
        complete: false,
        ..fleet()
    };
    assert!(d.claim(uses(ROGUE), &partial, t0).is_empty());
    assert_eq!(
        run(&mut d, t0, 0, 400).last(),
        Some(&(300, Out::Announce(vip())))
    );
}

#[test]
fn disabled_announces_at_once_and_ignores_claims() {
    let mut d = Detector::new(ConflictConfig {
        enabled: false,
        ..ConflictConfig::default()
    });
    let t0 = Instant::now();
    assert_eq!(d.add(vip(), true, t0), vec![Out::Announce(vip())]);
    assert!(d.claim(uses(ROGUE), &fleet(), t0).is_empty());
    assert!(d.claim(uses(ROGUE), &fleet(), t0 + ms(1)).is_empty());
    assert!(run(&mut d, t0, 0, 2_000).is_empty());
    assert!(d.answers(vip()));
}

#[test]
fn removing_an_ip_in_conflict_clears_it() {
    let mut d = Detector::new(ConflictConfig::default());
    let t0 = Instant::now();
    d.add(vip(), true, t0);
    d.claim(uses(ROGUE), &fleet(), t0);
    assert_eq!(d.remove(vip()), vec![Out::Cleared(vip())]);
    assert!(d.conflicts().is_empty());
    d.add(vip(), true, t0);
    assert!(d.remove(vip()).is_empty(), "probing is no conflict");
}

#[test]
fn frames_are_read_as_claims() {
    let garp = ArpRepr::gratuitous(VIP4, ROGUE).to_bytes();
    let probe = ArpRepr {
        op: ArpOp::Request,
        sender_mac: ROGUE,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: MacAddr::zero(),
        target_ip: VIP4,
    };
    let answer = ArpRepr::reply_to(
        &ArpRepr {
            sender_mac: OURS,
            ..probe
        },
        ROGUE,
    );
    assert_eq!(arp_claim(&garp, OURS), Some(uses(ROGUE)));
    assert_eq!(
        arp_claim(&probe.to_bytes(), OURS),
        Some(Claim::Probes {
            ip: vip(),
            mac: ROGUE
        })
    );
    assert_eq!(arp_claim(&answer.to_bytes(), OURS), Some(uses(ROGUE)));
    assert_eq!(
        arp_claim(&ArpRepr::gratuitous(VIP4, OURS).to_bytes(), OURS),
        None
    );
    assert_eq!(arp_claim(&[0u8; 20], OURS), None);

    let v6 = IpAddr::V6(VIP6);
    let na = NeighborAdvertRepr::unsolicited(VIP6, ROGUE).to_bytes();
    assert_eq!(
        ndp_claim(&na, OURS),
        Some(Claim::Uses { ip: v6, mac: ROGUE })
    );
    let dad = NeighborSolicitRepr::multicast(Ipv6Addr::UNSPECIFIED, ROGUE, VIP6).to_bytes();
    assert_eq!(
        ndp_claim(&dad, OURS),
        Some(Claim::Probes { ip: v6, mac: ROGUE })
    );
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x21);
    let ns = NeighborSolicitRepr::multicast(src, ROGUE, VIP6).to_bytes();
    assert_eq!(ndp_claim(&ns, OURS), None, "asking is not claiming");
    let ours = NeighborAdvertRepr::unsolicited(VIP6, OURS).to_bytes();
    assert_eq!(ndp_claim(&ours, OURS), None);
}
