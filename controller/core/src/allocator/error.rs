//! Why a Service got no IP: one variant per `ferrolb.io/IPAllocated=False` reason (docs/design/allocation.md#reasons-a-service-has-no-ip).
//!
//! ```text
//!   assign / claim ──Err(AllocError)──▶ glue: condition reason = err.reason()
//!                                             condition message = err.to_string()
//! ```
//!
//! None of these is retried by the allocator itself: each clears only when pools or the
//! Service change, so the glue re-runs `assign` on those events, not on a timer.

use std::net::IpAddr;

use super::{Family, ServiceKey};

/// A failed allocation; `Display` is the sentence shown by `kubectl describe svc`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No ready pool lets this Service allocate (none exists, none auto-assigns, selectors exclude it,
    /// or the named pool is missing/not ready); clears when pools change.
    #[error("no IPAddressPool can serve {service}: {why}")]
    NoMatchingPool { service: ServiceKey, why: String },
    /// Every candidate pool is full for a needed family; clears when an IP is released or a pool grows.
    #[error("no free address for {service}: {}", exhausted_list(.exhausted))]
    PoolExhausted {
        service: ServiceKey,
        /// Each full pool with the family it ran out of, in the order tried.
        exhausted: Vec<(String, Family)>,
    },
    /// A requested or claimed IP is in no pool, not in the named pool, or the IPs span pools;
    /// clears when the request or the pools change.
    #[error("{service}: {ip} {why}")]
    RequestedIPNotInPool {
        service: ServiceKey,
        ip: IpAddr,
        why: String,
    },
    /// A requested or claimed IP is held by a Service that does not share it (no or other key).
    #[error("{service}: {ip} is already used by {holder}; {why}")]
    RequestedIPInUse {
        service: ServiceKey,
        ip: IpAddr,
        /// Boxed to keep `Result<_, AllocError>` small.
        holder: Box<ServiceKey>,
        why: String,
    },
    /// Same sharing key as the holder, but ports overlap or backends differ.
    #[error("{service} cannot share {ip} with {with}: {why}")]
    SharingConflict {
        service: ServiceKey,
        ip: IpAddr,
        /// Boxed to keep `Result<_, AllocError>` small.
        with: Box<ServiceKey>,
        why: String,
    },
    /// The request itself is contradictory (family mismatch, buggy IP in an avoiding pool, …);
    /// only a Service edit fixes it.
    #[error("invalid request from {service}: {why}")]
    InvalidRequest { service: ServiceKey, why: String },
    /// No candidate pool has addresses of a family the Service requires.
    #[error("{service} needs an {family} address, but {why}")]
    FamilyUnavailable {
        service: ServiceKey,
        family: Family,
        why: String,
    },
}

fn exhausted_list(exhausted: &[(String, Family)]) -> String {
    exhausted
        .iter()
        .map(|(pool, family)| format!("pool {pool:?} has no free {family} address"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl AllocError {
    /// The Service condition reason (exactly the variant name), also the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::NoMatchingPool { .. } => "NoMatchingPool",
            AllocError::PoolExhausted { .. } => "PoolExhausted",
            AllocError::RequestedIPNotInPool { .. } => "RequestedIPNotInPool",
            AllocError::RequestedIPInUse { .. } => "RequestedIPInUse",
            AllocError::SharingConflict { .. } => "SharingConflict",
            AllocError::InvalidRequest { .. } => "InvalidRequest",
            AllocError::FamilyUnavailable { .. } => "FamilyUnavailable",
        }
    }

    /// The Service the error is about.
    pub fn service(&self) -> &ServiceKey {
        match self {
            AllocError::NoMatchingPool { service, .. }
            | AllocError::PoolExhausted { service, .. }
            | AllocError::RequestedIPNotInPool { service, .. }
            | AllocError::RequestedIPInUse { service, .. }
            | AllocError::SharingConflict { service, .. }
            | AllocError::InvalidRequest { service, .. }
            | AllocError::FamilyUnavailable { service, .. } => service,
        }
    }
}
