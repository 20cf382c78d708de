//! Leader election on a `coordination.k8s.io/v1` Lease, and the fence that lets a replica
//! write only while its lease is valid by its own clock, so that of several controller
//! replicas exactly one writes (docs/design/allocation.md#restarts-and-the-single-writer).
//!
//! ```text
//!   campaign, every retry period:  GET lease ──▶ Elector ──▶ Acquire | Renew | Follow
//!       │ write ok, sent at t ──▶ Fence valid until t + renew_deadline
//!       │ deadline timer ────────▶ steps down at that instant, whether or not a call returned
//!       ▼
//!   Writer: Fence::begin per update; Permit::check(now) right before every API call
//!   stop ──▶ Fence::close (no update starts) ──▶ updates in flight end ──▶ release the Lease
//! ```
//!
//! Why the fence is safe: like client-go, a follower judges expiry by its *own* clock from
//! the moment it saw the record change, never by the holder's timestamps, so clock skew
//! cannot cause two leaders. The holder's renewal was sent at `t`, before the server stored
//! it and before any follower saw it, so no follower takes over before `t + lease_duration`.
//! The holder stops starting API calls at `t + renew_deadline`; the difference is what a call
//! has to reach the server. Monotonic clocks keep running while a process is frozen
//! (SIGSTOP), so a resumed leader finds its fence expired and writes nothing until a renewal
//! — which re-reads the Lease and fails with a conflict if someone else took it — succeeds.
//! Whatever timers fire late after a freeze, every write re-checks the clock itself.
//!
//! A graceful stop first stops new writes and waits for those in flight, then clears the
//! holder, so a standby takes over at its next poll and sees every write of the old term.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use ferrolb_ops::retry::{Class, classify};

/// The parts of a lease record that tell whether its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Who holds it (empty: released).
    pub holder: String,
    /// When the holder last renewed, as the holder wrote it (compared for change only).
    pub renew_time: Option<Timestamp>,
    /// How long the holder's claim lasts.
    pub duration: Duration,
}

impl Record {
    fn of(lease: &Lease) -> Option<Self> {
        let spec = lease.spec.as_ref()?;
        Some(Self {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        })
    }
}

/// What to do after observing the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds a live lease: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// The pure part of the election: remembers when the record last changed, locally.
#[derive(Debug)]
pub struct Elector {
    identity: String,
    observed: Option<(Record, Instant)>,
}

impl Elector {
    /// An elector campaigning as `identity`.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            observed: None,
        }
    }

    /// Records what the lease says now; the local clock restarts when the record changes.
    /// `now` must be taken after the answer arrived, so the claim is never judged older
    /// than it is.
    pub fn observe(&mut self, record: Option<Record>, now: Instant) {
        match (record, &self.observed) {
            (Some(r), Some((old, _))) if *old == r => {}
            (Some(r), _) => self.observed = Some((r, now)),
            (None, _) => self.observed = None,
        }
    }

    /// Decides the next step at `now`.
    pub fn step(&self, now: Instant) -> Step {
        match &self.observed {
            None => Step::Acquire,
            Some((r, _)) if r.holder == self.identity => Step::Renew,
            Some((r, _)) if r.holder.is_empty() => Step::Acquire,
            Some((r, seen)) if now.duration_since(*seen) >= r.duration => Step::Acquire,
            Some((r, _)) => Step::Follow {
                holder: r.holder.clone(),
            },
        }
    }
}

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long a claim lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops writing (must be < lease_duration;
    /// the difference is the time a write has to reach the server).
    pub renew_deadline: Duration,
    /// How often to poll and renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(6),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Longest wait for one Lease call: the retry period, at least 1 s, at most the renew
    /// deadline (a hung call must not outlive the leadership it tries to keep).
    pub fn call_timeout(&self) -> Duration {
        self.retry_period
            .max(Duration::from_secs(1))
            .min(self.renew_deadline)
    }
}

/// Why a write may not happen now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// This replica does not hold the lease (never won it, lost it, or stepped down).
    #[error("not the leader")]
    NotLeader,
    /// No renewal succeeded within the renew deadline, by local time: a hung or frozen
    /// leader, whose lease may already be someone else's.
    #[error("the leader lease was not renewed within the renew deadline")]
    Expired,
    /// Shutting down: no new write starts, so the lease can be released.
    #[error("shutting down")]
    Closing,
    /// The update was decided in an earlier term: the lease was lost (and someone else may
    /// have written) and won again since.
    #[error("decided in an earlier leader term")]
    Superseded,
}

