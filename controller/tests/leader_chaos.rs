//! Two leaders (issue 8; docs/design/allocation.md#restarts-and-the-single-writer, #never-move-never-double: never moves or doubles an
//! assigned IP because of ... a leader change; only one leader writes, fenced").
//!
//! Two real `ferrolb-controller` processes share one Lease on a REAL kube-apiserver
//! (`KUBECONFIG`, run by `make test-k8s`) while 500 LoadBalancer Services are created (and
//! some deleted, so freed addresses are reused) and the leader is, in turn, SIGTERMed,
//! SIGKILLed and SIGSTOPped past the lease duration (then SIGCONTed). Terminated and killed
//! processes are restarted under a new identity, as a Deployment would. Every observation
//! of the Services (a watch, plus a list every 100 ms) is checked: no address is ever on
//! two Services at once, and no Service's addresses ever change once set.
//!
//! ```text
//!   test ──create/delete Services──▶ kube-apiserver ◀──lease, watch, status── controller a, b
//!     │  ▲ watch + list (every observation checked)                             ▲
//!     └──┴── SIGTERM / SIGKILL / SIGSTOP…SIGCONT the Lease holder ──────────────┘
//! ```
//!
//! Each fault is fired right after a burst of creations, once the leader has started writing
//! the burst, so a status batch is in flight when it lands. Service names are scrambled so
//! that creation order and name order differ: a replica that allocates from a stale view then
//! picks different addresses than the one that wrote, instead of the same ones by luck.
//!
//! `FERROLB_CHAOS_FAULTS=term,term,…` replaces the sequence of faults.
//! `FERROLB_CONTROLLER_BIN` runs another build of the controller (e.g. an older commit) in
//! place of this crate's binary; the controllers' logs are kept (their directory is printed)
//! when the test fails or `FERROLB_KEEP_LOGS` is set.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use support::*;

/// Services created in one run.
const SERVICES: usize = 500;
/// Every this many created Services, one (already served) is deleted again.
const DELETE_EVERY: usize = 10;
/// Election timing given to both controllers, in seconds: duration, renew deadline, retry.
const LEASE: (u64, u64, u64) = (3, 2, 1);
/// The faults, in turn, on whichever process holds the Lease.
const FAULTS: [Fault; 9] = [
    Fault::Term,
    Fault::Kill,
    Fault::Stop,
    Fault::Term,
    Fault::Kill,
    Fault::Stop,
    Fault::Term,
    Fault::Kill,
    Fault::Stop,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Term,
    Kill,
    Stop,
}

impl Fault {
    /// Services created right before the fault: more before a SIGTERM, so the leader's
    /// write batch is still running when the standby could take over.
    fn burst(self) -> usize {
        match self {
            Fault::Term => 70,
            Fault::Kill | Fault::Stop => 30,
        }
    }

    fn signal(self) -> &'static str {
        match self {
            Fault::Term => "TERM",
            Fault::Kill => "KILL",
            Fault::Stop => "STOP",
        }
    }
}

/// What the test has seen of the Services' addresses, and every violation.
#[derive(Default)]
struct Seen {
    /// The first non-empty addresses seen on each Service.
    first: HashMap<String, Vec<IpAddr>>,
    /// The newest resourceVersion seen of each Service.
    latest: HashMap<String, u64>,
    /// The watch's current view (the state at the latest event's resourceVersion).
    current: HashMap<String, Vec<IpAddr>>,
    /// Services whose addresses changed once set: name → (first, later).
    moved: BTreeMap<String, (Vec<IpAddr>, Vec<IpAddr>)>,
    /// Addresses seen on two Services in one consistent state: address → Services.
    duplicates: BTreeMap<IpAddr, BTreeSet<String>>,
    /// When each violation was first seen (true: a duplicate, false: a move), and what.
    found: Vec<(Instant, bool, String)>,
    watch_events: u64,
    lists: u64,
}

