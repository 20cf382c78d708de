//! The detector's rules, scenario by scenario, then a simulation of whole clusters whose
//! heartbeats fail in the ways a real LAN fails (property test).

use super::*;
use crate::liveness::codec::Heartbeat;
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn members(names: &[&str]) -> BTreeMap<String, Member> {
    names.iter().map(|n| (n.to_string(), member(n))).collect()
}

fn member(n: &str) -> Member {
    Member {
        incarnation: Some(inc(n)),
        fresh: true,
    }
}

/// Every node's (random in real life) incarnation, fixed per name here.
fn inc(node: &str) -> u64 {
    u64::from(node_id(node)) + 1
}

/// A ready detector that acts on its own state at once (no grace), to test the rules.
fn detector(me: &str, peers: &[&str], t0: Instant) -> Detector {
    let config = Config {
        grace: Duration::ZERO,
        ..Config::default()
    };
    let mut d = Detector::new(me, set(&["eth0"]), config);
    d.set_members(members(peers), t0);
    d.set_ready(true);
    d
}

/// The heartbeat `d` would send now, as sequence `seq`.
fn beat(d: &Detector, me: &str, seq: u64, now: Instant) -> Heartbeat {
    let out = d.outgoing(now);
    Heartbeat::new(me, inc(me), seq, set(&["eth0"]))
        .unwrap()
        .with_state(out.serving, out.settled)
        .with_established(out.established)
        .with_heard(out.heard)
        .unwrap()
}

/// A heartbeat from `node` hearing `hears` (just now, all serving and settled); a serving
/// sender is settled and established (it has served for long).
fn hb(node: &str, seq: u64, serving: bool, hears: &[&str]) -> Heartbeat {
    let mut heard: Vec<Heard> = hears
        .iter()
        .map(|n| Heard {
            id: node_id(n),
            age_ms: 0,
            serving: true,
            settled: true,
        })
        .collect();
    heard.sort_by_key(|h| h.id);
    Heartbeat::new(node, inc(node), seq, set(&["eth0"]))
        .unwrap()
        .with_state(serving, serving)
        .with_established(serving)
        .with_heard(heard)
        .unwrap()
}

fn names(view: &AliveView) -> Vec<&str> {
    view.keys().map(String::as_str).collect()
}

#[test]
fn a_lone_speaker_serves_once_ready() {
    let t0 = Instant::now();
    let mut d = Detector::new("self", set(&["eth0"]), Config::default());
    assert_eq!(d.not_serving(t0), Some(NotServing::NotReady));
    assert_eq!(d.tick(t0).serving, None);
    assert!(d.alive(t0).is_empty(), "not ready: not even ourselves");
    d.set_ready(true);
    assert_eq!(d.tick(t0).serving, Some(true));
    assert!(d.alive(t0).is_empty(), "our heartbeats say so first");
    assert_eq!(d.next_deadline(t0), Some(t0 + ms(300)));
    assert_eq!(names(&d.alive(t0 + ms(300))), ["self"]);
    assert!(d.settled(t0), "nobody to defer to: settled at once");
}

#[test]
fn hearing_nobody_means_cut_off() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    assert_eq!(d.not_serving(t0), Some(NotServing::HearNobody));
    d.tick(t0);
    assert!(
        d.alive(t0).is_empty(),
        "a cut-off speaker counts nobody, itself included"
    );
    let out = d.outgoing(t0);
    assert!(
        !out.serving && out.heard.is_empty(),
        "and says so in its heartbeats"
    );
}

#[test]
fn peers_that_hear_each_other_all_serve() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    d.observe(&hb("a", 1, true, &["b", "self"]), t0);
    d.observe(&hb("b", 1, true, &["a", "self"]), t0);
    assert_eq!(d.tick(t0).serving, Some(true));
    assert_eq!(names(&d.alive(t0)), ["a", "b", "self"]);
}

#[test]
fn nobody_counts_a_peer_that_hears_nobody() {
    // b's heartbeat port is firewalled inbound: it hears nobody and says it does not serve.
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    d.observe(&hb("a", 1, true, &["self", "b"]), t0);
    d.observe(&hb("b", 1, false, &[]), t0);
    d.tick(t0);
    assert_eq!(names(&d.alive(t0)), ["a", "self"]);
}

