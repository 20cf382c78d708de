//! The incremental [`Detector`] against the [`Reference`] (the detector as it was, scanning
//! every peer and relay on every query): random members, heartbeats (stale, restarted,
//! LEAVING, with random heard lists, from members and strangers, two of them sharing a
//! node id), readiness and time, driven the way the heartbeat thread drives it (ticking at
//! each [`Detector::next_deadline`]). After every step both must say the same: what
//! `observe` and `tick` return, the view, why we do not serve, our state and our heard
//! list; the view must not change without [`Detector::take_view_changed`] saying so; and
//! the reference's answers must not change before the deadline the detector gives.

use super::reference::Reference;
use super::*;
use proptest::prelude::*;

/// Us, two ordinary peers, and two whose names share a node id (`c51deb06`).
const NODES: [&str; 5] = ["n0", "n1", "n2", "c17439", "c24164"];
/// An id no member has.
const STRAY: u32 = 0x5eed;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Tick,
    Ready(bool),
    Interfaces(bool),
    Members(Vec<(usize, bool, Option<bool>)>),
    Beat(Beat),
}

#[derive(Debug, Clone)]
struct Beat {
    from: usize,
    restart: bool,
    seq_step: u64,
    leaving: bool,
    serving: bool,
    settled: bool,
    established: bool,
    wide: bool,
    heard: Vec<(usize, u16, bool, bool)>,
}

fn ifaces(wide: bool) -> BTreeSet<String> {
    let names: &[&str] = if wide { &["eth0", "eth1"] } else { &["eth0"] };
    names.iter().map(|s| s.to_string()).collect()
}

fn inc(node: usize, restart: bool) -> u64 {
    10 * node as u64 + u64::from(restart)
}

fn arb_op() -> impl Strategy<Value = Op> {
    let beat = (
        0..NODES.len(),
        prop::bool::weighted(0.1),
        0u64..3,
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.7),
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::collection::vec(
            (
                0..NODES.len() + 1,
                // Ages on a coarse grid too, so that two peers relay the same instant.
                prop_oneof![3 => prop::sample::select(vec![0u16, 50, 100]), 1 => 0u16..500],
                prop::bool::weighted(0.8),
                any::<bool>(),
            ),
            0..6,
        ),
    )
        .prop_map(
            |(from, restart, seq_step, leaving, serving, settled, established, wide, heard)| {
                Op::Beat(Beat {
                    from,
                    restart,
                    seq_step,
                    leaving,
                    serving,
                    settled,
                    established,
                    wide,
                    heard,
                })
            },
        );
    let members = prop::collection::vec(
        (
            0..NODES.len(),
            prop::bool::weighted(0.85),
            prop::option::weighted(0.9, any::<bool>()),
        ),
        0..6,
    )
    .prop_map(Op::Members);
    prop_oneof![
        6 => beat,
        2 => (0u64..250).prop_map(Op::Advance),
        1 => (0u64..5).prop_map(|k| Op::Advance(50 * k)),
        1 => Just(Op::Tick),
        1 => prop::bool::weighted(0.9).prop_map(Op::Ready),
        1 => any::<bool>().prop_map(Op::Interfaces),
        1 => members,
    ]
}

/// Both detectors, the time, each sender's last sequence, and the view last published.
struct Pair {
    new: Detector,
    old: Reference,
    now: Instant,
    seq: [u64; NODES.len()],
    published: AliveView,
}

