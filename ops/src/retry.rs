//! How API errors are classified and retried: 5xx, 429 and transport errors back off and
//! retry; 409 is the caller's business (re-read, recompute); other 4xx are final.

use std::future::Future;
use std::time::Duration;

/// What to do with a failed API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Server overloaded or unavailable, or the connection failed: retry with backoff.
    Transient,
    /// Optimistic-concurrency conflict: re-read the object and try again.
    Conflict,
    /// The object is gone.
    NotFound,
    /// The request itself is wrong: retrying cannot help.
    Permanent,
}

/// Classifies a kube error.
pub fn classify(e: &kube::Error) -> Class {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => Class::Conflict,
            404 => Class::NotFound,
            429 | 500..=599 => Class::Transient,
            _ => Class::Permanent,
        },
        _ => Class::Transient,
    }
}

/// An error that knows how it should be handled (so callers with their own error types,
/// e.g. a fenced writer's "not the leader", can use [`with_backoff`]).
pub trait Classify {
    /// What to do about this error.
    fn class(&self) -> Class;
}

impl Classify for kube::Error {
    fn class(&self) -> Class {
        classify(self)
    }
}

/// A short label for the `ferrolb_api_errors_total` metric.
pub fn metric_label(e: &kube::Error) -> &'static str {
    match classify(e) {
        Class::Transient => "transient",
        Class::Conflict => "conflict",
        Class::NotFound => "not_found",
        Class::Permanent => "permanent",
    }
}

/// Runs `call` until it succeeds or fails with a non-transient error, backing off
/// exponentially (100 ms doubling, capped at 3.2 s) for at most `attempts` tries.
pub async fn with_backoff<T, E, F, Fut>(attempts: u32, mut call: F) -> Result<T, E>
where
    E: Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Err(e) if e.class() == Class::Transient && tries < attempts => {
                tracing::debug!(error = %e, ?delay, "transient API error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(3200));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn classes() {
        assert_eq!(classify(&api(500)), Class::Transient);
        assert_eq!(classify(&api(503)), Class::Transient);
        assert_eq!(classify(&api(429)), Class::Transient);
        assert_eq!(classify(&api(409)), Class::Conflict);
        assert_eq!(classify(&api(404)), Class::NotFound);
        assert_eq!(classify(&api(422)), Class::Permanent);
        assert_eq!(classify(&api(403)), Class::Permanent);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_then_given_up() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_backoff(4, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(503))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let calls = AtomicU32::new(0);
        let r = with_backoff(4, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(api(429))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_backoff(4, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(422))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a permanent error is not retried"
        );
    }
}