impl Seen {
    /// One observation of one Service. The watch and the lists are not ordered against each
    /// other (a list may answer with a state older than an event already seen), so each
    /// Service's observations are taken in resourceVersion order and older ones skipped.
    /// (resourceVersions are opaque to clients; on an etcd-backed server they are the etcd
    /// revision, an increasing integer, which is what this test relies on.)
    fn service(&mut self, svc: &Service) {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let rv: u64 = svc
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("integer resourceVersions (an etcd-backed kube-apiserver)");
        if self.latest.get(&name).is_some_and(|l| *l >= rv) {
            return;
        }
        self.latest.insert(name.clone(), rv);
        let mut ips = ips_of(svc);
        ips.sort();
        if ips.is_empty() && !self.first.contains_key(&name) {
            return;
        }
        match self.first.get(&name) {
            None => {
                self.first.insert(name, ips);
            }
            Some(first) if *first != ips => {
                if !self.moved.contains_key(&name) {
                    let what = format!("{name}: {first:?} -> {ips:?} (resourceVersion {rv})");
                    self.found.push((Instant::now(), false, what));
                    self.moved.insert(name, (first.clone(), ips));
                }
            }
            Some(_) => {}
        }
    }

    /// One consistent state of all Services (a list, or the watch's view at one event).
    fn state<'a>(&mut self, services: impl IntoIterator<Item = (&'a String, &'a Vec<IpAddr>)>) {
        let mut owners: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
        for (name, ips) in services {
            for ip in ips {
                owners.entry(*ip).or_default().insert(name.clone());
            }
        }
        for (ip, names) in owners {
            if names.len() > 1 {
                if !self.duplicates.contains_key(&ip) {
                    self.found
                        .push((Instant::now(), true, format!("{ip}: {names:?}")));
                }
                self.duplicates.entry(ip).or_default().extend(names);
            }
        }
    }

    fn watch_apply(&mut self, svc: &Service) {
        let Some(name) = svc.metadata.name.clone() else {
            return;
        };
        self.service(svc);
        self.current.insert(name, ips_of(svc));
        let current = std::mem::take(&mut self.current);
        self.state(&current);
        self.current = current;
        self.watch_events += 1;
    }

    fn list(&mut self, services: &[Service]) {
        let mut state = HashMap::new();
        for s in services {
            let name = s.metadata.name.clone().unwrap_or_default();
            self.service(s);
            state.insert(name, ips_of(s));
        }
        self.state(&state);
        self.lists += 1;
    }
}

/// The two controller processes; every child is killed when this drops.
struct Controllers {
    bin: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    prefix: String,
    /// (identity, child, stopped) per slot.
    slots: Vec<(String, Child, bool)>,
    started: usize,
}

