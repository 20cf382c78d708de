//! Watch streams as both binaries run them: kube-runtime's watcher, with a backoff made for
//! an API server that goes away and comes back.
//!
//! ```text
//!   watcher(api) ──▶ drop "410 Expired" (the watcher re-lists by itself) ──▶ backoff ──▶
//!                    250 ms doubling, capped at 5 s, reset by any event
//! ```
//!
//! After a restart, a real kube-apiserver answers every resumed watch with 410 Expired
//! (its watch cache starts at the current etcd revision). kube-runtime's watcher handles
//! that by re-listing, but it also yields the error, and the default backoff (cap 30 s,
//! full jitter, already at its cap after an outage) then slept up to a minute before the
//! re-list: new Services stayed pending and endpoint moves went unseen for up to ~2 min
//! after every API server restart. Here the 410 is not an error, and the cap is short, so
//! a watcher is back within seconds of the server.

use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// First retry delay after an error.
pub const MIN_DELAY: Duration = Duration::from_millis(250);
/// Longest delay between retries: an API server that returns is seen within this.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Exponential backoff from [`MIN_DELAY`] doubling to [`MAX_DELAY`], reset by any event.
/// No jitter: a handful of watchers per process cannot stampede an API server.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: MIN_DELAY }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        Some(now)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN_DELAY;
    }
}

/// Drops what no FerroLB component reads and every object carries, on arrival, so caches
/// hold only what they use: `managedFields` and `kubectl`'s last-applied copy of the object.
pub fn strip<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Whether a watcher error is the server saying "your resourceVersion is gone, re-list",
/// which the watcher already does by itself.
pub fn is_expired(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::WatchError(status) => status.code,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::InitialListFailed(kube::Error::Api(s)) => s.code,
        _ => 0,
    };
    code == 410
}

/// A watch of `api` with [`WatchBackoff`], 410 Expired swallowed (the watcher re-lists).
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    resilient(watcher::watcher(api, config).into_stream())
}

/// The error handling of [`watch`] for any stream of watcher results.
pub fn resilient<T, S>(s: S) -> impl Stream<Item = Result<T, watcher::Error>> + Send
where
    S: Stream<Item = Result<T, watcher::Error>> + Send,
    T: Send,
{
    s.filter(|r| {
        let expired = matches!(r, Err(e) if is_expired(e));
        if expired {
            tracing::debug!("watch expired (410): re-listing at once");
        }
        std::future::ready(!expired)
    })
    .backoff(WatchBackoff::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    #[test]
    fn strip_keeps_what_components_read() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut s = Service::default();
        s.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        s.metadata.annotations = Some(
            [
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                ("ferrolb.io/address-pool", "lan"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        strip(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        let keys: Vec<&String> = s.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ferrolb.io/address-pool"]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = WatchBackoff::default();
        let got: Vec<u128> = (&mut b).take(7).map(|d| d.as_millis()).collect();
        assert_eq!(got, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(MIN_DELAY));
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            ..Default::default()
        })
    }

    #[test]
    fn only_410_is_expired() {
        assert!(is_expired(&watcher::Error::WatchError(status(410))));
        assert!(is_expired(&watcher::Error::WatchFailed(kube::Error::Api(
            status(410)
        ))));
        assert!(!is_expired(&watcher::Error::WatchError(status(500))));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }

    /// A 410 must not cost a backoff sleep (virtual time: deterministic).
    #[tokio::test(start_paused = true)]
    async fn an_expired_watch_costs_no_backoff_sleep() {
        let items: Vec<Result<u32, watcher::Error>> = vec![
            Err(watcher::Error::WatchError(status(500))),
            Err(watcher::Error::WatchError(status(410))),
            Ok(1),
        ];
        let start = tokio::time::Instant::now();
        let got: Vec<_> = resilient(stream::iter(items)).collect().await;
        assert_eq!(got.len(), 2, "the 410 is swallowed");
        assert!(matches!(got[1], Ok(1)));
        assert_eq!(start.elapsed(), MIN_DELAY, "one sleep, for the 500 only");
    }
}
