//! Address conflict detection, pure: RFC 5227 (IPv4) and RFC 4862 §5.4 duplicate address
//! detection (IPv6), on LAN time scales. Time is an input; the worker sends what it says.
//!
//! ```text
//!   add(ip, fresh=true) ──▶ Probing (not answered) ──window, no foreign claim──▶ Announcing
//!   add(ip, fresh=false) ─▶ Announcing, probing in parallel (a takeover is not delayed)
//!        foreign claim while probing ──▶ Conflict (not answered) ──retry (1 s doubling
//!                                        to retry_max)──▶ probe again ──▶ Announcing | Conflict
//!   Announcing: an unsolicited foreign claim is defended once (a gratuitous ARP / NA);
//!               another within DEFEND_INTERVAL ──▶ Conflict
//! ```
//!
//! A *claim* is what another host sends that says it uses an address: an ARP packet whose
//! sender IP is the address, or a Neighbor Advertisement for it ([`Claim::Uses`]); or a
//! probe for it (an ARP probe from 0.0.0.0, a DAD solicitation from `::`:
//! [`Claim::Probes`]), which only counts while we probe ourselves (RFC 5227 §2.1.1).
//! Claims from a FerroLB node's MAC ([`Fleet`]) are a handover between speakers, never a
//! conflict; while some speaker publishes no MACs (an older version, mid-upgrade) nothing
//! is judged a conflict, since a peer's takeover could not be told from a stranger.
//!
//! Why shorter than RFC 5227's timings (probes 1–2 s apart, 7 s in all): those are for a
//! host that picks its own address at boot. Here a controller handed the address out and
//! the LAN answers within milliseconds; a new Service waits `probe` (300 ms by default),
//! and a takeover does not wait at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use pnet_packet::ethernet::EthernetPacket;

use crate::wire::MacAddr;
use crate::wire::arp::{ArpOp, ArpRepr};
use crate::wire::ndp::{NeighborAdvertRepr, NeighborSolicitRepr};

/// RFC 5227's DEFEND_INTERVAL: a second foreign claim within it after we defended once
/// means the other host keeps using the address.
pub const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

/// Tunables of conflict detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictConfig {
    /// Off: every IP is announced at once and claims are ignored (as before).
    pub enabled: bool,
    /// How long a probe runs: `probes` probes spread over it, then (nothing heard) the
    /// address is ours.
    pub probe: Duration,
    /// Probes sent per probe run (the first at once).
    pub probes: u32,
    /// First wait before probing again after a conflict; doubles each time.
    pub retry_min: Duration,
    /// Longest wait between probes of an address in conflict.
    pub retry_max: Duration,
}

impl Default for ConflictConfig {
    fn default() -> Self {
        ConflictConfig {
            enabled: true,
            probe: Duration::from_millis(300),
            probes: 3,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// The MACs of every FerroLB speaker's interfaces (ours included), from their Leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Known MACs.
    pub macs: BTreeSet<MacAddr>,
    /// Every speaker Lease publishes its MACs: only then can a stranger be told apart.
    pub complete: bool,
}

/// Someone else's word on an address, read off one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `mac` uses `ip` (ARP with sender IP `ip`, or a Neighbor Advertisement for it).
    Uses {
        /// The address.
        ip: IpAddr,
        /// Who claims it.
        mac: MacAddr,
    },
    /// `mac` probes for `ip` (wants to use it).
    Probes {
        /// The address.
        ip: IpAddr,
        /// Who probes.
        mac: MacAddr,
    },
}

impl Claim {
    /// The address claimed.
    pub fn ip(&self) -> IpAddr {
        match self {
            Claim::Uses { ip, .. } | Claim::Probes { ip, .. } => *ip,
        }
    }