impl Pair {
    fn new() -> Pair {
        let config = Config {
            grace: Duration::from_millis(30),
            hold_down: Duration::from_millis(400),
            ..Config::default()
        };
        let now = Instant::now();
        let mut p = Pair {
            new: Detector::new(NODES[0], ifaces(false), config),
            old: Reference::new(NODES[0], ifaces(false), config),
            now,
            seq: [0; NODES.len()],
            published: AliveView::new(),
        };
        let all: BTreeMap<String, Member> = NODES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let m = Member {
                    incarnation: Some(inc(i, false)),
                    fresh: true,
                };
                (n.to_string(), m)
            })
            .collect();
        p.new.set_members(all.clone(), now);
        p.old.set_members(all, now);
        p.new.set_ready(true);
        p.old.set_ready(true);
        p
    }

    fn compare(&mut self, what: &str) -> Result<(), TestCaseError> {
        let now = self.now;
        let view = self.new.alive(now);
        prop_assert_eq!(&view, &self.old.alive(now), "alive after {}", what);
        prop_assert_eq!(
            self.new.not_serving(now),
            self.old.not_serving(now),
            "not_serving after {}",
            what
        );
        prop_assert_eq!(
            self.new.serving(),
            self.old.serving(),
            "serving after {}",
            what
        );
        prop_assert_eq!(self.new.settled(now), self.old.settled(now));
        prop_assert_eq!(self.new.established(now), self.old.established(now));
        prop_assert_eq!(
            self.new.outgoing(now),
            self.old.outgoing(now),
            "outgoing after {}",
            what
        );
        let r1: Vec<&String> = self.new.retained().collect();
        let r2: Vec<&String> = self.old.retained().collect();
        prop_assert_eq!(r1, r2, "retained after {}", what);
        if self.new.take_view_changed() {
            self.published = view;
        } else {
            prop_assert_eq!(
                &view,
                &self.published,
                "the view changed after {} without take_view_changed saying so",
                what
            );
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), TestCaseError> {
        let a = self.new.tick(self.now);
        let b = self.old.tick(self.now);
        prop_assert_eq!(a, b, "tick");
        self.compare("tick")
    }

    /// Moves time forward by `ms`, ticking at every deadline on the way (as the thread
    /// does), and checks that the reference does not change before each deadline.
    fn advance(&mut self, ms: u64) -> Result<(), TestCaseError> {
        let target = self.now + Duration::from_millis(ms);
        loop {
            let next = self.new.next_deadline(self.now);
            if let Some(d) = next {
                prop_assert!(d > self.now, "deadline {:?} not after now", d - self.now);
            }
            let stop = next.filter(|d| *d <= target).unwrap_or(target);
            // Just before the stop, the reference still says what it says now.
            let probe = stop - Duration::from_nanos(1);
            if probe > self.now {
                let mut old = self.old.clone();
                prop_assert_eq!(
                    old.alive(probe),
                    self.old.alive(self.now),
                    "the view changes before the deadline"
                );
                prop_assert_eq!(
                    old.not_serving(probe),
                    self.old.not_serving(self.now),
                    "not_serving changes before the deadline"
                );
                prop_assert_eq!(
                    old.outgoing(probe).serving,
                    self.old.outgoing(self.now).serving
                );
                let t = old.tick(probe);
                prop_assert!(
                    t.silent.is_empty() && t.serving.is_none(),
                    "a tick before the deadline changes something: {:?}",
                    t
                );
            }
            self.now = stop;
            match next {
                Some(d) if d <= target => self.tick()?,
                _ => break,
            }
        }
        self.compare("advance")
    }

    fn beat(&mut self, b: &Beat) -> Result<(), TestCaseError> {
        let node = NODES[b.from];
        self.seq[b.from] += b.seq_step;
        let mut heard: Vec<Heard> = b
            .heard
            .iter()
            .map(|(k, age, serving, settled)| Heard {
                id: NODES.get(*k).map_or(STRAY, |n| node_id(n)),
                age_ms: *age,
                serving: *serving,
                settled: *settled,
            })
            .collect();
        heard.sort_by_key(|h| h.id);
        heard.dedup_by_key(|h| h.id);
        let hb = Heartbeat::new(
            node,
            inc(b.from, b.restart),
            self.seq[b.from],
            ifaces(b.wide),
        )
        .unwrap()
        .with_leaving(b.leaving)
        .with_state(b.serving, b.settled)
        .with_established(b.established)
        .with_heard(heard)
        .unwrap();
        let x = self.new.observe(&hb, self.now);
        let y = self.old.observe(&hb, self.now);
        prop_assert_eq!(x, y, "observe {:?}", hb);
        self.compare("observe")?;
        // The thread ticks after every batch of datagrams.
        self.tick()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Advance(ms) => self.advance(*ms),
            Op::Tick => self.tick(),
            Op::Ready(r) => {
                self.new.set_ready(*r);
                self.old.set_ready(*r);
                self.tick()
            }
            Op::Interfaces(w) => {
                self.new.set_self_interfaces(ifaces(*w));
                self.old.set_self_interfaces(ifaces(*w));
                self.compare("interfaces")?;
                self.tick()
            }
            Op::Members(list) => {
                let m: BTreeMap<String, Member> = list
                    .iter()
                    .map(|(i, fresh, published)| {
                        let m = Member {
                            incarnation: published.map(|restart| inc(*i, restart)),
                            fresh: *fresh,
                        };
                        (NODES[*i].to_string(), m)
                    })
                    .collect();
                self.new.set_members(m.clone(), self.now);
                self.old.set_members(m, self.now);
                self.compare("set_members")?;
                self.tick()
            }
            Op::Beat(b) => self.beat(b),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_the_incremental_detector_agrees_with_the_reference(
        ops in prop::collection::vec(arb_op(), 1..120),
    ) {
        let mut pair = Pair::new();
        for op in &ops {
            pair.apply(op)?;
        }
        pair.advance(2_000)?;
    }
}

/// A steady cluster: every peer beats every 100 ms, hearing everyone. Everything agrees, and
/// the detector rescans a handful of times per second, not once per heartbeat.
#[test]
fn a_steady_cluster_agrees_and_rescans_rarely() {
    let mut pair = Pair::new();
    let mut scans = 0;
    for round in 0..40u64 {
        for from in 1..NODES.len() {
            pair.beat(&Beat {
                from,
                restart: false,
                seq_step: 1,
                leaving: false,
                serving: round > 2,
                settled: true,
                established: true,
                wide: false,
                heard: (0..NODES.len())
                    .filter(|k| *k != from)
                    .map(|k| (k, 20, true, true))
                    .collect(),
            })
            .unwrap();
            let before = pair.new.horizon;
            pair.advance(100 / (NODES.len() as u64 - 1)).unwrap();
            if pair.new.horizon != before {
                scans += 1;
            }
        }
    }
    assert!(pair.new.serving());
    println!("{scans} horizon moves over 160 heartbeats");
    assert!(scans < 40, "{scans} horizon moves over 160 heartbeats");
}
