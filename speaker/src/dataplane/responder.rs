//! Pure responder decisions: given one received frame, answer it or say why not.
//!
//! ```text
//!   frame ─▶ decide_arp / decide_ndp ─┬─▶ Ok(reply Repr)  ─▶ emit + send (socket glue)
//!             ▲ iface MAC + name       └─▶ Err(DropReason) ─▶ counted by as_str()
//!             ▲ AnnounceSet (IP → interfaces this node announces on)
//! ```
//!
//! Like MetalLB's responders every unanswered packet has a reason, which keeps the rules
//! table-testable and the drop counters meaningful.

use std::collections::BTreeMap;
use std::net::IpAddr;

use pnet_packet::ethernet::EthernetPacket;

use crate::core::Interfaces;
use crate::wire::arp::{ArpOp, ArpRepr};
use crate::wire::ndp::{NeighborAdvertRepr, NeighborSolicitRepr};
use crate::wire::{ETHERTYPE_ARP, MacAddr, WireError};

/// The desired state the responders serve: each announced IP and the interfaces it is
/// announced on by this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceSet {
    map: BTreeMap<IpAddr, Interfaces>,
}

/// Answer of [`AnnounceSet::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// This node announces the IP on this interface.
    Here,
    /// This node announces the IP, but on other interfaces only.
    OtherInterface,
    /// This node does not announce the IP.
    No,
}

impl AnnounceSet {
    /// Wraps the speaker's desired map (IP → interfaces); empty interface sets are ignored.
    pub fn new(mut map: BTreeMap<IpAddr, Interfaces>) -> Self {
        map.retain(|_, ifaces| !ifaces.is_empty());
        AnnounceSet { map }
    }

    /// Is `ip` announced by this node on `iface`?
    pub fn lookup(&self, ip: IpAddr, iface: &str) -> Announced {
        match self.map.get(&ip) {
            Some(ifaces) if ifaces.contains(iface) => Announced::Here,
            Some(_) => Announced::OtherInterface,
            None => Announced::No,
        }
    }

    /// The underlying map.
    pub fn as_map(&self) -> &BTreeMap<IpAddr, Interfaces> {
        &self.map
    }

    /// True when nothing is announced.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Why a received frame was not answered; [`DropReason::as_str`] is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not an ARP frame (on the ARP socket).
    NotArp,
    /// Not an IPv6 frame (on the NDP socket).
    NotIpv6,
    /// IPv6, but not ICMPv6 directly after the fixed header.
    NotIcmpv6,
    /// ICMPv6, but not a Neighbor Solicitation.
    NotNeighborSolicit,
    /// NDP hop limit is not 255: the packet may come from off-link (RFC 4861 §7.1.1).
    BadHopLimit,
    /// ICMPv6 checksum mismatch.
    BadChecksum,
    /// Any other malformation; the [`WireError`] says which rule.
    Malformed(WireError),
    /// Ethernet destination is neither broadcast/multicast nor this interface's MAC.
    NotForUs,
    /// An ARP reply (only requests are answered).
    NotRequest,
    /// Sent by this interface itself.
    FromSelf,
    /// A gratuitous ARP from another host (sender IP = target IP): nothing to answer; if the
    /// IP is ours, someone else claims it.
    Gratuitous,
    /// The asked-for IP is not announced by this node.
    NotAnnounced,
    /// The IP is announced by this node, but not on the receiving interface.
    WrongInterface,
    /// The frame carries an 802.1Q/802.1ad tag: it belongs to a VLAN, and answering it on
    /// the untagged socket would answer on the wrong one.
    VlanTagged,
    /// The IP is ours to announce but not answered yet (probing for another host that
    /// uses it) or not any more (one does: `conflict`).
    Withheld,
}

impl DropReason {
    /// Every label [`DropReason::as_str`] can return, for pre-registering metrics.
    pub const LABELS: [&'static str; 15] = [
        "not_arp",
        "not_ipv6",
        "not_icmpv6",
        "not_neighbor_solicit",
        "bad_hop_limit",
        "bad_checksum",
        "malformed",
        "not_for_us",
        "not_request",
        "from_self",
        "gratuitous",
        "not_announced",
        "wrong_interface",
        "vlan_tagged",
        "withheld",
    ];

