use super::*;
use crate::core::{Advertisement, Node, Pool, Service, Speaker};
use crate::liveness::{Config, Detector, Heartbeat, Live, Member};
use ferrolb_crds::addresses::PoolAddresses;
use proptest::prelude::*;

const INTERVAL: Duration = Duration::from_millis(100);

fn ifaces() -> BTreeSet<String> {
    BTreeSet::from(["eth0".to_string()])
}

fn ip(k: usize) -> IpAddr {
    IpAddr::from([203, 0, 113, 10 + k as u8])
}

/// Nodes, one pool, one advertisement and `services` Services of one IP each; no speakers.
fn base(nodes: &[String], services: usize) -> World {
    let mut w = World::default();
    for n in nodes {
        w.apply_node(Node {
            name: n.clone(),
            ..Default::default()
        });
    }
    w.apply_pool(Pool {
        name: "p".into(),
        labels: BTreeMap::new(),
        addresses: PoolAddresses::parse(&["203.0.113.0/24".to_string()]).unwrap(),
    });
    w.apply_advertisement(Advertisement {
        name: "all".into(),
        ..Default::default()
    });
    for k in 0..services {
        w.apply_service(Service {
            key: format!("ns/s{k}"),
            ips: vec![ip(k)],
            has_serving_endpoints: true,
            ..Default::default()
        });
    }
    w
}

fn with_speakers(base: &World, alive: &AliveView) -> World {
    let mut w = base.clone();
    for (node, live) in alive {
        w.apply_speaker(Speaker {
            node: node.clone(),
            interfaces: live.interfaces.clone(),
            settling: live.settling,
        });
    }
    w
}

fn alive(nodes: &[&str]) -> AliveView {
    nodes
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Live {
                    interfaces: ifaces(),
                    settling: false,
                },
            )
        })
        .collect()
}

fn inputs<'a>(
    world: Option<&'a World>,
    alive: &'a AliveView,
    peers: &'a BTreeMap<String, PeerAddr>,
) -> Inputs<'a> {
    Inputs {
        synced: world.is_some(),
        can_answer: true,
        world,
        alive,
        not_serving: None,
        peers,
        alive_changed: false,
        rejoined_after_isolation: false,
    }
}

fn peer(incarnation: u64) -> PeerAddr {
    PeerAddr {
        addr: "198.51.100.1:7473".parse().unwrap(),
        incarnation: Some(incarnation),
        fresh: true,
        pubkey: None,
    }
}

#[test]
fn nothing_is_decided_before_the_caches_sync_and_the_warm_up_ends() {
    let nodes = vec!["a".to_string(), "b".to_string()];
    let b = base(&nodes, 4);
    let view = alive(&["a", "b"]);
    let w = with_speakers(&b, &view);
    let peers = BTreeMap::new();
    let t0 = Instant::now();
    let mut d = Decider::new("a", 1, Duration::from_millis(450));
    let mut i = inputs(None, &view, &peers);
    i.can_answer = true;
    let acts = d.step(&i, t0);
    assert!(!acts.ready, "not synced: not ready");
    assert_eq!(
        (acts.announce, acts.report, acts.wake_at),
        (None, None, None)
    );
    let acts = d.step(&inputs(Some(&w), &view, &peers), t0);
    assert!(acts.ready);
    assert_eq!(acts.announce, None, "warming up");
    assert_eq!(acts.wake_at, Some(t0 + Duration::from_millis(450)));
    let acts = d.step(
        &inputs(Some(&w), &view, &peers),
        t0 + Duration::from_millis(449),
    );
    assert_eq!(acts.announce, None);
    let acts = d.step(
        &inputs(Some(&w), &view, &peers),
        t0 + Duration::from_millis(450),
    );
    let mine = acts.announce.expect("decides once warm");
    assert!(
        !mine.is_empty() && mine.len() < 4,
        "shares the IPs with b: {mine:?}"
    );
    assert!(acts.report.is_some() && acts.table.is_some());
    assert!(!acts.takeover, "a start is not a takeover");
    // Nothing changed: nothing to do, no report.
    let acts = d.step(
        &inputs(Some(&w), &view, &peers),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        (acts.announce, acts.report, acts.announce_again),
        (None, None, false)
    );
}