    /// Who claims it.
    pub fn mac(&self) -> MacAddr {
        match self {
            Claim::Uses { mac, .. } | Claim::Probes { mac, .. } => *mac,
        }
    }
}

/// The claim an ARP frame makes, if any; frames of `own_mac` make none.
pub fn arp_claim(frame: &[u8], own_mac: MacAddr) -> Option<Claim> {
    let eth = EthernetPacket::new(frame)?;
    let arp = ArpRepr::parse(frame).ok()?;
    if arp.sender_mac == own_mac || eth.get_source() == own_mac {
        return None;
    }
    if !arp.sender_ip.is_unspecified() {
        return Some(Claim::Uses {
            ip: IpAddr::V4(arp.sender_ip),
            mac: arp.sender_mac,
        });
    }
    (arp.op == ArpOp::Request).then_some(Claim::Probes {
        ip: IpAddr::V4(arp.target_ip),
        mac: arp.sender_mac,
    })
}

/// The claim an NDP frame makes, if any: an advertisement for its target, or a DAD
/// solicitation (from `::`); frames of `own_mac` make none.
pub fn ndp_claim(frame: &[u8], own_mac: MacAddr) -> Option<Claim> {
    if let Ok(na) = NeighborAdvertRepr::parse(frame) {
        if na.eth_src == own_mac || na.target_lladdr == own_mac {
            return None;
        }
        return Some(Claim::Uses {
            ip: IpAddr::V6(na.target),
            mac: na.target_lladdr,
        });
    }
    let ns = NeighborSolicitRepr::parse(frame).ok()?;
    (ns.is_dad() && ns.eth_src != own_mac).then_some(Claim::Probes {
        ip: IpAddr::V6(ns.target),
        mac: ns.eth_src,
    })
}

/// What the worker must do for one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Send one probe for it.
    Probe(IpAddr),
    /// Start answering it and announcing it (gratuitous ARP / unsolicited NA, repeats).
    Announce(IpAddr),
    /// Send one gratuitous ARP / unsolicited NA (defending it), cadence unchanged.
    Defend(IpAddr),
    /// Another host uses it: stop answering and announcing it.
    Conflict(IpAddr, MacAddr),
    /// The conflict is over (the address is announced again, or no longer ours).
    Cleared(IpAddr),
}

/// A probe run: started when, probes sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: Instant,
    sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Probing before announcing (not answered).
    Probing(Run),
    /// Answered; `run` while a parallel probe runs, `defended` when we last defended.
    Announcing {
        run: Option<Run>,
        defended: Option<Instant>,
    },
    /// Another host uses it (not answered): probing again at `retry`, or now (`run`).
    Conflict {
        mac: MacAddr,
        since: Instant,
        backoff: Duration,
        retry: Instant,
        run: Option<Run>,
    },
}

/// A conflict as reported: who uses the address, since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The other host's MAC.
    pub mac: MacAddr,
    /// When we first saw it (this conflict).
    pub since: Instant,
}

/// Conflict detection for the IPs of one responder (one interface and family).
#[derive(Debug, Clone)]
pub struct Detector {
    config: ConflictConfig,
    ips: BTreeMap<IpAddr, Phase>,
    /// The IPs [`Detector::tick`] has work for (a probe run, a retry): all but those
    /// announced with no probe running, so a worker with 1,000 quiet IPs ticks over none.
    busy: BTreeSet<IpAddr>,
}

impl Detector {
    /// A detector with no IP.
    pub fn new(config: ConflictConfig) -> Self {
        Detector {
            config,
            ips: BTreeMap::new(),
            busy: BTreeSet::new(),
        }
    }

    /// Starts on `ip`: probing first when `fresh` (no FerroLB node announced it before),
    /// else announcing at once with a probe alongside.
    pub fn add(&mut self, ip: IpAddr, fresh: bool, now: Instant) -> Vec<Out> {
        if self.ips.contains_key(&ip) {
            return Vec::new();
        }
        if !self.config.enabled {
            self.ips.insert(
                ip,
                Phase::Announcing {
                    run: None,
                    defended: None,
                },
            );
            return vec![Out::Announce(ip)];
        }
        let run = Run {
            start: now,
            sent: 1,
        };
        self.busy.insert(ip);
        if fresh {
            self.ips.insert(ip, Phase::Probing(run));
            vec![Out::Probe(ip)]
        } else {
            self.ips.insert(
                ip,
                Phase::Announcing {
                    run: Some(run),
                    defended: None,
                },
            );
            vec![Out::Announce(ip), Out::Probe(ip)]
        }
    }

    /// Forgets `ip` (no longer ours to announce); a conflict it had is over.
    pub fn remove(&mut self, ip: IpAddr) -> Vec<Out> {
        self.busy.remove(&ip);
        match self.ips.remove(&ip) {
            Some(Phase::Conflict { .. }) => vec![Out::Cleared(ip)],
            _ => Vec::new(),
        }
    }