#[test]
fn a_speaker_nobody_hears_does_not_serve() {
    // Our heartbeats are lost on the way out: we hear a and b, who hear each other only.
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    d.observe(&hb("a", 1, true, &["b"]), t0);
    d.observe(&hb("b", 1, true, &["a"]), t0);
    assert_eq!(d.tick(t0).serving, None);
    assert_eq!(d.not_serving(t0), Some(NotServing::NobodyHearsUs));
    assert!(!d.alive(t0).contains_key("self"));
}

#[test]
fn hearing_every_member_idle_for_a_timeout_is_enough_to_serve() {
    // Two nodes, heartbeats lost from us to b only: b hears nobody and does not serve;
    // we hear b: once b has not served for a whole timeout, we are the one that can.
    let t0 = Instant::now();
    let mut d = detector("self", &["b"], t0);
    for (seq, t) in (0..=400).step_by(100).enumerate() {
        d.observe(&hb("b", seq as u64 + 1, false, &[]), t0 + ms(t));
        let changed = d.tick(t0 + ms(t)).serving;
        assert_eq!(changed, (t == 400).then_some(true), "at {t} ms");
    }
    assert_eq!(names(&d.alive(t0 + ms(400))), ["self"]);
    // With a third member we do not hear, it could be serving: we must not.
    let mut d = detector("self", &["b", "c"], t0);
    for (seq, t) in (0..=800).step_by(100).enumerate() {
        d.observe(&hb("b", seq as u64 + 1, false, &[]), t0 + ms(t));
        assert_eq!(d.tick(t0 + ms(t)).serving, None);
    }
    assert_eq!(d.not_serving(t0 + ms(800)), Some(NotServing::NobodyHearsUs));
}

#[test]
fn only_members_with_a_fresh_lease_can_cut_us_off() {
    // a crashed long ago: its Lease went stale, so hearing nobody means we are alone.
    let t0 = Instant::now();
    let mut d = detector("self", &["a"], t0);
    assert_eq!(d.not_serving(t0), Some(NotServing::HearNobody));
    let stale = Member {
        fresh: false,
        ..member("a")
    };
    d.set_members(BTreeMap::from([("a".to_string(), stale)]), t0);
    assert_eq!(d.tick(t0).serving, Some(true));
    assert_eq!(names(&d.alive(t0)), ["self"]);
    // A peer that said LEAVING does not count either.
    let mut d = detector("self", &["a"], t0);
    d.observe(&hb("a", 1, true, &["self"]), t0);
    d.tick(t0);
    assert_eq!(
        d.observe(&hb("a", 2, true, &[]).with_leaving(true), t0),
        Observed::Left
    );
    d.tick(t0 + ms(1));
    assert!(
        d.serving(),
        "the other one left gracefully: we carry on alone"
    );
}

