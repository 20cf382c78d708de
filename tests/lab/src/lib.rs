//! FerroLB's end-to-end network lab: one L2 LAN of Linux network namespaces on one machine,
//! with real `ferrolb-speaker`s on the nodes, a real `ferrolb-controller`, an API server,
//! and clients that resolve and connect to LoadBalancer IPs through their own kernels.
//!
//! ```text
//!   Lab::start(LabConfig) ── namespaces + bridge + veths ── API server ── CRDs ── controller
//!        │                                                  Nodes ── speakers (ready)
//!        ├─ objects: pools, L2Advertisements, Services + EndpointSlices (no kube-controller-manager)
//!        ├─ client_connect / client_neigh / probe / Observer       (what the LAN sees)
//!        ├─ StatusLog / events                                     (what the Services say)
//!        ├─ kill_speaker / restart_speaker / freeze_api / stop_api (what goes wrong)
//!        └─ Rogue::join: a host outside the cluster using a pool address
//!   Drop: kill processes, stop namespace threads, delete namespaces (also on panic)
//! ```
//!
//! The API server is the built-in `ferrolb-testapi`, or any executable named by
//! `FERROLB_LAB_APISERVER` such as the real kube-apiserver ([`Lab::real_api`]); every scenario
//! runs whole on either (README: "On a real API server").
//!
//! Rules (docs/design/lab-addresses.md): documentation addresses only, nothing in the root namespace,
//! run-unique names, bounded traffic, root required. The lab runs the workspace's real
//! binaries: build them first with `cargo build --workspace --bins`.
//!
//! Errors are `anyhow` here: this is test support, and every failure ends a test with a
//! message (and, on panic, the tails of the process logs).

pub mod health_server;
pub mod lab;
pub mod names;
pub mod netns;
pub mod objects;
pub mod observe;
pub mod packet;
pub mod proc;
pub mod rogue;
pub mod stats;
pub mod status_log;
pub mod storm;
pub mod sweeps;

pub use lab::{Failover, Host, Lab, LabConfig, Signal, SpeakerOverride};
pub use objects::{Family, Svc};
pub use observe::{Observer, ProbeConfig};
pub use rogue::Rogue;