    /// Judges a claim seen on the wire.
    pub fn claim(&mut self, claim: Claim, fleet: &Fleet, now: Instant) -> Vec<Out> {
        let ip = claim.ip();
        let mac = claim.mac();
        if !self.config.enabled || !fleet.complete || fleet.macs.contains(&mac) {
            return Vec::new();
        }
        let Some(phase) = self.ips.get_mut(&ip) else {
            return Vec::new();
        };
        let probes = matches!(claim, Claim::Probes { .. });
        // Every outcome below but "ignored" and "defended" leaves work for tick.
        if !probes || !matches!(phase, Phase::Announcing { .. }) {
            self.busy.insert(ip);
        }
        let conflict = |backoff: Duration| Phase::Conflict {
            mac,
            since: now,
            backoff,
            retry: now + backoff,
            run: None,
        };
        match *phase {
            Phase::Probing(_) => {
                *phase = conflict(self.config.retry_min);
                vec![Out::Conflict(ip, mac)]
            }
            // Someone probes an address we announce: our answer tells it (decide_arp,
            // decide_ndp answer probes); nothing to judge.
            Phase::Announcing { .. } if probes => Vec::new(),
            // It answered our probe (or claims it while we probe): the takeover met a host
            // that uses the address.
            Phase::Announcing { run: Some(_), .. } => {
                *phase = conflict(self.config.retry_min);
                vec![Out::Conflict(ip, mac)]
            }
            Phase::Announcing {
                run: None,
                defended,
            } => match defended {
                Some(at) if now.saturating_duration_since(at) < DEFEND_INTERVAL => {
                    *phase = conflict(self.config.retry_min);
                    vec![Out::Conflict(ip, mac)]
                }
                _ => {
                    *phase = Phase::Announcing {
                        run: None,
                        defended: Some(now),
                    };
                    vec![Out::Defend(ip)]
                }
            },
            // Probing again and it is still there: wait longer.
            Phase::Conflict {
                since,
                backoff,
                run: Some(_),
                ..
            } => {
                let backoff = (backoff * 2).min(self.config.retry_max);
                *phase = Phase::Conflict {
                    mac,
                    since,
                    backoff,
                    retry: now + backoff,
                    run: None,
                };
                Vec::new()
            }
            Phase::Conflict { run: None, .. } => Vec::new(),
        }
    }

    /// Sends due probes, ends probe runs, starts retries.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let (window, probes) = (self.config.probe, self.config.probes.max(1));
        let mut idle = Vec::new();
        for ip in &self.busy {
            let Some(phase) = self.ips.get_mut(ip) else {
                idle.push(*ip);
                continue;
            };
            let run = match phase {
                Phase::Probing(run) => Some(run),
                Phase::Announcing { run, .. } => run.as_mut(),
                Phase::Conflict { retry, run, .. } => {
                    if run.is_none() && now >= *retry {
                        *run = Some(Run {
                            start: now,
                            sent: 1,
                        });
                        out.push(Out::Probe(*ip));
                    }
                    run.as_mut()
                }
            };
            let Some(run) = run else {
                if matches!(phase, Phase::Announcing { run: None, .. }) {
                    idle.push(*ip);
                }
                continue;
            };
            let elapsed = now.saturating_duration_since(run.start);
            if elapsed >= window {
                // Nothing foreign heard within the window: the address is ours.
                match *phase {
                    Phase::Probing(_) => {
                        *phase = Phase::Announcing {
                            run: None,
                            defended: None,
                        };
                        out.push(Out::Announce(*ip));
                        idle.push(*ip);
                    }
                    Phase::Announcing { defended, .. } => {
                        *phase = Phase::Announcing {
                            run: None,
                            defended,
                        };
                        idle.push(*ip);
                    }
                    Phase::Conflict { .. } => {
                        *phase = Phase::Announcing {
                            run: None,
                            defended: None,
                        };
                        out.push(Out::Announce(*ip));
                        out.push(Out::Cleared(*ip));
                        idle.push(*ip);
                    }
                }
                continue;
            }
            // Probe k is due at k/probes of the window.
            let due = window * run.sent / probes;
            if run.sent < probes && elapsed >= due {
                run.sent += 1;
                out.push(Out::Probe(*ip));
            }
        }
        for ip in idle {
            self.busy.remove(&ip);
        }
        out
    }

    /// Whether [`Detector::tick`] has anything to do (a probe run or a retry pending).
    pub fn is_busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// IPs not to be answered now: probing before their first announcement, or in conflict.
    pub fn withheld(&self) -> BTreeSet<IpAddr> {
        self.ips
            .iter()
            .filter(|(_, p)| !matches!(p, Phase::Announcing { .. }))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// IPs probed for before their first announcement (not answered yet, no conflict).
    pub fn probing(&self) -> BTreeSet<IpAddr> {
        self.ips
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Probing(_)))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Whether `ip` is answered now.
    pub fn answers(&self, ip: IpAddr) -> bool {
        matches!(self.ips.get(&ip), Some(Phase::Announcing { .. }))
    }

    /// The IPs in conflict, with who uses them.
    pub fn conflicts(&self) -> BTreeMap<IpAddr, Seen> {
        self.ips
            .iter()
            .filter_map(|(ip, p)| match p {
                Phase::Conflict { mac, since, .. } => Some((
                    *ip,
                    Seen {
                        mac: *mac,
                        since: *since,
                    },
                )),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