#[test]
fn a_peer_we_cannot_hear_stays_alive_while_a_serving_peer_hears_it() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    d.observe(&hb("c", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    assert_eq!(names(&d.alive(t0)), ["a", "c", "self"], "a through c");
    // The relayed news ages: c heard a 200 ms before its heartbeat reached us.
    let old = Heartbeat::new("c", inc("c"), 2, set(&["eth0"]))
        .unwrap()
        .with_state(true, true)
        .with_heard(vec![Heard {
            id: node_id("a"),
            age_ms: 200,
            serving: true,
            settled: true,
        }])
        .unwrap();
    let t1 = t0 + ms(100);
    d.observe(&old, t1);
    d.tick(t1);
    assert!(
        d.alive(t1).contains_key("a"),
        "a was heard by c at t0 still"
    );
    // c keeps beating but stops hearing a: a dies one timeout after c last heard it.
    d.observe(&hb("c", 3, true, &["self"]), t0 + ms(200));
    d.observe(&hb("c", 4, true, &["self"]), t0 + ms(300));
    assert!(d.alive(t0 + ms(349)).contains_key("a"));
    assert!(!d.alive(t0 + ms(350)).contains_key("a"));
    d.observe(&hb("c", 5, true, &["self"]), t0 + ms(400));
    assert_eq!(names(&d.alive(t0 + ms(400))), ["c", "self"]);
}

/// A member that lies (it relays a live node as not serving, with the freshest age) cannot
/// take that node out of the view of a peer that hears it directly: our own fresh news
/// stands. Once we stop hearing it, relays count again (a relay keeps alive a node we
/// cannot hear, and says when it stops serving).
#[test]
fn our_own_fresh_news_stands_over_a_relay() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "m"], t0);
    d.observe(&hb("a", 1, true, &["m", "self"]), t0);
    d.observe(&hb("m", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    assert_eq!(names(&d.alive(t0)), ["a", "m", "self"]);
    // m says, fresher than our last heartbeat from a, that a does not serve.
    let lie = |seq: u64| {
        Heartbeat::new("m", inc("m"), seq, set(&["eth0"]))
            .unwrap()
            .with_state(true, true)
            .with_heard(vec![Heard {
                id: node_id("a"),
                age_ms: 0,
                serving: false,
                settled: false,
            }])
            .unwrap()
    };
    d.observe(&lie(2), t0 + ms(50));
    d.tick(t0 + ms(50));
    assert!(
        d.alive(t0 + ms(50)).contains_key("a"),
        "we hear a ourselves"
    );
    d.observe(&hb("a", 2, true, &["m", "self"]), t0 + ms(100));
    d.observe(&lie(3), t0 + ms(150));
    d.tick(t0 + ms(150));
    assert!(d.alive(t0 + ms(150)).contains_key("a"));
    // a goes quiet to us (say one-way loss): once our news is stale, m's word counts.
    d.observe(&lie(4), t0 + ms(400));
    d.tick(t0 + ms(450));
    assert!(!d.alive(t0 + ms(450)).contains_key("a"));
}

#[test]
fn relays_from_a_peer_that_does_not_serve_are_ignored() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    d.observe(&hb("c", 1, false, &["a"]), t0);
    d.tick(t0);
    assert!(!d.alive(t0).contains_key("a"));
}

#[test]
fn a_crash_is_seen_one_timeout_after_the_last_news() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    d.observe(&hb("a", 1, true, &["c", "self"]), t0);
    d.observe(&hb("c", 1, true, &["a", "self"]), t0 + ms(50));
    d.tick(t0 + ms(50));
    assert!(d.alive(t0 + ms(349)).contains_key("a"));
    // c's news of a (heard at t0+50) is fresher than ours: a lives until t0+400.
    assert!(d.alive(t0 + ms(399)).contains_key("a"));
    assert!(!d.alive(t0 + ms(400)).contains_key("a"));
    assert_eq!(d.next_deadline(t0 + ms(50)), Some(t0 + ms(350)));
    assert_eq!(
        d.next_deadline(t0 + ms(350)),
        Some(t0 + ms(400)),
        "c's news of a"
    );
    let tick = d.tick(t0 + ms(350));
    assert_eq!(tick.silent, vec!["a".to_string()]);
}

#[test]
fn leaving_is_gone_at_once_whatever_peers_still_relay() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    d.observe(&hb("a", 1, true, &["c", "self"]), t0);
    d.observe(&hb("c", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    let bye = hb("a", 2, true, &[]).with_leaving(true);
    assert_eq!(d.observe(&bye, t0 + ms(10)), Observed::Left);
    assert!(!d.alive(t0 + ms(10)).contains_key("a"));
    // c still relays a from before the goodbye: ignored.
    d.observe(&hb("c", 2, true, &["a", "self"]), t0 + ms(5));
    assert!(!d.alive(t0 + ms(20)).contains_key("a"));
    assert_eq!(
        d.observe(&hb("a", 3, true, &[]), t0 + ms(30)),
        Observed::Stale
    );
}

#[test]
fn replays_and_other_incarnations_are_stale() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a"], t0);
    assert_eq!(
        d.observe(&hb("a", 5, true, &[]), t0),
        Observed::Accepted { revived: true }
    );
    assert_eq!(d.observe(&hb("a", 5, true, &[]), t0), Observed::Stale);
    assert_eq!(d.observe(&hb("a", 4, true, &[]), t0), Observed::Stale);
    assert_eq!(
        d.observe(&hb("a", 6, true, &[]), t0),
        Observed::Accepted { revived: false }
    );
    let other = Heartbeat::new("a", 999, 100, set(&["eth0"])).unwrap();
    assert_eq!(
        d.observe(&other, t0),
        Observed::Stale,
        "not the Lease's incarnation"
    );
    assert_eq!(
        d.observe(&hb("zz", 1, true, &[]), t0),
        Observed::UnknownNode
    );
    assert_eq!(d.observe(&hb("self", 1, true, &[]), t0), Observed::Own);
}

