//! Counting answerers per IP from a client, the way issue 9's rule is checked: sweeps of
//! one ARP request / NS per IP (`observe::sweep`), on a thread of their own, while a test
//! injects a fault; and waiting for a lab to settle before it does.
//!
//! ```text
//!   client ── sweep every PERIOD: per IP, the nodes whose MAC answered within WINDOW
//!   wait_settled: one answerer per IP, every node answering some, unchanged for SETTLED
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lab::Lab;
use crate::objects::{Family, Svc};
use crate::observe;
use crate::stats::ms;

/// How long one sweep listens for replies after its last request.
pub const WINDOW: Duration = Duration::from_millis(200);
/// From one sweep's start to the next.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How long an outcome must hold, sweep after sweep, to count as converged.
pub const STABLE: Duration = Duration::from_secs(3);
/// How long the answerers must stay unchanged for the lab to count as settled: longer
/// than the speakers' failback hold-down (`--hold-down-ms`, 3 s).
pub const SETTLED: Duration = Duration::from_secs(4);
/// Longest a sweeper runs (it stops by itself).
pub const SWEEPER_LIMIT: Duration = Duration::from_secs(60);

/// The lab's node names.
pub fn node_names(lab: &Lab) -> Vec<String> {
    lab.nodes().iter().map(|h| h.name.clone()).collect()
}

/// Creates `v4` IPv4 Services `v4-<i>` and `v6` IPv6 Services `v6-<i>` on TCP `port`
/// (endpoints on every node) and waits for their IPs: one per Service, in that order.
pub fn single_ip_services(lab: &Lab, v4: usize, v6: usize, port: u16) -> Vec<IpAddr> {
    let svcs: Vec<Svc> = (0..v4)
        .map(|i| Svc::new(&format!("v4-{i}"), port))
        .chain((0..v6).map(|i| Svc::new(&format!("v6-{i}"), port).family(Family::V6)))
        .collect();
    for svc in &svcs {
        lab.create_service(svc).expect("create service");
    }
    svcs.iter()
        .map(|s| {
            lab.wait_ingress(s, 1, Duration::from_secs(20))
                .expect("ingress IP")[0]
        })
        .collect()
}

/// Sweeps until the lab has settled (≤ `timeout`): every IP has exactly one answerer,
/// every node answers some, and nothing changed for [`SETTLED`]. (Freshly started speakers
/// may first hand every IP to the first one serving, then take theirs back after the
/// hold-down.) Returns the answerers.
pub fn wait_settled(lab: &Lab, client: &str, ips: &[IpAddr], timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let nodes = node_names(lab);
    let mut since: Option<(Instant, Vec<Vec<String>>)> = None;
    loop {
        let now = Instant::now();
        let view = lab.answerers(client, ips, WINDOW).expect("sweep");
        let good = one_each(&view) && nodes.iter().all(|n| view.iter().any(|a| a[0] == *n));
        match &since {
            Some((t, v)) if good && *v == view => {
                if now - *t >= SETTLED {
                    println!("lab settled {} after the scene was built", ms(now - start));
                    return view.into_iter().map(|mut a| a.remove(0)).collect();
                }
            }
            _ => since = good.then(|| (now, view.clone())),
        }
        assert!(
            now - start < timeout,
            "before any fault, the lab did not settle within {timeout:?} (exactly one answerer per IP, \
             every node answering some, unchanged for {SETTLED:?}); last sweep: {}",
            describe(ips, &view)
        );
        std::thread::sleep(PERIOD);
    }
}

// ------------------------------------------------------------------ sweeps

/// One sweep: when it started and, per IP, the nodes that answered (sorted).
#[derive(Clone, Debug)]
pub struct Sweep {
    /// When it started.
    pub at: Instant,
    /// Per IP, the nodes that answered (sorted).
    pub view: Vec<Vec<String>>,
}

