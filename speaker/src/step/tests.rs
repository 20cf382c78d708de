use super::*;
use crate::core::{Advertisement, Node, Pool, Service, Speaker};
use crate::liveness::{Config, Detector, Heartbeat, Live, Member};
use crate::scope::Heartbeats;
use ferrolb_crds::addresses::PoolAddresses;
use ferrolb_crds::selector::Selector;
use proptest::prelude::*;

const INTERVAL: Duration = Duration::from_millis(100);

/// All-to-all: every speaker hears every other.
static EVERYONE: Scope = Scope::everyone();

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
        scope: &EVERYONE,
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
    /// The Services' IPs.
    ips: Vec<IpAddr>,
    incarnation: Vec<u64>,
    det: Vec<Detector>,
    dec: Vec<Decider>,
    /// Each node's scope (of `base`) and whom it heartbeats (the glue's, scope.rs).
    scopes: Vec<Scope>,
    heartbeats: Vec<Heartbeats>,
    targets: Vec<BTreeSet<String>>,
    seq: u64,
    now: Instant,
    last_alive: Vec<AliveView>,
}

const SERVICES: usize = 8;

impl Sim {
    /// `n` nodes, one advertisement of every node: all-to-all.
    fn new(n: usize, t0: Instant) -> Sim {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let base = base(&names, SERVICES);
        Sim::with_world(names, base, (0..SERVICES).map(ip).collect(), t0)
    }