#[test]
fn a_peer_dying_is_a_takeover_reported_with_its_incarnation_and_its_return_announces_again() {
    let nodes = vec!["a".to_string(), "b".to_string()];
    let b = base(&nodes, 6);
    let t0 = Instant::now();
    let both = alive(&["a", "b"]);
    let peers = BTreeMap::from([("b".to_string(), peer(77))]);
    let mut d = Decider::new("a", 1, Duration::ZERO);
    let w = with_speakers(&b, &both);
    let first = d
        .step(&inputs(Some(&w), &both, &peers), t0)
        .announce
        .unwrap();
    // b dies: a takes everything, as a takeover, and counts b's incarnation out.
    let only_a = alive(&["a"]);
    let w = with_speakers(&b, &only_a);
    let mut i = inputs(Some(&w), &only_a, &peers);
    i.alive_changed = true;
    let acts = d.step(&i, t0 + Duration::from_secs(1));
    assert_eq!(acts.announce.as_ref().unwrap().len(), 6);
    assert_eq!(acts.gained, 6 - first.len());
    assert!(acts.takeover);
    assert_eq!(
        acts.departed,
        BTreeSet::from(["b".to_string()]),
        "whose IPs a took"
    );
    let report = acts.report.unwrap();
    assert_eq!(report.down.len(), 1);
    assert_eq!(
        (
            report.down[0].node.as_str(),
            report.down[0].incarnation.as_str()
        ),
        ("b", "77")
    );
    // b comes back: a gives b's IPs back (after b's hold-down, which the detector applies)
    // and announces what it keeps again.
    let w = with_speakers(&b, &both);
    let mut i = inputs(Some(&w), &both, &peers);
    i.alive_changed = true;
    let acts = d.step(&i, t0 + Duration::from_secs(5));
    assert!(acts.announce_again);
    assert_eq!(acts.announce.unwrap(), first);
    assert!(!acts.takeover, "losing IPs is no takeover");
    assert!(acts.departed.is_empty());
    assert!(acts.report.unwrap().down.is_empty());
}

#[test]
fn a_cut_off_speaker_announces_nothing_and_says_why() {
    let nodes = vec!["a".to_string(), "b".to_string()];
    let b = base(&nodes, 3);
    let t0 = Instant::now();
    let peers = BTreeMap::from([("b".to_string(), peer(5))]);
    let mut d = Decider::new("a", 1, Duration::ZERO);
    let both = alive(&["a", "b"]);
    let w = with_speakers(&b, &both);
    d.step(&inputs(Some(&w), &both, &peers), t0);
    // The detector leaves us out of our own view when cut off.
    let none = AliveView::new();
    let w = with_speakers(&b, &none);
    let mut i = inputs(Some(&w), &none, &peers);
    i.not_serving = Some(NotServing::HearNobody);
    let acts = d.step(&i, t0 + Duration::from_secs(1));
    assert_eq!(acts.announce, Some(BTreeMap::new()));
    let r = acts.report.unwrap();
    assert!(!r.serving && r.services.is_empty());
    assert_eq!(r.reason.as_deref(), Some("HearNobody"));
}

// ── whole clusters: detectors + deciders, heartbeats lost as a LAN loses them ──────────

/// One fault phase: who reaches whom, who is down (crashed: silent, announcing nothing),
/// who restarts at its start (new incarnation, empty state).
#[derive(Clone, Debug)]
struct Phase {
    reach: Vec<Vec<bool>>,
    down: Vec<bool>,
    restart: Vec<bool>,
}

struct Sim {
    names: Vec<String>,
    base: World,
    incarnation: Vec<u64>,
    det: Vec<Detector>,
    dec: Vec<Decider>,
    seq: u64,
    now: Instant,
    last_alive: Vec<AliveView>,
}