/// The pure state of the fence: until when this replica may write, in which term, and
/// whether a new update may start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tenure {
    valid_until: Option<Instant>,
    /// Counts the stretches of unbroken validity: an update belongs to the one it began in.
    term: u64,
    closed: bool,
}

impl Tenure {
    /// A renewal sent at `sent` succeeded: writes may go on until `sent + renew_deadline`.
    /// After a gap (never valid, revoked, or expired before `sent`) this is a new term:
    /// another replica may have led in between.
    pub fn renewed(&mut self, sent: Instant, renew_deadline: Duration) {
        let until = sent + renew_deadline;
        match self.valid_until {
            Some(v) if v > sent => self.valid_until = Some(v.max(until)),
            _ => {
                self.term += 1;
                self.valid_until = Some(until);
            }
        }
    }

    /// The current term (see [`Tenure::renewed`]).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The lease is someone else's, or could not be renewed in time.
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }

    /// No update may start any more (shutdown).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// When the current tenure ends, if there is one.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Whether an API call of an update already under way may be sent at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Refused> {
        match self.valid_until {
            None => Err(Refused::NotLeader),
            Some(until) if now >= until => Err(Refused::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Whether an API call of an update begun in `term` may be sent at `now`.
    pub fn check_in(&self, term: u64, now: Instant) -> Result<(), Refused> {
        self.check(now)?;
        if term != self.term {
            return Err(Refused::Superseded);
        }
        Ok(())
    }

    /// Whether a new update may start at `now`.
    pub fn admit(&self, now: Instant) -> Result<(), Refused> {
        if self.closed {
            return Err(Refused::Closing);
        }
        self.check(now)
    }
}

/// The shared fence: the campaign renews and revokes it, the writer asks it before every
/// API call, shutdown waits on it for the writes in flight.
#[derive(Debug)]
pub struct Fence {
    tenure: Mutex<Tenure>,
    in_flight: watch::Sender<usize>,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            tenure: Mutex::new(Tenure::default()),
            in_flight: watch::Sender::new(0),
        }
    }
}

impl Fence {
    fn tenure(&self) -> std::sync::MutexGuard<'_, Tenure> {
        self.tenure.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an update at `now`: its API calls may be sent (each after
    /// [`Permit::check`]) until the permit drops; shutdown waits for it.
    pub fn begin(self: &Arc<Self>, now: Instant) -> Result<Permit, Refused> {
        let tenure = self.tenure();
        tenure.admit(now)?;
        // Counted under the lock: once `close` returns, the count can only fall.
        self.in_flight.send_modify(|n| *n += 1);
        Ok(Permit {
            fence: self.clone(),
            term: tenure.term(),
        })
    }

    /// Whether an API call may be sent at `now` (the lease is valid by local time).
    pub fn check(&self, now: Instant) -> Result<(), Refused> {
        self.tenure().check(now)
    }

    /// A predicate for the transport, checked right before bytes are written to the
    /// socket (see `ferrolb_ops::client::fenced_client`).
    pub fn gate(self: &Arc<Self>) -> impl Fn() -> bool + Send + Sync + 'static {
        let fence = self.clone();
        move || fence.check(Instant::now()).is_ok()
    }

    /// When the current tenure ends.
    pub fn valid_until(&self) -> Option<Instant> {
        self.tenure().valid_until()
    }

    /// The current term (see [`Tenure::renewed`]).
    pub fn term(&self) -> u64 {
        self.tenure().term()
    }

    /// See [`Tenure::renewed`].
    pub fn renewed(&self, sent: Instant, renew_deadline: Duration) {
        self.tenure().renewed(sent, renew_deadline);
    }

    /// See [`Tenure::revoke`].
    pub fn revoke(&self) {
        self.tenure().revoke();
    }

    /// See [`Tenure::close`].
    pub fn close(&self) {
        self.tenure().close();
    }

