//! The controller's functional core: everything that decides, nothing that does I/O.
//!
//! ```text
//!   watch events ──▶ Index (caches + Allocator) ──reconcile(now)──▶ [Update]
//!                    apply_* / delete_* / reset_*                   (the shell writes them)
//! ```
//!
//! - [`allocator`]: pools, holders, the sharing rule; `assign`, `claim`, `keep`.
//! - [`index`]: the state machine the controller's glue drives; emits status updates and
//!   Events, compared by equality so resyncs and restarts write nothing.
//! - [`pool`], [`service`]: from Kubernetes objects to the allocator's inputs and back.
//! - [`external`]: which `spec.externalIPs` are announced (opt-in per pool), as a condition.
//!
//! This crate depends on no kube client or runtime: Cargo enforces that the decisions are
//! pure, deterministic and testable without a cluster (docs/architecture.md).

pub mod allocator;
pub mod announced;
pub mod external;
pub mod index;
pub mod pool;
pub mod service;