#[test]
fn a_restart_with_a_lower_incarnation_is_accepted_once_its_lease_says_so() {
    // Random incarnations: a restarted node may well draw a smaller number.
    let t0 = Instant::now();
    let mut d = detector("self", &["a"], t0);
    let first = Heartbeat::new("a", 1_000, 50, set(&["eth0"])).unwrap();
    let with = |incarnation| Member {
        incarnation: Some(incarnation),
        fresh: true,
    };
    let mut m = BTreeMap::from([("a".to_string(), with(1_000))]);
    d.set_members(m.clone(), t0);
    assert!(matches!(d.observe(&first, t0), Observed::Accepted { .. }));
    m.insert("a".into(), with(7));
    d.set_members(m, t0 + ms(10));
    let restarted = Heartbeat::new("a", 7, 1, set(&["eth0"]))
        .unwrap()
        .with_state(true, true);
    assert_eq!(
        d.observe(&restarted, t0 + ms(20)),
        Observed::Accepted { revived: true }
    );
    assert_eq!(d.observe(&first, t0 + ms(30)), Observed::Stale);
}

#[test]
fn deleted_leases_do_not_make_anyone_alone() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    d.observe(&hb("a", 1, true, &["b", "self"]), t0);
    d.observe(&hb("b", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    d.set_members(BTreeMap::new(), t0 + ms(10));
    assert_eq!(names(&d.alive(t0 + ms(10))), ["a", "b", "self"]);
    // They keep beating: they stay, and their heartbeats are still accepted.
    for (i, t) in (100..=1000).step_by(100).enumerate() {
        let seq = 2 + i as u64;
        assert!(matches!(
            d.observe(&hb("a", seq, true, &["b", "self"]), t0 + ms(t)),
            Observed::Accepted { .. }
        ));
        d.observe(&hb("b", seq, true, &["a", "self"]), t0 + ms(t));
        d.tick(t0 + ms(t));
    }
    assert_eq!(names(&d.alive(t0 + ms(1000))), ["a", "b", "self"]);
    assert!(d.serving());
    // b stops: it is forgotten once silent, a is kept.
    for (i, t) in (1100..=1600).step_by(100).enumerate() {
        d.observe(&hb("a", 20 + i as u64, true, &["self"]), t0 + ms(t));
        d.tick(t0 + ms(t));
    }
    assert_eq!(names(&d.alive(t0 + ms(1600))), ["a", "self"]);
    assert_eq!(
        d.observe(&hb("b", 99, true, &[]), t0 + ms(1700)),
        Observed::UnknownNode
    );
}

/// A peer that left our heartbeat scope is first marked stale (scope.rs), then dropped: it
/// is forgotten at once, though it still beats (it may still be sending to us during its
/// own grace). Retaining it would keep two such peers beating each other forever.
#[test]
fn a_member_dropped_while_stale_is_not_retained() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "b"], t0);
    d.observe(&hb("a", 1, true, &["b", "self"]), t0);
    d.observe(&hb("b", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    let mut stale_b = members(&["a", "b"]);
    stale_b.get_mut("b").unwrap().fresh = false;
    d.set_members(stale_b, t0 + ms(10));
    assert_eq!(
        names(&d.alive(t0 + ms(10))),
        ["a", "b", "self"],
        "still heard"
    );
    d.set_members(members(&["a"]), t0 + ms(20));
    assert_eq!(d.retained().count(), 0);
    assert_eq!(names(&d.alive(t0 + ms(20))), ["a", "self"]);
    assert_eq!(
        d.observe(&hb("b", 2, true, &["a", "self"]), t0 + ms(30)),
        Observed::UnknownNode
    );
}

#[test]
fn a_deleted_lease_keeps_a_member_we_only_hear_through_a_peer() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    d.observe(&hb("c", 1, true, &["a", "self"]), t0);
    d.tick(t0);
    assert!(d.alive(t0).contains_key("a"), "a through c");
    d.set_members(members(&["c"]), t0 + ms(10));
    assert!(
        d.alive(t0 + ms(10)).contains_key("a"),
        "kept: c still hears it"
    );
}