impl Controllers {
    fn start(&mut self, slot: usize) {
        self.started += 1;
        let identity = format!("{}-c{}", self.prefix, self.started);
        let log = std::fs::File::create(self.dir.join(format!("{identity}.log")))
            .expect("controller log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .args(["--identity", &identity])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let entry = (identity, child, false);
        if slot < self.slots.len() {
            self.slots[slot] = entry;
        } else {
            self.slots.push(entry);
        }
    }

    fn slot_of(&self, identity: &str) -> Option<usize> {
        self.slots.iter().position(|(id, _, _)| id == identity)
    }

    fn signal(&mut self, slot: usize, sig: &str) {
        let pid = self.slots[slot].1.id().to_string();
        let ok = Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {sig} {pid} failed");
        match sig {
            "STOP" => self.slots[slot].2 = true,
            "CONT" => self.slots[slot].2 = false,
            _ => {}
        }
    }

    /// Waits (bounded) for the process in `slot` to exit; true if it did by itself.
    async fn wait_exit(&mut self, slot: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.slots[slot].1.try_wait().expect("try_wait").is_some() {
                return true;
            }
            if Instant::now() > deadline {
                let _ = self.slots[slot].1.kill();
                let _ = self.slots[slot].1.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every process gracefully (bounded), then for good.
    async fn shutdown(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].1.try_wait().ok().flatten().is_none() {
                self.signal(slot, "CONT");
                self.signal(slot, "TERM");
            }
        }
        for slot in 0..self.slots.len() {
            self.wait_exit(slot, Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.slots {
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-s", "CONT", &child.id().to_string()])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// [`FAULTS`], or the comma list of `term`, `kill`, `stop` in `FERROLB_CHAOS_FAULTS` (to
/// see what one kind of fault does on its own).
fn planned_faults() -> Vec<Fault> {
    let Ok(list) = std::env::var("FERROLB_CHAOS_FAULTS") else {
        return FAULTS.to_vec();
    };
    list.split(',')
        .map(|f| match f.trim() {
            "term" => Fault::Term,
            "kill" => Fault::Kill,
            "stop" => Fault::Stop,
            other => panic!("FERROLB_CHAOS_FAULTS: unknown fault {other:?} (term, kill, stop)"),
        })
        .collect()
}

/// Name of the i-th Service: scrambled, so name order is not creation order.
fn service_name(i: usize) -> String {
    let h = (i as u32).wrapping_mul(2_654_435_761).rotate_left(13) ^ 0x5bd1_e995;
    format!("s{h:08x}-{i}")
}

/// The i-th Service: mostly IPv6 single-stack, every fourth dual-stack IPv4-first, every
/// fourth (offset one) PreferDualStack IPv6-first.
fn service(env: &Env, ns: &str, i: usize) -> Service {
    let mut spec = env.lb_spec(80);
    spec.allocate_load_balancer_node_ports = Some(false);
    let (families, policy) = match i % 4 {
        0 => (vec!["IPv4", "IPv6"], "RequireDualStack"),
        1 => (vec!["IPv6", "IPv4"], "PreferDualStack"),
        _ => (vec!["IPv6"], "SingleStack"),
    };
    spec.ip_families = Some(families.into_iter().map(String::from).collect());
    spec.ip_family_policy = Some(policy.into());
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(i)),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn expected_ips(i: usize) -> usize {
    if i % 4 < 2 { 2 } else { 1 }
}

/// Creates Services `range` (10 at a time).
async fn create(env: &Env, ns: &str, range: std::ops::Range<usize>) {
    let api = env.services(ns);
    stream::iter(range)
        .map(|i| {
            let (api, svc) = (api.clone(), service(env, ns, i));
            async move {
                api.create(&PostParams::default(), &svc)
                    .await
                    .unwrap_or_else(|e| panic!("create Service {i}: {e}"));
            }
        })
        .buffer_unordered(10)
        .collect::<Vec<()>>()
        .await;
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_chaos_on_real_server() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "leader_chaos_on_real_server needs a real kube-apiserver: set KUBECONFIG to a \
         disposable dual-stack cluster with the FerroLB CRDs installed (make test-k8s does)"
    );
    let began = Instant::now();
    let env = Env::new().await;
    assert!(env.is_real());
    let ns = env.namespace("chaos", &[]).await;
    let pool = env
        .pool("chaos", &["203.0.113.0/24", "2001:db8:c4a0::/118"], |_| {})
        .await;
    let lease_name = env.name("lease");
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "default");

    let dir = std::env::temp_dir().join(format!("ferrolb-chaos-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = std::env::var_os("FERROLB_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_ferrolb-controller").into());
    let (duration, deadline, retry) = LEASE;
    let mut procs = Controllers {
        bin: bin.clone(),
        args: [
            "--lb-class",
            &env.lb_class,
            "--lease-namespace",
            "default",
            "--lease-name",
            &lease_name,
            "--lease-duration",
            &duration.to_string(),
            "--renew-deadline",
            &deadline.to_string(),
            "--retry-period",
            &retry.to_string(),
            "--liveness-secret",
            "",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec(),
        dir: dir.clone(),
        prefix: env.prefix.clone(),
        slots: Vec::new(),
        started: 0,
    };
    procs.start(0);
    procs.start(1);
    env.pool_condition(&pool, "Ready", "True").await;

    // Observers: a watch and a list every 100 ms, both checked at every observation.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api = env.services(&ns);
    let watch = tokio::spawn({
        let (api, seen) = (api.clone(), seen.clone());
        async move {
            let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Ok(Some(ev)) = events.try_next().await {
                let mut seen = seen.lock().unwrap();
                match ev {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => seen.watch_apply(&s),
                    watcher::Event::Delete(s) => {
                        seen.current
                            .remove(s.metadata.name.as_deref().unwrap_or_default());
                    }
                    watcher::Event::Init => seen.current.clear(),
                    watcher::Event::InitDone => {}
                }
            }
        }
    });
    let holders = Arc::new(Mutex::new(Vec::<String>::new()));
    let poll = tokio::spawn({
        let (api, seen, leases, lease_name, holders) = (
            api.clone(),
            seen.clone(),
            leases.clone(),
            lease_name.clone(),
            holders.clone(),
        );
        async move {
            loop {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    seen.lock().unwrap().list(&list.items);
                }
                if let Some(h) = holder(&leases, &lease_name).await {
                    let mut hs = holders.lock().unwrap();
                    if hs.last() != Some(&h) {
                        hs.push(h);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Background load: the Services not created in bursts, in small groups, with some
    // served ones deleted so their addresses are reused.
    let faults_planned = planned_faults();
    let in_bursts: usize = faults_planned.iter().map(|f| f.burst()).sum();
    assert!(
        in_bursts <= SERVICES,
        "more Services in bursts than {SERVICES}"
    );
    let background = SERVICES - in_bursts;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let take = |n: usize| {
        let start = next.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        start..(start + n).min(SERVICES)
    };
    let deleted = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut fired: Vec<(Instant, Fault)> = Vec::new();
    let load = async {
        let groups = background.div_ceil(8);
        for _ in 0..groups {
            let r = take(8.min(background));
            if r.is_empty() {
                break;
            }
            create(&env, &ns, r.clone()).await;
            for i in r.filter(|i| i % DELETE_EVERY == DELETE_EVERY - 1) {
                // Delete a Service once it has been served (bounded wait).
                let (api, name) = (env.services(&ns), service_name(i));
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) {
                    if let Ok(s) = api.get(&name).await
                        && !ips_of(&s).is_empty()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                api.delete(&name, &DeleteParams::default())
                    .await
                    .expect("delete Service");
                deleted.lock().unwrap().insert(i);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let chaos = async {
        for &fault in &faults_planned {
            // The Lease holder, alive and not frozen.
            let slot = env
                .eventually("a live controller holds the Lease", 30, || async {
                    let h = holder(&leases, &lease_name).await?;
                    let slot = procs.slot_of(&h)?;
                    (!procs.slots[slot].2).then_some(slot)
                })
                .await;
            // A burst, then the fault once the leader has started writing it.
            let r = take(fault.burst());
            let burst: Vec<String> = r.clone().map(service_name).collect();
            create(&env, &ns, r).await;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                let started = {
                    let s = seen.lock().unwrap();
                    burst.iter().any(|n| s.first.contains_key(n))
                };
                if started {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            procs.signal(slot, fault.signal());
            fired.push((Instant::now(), fault));
            *faults.entry(fault).or_default() += 1;
            match fault {
                Fault::Term => {
                    let clean = procs.wait_exit(slot, Duration::from_secs(15)).await;
                    assert!(clean, "the SIGTERMed controller did not exit within 15 s");
                    procs.start(slot);
                }
                Fault::Kill => {
                    procs.wait_exit(slot, Duration::from_secs(5)).await;
                    procs.start(slot);
                }
                Fault::Stop => {
                    // Frozen past the lease duration: the other takes over meanwhile.
                    tokio::time::sleep(Duration::from_secs(duration) + Duration::from_millis(1500))
                        .await;
                    procs.signal(slot, "CONT");
                }
            }
        }
    };
    tokio::join!(load, chaos);
    // Whatever the bursts and groups left over.
    let rest = take(SERVICES);
    create(&env, &ns, rest).await;

    // Converge: every remaining Service served with all its families.
    let deleted = deleted.lock().unwrap().clone();
    let want: BTreeMap<String, usize> = (0..SERVICES)
        .filter(|i| !deleted.contains(i))
        .map(|i| (service_name(i), expected_ips(i)))
        .collect();
    let converged = env
        .eventually("every Service served", 90, || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let served = list
                .items
                .iter()
                .filter(|s| {
                    want.get(s.metadata.name.as_deref().unwrap_or_default())
                        .is_some_and(|n| ips_of(s).len() == *n)
                })
                .count();
            (served == want.len()).then_some(served)
        })
        .await;
    // A last look after the dust settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    poll.abort();
    watch.abort();
    procs.shutdown().await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let leaders = holders.lock().unwrap().len();
    eprintln!(
        "leader chaos: {SERVICES} Services created, {} deleted, {converged} served at the end; \
         faults on the leader: SIGTERM {}, SIGKILL {}, SIGSTOP {} (frozen {:.1} s each); \
         {leaders} leader terms seen; {} watch events and {} lists checked; \
         duplicates found = {}, moved = {}; took {:.1} s ({})",
        deleted.len(),
        faults.get(&Fault::Term).unwrap_or(&0),
        faults.get(&Fault::Kill).unwrap_or(&0),
        faults.get(&Fault::Stop).unwrap_or(&0),
        duration as f64 + 1.5,
        seen.watch_events,
        seen.lists,
        seen.duplicates.len(),
        seen.moved.len(),
        began.elapsed().as_secs_f64(),
        bin.display(),
    );
    // Violations by the fault they followed.
    let mut by_fault: Vec<String> = Vec::new();
    for (n, (at, fault)) in fired.iter().enumerate() {
        let until = fired.get(n + 1).map(|f| f.0);
        let (dups, moves) = seen
            .found
            .iter()
            .filter(|(t, _, _)| t >= at && until.is_none_or(|u| *t < u))
            .fold(
                (0, 0),
                |(d, m), (_, dup, _)| if *dup { (d + 1, m) } else { (d, m + 1) },
            );
        by_fault.push(format!(
            "SIG{} #{}: {dups} duplicates, {moves} moved",
            fault.signal(),
            n + 1
        ));
    }
    let before: Vec<&str> = seen
        .found
        .iter()
        .filter(|(t, _, _)| fired.first().is_none_or(|f| *t < f.0))
        .map(|(_, _, what)| what.as_str())
        .collect();
    eprintln!(
        "leader chaos: violations first seen before any fault: {} {before:?}; after {}",
        before.len(),
        by_fault.join("; ")
    );
    let show = |v: Vec<String>| v.into_iter().take(10).collect::<Vec<_>>().join("\n  ");
    let problems = [
        (!seen.duplicates.is_empty()).then(|| {
            format!(
                "addresses on two Services at once:\n  {}",
                show(
                    seen.duplicates
                        .iter()
                        .map(|(ip, names)| format!("{ip}: {names:?}"))
                        .collect()
                )
            )
        }),
        (!seen.moved.is_empty()).then(|| {
            format!(
                "Services whose addresses changed once set:\n  {}",
                show(
                    seen.moved
                        .iter()
                        .map(|(n, (a, b))| format!("{n}: {a:?} -> {b:?}"))
                        .collect()
                )
            )
        }),
    ];
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
    env.cleanup().await;
    assert!(
        problems.is_empty(),
        "{}\ncontroller logs: {}",
        problems.join("\n"),
        dir.display()
    );
    if std::env::var_os("FERROLB_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