const SERVICES: usize = 8;

impl Sim {
    fn new(n: usize, t0: Instant) -> Sim {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut s = Sim {
            base: base(&names, SERVICES),
            incarnation: (0..n as u64).map(|i| 1000 + i).collect(),
            det: Vec::new(),
            dec: Vec::new(),
            seq: 0,
            now: t0,
            last_alive: vec![AliveView::new(); n],
            names,
        };
        for i in 0..n {
            let (d, c) = s.fresh_node(i);
            s.det.push(d);
            s.dec.push(c);
        }
        s.members();
        s
    }

    fn fresh_node(&self, i: usize) -> (Detector, Decider) {
        let cfg = Config::default();
        let warmup = cfg.timeout + INTERVAL;
        let mut d = Detector::new(self.names[i].clone(), ifaces(), cfg);
        d.set_ready(true);
        (
            d,
            Decider::new(self.names[i].clone(), self.incarnation[i], warmup),
        )
    }

    /// Every Lease fresh, with the current incarnations.
    fn members(&mut self) {
        let all: BTreeMap<String, Member> = self
            .names
            .iter()
            .zip(&self.incarnation)
            .map(|(n, inc)| {
                (
                    n.clone(),
                    Member {
                        incarnation: Some(*inc),
                        fresh: true,
                    },
                )
            })
            .collect();
        for d in &mut self.det {
            d.set_members(all.clone(), self.now);
        }
    }

    fn restart(&mut self, i: usize) {
        self.incarnation[i] += 100;
        let (d, c) = self.fresh_node(i);
        self.det[i] = d;
        self.dec[i] = c;
        self.last_alive[i] = AliveView::new();
        self.members();
    }

    /// One heartbeat interval under `p`.
    fn round(&mut self, p: &Phase) {
        self.seq += 1;
        self.now += INTERVAL;
        let now = self.now;
        let n = self.names.len();
        let beats: Vec<Option<Heartbeat>> = (0..n)
            .map(|i| {
                if p.down[i] {
                    return None;
                }
                let out = self.det[i].outgoing(now);
                Some(
                    Heartbeat::new(&self.names[i], self.incarnation[i], self.seq, ifaces())
                        .unwrap()
                        .with_state(out.serving, out.settled)
                        .with_established(out.established)
                        .with_heard(out.heard)
                        .unwrap(),
                )
            })
            .collect();
        for (i, b) in beats.iter().enumerate() {
            let Some(b) = b else { continue };
            for j in 0..n {
                if i != j && !p.down[j] && p.reach[i][j] {
                    self.det[j].observe(b, now);
                }
            }
        }
        for i in 0..n {
            if p.down[i] {
                continue;
            }
            self.det[i].tick(now);
            let view = self.det[i].alive(now);
            let world = with_speakers(&self.base, &view);
            let peers: BTreeMap<String, PeerAddr> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (self.names[j].clone(), peer(self.incarnation[j])))
                .collect();
            let i_in = Inputs {
                synced: true,
                can_answer: true,
                world: Some(&world),
                alive: &view,
                not_serving: self.det[i].not_serving(now),
                peers: &peers,
                alive_changed: view != self.last_alive[i],
                rejoined_after_isolation: false,
            };
            self.dec[i].step(&i_in, now);
            self.last_alive[i] = view;
        }
    }

    /// For each IP, the nodes up and answering for it.
    fn answerers(&self, p: &Phase) -> Vec<Vec<usize>> {
        (0..SERVICES)
            .map(|k| {
                (0..self.names.len())
                    .filter(|&i| !p.down[i] && self.dec[i].announced().contains_key(&ip(k)))
                    .collect()
            })
            .collect()
    }
}

fn full(n: usize) -> Vec<Vec<bool>> {
    (0..n).map(|i| (0..n).map(|j| i != j).collect()).collect()
}