#[test]
fn a_speaker_that_comes_back_settles_for_the_hold_down() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a"], t0);
    d.config.grace = ms(350);
    // A cold start: a's first heartbeat says it does not serve yet, but it hears us.
    d.observe(&hb("a", 1, false, &["self"]), t0);
    let t = d.tick(t0);
    assert_eq!((t.serving, t.rejoined), (Some(true), false));
    assert!(
        d.settled(t0),
        "no settled peer to defer to: settled at once"
    );
    // Cut off for a second, then back.
    let t1 = t0 + ms(1000);
    assert_eq!(d.tick(t1).serving, Some(false));
    d.observe(&hb("a", 2, true, &["self"]), t1);
    let t = d.tick(t1);
    assert_eq!((t.serving, t.rejoined), (Some(true), true));
    assert!(
        !d.settled(t1),
        "a is established: we defer for the hold-down"
    );
    assert!(
        !d.alive(t1).contains_key("self"),
        "not before a heard that we serve"
    );
    assert!(d.alive(t1 + ms(350))["self"].settling);
    assert!(
        !d.outgoing(t1).settled,
        "and say so, so every peer ranks us last alike"
    );
    let hold = d.config().hold_down;
    assert_eq!(d.next_deadline(t1).map(|x| x <= t1 + hold), Some(true));
    assert!(d.settled(t1 + hold), "our heartbeats say SETTLED from here");
    assert!(
        d.alive(t1 + hold)["self"].settling,
        "and we act on it once peers have heard"
    );
    assert!(!d.alive(t1 + hold + ms(350))["self"].settling);
}

#[test]
fn a_settling_peer_is_reported_as_such() {
    let t0 = Instant::now();
    let mut d = detector("self", &["a", "c"], t0);
    let fresh_a = Heartbeat::new("a", inc("a"), 1, set(&["eth0"]))
        .unwrap()
        .with_state(true, false)
        .with_heard(vec![])
        .unwrap();
    d.observe(&fresh_a, t0);
    d.observe(&hb("c", 1, true, &["self"]), t0);
    d.tick(t0);
    assert!(d.alive(t0)["a"].settling);
    assert!(!d.alive(t0)["c"].settling);
}

// ── whole clusters ─────────────────────────────────────────────────────────────────────

/// A LAN's heartbeat faults: `reach[i][j]` = i's heartbeats reach j.
#[derive(Clone, Debug)]
struct Net {
    n: usize,
    reach: Vec<Vec<bool>>,
}

fn node(i: usize) -> String {
    format!("n{i}")
}

/// Runs `rounds` heartbeat intervals of 100 ms among `n` speakers and returns every
/// speaker's detector at the end, with the time.
fn simulate(net: &Net, rounds: u64) -> (Vec<Detector>, Instant) {
    let t0 = Instant::now();
    let names: Vec<String> = (0..net.n).map(node).collect();
    let all: BTreeMap<String, Member> = names.iter().map(|n| (n.clone(), member(n))).collect();
    let mut ds: Vec<Detector> = names
        .iter()
        .map(|n| {
            let mut d = Detector::new(n.clone(), set(&["eth0"]), Config::default());
            d.set_members(all.clone(), t0);
            d.set_ready(true);
            d
        })
        .collect();
    let mut now = t0;
    for r in 1..=rounds {
        now = t0 + ms(100 * r);
        let beats: Vec<Heartbeat> = (0..net.n)
            .map(|i| beat(&ds[i], &names[i], r, now))
            .collect();
        for (i, b) in beats.iter().enumerate() {
            for (j, d) in ds.iter_mut().enumerate() {
                if i != j && net.reach[i][j] {
                    d.observe(b, now);
                }
            }
        }
        for d in &mut ds {
            d.tick(now);
        }
    }
    (ds, now)
}

