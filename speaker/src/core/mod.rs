//! The speaker's functional core: which node announces which IP, computed from plain data.
//!
//! ```text
//!   watches (Nodes, liveness, L2Advertisements, pools, Services, EndpointSlices)
//!        │ glue fills
//!        ▼
//!   World ──desired()──▶ Table { IP ─▶ Announce{node, interfaces} | NotAnnounced{reason} }
//!                          │                                   │
//!        local_announcements(table, my_node)          per-Service view
//!                          ▼                                   ▼
//!              ARP/NDP responders (IP ─▶ interfaces)   ferrolb.io/Announced condition
//! ```
//!
//! No I/O, no clock, no Kubernetes types: every speaker runs the same function on the same
//! World and gets the same Table (Cilium's l2announcer desired-state table, elected with a
//! MetalLB-style `sortL2Candidates` ranking). Rules: docs/design/election.md#eligible-nodes and #election.

mod election;
mod model;
mod table;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

pub use election::{desired, rank};
pub use model::{
    Advertisement, EXCLUDE_LB_LABEL, Node, Pool, PoolSelection, Service, Speaker, World,
};
pub use table::{
    Decision, Excluded, Exclusions, Interfaces, NAMES_PER_REASON, NodeExclusion,
    NotAnnouncedReason, Table, local_announcements,
};
