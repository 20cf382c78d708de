//! `kubectl ferrolb`: FerroLB as an operator sees it from kubectl.
//!
//! ```text
//!   cli (clap) ──▶ cluster.rs (reads) ──▶ Snapshot ──▶ status.rs / explain.rs / check.rs ──▶ text | json | yaml
//!                  files / cluster ──▶ MetalLB objects ──▶ migrate.rs ──▶ FerroLB YAML + notes
//! ```
//!
//! Functional core, imperative shell (docs/architecture.md): every report is a pure function
//! of what was read, tested with fixtures; `cluster.rs` only reads. The decisions come from
//! FerroLB's own code: the controller core (requests, pools, the allocator) and the
//! speaker's election (`core::desired` on a `World` built by `world.rs`).

pub mod check;
pub mod cli;
pub mod cluster;
pub mod explain;
pub mod migrate;
pub mod model;
pub mod render;
pub mod status;