    /// Updates under way (permits alive).
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Resolves once no update is under way (after [`Fence::close`]: for good).
    pub async fn drained(&self) {
        let mut rx = self.in_flight.subscribe();
        // The sender lives in `self`: the wait can only end by the count reaching zero.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One update's right to send API calls, each after [`Permit::check`], within the term it
/// began in.
#[derive(Debug)]
pub struct Permit {
    fence: Arc<Fence>,
    term: u64,
}

impl Permit {
    /// Whether the next API call may be sent at `now`; call it right before the call.
    pub fn check(&self, now: Instant) -> Result<(), Refused> {
        self.fence.tenure().check_in(self.term, now)
    }

    /// When the lease held for this update could be someone else's (by local time): no
    /// call of the update should still be waited for after that.
    pub fn valid_until(&self) -> Option<Instant> {
        self.fence.valid_until()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.fence.in_flight.send_modify(|n| *n -= 1);
    }
}

/// The Lease conversation, behind a trait so the campaign can be tested without a server.
pub trait Store: Send + Sync + 'static {
    /// Reads the lease (`None`: it does not exist).
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, kube::Error>> + Send;
    /// Creates the lease (no resourceVersion) or replaces it (its resourceVersion is the
    /// precondition: a concurrent writer makes this a 409).
    fn put(&self, lease: Lease) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

/// [`Store`] on the API server.
struct KubeStore {
    api: Api<Lease>,
    name: String,
}

impl Store for KubeStore {
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, kube::Error>> + Send {
        self.api.get_opt(&self.name)
    }

    async fn put(&self, lease: Lease) -> Result<(), kube::Error> {
        let pp = PostParams::default();
        if lease.metadata.resource_version.is_some() {
            self.api.replace(&self.name, &pp, &lease).await.map(drop)
        } else {
            self.api.create(&pp, &lease).await.map(drop)
        }
    }
}

/// Runs the election until `stop` fires, publishing leadership on the returned channel and
/// keeping `fence` in step. Every new term is announced with `true`, also when the last
/// value was `true` (lost and won again between two looks): each `true` is a new term. On stop: no new update starts, those in flight end, then a held
/// lease is released so a standby takes over at once.
pub fn spawn(
    client: Client,
    namespace: &str,
    name: &str,
    identity: String,
    timing: Timing,
    fence: Arc<Fence>,
    stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let store = KubeStore {
        api: Api::namespaced(client, namespace),
        name: name.to_owned(),
    };
    spawn_with(store, name.to_owned(), identity, timing, fence, stop)
}

/// [`spawn`] on any [`Store`].
pub fn spawn_with<S: Store>(
    store: S,
    name: String,
    identity: String,
    timing: Timing,
    fence: Arc<Fence>,
    stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let campaign = Campaign {
        store,
        name,
        identity,
        timing,
        fence,
        tx,
    };
    (rx, tokio::spawn(campaign.run(stop)))
}

struct Campaign<S> {
    store: S,
    name: String,
    identity: String,
    timing: Timing,
    fence: Arc<Fence>,
    tx: watch::Sender<bool>,
}

impl<S: Store> Campaign<S> {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut elector = Elector::new(self.identity.clone());
        'campaign: loop {
            let mut work = std::pin::pin!(async {
                self.round(&mut elector).await;
                tokio::time::sleep(self.timing.retry_period).await;
            });
            loop {
                // The renew deadline runs on its own timer: a call that hangs cannot keep
                // this replica leading.
                let deadline = self.fence.valid_until().filter(|_| *self.tx.borrow());
                tokio::select! {
                    () = &mut work => break,
                    () = sleep_until(deadline) => self.step_down_if_expired(),
                    () = stopped(&mut stop) => break 'campaign,
                }
            }
        }
        self.shutdown().await;
    }