    fn with_world(names: Vec<String>, base: World, ips: Vec<IpAddr>, t0: Instant) -> Sim {
        let n = names.len();
        let mut s = Sim {
            base,
            ips,
            incarnation: (0..n as u64).map(|i| 1000 + i).collect(),
            det: Vec::new(),
            dec: Vec::new(),
            scopes: Vec::new(),
            heartbeats: (0..n).map(|_| Heartbeats::default()).collect(),
            targets: vec![BTreeSet::new(); n],
            seq: 0,
            now: t0,
            last_alive: vec![AliveView::new(); n],
            names,
        };
        s.scopes = s.names.iter().map(|me| Scope::of(&s.base, me)).collect();
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

    /// Every other speaker's Lease, fresh, with its current incarnation.
    fn peers_of(&self, i: usize) -> BTreeMap<String, PeerAddr> {
        (0..self.names.len())
            .filter(|&j| j != i)
            .map(|j| (self.names[j].clone(), peer(self.incarnation[j])))
            .collect()
    }

    /// Every detector's members: the Leases in its scope (as the glue sends them).
    fn members(&mut self) {
        for i in 0..self.names.len() {
            let known = self.peers_of(i);
            let to = self.heartbeats[i].peers(&known, &self.scopes[i], self.now);
            self.targets[i] = to.keys().cloned().collect();
            let members: BTreeMap<String, Member> = to
                .into_iter()
                .map(|(n, p)| {
                    let m = Member {
                        incarnation: p.incarnation,
                        fresh: p.fresh,
                    };
                    (n, m)
                })
                .collect();
            self.det[i].set_members(members, self.now);
        }
    }

    /// Node `i` now carries `labels`: every speaker sees the change at once, and decides
    /// on it before any heartbeat to or from a peer it starts to hear arrives.
    fn relabel(&mut self, i: usize, labels: BTreeMap<String, String>, p: &Phase) {
        let mut node = self.base.nodes[&self.names[i]].clone();
        node.labels = labels;
        self.base.apply_node(node);
        self.scopes = self
            .names
            .iter()
            .map(|me| Scope::of(&self.base, me))
            .collect();
        self.members();
        self.now += Duration::from_millis(1);
        self.decide(p);
    }

    fn restart(&mut self, i: usize) {
        self.incarnation[i] += 100;
        let (d, c) = self.fresh_node(i);
        self.det[i] = d;
        self.dec[i] = c;
        self.last_alive[i] = AliveView::new();
        self.heartbeats[i] = Heartbeats::default();
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
                let sent = self.targets[i].contains(&self.names[j]);
                if i != j && sent && !p.down[j] && p.reach[i][j] {
                    self.det[j].observe(b, now);
                }
            }
        }
        self.decide(p);
    }

    /// Every up node decides at `now` on what its detector says (the glue steps on every
    /// event, a configuration change included, not only after heartbeats).
    fn decide(&mut self, p: &Phase) {
        let now = self.now;
        for i in 0..self.names.len() {
            if p.down[i] {
                continue;
            }
            self.det[i].tick(now);
            let view = self.det[i].alive(now);
            let world = with_speakers(&self.base, &view);
            let peers = self.peers_of(i);
            let i_in = Inputs {
                synced: true,
                can_answer: true,
                world: Some(&world),
                alive: &view,
                not_serving: self.det[i].not_serving(now),
                peers: &peers,
                scope: &self.scopes[i],
                alive_changed: view != self.last_alive[i],
                rejoined_after_isolation: false,
            };
            self.dec[i].step(&i_in, now);
            self.last_alive[i] = view;
        }
    }

    /// `p` with the lowest-named node of every group of speakers that hear each other
    /// (scope.rs) kept healthy: a hub per group, as node 0 is the hub of all-to-all.
    fn with_hubs(&self, p: &Phase) -> Phase {
        let mut p = p.clone();
        let n = self.names.len();
        for (i, s) in self.scopes.iter().enumerate() {
            let hub = (0..n).find(|&j| s.contains(&self.names[j]));
            if hub == Some(i) && !s.is_empty() {
                p.down[i] = false;
                p.restart[i] = false;
                for j in 0..n {
                    p.reach[i][j] = i != j;
                    p.reach[j][i] = i != j;
                }
            }
        }
        p
    }

    /// For each IP, the nodes up and answering for it.
    fn answerers(&self, p: &Phase) -> Vec<Vec<usize>> {
        self.ips
            .iter()
            .map(|a| {
                (0..self.names.len())
                    .filter(|&i| !p.down[i] && self.dec[i].announced().contains_key(a))
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

// ── the same, with advertisements that split the nodes into groups ───────────────────

/// Pools of the partitioned clusters: one per group, the Services' IPs spread over them.
const GROUP_POOLS: [&str; 3] = ["203.0.113.0/28", "203.0.113.16/28", "203.0.113.32/28"];

fn group_ip(k: usize) -> IpAddr {
    IpAddr::from([203, 0, 113, 2 + 6 * k as u8])
}

/// The labels of a node in the groups of `mask` (bit g: `group-g=true`).
fn group_labels(mask: u8) -> BTreeMap<String, String> {
    (0..3)
        .filter(|g| mask & (1 << g) != 0)
        .map(|g| (format!("group-{g}"), "true".to_string()))
        .collect()
}

/// Nodes in the groups of their masks; pool g advertised from group g, and from group h
/// too for each `(g, h)` of `shared` (pools several groups announce); 8 Services of one IP
/// and one of two IPs in two pools (elected among the nodes of both).
fn partitioned(masks: &[u8], shared: &[(usize, usize)]) -> (Vec<String>, World, Vec<IpAddr>) {
    let names: Vec<String> = (0..masks.len()).map(|i| format!("n{i}")).collect();
    let mut w = World::default();
    for (n, m) in names.iter().zip(masks) {
        w.apply_node(Node {
            name: n.clone(),
            labels: group_labels(*m),
            ..Default::default()
        });
    }
    for (g, addrs) in GROUP_POOLS.iter().enumerate() {
        w.apply_pool(Pool {
            name: format!("p{g}"),
            labels: BTreeMap::new(),
            addresses: PoolAddresses::parse(&[addrs.to_string()]).unwrap(),
        });
    }
    let mut advs: Vec<(usize, usize)> = (0..3).map(|g| (g, g)).collect();
    advs.extend(shared);
    for (k, (pool, group)) in advs.into_iter().enumerate() {
        let key = format!("group-{group}");
        w.apply_advertisement(Advertisement {
            name: format!("a{k}"),
            pools: crate::core::PoolSelection {
                names: BTreeSet::from([format!("p{pool}")]),
                selectors: Vec::new(),
            },
            node_selectors: vec![Selector::from_labels([(key.as_str(), "true")])],
            ..Default::default()
        });
    }
    let mut ips: Vec<IpAddr> = (0..SERVICES).map(group_ip).collect();
    for (k, a) in ips.iter().enumerate() {
        w.apply_service(Service {
            key: format!("ns/s{k}"),
            ips: vec![*a],
            has_serving_endpoints: true,
            ..Default::default()
        });
    }
    let pair = [
        IpAddr::from([203, 0, 113, 5]),
        IpAddr::from([203, 0, 113, 37]),
    ];
    w.apply_service(Service {
        key: "ns/pair".into(),
        ips: pair.to_vec(),
        has_serving_endpoints: true,
        ..Default::default()
    });
    ips.extend(pair);
    (names, w, ips)
}

/// The candidates of each IP, by the election itself: the nodes that win it alone.
fn candidates(w: &World, ips: &[IpAddr]) -> Vec<BTreeSet<String>> {
    let mut out = vec![BTreeSet::new(); ips.len()];
    for n in w.nodes.keys() {
        let alone = with_speakers(w, &alive(&[n.as_str()]));
        let mine = crate::core::local_announcements(&crate::core::desired(&alone), n);
        for (k, a) in ips.iter().enumerate() {
            if mine.contains_key(a) {
                out[k].insert(n.clone());
            }
        }
    }
    out
}

/// A node moved to the groups of a mask.
type Relabel = Option<(usize, u8)>;

/// Group masks of the nodes, shared pools, and phases.
type Partitioned = (Vec<u8>, Vec<(usize, usize)>, Vec<(Phase, Relabel)>);

/// Nodes in random groups, and phases: faults as [`arb_phase`], and maybe a node moved to
/// other groups.
fn arb_partitioned() -> impl Strategy<Value = Partitioned> {
    (4usize..7).prop_flat_map(|n| {
        (
            proptest::collection::vec(0u8..8, n),
            proptest::collection::vec((0usize..3, 0usize..3), 0..3),
            proptest::collection::vec(
                (
                    // Half the phases are calm (no fault): a move is checked every round.
                    prop_oneof![
                        arb_phase(n),
                        Just(Phase {
                            reach: full(n),
                            down: vec![false; n],
                            restart: vec![false; n],
                        })
                    ],
                    proptest::option::weighted(0.4, (1..n, 0u8..8)),
                ),
                1..4,
            ),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// With advertisements that split the nodes into groups (some pools announced by
    /// several groups, some nodes in several groups, nodes moved between groups), each
    /// speaker heartbeating only its scope: once each phase has settled, at most one node
    /// answers for each IP; and after a healthy phase exactly one does for every IP that
    /// has a candidate. A scope that left out a candidate of one of our IPs would elect
    /// twice here.
    #[test]
    fn prop_one_answerer_per_ip_with_partitioned_advertisements(
        (masks, shared, phases) in arb_partitioned()
    ) {
        let n = masks.len();
        let t0 = Instant::now();
        let (names, world, ips) = partitioned(&masks, &shared);
        let mut sim = Sim::with_world(names, world, ips, t0);
        let healthy = Phase { reach: full(n), down: vec![false; n], restart: vec![false; n] };
        let check_all_answered = |sim: &Sim, what: &str| -> Result<(), TestCaseError> {
            let cands = candidates(&sim.base, &sim.ips);
            for (k, who) in sim.answerers(&healthy).iter().enumerate() {
                let want = usize::from(!cands[k].is_empty());
                prop_assert_eq!(who.len(), want, "{}: IP {} answered by {:?} (candidates {:?})",
                    what, sim.ips[k], who, cands[k]);
            }
            Ok(())
        };
        for _ in 0..PHASE_ROUNDS {
            sim.round(&healthy);
        }
        check_all_answered(&sim, "start")?;
        let mut all = phases.clone();
        all.push((healthy.clone(), None));
        for (k, (p, relabel)) in all.iter().enumerate() {
            // Without a fault, a node moving between groups never makes two answerers,
            // not even for a moment (it waits for the peers it starts to hear).
            let calm = p.reach == full(n) && !p.down.iter().any(|d| *d) && !p.restart.iter().any(|r| *r);
            if let Some((node, mask)) = relabel {
                let p = sim.with_hubs(p);
                sim.relabel(*node, group_labels(*mask), &p);
                if calm {
                    for (ipk, who) in sim.answerers(&p).iter().enumerate() {
                        prop_assert!(who.len() <= 1, "phase {}: IP {} answered by {:?} right after {:?}",
                            k, sim.ips[ipk], who, relabel);
                    }
                }
            }
            let p = &sim.with_hubs(p);
            for i in 0..n {
                if p.restart[i] {
                    sim.restart(i);
                }
            }
            sim.members();
            for round in 0..PHASE_ROUNDS {
                sim.round(p);
                if calm {
                    for (ipk, who) in sim.answerers(p).iter().enumerate() {
                        prop_assert!(who.len() <= 1, "phase {} round {}: IP {} answered by {:?} after {:?}",
                            k, round, sim.ips[ipk], who, relabel);
                    }
                }
            }
            for (ipk, who) in sim.answerers(p).iter().enumerate() {
                prop_assert!(who.len() <= 1, "phase {}: IP {} answered by {:?} in {:?}",
                    k, sim.ips[ipk], who, p);
            }
        }
        check_all_answered(&sim, "after a healthy phase")?;
    }
}

// ── a partial view: scope, counting out, housekeeping, peers joining ──────────────────

fn fresh_peers(names: &[&str]) -> BTreeMap<String, PeerAddr> {
    names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.to_string(), peer(10 + k as u64)))
        .collect()
}

fn reported(r: &NodeAnnouncementSpec) -> Vec<&str> {
    r.services.iter().map(|s| s.service.as_str()).collect()
}

/// n0, n1 in group 0 (pool p0), n2, n3 in group 1 (p1), nobody in group 2 (p2), n4 in none.
#[test]
fn a_speaker_counts_out_and_judges_only_its_group() {
    let (_, w, _) = partitioned(&[1, 1, 2, 2, 0], &[]);
    let peers = fresh_peers(&["n1", "n2", "n3", "n4"]);
    let scope = Scope::of(&w, "n0");
    let t0 = Instant::now();
    let mut d = Decider::new("n0", 1, Duration::ZERO);
    let view = alive(&["n0", "n1"]);
    let world = with_speakers(&w, &view);
    let mut i = inputs(Some(&world), &view, &peers);
    i.scope = &scope;
    let r = d.step(&i, t0).report.unwrap();
    assert!(r.down.is_empty(), "n2, n3, n4 are not ours to count out");
    let services = reported(&r);
    // p1's IPs: n0 does not hear n2 and n3, its table says nobody: not reported.
    assert!(!services.contains(&"ns/s3") && !services.contains(&"ns/s4"));
    // p2 (no node selected) and the pair (no node in groups 0 and 2): judged, reported.
    for s in ["ns/s5", "ns/s6", "ns/s7", "ns/pair"] {
        assert!(services.contains(&s), "{s}: {services:?}");
    }
    // n1 dies: counted out, and its IPs taken.
    let only = alive(&["n0"]);
    let world = with_speakers(&w, &only);
    let mut i = inputs(Some(&world), &only, &peers);
    i.scope = &scope;
    i.alive_changed = true;
    let acts = d.step(&i, t0 + Duration::from_secs(1));
    let down: Vec<&str> = acts
        .report
        .as_ref()
        .unwrap()
        .down
        .iter()
        .map(|p| p.node.as_str())
        .collect();
    assert_eq!(down, ["n1"]);
    assert_eq!(d.announced().len(), 3, "all of p0");
}

#[test]
fn a_speaker_no_advertisement_selects_serves_quietly_and_keeps_no_house() {
    let (_, w, _) = partitioned(&[1, 1, 2, 2, 0], &[]);
    let peers = fresh_peers(&["n0", "n1", "n2", "n3"]);
    let scope = Scope::of(&w, "n4");
    assert!(scope.is_empty());
    let mut d = Decider::new("n4", 1, Duration::ZERO);
    // No member: its detector serves alone.
    let view = alive(&["n4"]);
    let world = with_speakers(&w, &view);
    let mut i = inputs(Some(&world), &view, &peers);
    i.scope = &scope;
    let acts = d.step(&i, Instant::now());
    assert_eq!(acts.announce, None, "nothing to announce");
    let r = acts.report.unwrap();
    assert!(r.serving && r.reason.is_none());
    assert!(r.down.is_empty() && r.services.is_empty(), "{r:?}");
}

#[test]
fn when_nobody_is_selected_the_lowest_named_speaker_keeps_house() {
    let names: Vec<String> = ["n0", "n1"].iter().map(|s| s.to_string()).collect();
    let mut w = base(&names, 2);
    w.delete_advertisement("all");
    let t0 = Instant::now();
    for (me, other, keeps) in [("n0", "n1", true), ("n1", "n0", false)] {
        let scope = Scope::of(&w, me);
        assert!(scope.is_empty() && scope.nobody_selected());
        let peers = fresh_peers(&[other]);
        let view = alive(&[me]);
        let world = with_speakers(&w, &view);
        let mut i = inputs(Some(&world), &view, &peers);
        i.scope = &scope;
        let r = Decider::new(me, 1, Duration::ZERO)
            .step(&i, t0)
            .report
            .unwrap();
        assert_eq!(!r.services.is_empty(), keeps, "{me}: {r:?}");
        if keeps {
            let ip = &r.services[0].ips[0];
            assert_eq!(ip.reason.as_deref(), Some("NoAdvertisement"));
        }
    }
}

/// A peer that enters our scope is new to us: for a warm-up we take no IP (it may rank
/// first and be heard a moment later), do not count it out, and hearing it is no return.
#[test]
fn a_peer_that_joins_our_scope_is_waited_for_like_at_start() {
    let warmup = Duration::from_millis(450);
    let (_, mut w, _) = partitioned(&[1, 1, 2, 2], &[]);
    let peers = fresh_peers(&["n0", "n2", "n3"]);
    let t0 = Instant::now();
    let mut d = Decider::new("n1", 1, warmup);
    let step = |d: &mut Decider, w: &World, view: &AliveView, changed: bool, at: Instant| {
        let scope = Scope::of(w, "n1");
        let world = with_speakers(w, view);
        let mut i = inputs(Some(&world), view, &peers);
        i.scope = &scope;
        i.alive_changed = changed;
        d.step(&i, at)
    };
    let both = alive(&["n0", "n1"]);
    step(&mut d, &w, &both, false, t0);
    step(&mut d, &w, &both, false, t0 + warmup);
    let first = d.announced().clone();
    assert!(first.len() < 3, "n1 shares p0 with n0: {first:?}");
    // n2 joins group 0 as n0 dies: n1 waits for n2 before taking n0's IPs.
    let mut n2 = w.nodes["n2"].clone();
    n2.labels = group_labels(1);
    w.apply_node(n2);
    let t1 = t0 + Duration::from_secs(2);
    let only = alive(&["n1"]);
    let acts = step(&mut d, &w, &only, true, t1);
    assert_eq!(d.announced(), &first, "no gain while n2 is new");
    assert_eq!(acts.wake_at, Some(t1 + warmup));
    let report = acts.report.unwrap();
    let down: Vec<&str> = report.down.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(down, ["n0"], "n2 is not counted out yet");
    // n2 is heard: no "peer came back".
    let with_n2 = alive(&["n1", "n2"]);
    let acts = step(&mut d, &w, &with_n2, true, t1 + Duration::from_millis(100));
    assert!(!acts.announce_again);
    assert_eq!(d.announced(), &first);
    // After the warm-up, n1 holds what the election gives it beside n2.
    step(&mut d, &w, &with_n2, false, t1 + warmup);
    let want =
        crate::core::local_announcements(&crate::core::desired(&with_speakers(&w, &with_n2)), "n1");
    assert_eq!(d.announced(), &want);
}

/// Only an IP no node announced in the previous table is fresh (probed for before it is
/// announced): not at a speaker's first decision, not on a takeover.
#[test]
fn only_ips_nobody_announced_before_are_fresh() {
    let nodes = vec!["a".to_string(), "b".to_string()];
    let t0 = Instant::now();
    let peers = BTreeMap::new();
    let only_a = alive(&["a"]);
    let mut d = Decider::new("a", 1, Duration::ZERO);
    let w = with_speakers(&base(&nodes, 2), &only_a);
    let acts = d.step(&inputs(Some(&w), &only_a, &peers), t0);
    assert_eq!(acts.announce.unwrap().len(), 2);
    assert!(
        acts.fresh.is_empty(),
        "the first decision takes over what exists"
    );
    // Two new Services: their IPs are fresh.
    let w = with_speakers(&base(&nodes, 4), &only_a);
    let acts = d.step(&inputs(Some(&w), &only_a, &peers), t0 + INTERVAL);
    assert_eq!(acts.fresh, BTreeSet::from([ip(2), ip(3)]));
    // b serves and takes some; b dies and a takes them back: not fresh.
    let both = alive(&["a", "b"]);
    let w2 = with_speakers(&base(&nodes, 4), &both);
    let mut i = inputs(Some(&w2), &both, &peers);
    i.alive_changed = true;
    let acts = d.step(&i, t0 + 2 * INTERVAL);
    assert!(acts.lost > 0, "b wins some");
    let mut i = inputs(Some(&w), &only_a, &peers);
    i.alive_changed = true;
    let acts = d.step(&i, t0 + 3 * INTERVAL);
    assert!(acts.takeover && acts.gained > 0);
    assert!(acts.fresh.is_empty(), "a takeover is announced at once");
}

/// A Service created while a peer joins our scope: the table names us at once, but we hold
/// its IP back until the warm-up ends; nobody announced it meanwhile, so it is still fresh
/// (probed for) when we take it.
#[test]
fn an_ip_held_back_while_a_peer_joins_is_still_fresh() {
    let warmup = Duration::from_millis(450);
    let (_, mut w, _) = partitioned(&[1, 2, 2], &[]);
    let peers = fresh_peers(&["n0", "n2"]);
    let t0 = Instant::now();
    let mut d = Decider::new("n0", 1, warmup);
    let step = |d: &mut Decider, w: &World, view: &AliveView, at: Instant| {
        let scope = Scope::of(w, "n0");
        let world = with_speakers(w, view);
        let mut i = inputs(Some(&world), view, &peers);
        i.scope = &scope;
        d.step(&i, at)
    };
    let all = alive(&["n0", "n2"]);
    step(&mut d, &w, &all, t0);
    step(&mut d, &w, &all, t0 + warmup);
    // n2 joins group 0, and a new Service of pool p0 appears at the same moment.
    let mut n2 = w.nodes["n2"].clone();
    n2.labels = group_labels(1);
    w.apply_node(n2);
    let new_ip = IpAddr::from([203, 0, 113, 11]);
    w.apply_service(Service {
        key: "ns/new".into(),
        ips: vec![new_ip],
        has_serving_endpoints: true,
        ..Default::default()
    });
    let t1 = t0 + Duration::from_secs(2);
    step(&mut d, &w, &all, t1);
    assert!(!d.announced().contains_key(&new_ip), "held while n2 is new");
    // Nor does the report claim it (the condition would say Announced too early).
    let report = d.reported.clone().expect("a report");
    assert!(
        !reported(&report).contains(&"ns/new"),
        "{:?}",
        reported(&report)
    );
    // After the warm-up n0 takes it, and probes first.
    let acts = step(&mut d, &w, &all, t1 + warmup);
    let winner = crate::core::desired(&with_speakers(&w, &all))
        .announcer(new_ip)
        .map(str::to_owned);
    assert_eq!(
        winner.as_deref(),
        Some("n0"),
        "the case needs an IP n0 wins"
    );
    assert!(acts.fresh.contains(&new_ip), "{acts:?}");
}