/// A phase around a hub (node 0: up, never faulted): others may be down, restarted, deaf,
/// mute, or cut from some peers one way or both.
fn arb_phase(n: usize) -> impl Strategy<Value = Phase> {
    (
        proptest::collection::vec(0u8..7, n),
        proptest::collection::vec(any::<bool>(), n * n),
        proptest::collection::vec(any::<bool>(), n),
    )
        .prop_map(move |(kind, cuts, restart)| {
            let mut reach = full(n);
            let mut down = vec![false; n];
            for i in 1..n {
                match kind[i] {
                    1 => (0..n).for_each(|j| reach[j][i] = false),
                    2 => (0..n).for_each(|j| reach[i][j] = false),
                    3 => {
                        for j in 1..n {
                            if i != j && cuts[i * n + j] {
                                reach[i][j] = false;
                            }
                        }
                    }
                    4 => down[i] = true,
                    _ => {}
                }
            }
            let restart = (0..n).map(|i| i > 0 && restart[i] && !down[i]).collect();
            Phase {
                reach,
                down,
                restart,
            }
        })
}

fn arb_phases() -> impl Strategy<Value = (usize, Vec<Phase>)> {
    (3usize..6).prop_flat_map(|n| (Just(n), proptest::collection::vec(arb_phase(n), 1..4)))
}

/// Rounds per phase: long enough for a crash to be seen (timeout), a restart to warm up
/// and a returning node to serve out its hold-down (3 s).
const PHASE_ROUNDS: u64 = 50;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Through any sequence of fault phases around a healthy hub, once each phase has
    /// settled: at most one node answers for each IP, and some node does. Under no link
    /// fault (crashes and restarts only), no IP is ever silent longer than the heartbeat
    /// timeout plus the hold-down.
    #[test]
    fn prop_one_answerer_per_ip_in_every_settled_phase((n, phases) in arb_phases()) {
        let t0 = Instant::now();
        let mut sim = Sim::new(n, t0);
        let healthy = Phase { reach: full(n), down: vec![false; n], restart: vec![false; n] };
        for _ in 0..PHASE_ROUNDS {
            sim.round(&healthy);
        }
        let cfg = Config::default();
        let bound = cfg.timeout + cfg.hold_down;
        for (k, p) in phases.iter().enumerate() {
            for i in 0..n {
                if p.restart[i] {
                    sim.restart(i);
                }
            }
            let links_ok = (0..n).all(|i| (0..n).all(|j| i == j || p.down[i] || p.down[j] || p.reach[i][j]));
            let mut silent_since: Vec<Option<Instant>> = vec![None; SERVICES];
            for _ in 0..PHASE_ROUNDS {
                sim.round(p);
                // The bound holds while some node serves (and so is eligible: every node
                // is eligible for every IP here); a node that hears nobody does not serve.
                let serving = (0..n).any(|i| !p.down[i] && sim.det[i].not_serving(sim.now).is_none());
                for (ipk, who) in sim.answerers(p).iter().enumerate() {
                    match (who.is_empty() && serving, silent_since[ipk]) {
                        (true, None) => silent_since[ipk] = Some(sim.now),
                        (true, Some(since)) if links_ok => prop_assert!(
                            sim.now - since <= bound,
                            "phase {}: IP {} silent for {:?} (> {:?}) in {:?}", k, ip(ipk), sim.now - since, bound, p
                        ),
                        (false, _) => silent_since[ipk] = None,
                        _ => {}
                    }
                }
            }
            // Some node must answer when two up nodes hear each other (when none do, no
            // node can tell it is not the one cut off: all stay silent, by design).
            let up = |i: usize| !p.down[i];
            let mutual = (0..n).any(|i| (0..n).any(|j| up(i) && up(j) && p.reach[i][j] && p.reach[j][i]));
            for (ipk, who) in sim.answerers(p).iter().enumerate() {
                prop_assert!(who.len() <= 1, "phase {}: IP {} answered by {:?} in {:?}", k, ip(ipk), who, p);
                if mutual {
                    prop_assert_eq!(who.len(), 1, "phase {}: IP {} silent in {:?}", k, ip(ipk), p);
                }
            }
        }
    }
}