/// For each of `ips` (stand-ins: a rank per node), the nodes that announce it: those that
/// serve and win it in their own view (settled before settling, then lowest rank).
fn announcers(ds: &[Detector], now: Instant, ips: u64) -> Vec<Vec<String>> {
    (0..ips)
        .map(|ip| {
            ds.iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    let view = d.alive(now);
                    let me = node(i);
                    view.get(&me)?;
                    let winner = view
                        .iter()
                        .min_by_key(|(n, l)| {
                            (
                                l.settling,
                                crate::core::rank(
                                    n,
                                    std::net::IpAddr::from([203, 0, 113, ip as u8]),
                                ),
                            )
                        })
                        .map(|(n, _)| n.clone())?;
                    (winner == me).then_some(me)
                })
                .collect()
        })
        .collect()
}

fn full(n: usize) -> Net {
    Net {
        n,
        reach: (0..n).map(|i| (0..n).map(|j| i != j).collect()).collect(),
    }
}

#[test]
fn a_healthy_cluster_elects_one_announcer_per_ip() {
    let (ds, now) = simulate(&full(4), 10);
    for (ip, who) in announcers(&ds, now, 16).iter().enumerate() {
        assert_eq!(who.len(), 1, "IP {ip}: {who:?}");
    }
}

#[test]
fn the_lab_faults_leave_one_announcer_per_ip() {
    let cases: Vec<(&str, Net)> = vec![
        ("n0 inbound firewalled", {
            let mut net = full(3);
            (1..3).for_each(|j| net.reach[j][0] = false);
            net
        }),
        ("n0 outbound firewalled", {
            let mut net = full(3);
            (1..3).for_each(|j| net.reach[0][j] = false);
            net
        }),
        ("n1 to n0 lost only", {
            let mut net = full(3);
            net.reach[1][0] = false;
            net
        }),
        ("n0 and n1 cut, both hear n2", {
            let mut net = full(3);
            net.reach[1][0] = false;
            net.reach[0][1] = false;
            net
        }),
        ("two nodes, one direction lost", {
            let mut net = full(2);
            net.reach[0][1] = false;
            net
        }),
    ];
    for (name, net) in cases {
        let (ds, now) = simulate(&net, 12);
        for (ip, who) in announcers(&ds, now, 24).iter().enumerate() {
            assert_eq!(who.len(), 1, "{name}: IP {ip} announced by {who:?}");
        }
    }
}

/// Faults around a hub that everyone hears and that hears everyone: random nodes deaf
/// (inbound blocked), mute (outbound blocked), and random one-way or two-way cuts.
fn arb_net() -> impl Strategy<Value = Net> {
    (3usize..7).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(0u8..4, n),
            proptest::collection::vec(any::<bool>(), n * n),
        )
            .prop_map(|(n, kind, cuts)| {
                let mut net = full(n);
                // Node 0 is the hub: never deaf, mute or cut.
                for i in 1..n {
                    match kind[i] {
                        1 => (0..n).for_each(|j| net.reach[j][i] = false),
                        2 => (0..n).for_each(|j| net.reach[i][j] = false),
                        _ => {}
                    }
                    for j in 1..n {
                        if i != j && cuts[i * n + j] && kind[i] == 3 {
                            net.reach[i][j] = false;
                        }
                    }
                }
                net
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the faults around a healthy hub, once heartbeats have flowed for a while,
    /// no IP has two announcers; and none is silent as soon as two nodes hear each other
    /// (when none do, no node can tell it is not the one cut off: all stay silent).
    #[test]
    fn prop_at_most_one_announcer_and_none_silent(net in arb_net()) {
        let (ds, now) = simulate(&net, 12);
        let mutual = (0..net.n).any(|i| (0..net.n).any(|j| net.reach[i][j] && net.reach[j][i]));
        for (ip, who) in announcers(&ds, now, 12).iter().enumerate() {
            prop_assert!(who.len() <= 1, "IP {} announced by {:?} in {:?}", ip, who, net);
            if mutual {
                prop_assert_eq!(who.len(), 1, "IP {} silent in {:?}", ip, net);
            }
        }
    }
}
