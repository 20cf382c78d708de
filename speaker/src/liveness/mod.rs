//! Sub-second speaker liveness: direct, authenticated UDP heartbeats between speakers, each
//! signed by its sender's per-start Ed25519 key (public half in its Lease).
//!
//! ```text
//!   Kubernetes API (membership: node → heartbeat address, key)  our usable interfaces
//!             │ watch::Receiver                                     │ watch::Receiver
//!             ▼                                                     ▼
//!   ┌─────────────── udp::Liveness (a thread of its own, its own runtime) ──────────────┐
//!   │  kernel: source address is a member's (filter::source_filter), else dropped      │
//!   │  engine::Engine                                                                  │
//!   │   every interval, in slots of ≤ 32 peers (limits::schedule):                     │
//!   │     codec::encode(Heartbeat{node, incarnation, seq, ifaces, serving, settled,    │
//!   │                   heard list}) ──▶ each peer of the slot                         │
//!   │   datagram ──codec::decode (HMAC-SHA256) ──limits::RateLimiter (per source,      │
//!   │             global) ──the sender's Ed25519 signature ──▶ detector::Detector::observe
//!   │   at Detector::next_deadline ──▶ Detector::tick                                  │
//!   └──────────────────────────────────────┬───────────────────────────────────────────┘
//!                                          ▼ watch::Receiver<AliveView>
//!        node → interfaces (+ settling) of every speaker that may announce (us: while serving)
//!                                          ▼
//!                               core::World speakers ─▶ election
//! ```
//!
//! [`codec`], [`detector`], [`limits`], [`filter`] and [`engine`] are pure (time is passed
//! in); [`udp`] is the only I/O. Design, timings and failure modes: `docs/failover.md`.

pub mod codec;
pub mod detector;
pub mod engine;
pub mod filter;
pub mod limits;
pub mod udp;

pub use codec::{
    DecodeError, Heard, Heartbeat, Key, KeyError, Malformed, SigningKey, Unverified, VerifyingKey,
    decode, decode_any, decode_verified, encode, encode_v2, node_id,
};
pub use detector::{
    AliveView, Config, Departures, Detector, Live, Member, NotServing, Observed, Tick,
};
pub use engine::{Batch, Counters, CountersSnapshot, Engine, GAP_BUCKETS, PeerAddr};
pub use udp::{Liveness, LivenessConfig, LivenessError, generate_signing_key, random_incarnation};