    /// Stable snake_case label, for metrics (bounded: one of [`DropReason::LABELS`]).
    pub fn as_str(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Position of this reason in [`DropReason::LABELS`], for counter arrays.
    pub fn index(&self) -> usize {
        match self {
            DropReason::NotArp => 0,
            DropReason::NotIpv6 => 1,
            DropReason::NotIcmpv6 => 2,
            DropReason::NotNeighborSolicit => 3,
            DropReason::BadHopLimit => 4,
            DropReason::BadChecksum => 5,
            DropReason::Malformed(_) => 6,
            DropReason::NotForUs => 7,
            DropReason::NotRequest => 8,
            DropReason::FromSelf => 9,
            DropReason::Gratuitous => 10,
            DropReason::NotAnnounced => 11,
            DropReason::WrongInterface => 12,
            DropReason::VlanTagged => 13,
            DropReason::Withheld => 14,
        }
    }
}

/// Maps parse errors of the NDP path to the reasons worth their own label.
impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NextHeader(_) => DropReason::NotIcmpv6,
            WireError::IcmpType(_) => DropReason::NotNeighborSolicit,
            WireError::HopLimit(_) => DropReason::BadHopLimit,
            WireError::Checksum { .. } => DropReason::BadChecksum,
            other => DropReason::Malformed(other),
        }
    }
}

/// Ethernet types of a VLAN tag: 802.1Q, 802.1ad (QinQ) and the older QinQ 0x9100.
const VLAN_ETHERTYPES: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// Whether the frame's Ethernet type is a VLAN tag. The kernel normally strips the tag
/// before a protocol socket sees the frame (and the socket filter drops such frames: see
/// `socket`), so this is the last line for a tag left in the frame.
fn vlan_tagged(frame: &[u8]) -> bool {
    frame
        .get(12..14)
        .is_some_and(|t| VLAN_ETHERTYPES.contains(&u16::from_be_bytes([t[0], t[1]])))
}

fn announced(set: &AnnounceSet, ip: IpAddr, iface_name: &str) -> Result<(), DropReason> {
    match set.lookup(ip, iface_name) {
        Announced::Here => Ok(()),
        Announced::OtherInterface => Err(DropReason::WrongInterface),
        Announced::No => Err(DropReason::NotAnnounced),
    }
}

/// Decides on one frame from the ARP socket of `iface_name` (whose MAC is `iface_mac`):
/// the reply to send, or why none.
///
/// Answered: requests (including RFC 5227 probes from 0.0.0.0, which Linux answers too, so
/// the prober learns the address is taken) for an IP announced on this interface, sent to
/// broadcast or to this interface's MAC, by someone else.
pub fn decide_arp(
    frame: &[u8],
    iface_mac: MacAddr,
    iface_name: &str,
    announced_set: &AnnounceSet,
) -> Result<ArpRepr, DropReason> {
    let eth = EthernetPacket::new(frame).ok_or(DropReason::Malformed(WireError::Truncated))?;
    if vlan_tagged(frame) {
        return Err(DropReason::VlanTagged);
    }
    if eth.get_ethertype().0 != ETHERTYPE_ARP {
        return Err(DropReason::NotArp);
    }
    let req = ArpRepr::parse(frame).map_err(DropReason::Malformed)?;
    let dst = eth.get_destination();
    if !dst.is_broadcast() && dst != iface_mac {
        return Err(DropReason::NotForUs);
    }
    if req.op != ArpOp::Request {
        return Err(DropReason::NotRequest);
    }
    if req.sender_mac == iface_mac || eth.get_source() == iface_mac {
        return Err(DropReason::FromSelf);
    }
    announced(announced_set, IpAddr::V4(req.target_ip), iface_name)?;
    if req.is_gratuitous() {
        return Err(DropReason::Gratuitous);
    }
    Ok(ArpRepr::reply_to(&req, iface_mac))
}

