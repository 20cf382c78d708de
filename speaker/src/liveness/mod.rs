//! Sub-second speaker liveness: direct, authenticated UDP heartbeats between speakers.
//!
//! ```text
//!   Kubernetes API (membership: node → heartbeat address)     our usable interfaces
//!             │ watch::Receiver                                     │ watch::Receiver
//!             ▼                                                     ▼
//!   ┌──────────────────────────── udp::Liveness (tokio task) ─────────────────────────┐
//!   │  every interval: codec::encode(Heartbeat{node, incarnation, seq, ifaces,       │
//!   │                  serving, settled, heard list}) ──▶ each peer
//!   │  datagram ──codec::decode (HMAC-SHA256)──▶ detector::Detector::observe        │
//!   │  sleep until Detector::next_deadline ──▶ Detector::tick                        │
//!   └──────────────────────────────────────┬──────────────────────────────────────────┘
//!                                          ▼ watch::Receiver<AliveView>
//!        node → interfaces (+ settling) of every speaker that may announce (us: while serving)
//!                                          ▼
//!                               core::World speakers ─▶ election
//! ```
//!
//! [`codec`] and [`detector`] are pure (time is passed in); [`udp`] is the only I/O.
//! Design, timings and failure modes: `docs/failover.md`.

pub mod codec;
pub mod detector;
pub mod udp;

pub use codec::{
    DecodeError, Heard, Heartbeat, Key, KeyError, Malformed, decode, decode_any, encode, node_id,
};
pub use detector::{AliveView, Config, Detector, Live, Member, NotServing, Observed, Tick};
pub use udp::{
    CountersSnapshot, Liveness, LivenessConfig, LivenessError, PeerAddr, random_incarnation,
};