    /// One poll: read the lease, then renew, acquire or follow.
    async fn round(&self, elector: &mut Elector) {
        let call = self.timing.call_timeout();
        let current = match timeout(call, self.store.get()).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %self.name, "cannot read the leader lease");
                return;
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, timeout = ?call, "reading the leader lease timed out");
                return;
            }
        };
        let seen = Instant::now();
        elector.observe(current.as_ref().and_then(Record::of), seen);
        let step = elector.step(seen);
        if let Step::Follow { holder } = step {
            if *self.tx.borrow() {
                tracing::warn!(%holder, "lost the leader lease");
            }
            self.fence.revoke();
            self.tx.send_if_modified(|l| std::mem::replace(l, false));
            return;
        }
        let lease = claim(
            current,
            &self.name,
            &self.identity,
            step == Step::Acquire,
            &self.timing,
            Timestamp::now(),
        );
        // The tenure counts from before the write leaves: never later than the server's
        // (and so every follower's) view of the renewal.
        let sent = Instant::now();
        match timeout(call, self.store.put(lease)).await {
            Ok(Ok(())) => {
                let term = self.fence.term();
                self.fence.renewed(sent, self.timing.renew_deadline);
                if self.fence.check(Instant::now()).is_err() {
                    // The answer came too late (a freeze, a slow server): not leading.
                    self.tx.send_if_modified(|l| std::mem::replace(l, false));
                } else if self.fence.term() != term {
                    // A new term, announced even if `true` was the last word: the previous
                    // one ended, and someone else may have written since.
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    self.tx.send_replace(true);
                }
            }
            Ok(Err(e)) => {
                // A conflict: someone else wrote first; the next read tells who.
                if classify(&e) != Class::Conflict {
                    tracing::warn!(error = %e, lease = %self.name, "cannot write the leader lease");
                }
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, timeout = ?call, "writing the leader lease timed out");
            }
        }
    }

    fn step_down_if_expired(&self) {
        if self.fence.check(Instant::now()).is_ok() {
            return;
        }
        if *self.tx.borrow() {
            tracing::warn!(lease = %self.name, "no renewal within the renew deadline; stepping down");
        }
        self.fence.revoke();
        self.tx.send_replace(false);
    }

    /// No new update, wait for those in flight, then release the lease if we hold it.
    async fn shutdown(self) {
        self.fence.close();
        self.tx.send_replace(false);
        // No renewal from here on: an update in flight ends by itself, or is refused once
        // the tenure runs out. The bound is only a safety net.
        let bound = self.timing.lease_duration + self.timing.call_timeout();
        if timeout(bound, self.fence.drained()).await.is_err() {
            tracing::warn!(
                in_flight = self.fence.in_flight(),
                "writes still in flight; leaving the leader lease to expire"
            );
            return;
        }
        self.fence.revoke();
        self.release().await;
    }

    /// Clears the holder so a standby takes over at its next poll.
    async fn release(&self) {
        let call = self.timing.call_timeout();
        let Ok(Ok(Some(mut lease))) = timeout(call, self.store.get()).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match timeout(call, self.store.put(lease)).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader lease"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves when asked to stop (or when nobody can ask any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The lease as this replica writes it to renew or acquire; keeps `current`'s
/// resourceVersion (optimistic concurrency).
fn claim(
    current: Option<Lease>,
    name: &str,
    identity: &str,
    acquiring: bool,
    timing: &Timing,
    now: Timestamp,
) -> Lease {
    let now = MicroTime(now);
    let mut lease = current.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: None,
    });
    let old = lease.spec.take().unwrap_or_default();
    let changes_hands = acquiring && old.holder_identity.as_deref() != Some(identity);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(timing.lease_duration.as_secs() as i32),
        acquire_time: if changes_hands {
            Some(now.clone())
        } else {
            old.acquire_time.clone()
        },
        renew_time: Some(now),
        lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(changes_hands)),
        ..old
    });
    lease
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    fn rec(holder: &str, renew: i64) -> Option<Record> {
        Some(Record {
            holder: holder.into(),
            renew_time: Some(Timestamp::from_second(renew).unwrap()),
            duration: Duration::from_secs(8),
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn election_steps() {
        let t0 = Instant::now();
        let mut e = Elector::new("me");
        assert_eq!(e.step(t0), Step::Acquire, "no lease: take it");
        e.observe(rec("other", 1), t0);
        assert_eq!(
            e.step(t0),
            Step::Follow {
                holder: "other".into()
            }
        );
        // The same record seen 7 s later: still live (judged by our own clock).
        e.observe(rec("other", 1), t0 + secs(7));
        assert!(matches!(e.step(t0 + secs(7)), Step::Follow { .. }));
        // Unchanged for the whole duration: expired.
        assert_eq!(e.step(t0 + secs(8)), Step::Acquire);
        // A renewal restarts our clock, whatever timestamps the holder writes.
        e.observe(rec("other", 0), t0 + secs(8));
        assert!(matches!(e.step(t0 + secs(15)), Step::Follow { .. }));
        e.observe(rec("", 0), t0 + secs(15));
        assert_eq!(
            e.step(t0 + secs(15)),
            Step::Acquire,
            "released: take it now"
        );
        e.observe(rec("me", 2), t0 + secs(16));
        assert_eq!(e.step(t0 + secs(40)), Step::Renew);
    }

    #[test]
    fn tenure_lasts_the_renew_deadline_from_the_send() {
        let t0 = Instant::now();
        let mut t = Tenure::default();
        assert_eq!(t.check(t0), Err(Refused::NotLeader), "never renewed");
        t.renewed(t0, secs(6));
        assert_eq!(t.check(t0 + Duration::from_millis(5999)), Ok(()));
        assert_eq!(t.check(t0 + secs(6)), Err(Refused::Expired));
        // A frozen process resumes 20 s later: whatever it had decided, nothing goes out.
        assert_eq!(t.check(t0 + secs(20)), Err(Refused::Expired));
        // A late answer to an older renewal never shortens the tenure.
        t.renewed(t0 + secs(4), secs(6));
        t.renewed(t0 + secs(2), secs(6));
        assert_eq!(t.valid_until(), Some(t0 + secs(10)));
        t.revoke();
        assert_eq!(t.check(t0 + secs(5)), Err(Refused::NotLeader));
    }

    #[test]
    fn an_update_belongs_to_its_term() {
        let t0 = Instant::now();
        let mut t = Tenure::default();
        t.renewed(t0, secs(6));
        let first = t.term();
        // Renewed in time: the same term, however often.
        t.renewed(t0 + secs(2), secs(6));
        t.renewed(t0 + secs(7), secs(6));
        assert_eq!(t.term(), first);
        assert_eq!(t.check_in(first, t0 + secs(12)), Ok(()));
        // A gap (expired before the next renewal went out): someone else may have led.
        t.renewed(t0 + secs(30), secs(6));
        assert_eq!(t.check_in(first, t0 + secs(31)), Err(Refused::Superseded));
        assert_eq!(t.check_in(t.term(), t0 + secs(31)), Ok(()));
        // Lost and won again: a new term too.
        let second = t.term();
        t.revoke();
        t.renewed(t0 + secs(32), secs(6));
        assert_eq!(t.check_in(second, t0 + secs(33)), Err(Refused::Superseded));
    }

    #[test]
    fn closing_stops_new_updates_but_not_those_under_way() {
        let t0 = Instant::now();
        let mut t = Tenure::default();
        t.renewed(t0, secs(6));
        assert_eq!(t.admit(t0), Ok(()));
        t.close();
        assert_eq!(t.admit(t0), Err(Refused::Closing));
        assert_eq!(t.check(t0), Ok(()), "an update under way may finish");
        assert_eq!(t.check(t0 + secs(6)), Err(Refused::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_permits() {
        let fence = Arc::new(Fence::default());
        fence.renewed(Instant::now(), secs(6));
        let permit = fence.begin(Instant::now()).unwrap();
        fence.close();
        assert_eq!(
            fence.begin(Instant::now()).unwrap_err(),
            Refused::Closing,
            "no update starts once closed"
        );
        let mut drained = std::pin::pin!(fence.drained());
        assert!(
            futures::poll!(drained.as_mut()).is_pending(),
            "an update is in flight"
        );
        assert_eq!(permit.check(Instant::now()), Ok(()));
        drop(permit);
        drained.await;
        assert_eq!(fence.in_flight(), 0);
    }

    /// An in-memory Lease whose calls can be made to hang.
    #[derive(Default)]
    struct FakeStore {
        lease: Mutex<Option<Lease>>,
        version: AtomicU32,
        hang: AtomicBool,
        puts: AtomicU32,
    }

    impl FakeStore {
        async fn hang_if_asked(&self) {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }

        fn holder(&self) -> Option<String> {
            self.lease
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        }
    }

    impl Store for Arc<FakeStore> {
        async fn get(&self) -> Result<Option<Lease>, kube::Error> {
            self.hang_if_asked().await;
            Ok(self.lease.lock().unwrap().clone())
        }

        async fn put(&self, mut lease: Lease) -> Result<(), kube::Error> {
            self.hang_if_asked().await;
            let mut stored = self.lease.lock().unwrap();
            let current = stored
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            if lease.metadata.resource_version != current {
                return Err(kube::Error::Api(Box::new(kube::core::Status {
                    code: 409,
                    ..Default::default()
                })));
            }
            let v = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            lease.metadata.resource_version = Some(v.to_string());
            *stored = Some(lease);
            self.puts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn timing() -> Timing {
        Timing {
            lease_duration: secs(8),
            renew_deadline: secs(6),
            retry_period: secs(2),
        }
    }

    async fn leader(
        store: &Arc<FakeStore>,
    ) -> (
        Arc<Fence>,
        watch::Receiver<bool>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let fence = Arc::new(Fence::default());
        let (stop_tx, stop) = watch::channel(false);
        let (mut leading, task) = spawn_with(
            store.clone(),
            "lease".into(),
            "me".into(),
            timing(),
            fence.clone(),
            stop,
        );
        leading.wait_for(|l| *l).await.unwrap();
        (fence, leading, stop_tx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_steps_down_at_the_deadline() {
        let store = Arc::new(FakeStore::default());
        let (fence, mut leading, _stop, _task) = leader(&store).await;
        let until = fence.valid_until().unwrap();
        assert!(fence.check(Instant::now()).is_ok());
        // Every call from now on hangs (an API server that stopped answering, no reset).
        store.hang.store(true, Ordering::SeqCst);
        leading.wait_for(|l| !*l).await.unwrap();
        let now = Instant::now();
        assert!(now >= until, "stepped down only once the deadline passed");
        assert!(
            now < until + timing().lease_duration - timing().renew_deadline,
            "stepped down before the lease could be anyone else's"
        );
        assert_eq!(fence.check(now), Err(Refused::NotLeader));
        // The calls time out and are retried; the lease comes back once they answer.
        store.hang.store(false, Ordering::SeqCst);
        leading.wait_for(|l| *l).await.unwrap();
        assert!(fence.check(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_is_followed_at_once() {
        let store = Arc::new(FakeStore::default());
        let (fence, mut leading, _stop, _task) = leader(&store).await;
        // Someone else took it (as after our lease expired in their eyes).
        {
            let mut l = store.lease.lock().unwrap();
            let lease = l.as_mut().unwrap();
            lease.spec.as_mut().unwrap().holder_identity = Some("other".into());
            lease.metadata.resource_version = Some("100".into());
        }
        leading.wait_for(|l| !*l).await.unwrap();
        assert_eq!(fence.check(Instant::now()), Err(Refused::NotLeader));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_released_only_after_the_writes_in_flight() {
        let store = Arc::new(FakeStore::default());
        let (fence, _leading, stop, task) = leader(&store).await;
        let permit = fence.begin(Instant::now()).unwrap();
        stop.send_replace(true);
        // However long the update takes (within its tenure), the lease stays ours.
        tokio::time::sleep(secs(3)).await;
        assert_eq!(store.holder().as_deref(), Some("me"));
        assert_eq!(
            fence.begin(Instant::now()).unwrap_err(),
            Refused::Closing,
            "no new update after stop"
        );
        let puts = store.puts.load(Ordering::SeqCst);
        drop(permit);
        task.await.unwrap();
        assert_eq!(store.holder(), None, "released once the update ended");
        assert_eq!(store.puts.load(Ordering::SeqCst), puts + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_that_outlives_its_tenure_is_refused_then_the_lease_released() {
        let store = Arc::new(FakeStore::default());
        let (fence, _leading, stop, task) = leader(&store).await;
        let permit = fence.begin(Instant::now()).unwrap();
        stop.send_replace(true);
        // No renewal after stop: the update's next call is refused once the tenure ends.
        tokio::time::sleep(timing().renew_deadline).await;
        assert_eq!(permit.check(Instant::now()), Err(Refused::Expired));
        drop(permit);
        task.await.unwrap();
        assert_eq!(store.holder(), None);
    }
}