/// Decides on one frame from the NDP socket of `iface_name`: the Neighbor Advertisement to
/// send, or why none.
///
/// Answered: valid solicitations (RFC 4861 §7.1.1) for an IP announced on this interface,
/// multicast or unicast (NUD probes, with or without SLLA), and DAD probes (answered to
/// all-nodes, as §7.2.4 requires, defending the address).
pub fn decide_ndp(
    frame: &[u8],
    iface_mac: MacAddr,
    iface_name: &str,
    announced_set: &AnnounceSet,
) -> Result<NeighborAdvertRepr, DropReason> {
    if vlan_tagged(frame) {
        return Err(DropReason::VlanTagged);
    }
    let ns = NeighborSolicitRepr::parse(frame).map_err(|e| match e {
        WireError::EtherType(_) => DropReason::NotIpv6,
        other => DropReason::from(other),
    })?;
    if !ns.eth_dst.is_multicast() && ns.eth_dst != iface_mac {
        return Err(DropReason::NotForUs);
    }
    if ns.eth_src == iface_mac || ns.source_lladdr == Some(iface_mac) {
        return Err(DropReason::FromSelf);
    }
    announced(announced_set, IpAddr::V6(ns.target), iface_name)?;
    Ok(NeighborAdvertRepr::reply_to(&ns, iface_mac))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use super::*;
    use crate::wire::ETHERTYPE_IPV6;
    use crate::wire::ndp::{ALL_NODES, multicast_mac};

    const OUR_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x11);
    const PEER_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x21);
    const OTHER_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x31);
    const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
    const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const ELSEWHERE4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    const UNKNOWN4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
    const PEER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x21);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x10);
    const ELSEWHERE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x11);
    const UNKNOWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 0x99);

    fn mk_set() -> AnnounceSet {
        let ifaces = |names: &[&str]| -> Interfaces {
            Arc::new(names.iter().map(|s| s.to_string()).collect())
        };
        AnnounceSet::new(BTreeMap::from([
            (IpAddr::V4(VIP4), ifaces(&["eth0", "eth1"])),
            (IpAddr::V4(ELSEWHERE4), ifaces(&["eth1"])),
            (IpAddr::V6(VIP6), ifaces(&["eth0"])),
            (IpAddr::V6(ELSEWHERE6), ifaces(&["eth1"])),
            (IpAddr::V4(UNKNOWN4), ifaces(&[])),
        ]))
    }

    fn mk_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac,
            sender_ip,
            target_mac: MacAddr::zero(),
            target_ip,
        }
    }

    /// (name, frame, receiving interface, expected decision)
    type Case<T> = (&'static str, Vec<u8>, &'static str, Result<T, DropReason>);

    fn with_eth_dst(mut frame: Vec<u8>, dst: MacAddr) -> Vec<u8> {
        frame[0..6].copy_from_slice(&dst.octets());
        frame
    }

    #[test]
    fn arp_table() {
        let set = mk_set();
        let req = mk_request(PEER_MAC, PEER_V4, VIP4);
        let mut bad_htype = req.to_bytes();
        bad_htype[15] = 6;
        let mut ipv6_frame = req.to_bytes();
        ipv6_frame[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let reply = ArpRepr::reply_to(&mk_request(OUR_MAC, VIP4, PEER_V4), PEER_MAC).to_bytes();
        let cases: Vec<Case<ArpRepr>> = vec![
            (
                "broadcast request for our VIP",
                req.to_bytes(),
                "eth0",
                Ok(ArpRepr::reply_to(&req, OUR_MAC)),
            ),
            (
                "unicast request to our MAC",
                with_eth_dst(req.to_bytes(), OUR_MAC),
                "eth1",
                Ok(ArpRepr::reply_to(&req, OUR_MAC)),
            ),
            (
                "RFC 5227 probe",
                mk_request(PEER_MAC, Ipv4Addr::UNSPECIFIED, VIP4).to_bytes(),
                "eth0",
                Ok(ArpRepr {
                    target_ip: Ipv4Addr::UNSPECIFIED,
                    ..ArpRepr::reply_to(&req, OUR_MAC)
                }),
            ),
            ("IPv6 frame", ipv6_frame, "eth0", Err(DropReason::NotArp)),
            (
                "short frame",
                vec![0; 5],
                "eth0",
                Err(DropReason::Malformed(WireError::Truncated)),
            ),
            (
                "truncated ARP",
                req.to_bytes()[..30].to_vec(),
                "eth0",
                Err(DropReason::Malformed(WireError::Truncated)),
            ),
            (
                "not Ethernet",
                bad_htype,
                "eth0",
                Err(DropReason::Malformed(WireError::ArpHardwareType(6))),
            ),
            (
                "unicast to another MAC",
                with_eth_dst(req.to_bytes(), OTHER_MAC),
                "eth0",
                Err(DropReason::NotForUs),
            ),
            ("reply", reply, "eth0", Err(DropReason::NotRequest)),
            (
                "our own request",
                mk_request(OUR_MAC, PEER_V4, VIP4).to_bytes(),
                "eth0",
                Err(DropReason::FromSelf),
            ),
            (
                "our own gratuitous ARP looped back",
                ArpRepr::gratuitous(VIP4, OUR_MAC).to_bytes(),
                "eth0",
                Err(DropReason::FromSelf),
            ),
            (
                "someone else's gratuitous ARP for our VIP",
                ArpRepr::gratuitous(VIP4, PEER_MAC).to_bytes(),
                "eth0",
                Err(DropReason::Gratuitous),
            ),
            (
                "unknown IP",
                mk_request(PEER_MAC, PEER_V4, UNKNOWN4).to_bytes(),
                "eth0",
                Err(DropReason::NotAnnounced),
            ),
            (
                "gratuitous ARP for an IP not ours",
                ArpRepr::gratuitous(UNKNOWN4, PEER_MAC).to_bytes(),
                "eth0",
                Err(DropReason::NotAnnounced),
            ),
            (
                "announced on another interface",
                mk_request(PEER_MAC, PEER_V4, ELSEWHERE4).to_bytes(),
                "eth0",
                Err(DropReason::WrongInterface),
            ),
            (
                "announced interface unknown",
                req.to_bytes(),
                "eth9",
                Err(DropReason::WrongInterface),
            ),
        ];
        for (name, frame, iface, want) in cases {
            assert_eq!(decide_arp(&frame, OUR_MAC, iface, &set), want, "{name}");
        }
    }

    /// Recomputes the ICMPv6 checksum after a test edited the message.
    fn fix_checksum(frame: &mut [u8]) {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap());
        let sum = pnet_packet::util::ipv6_checksum(
            &frame[54..],
            1,
            &[],
            &src,
            &dst,
            pnet_packet::ip::IpNextHeaderProtocols::Icmpv6,
        );
        frame[56..58].copy_from_slice(&sum.to_be_bytes());
    }

    fn mk_ns(target: Ipv6Addr) -> NeighborSolicitRepr {
        NeighborSolicitRepr::multicast(PEER_V6, PEER_MAC, target)
    }

    #[test]
    fn ndp_table() {
        let set = mk_set();
        let ns = mk_ns(VIP6);
        let answer = NeighborAdvertRepr::reply_to(&ns, OUR_MAC);
        let nud = NeighborSolicitRepr {
            eth_dst: OUR_MAC,
            dst_ip: VIP6,
            source_lladdr: None,
            ..ns
        };
        let dad = NeighborSolicitRepr::multicast(Ipv6Addr::UNSPECIFIED, PEER_MAC, VIP6);
        let mut bad_sum = ns.to_bytes();
        bad_sum[57] ^= 1;
        let mut not_icmp = ns.to_bytes();
        not_icmp[20] = 17;
        let mut zero_opt = ns.to_bytes();
        zero_opt[79] = 0;
        fix_checksum(&mut zero_opt);
        let arp = mk_request(PEER_MAC, PEER_V4, VIP4).to_bytes();
        let cases: Vec<Case<NeighborAdvertRepr>> = vec![
            (
                "multicast NS for our VIP",
                ns.to_bytes(),
                "eth0",
                Ok(answer),
            ),
            (
                "NUD probe without SLLA",
                nud.to_bytes(),
                "eth0",
                Ok(NeighborAdvertRepr {
                    eth_dst: PEER_MAC,
                    ..answer
                }),
            ),
            (
                "DAD probe",
                dad.to_bytes(),
                "eth0",
                Ok(NeighborAdvertRepr {
                    eth_dst: multicast_mac(ALL_NODES),
                    dst_ip: ALL_NODES,
                    solicited: false,
                    ..answer
                }),
            ),
            ("ARP frame", arp, "eth0", Err(DropReason::NotIpv6)),
            ("UDP", not_icmp, "eth0", Err(DropReason::NotIcmpv6)),
            (
                "advertisement",
                answer.to_bytes(),
                "eth0",
                Err(DropReason::NotNeighborSolicit),
            ),
            (
                "hop limit 64",
                NeighborSolicitRepr {
                    hop_limit: 64,
                    ..ns
                }
                .to_bytes(),
                "eth0",
                Err(DropReason::BadHopLimit),
            ),
            (
                "bad checksum",
                bad_sum,
                "eth0",
                Err(DropReason::BadChecksum),
            ),
            (
                "zero-length option",
                zero_opt,
                "eth0",
                Err(DropReason::Malformed(WireError::OptionZeroLength)),
            ),
            (
                "unicast to another MAC",
                NeighborSolicitRepr {
                    eth_dst: OTHER_MAC,
                    ..nud
                }
                .to_bytes(),
                "eth0",
                Err(DropReason::NotForUs),
            ),
            (
                "our own solicitation",
                NeighborSolicitRepr::multicast(PEER_V6, OUR_MAC, VIP6).to_bytes(),
                "eth0",
                Err(DropReason::FromSelf),
            ),
            (
                "unknown IP",
                mk_ns(UNKNOWN6).to_bytes(),
                "eth0",
                Err(DropReason::NotAnnounced),
            ),
            (
                "IPv4 VIP's mapped form is not announced",
                mk_ns(VIP4.to_ipv6_mapped()).to_bytes(),
                "eth0",
                Err(DropReason::NotAnnounced),
            ),
            (
                "announced on another interface",
                mk_ns(ELSEWHERE6).to_bytes(),
                "eth0",
                Err(DropReason::WrongInterface),
            ),
        ];
        for (name, frame, iface, want) in cases {
            assert_eq!(decide_ndp(&frame, OUR_MAC, iface, &set), want, "{name}");
        }
    }

    #[test]
    fn labels_are_unique_and_indexed() {
        let all = [
            DropReason::NotArp,
            DropReason::NotIpv6,
            DropReason::NotIcmpv6,
            DropReason::NotNeighborSolicit,
            DropReason::BadHopLimit,
            DropReason::BadChecksum,
            DropReason::Malformed(WireError::Truncated),
            DropReason::NotForUs,
            DropReason::NotRequest,
            DropReason::FromSelf,
            DropReason::Gratuitous,
            DropReason::NotAnnounced,
            DropReason::WrongInterface,
            DropReason::VlanTagged,
        ];
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.as_str(), DropReason::LABELS[i]);
        }
        let unique: std::collections::BTreeSet<_> = DropReason::LABELS.iter().collect();
        assert_eq!(unique.len(), DropReason::LABELS.len());
    }

    #[test]
    fn empty_interface_sets_are_not_announced() {
        let set = mk_set();
        assert_eq!(set.lookup(IpAddr::V4(UNKNOWN4), "eth0"), Announced::No);
        assert_eq!(set.lookup(IpAddr::V4(VIP4), "eth1"), Announced::Here);
        assert!(!set.is_empty());
        assert!(AnnounceSet::default().is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let set = mk_set();
        let seeds = [
            mk_request(PEER_MAC, PEER_V4, VIP4).to_bytes(),
            mk_ns(VIP6).to_bytes(),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let mut rng = crate::wire::TestRng::new(99);
        for _ in 0..20_000 {
            let frame = rng.frame(&seeds);
            let _ = decide_arp(&frame, OUR_MAC, "eth0", &set);
            let _ = decide_ndp(&frame, OUR_MAC, "eth0", &set);
        }
    }

    /// Inserts a VLAN tag (`tpid`, VID 100) after the Ethernet addresses.
    fn tagged(frame: &[u8], tpid: u16) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&100u16.to_be_bytes());
        out.extend_from_slice(&frame[12..]);
        out
    }

    #[test]
    fn vlan_tagged_frames_are_not_answered_untagged() {
        let set = mk_set();
        let arp = mk_request(PEER_MAC, PEER_V4, VIP4).to_bytes();
        let ns = mk_ns(VIP6).to_bytes();
        assert!(decide_arp(&arp, OUR_MAC, "eth0", &set).is_ok());
        assert!(decide_ndp(&ns, OUR_MAC, "eth0", &set).is_ok());
        for tpid in [0x8100, 0x88a8, 0x9100] {
            let (arp, ns) = (tagged(&arp, tpid), tagged(&ns, tpid));
            assert_eq!(
                decide_arp(&arp, OUR_MAC, "eth0", &set),
                Err(DropReason::VlanTagged),
                "{tpid:#x}"
            );
            assert_eq!(
                decide_ndp(&ns, OUR_MAC, "eth0", &set),
                Err(DropReason::VlanTagged),
                "{tpid:#x}"
            );
            // Double-tagged (QinQ) as well.
            assert_eq!(
                decide_arp(&tagged(&arp, 0x88a8), OUR_MAC, "eth0", &set),
                Err(DropReason::VlanTagged)
            );
        }
    }
}