/// Sweeps every [`PERIOD`] on a thread of its own until stopped (at most [`SWEEPER_LIMIT`]).
pub struct Sweeper {
    sweeps: Arc<Mutex<Vec<Sweep>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Sweeper {
    /// Starts sweeping `ips` from `client`.
    pub fn start(lab: &Lab, client: &str, ips: &[IpAddr]) -> Sweeper {
        let host = lab.host(client);
        let (ns, who) = (host.ns.clone(), host.prober());
        let macs: Vec<(pnet_base::MacAddr, String)> = lab
            .nodes()
            .iter()
            .map(|h| (h.mac, h.name.clone()))
            .collect();
        let ips = ips.to_vec();
        let sweeps = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sweeps2, stop2) = (sweeps.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let end = Instant::now() + SWEEPER_LIMIT;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                let at = Instant::now();
                let got = observe::sweep(&ns, "eth0", who, &ips, WINDOW)?;
                let view = got
                    .into_iter()
                    .map(|m| {
                        let mut names: Vec<String> = m
                            .into_iter()
                            .map(|mac| {
                                macs.iter()
                                    .find(|(x, _)| *x == mac)
                                    .map(|(_, n)| n.clone())
                                    .unwrap_or_else(|| mac.to_string())
                            })
                            .collect();
                        names.sort();
                        names
                    })
                    .collect();
                sweeps2.lock().expect("sweeps").push(Sweep { at, view });
                std::thread::sleep(PERIOD.saturating_sub(at.elapsed()));
            }
            Ok(())
        });
        Sweeper {
            sweeps,
            stop,
            thread: Some(thread),
        }
    }

    /// The sweeps started at or after `t`.
    pub fn since(&self, t: Instant) -> Vec<Sweep> {
        self.sweeps
            .lock()
            .expect("sweeps")
            .iter()
            .filter(|s| s.at >= t)
            .cloned()
            .collect()
    }

    /// Waits until at least `min` has passed since `t0` and every sweep of the last
    /// [`STABLE`] satisfies `good` (the sweeps cover [`STABLE`] after `t0`), or until `max`
    /// has passed since `t0`.
    pub fn wait_stable(
        &self,
        t0: Instant,
        min: Duration,
        max: Duration,
        good: &dyn Fn(&[Vec<String>]) -> bool,
    ) {
        loop {
            let now = Instant::now();
            if now >= t0 + max {
                return;
            }
            if now >= t0 + min.max(STABLE) && self.stable_since(t0, good) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the sweeps since `t0` end in [`STABLE`] of sweeps that all satisfy `good`
    /// (at least 5 of them), measured back from the last finished sweep's start: the same
    /// window a test's assertion checks once it stops the sweeper. (Measured from "now"
    /// instead, a sweep still in flight shifts the window and lets an earlier bad sweep
    /// escape the wait but not the assertion.)
    fn stable_since(&self, t0: Instant, good: &dyn Fn(&[Vec<String>]) -> bool) -> bool {
        let sweeps = self.since(t0);
        let (Some(first), Some(last)) = (sweeps.first(), sweeps.last()) else {
            return false;
        };
        let recent: Vec<&Sweep> = sweeps.iter().filter(|s| s.at + STABLE >= last.at).collect();
        first.at + STABLE <= last.at && recent.len() >= 5 && recent.iter().all(|s| good(&s.view))
    }

    /// Stops sweeping; returns every sweep.
    pub fn stop(mut self) -> Vec<Sweep> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("sweeper thread")
                .expect("sweeps from the client");
        }
        self.sweeps.lock().expect("sweeps").clone()
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every IP has exactly one answerer.
pub fn one_each(view: &[Vec<String>]) -> bool {
    view.iter().all(|a| a.len() == 1)
}

/// "203.0.113.10: node1 | 203.0.113.11: node2, node3 | 2001:db8:200::10: none | …"
pub fn describe(ips: &[IpAddr], view: &[Vec<String>]) -> String {
    ips.iter()
        .zip(view)
        .map(|(ip, a)| {
            let who = if a.is_empty() {
                "none".to_string()
            } else {
                a.join(", ")
            };
            format!("{ip}: {who}")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}
