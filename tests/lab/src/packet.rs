//! Pure ARP/NDP frame codec for the lab's observer and probes (no sockets here).
//!
//! ```text
//!   Ethernet ─┬─ 0x0806 ARP (RFC 826)          request / reply, gratuitous when SPA == TPA
//!             └─ 0x86dd IPv6 ─ 58 ICMPv6       135 NS / 136 NA (RFC 4861 §4.3, §4.4),
//!                                              unsolicited NA = S flag clear
//! ```
//! `parse` turns one captured frame into a [`Seen`]; `arp_request` and
//! `neighbor_solicitation` build the probes' requests; `arp_probe` / `dad_solicitation`
//! (RFC 5227 §2.1, RFC 4862 §5.4) and `gratuitous_arp` / `unsolicited_na` (RFC 5227 §3,
//! RFC 4861 §7.2.6) are what a host checking or claiming an address sends (a rogue host:
//! [`crate::rogue`]); `arp_answer` and `na_answer` read a reply without its Ethernet header
//! (a storm's receiver: [`crate::storm`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use pnet_base::MacAddr;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::Icmpv6Packet;
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

/// Which neighbour-discovery message a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// ARP request ("who has TPA").
    ArpRequest,
    /// ARP reply ("SPA is at SHA").
    ArpReply,
    /// ICMPv6 Neighbor Solicitation.
    NeighborSolicitation,
    /// ICMPv6 Neighbor Advertisement.
    NeighborAdvertisement,
}

/// One ARP/NDP message seen on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// When the observer read it.
    pub at: Instant,
    /// Message kind.
    pub kind: Kind,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// The link-layer address the message advertises or asks from: ARP SHA; NS source
    /// link-layer option; NA target link-layer option (else the Ethernet source).
    pub sender_mac: MacAddr,
    /// ARP SPA, or the IPv6 source address.
    pub sender_ip: IpAddr,
    /// ARP TPA, or the NS/NA target address (the address being resolved or announced).
    pub target_ip: IpAddr,
    /// Gratuitous ARP (SPA == TPA, or a broadcast reply) or unsolicited NA (S clear).
    pub gratuitous: bool,
    /// NA Override flag (false for everything else).
    pub override_flag: bool,
}

impl Seen {
    /// Whether this announces or answers for `ip` (an ARP reply / gratuitous ARP from `ip`,
    /// or an NA for target `ip`).
    pub fn answers_for(&self, ip: IpAddr) -> bool {
        match self.kind {
            Kind::ArpReply => self.sender_ip == ip,
            Kind::ArpRequest => self.gratuitous && self.sender_ip == ip,
            Kind::NeighborAdvertisement => self.target_ip == ip,
            Kind::NeighborSolicitation => false,
        }
    }
}

/// Parses an Ethernet frame; `None` for anything but ARP over Ethernet/IPv4 and NS/NA.
pub fn parse(frame: &[u8], at: Instant) -> Option<Seen> {
    let eth = EthernetPacket::new(frame)?;
    let (eth_src, eth_dst) = (eth.get_source(), eth.get_destination());
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let arp = ArpPacket::new(eth.payload())?;
            if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
                || arp.get_protocol_type() != EtherTypes::Ipv4
                || arp.get_hw_addr_len() != 6
                || arp.get_proto_addr_len() != 4
            {
                return None;
            }
            let kind = match arp.get_operation() {
                ArpOperations::Request => Kind::ArpRequest,
                ArpOperations::Reply => Kind::ArpReply,
                _ => return None,
            };
            let (spa, tpa) = (arp.get_sender_proto_addr(), arp.get_target_proto_addr());
            let gratuitous =
                spa == tpa || (kind == Kind::ArpReply && eth_dst == MacAddr::broadcast());
            Some(Seen {
                at,
                kind,
                eth_src,
                eth_dst,
                sender_mac: arp.get_sender_hw_addr(),
                sender_ip: IpAddr::V4(spa),
                target_ip: IpAddr::V4(tpa),
                gratuitous,
                override_flag: false,
            })
        }
        EtherTypes::Ipv6 => {
            let ip6 = Ipv6Packet::new(eth.payload())?;
            if ip6.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
                return None;
            }
            let len = usize::from(ip6.get_payload_length()).min(ip6.payload().len());
            let icmp = &ip6.payload()[..len];
            if icmp.len() < 24 || icmp[1] != 0 {
                return None;
            }
            let kind = match icmp[0] {
                135 => Kind::NeighborSolicitation,
                136 => Kind::NeighborAdvertisement,
                _ => return None,
            };
            let flags = icmp[4];
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
            // Options: type, length in units of 8 bytes, data (RFC 4861 §4.6).
            let wanted = if kind == Kind::NeighborSolicitation {
                1
            } else {
                2
            };
            let mut lladdr = None;
            let mut opts = &icmp[24..];
            while opts.len() >= 8 {
                let olen = usize::from(opts[1]) * 8;
                if olen == 0 || olen > opts.len() {
                    break;
                }
                if opts[0] == wanted && olen >= 8 {
                    lladdr = Some(MacAddr::new(
                        opts[2], opts[3], opts[4], opts[5], opts[6], opts[7],
                    ));
                }
                opts = &opts[olen..];
            }
            let solicited = flags & 0x40 != 0;
            let is_na = kind == Kind::NeighborAdvertisement;
            Some(Seen {
                at,
                kind,
                eth_src,
                eth_dst,
                sender_mac: lladdr.unwrap_or(eth_src),
                sender_ip: IpAddr::V6(ip6.get_source()),
                target_ip: IpAddr::V6(target),
                gratuitous: is_na && !solicited,
                override_flag: is_na && flags & 0x20 != 0,
            })
        }
        _ => None,
    }
}

/// A broadcast ARP request for `target` from (`src_mac`, `src_ip`).
pub fn arp_request(src_mac: MacAddr, src_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + 28];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("sized");
        eth.set_destination(MacAddr::broadcast());
        eth.set_source(src_mac);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp = MutableArpPacket::new(&mut buf[14..]).expect("sized");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(src_mac);
    arp.set_sender_proto_addr(src_ip);
    arp.set_target_hw_addr(MacAddr::zero());
    arp.set_target_proto_addr(target);
    buf
}

/// The solicited-node multicast group of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast address of an IPv6 multicast group (33:33 + low 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

/// A multicast Neighbor Solicitation for `target` from (`src_mac`, `src_ip`), with a
/// source link-layer address option (RFC 4861 §4.3).
pub fn neighbor_solicitation(src_mac: MacAddr, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![0u8; 32];
    icmp[0] = 135;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 1;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&src_mac.octets());
    let group = solicited_node(target);
    icmpv6_frame(src_mac, multicast_mac(group), src_ip, group, icmp)
}

/// An ARP Probe for `target` (RFC 5227 §2.1.1): a broadcast request with sender IP 0.0.0.0,
/// asking whether anyone already uses the address.
pub fn arp_probe(src_mac: MacAddr, target: Ipv4Addr) -> Vec<u8> {
    arp_request(src_mac, Ipv4Addr::UNSPECIFIED, target)
}

/// An ARP Announcement of `ip` (RFC 5227 §3, a gratuitous ARP): a broadcast request with
/// sender and target IP both `ip`, claiming it for `src_mac`.
pub fn gratuitous_arp(src_mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp_request(src_mac, ip, ip)
}

/// A Duplicate Address Detection solicitation for `target` (RFC 4862 §5.4.2): from `::` to
/// the target's solicited-node group, without a source link-layer option (RFC 4861 §4.3
/// forbids it from `::`, and Linux drops a DAD NS carrying one).
pub fn dad_solicitation(src_mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![0u8; 24];
    icmp[0] = 135;
    icmp[8..24].copy_from_slice(&target.octets());
    let group = solicited_node(target);
    icmpv6_frame(
        src_mac,
        multicast_mac(group),
        Ipv6Addr::UNSPECIFIED,
        group,
        icmp,
    )
}

/// An unsolicited Neighbor Advertisement of `target` (RFC 4861 §7.2.6): from `target`
/// itself to all-nodes (ff02::1), Solicited clear, Override set, with a target link-layer
/// option naming `src_mac`: the IPv6 form of a gratuitous ARP.
pub fn unsolicited_na(src_mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![0u8; 32];
    icmp[0] = 136;
    icmp[4] = 0x20;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 2;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&src_mac.octets());
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    icmpv6_frame(src_mac, multicast_mac(all_nodes), target, all_nodes, icmp)
}

/// An Ethernet + IPv6 frame (hop limit 255, as NDP requires) around the ICMPv6 message
/// `icmp`, whose checksum field is filled in here.
fn icmpv6_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let sum =
        pnet_packet::icmpv6::checksum(&Icmpv6Packet::new(&icmp).expect("sized"), &src_ip, &dst_ip);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut buf = vec![0u8; 14 + 40];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("sized");
        eth.set_destination(dst_mac);
        eth.set_source(src_mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip6 = MutableIpv6Packet::new(&mut buf[14..]).expect("sized");
        ip6.set_version(6);
        ip6.set_payload_length(u16::try_from(icmp.len()).expect("small ICMPv6 message"));
        ip6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip6.set_hop_limit(255);
        ip6.set_source(src_ip);
        ip6.set_destination(dst_ip);
    }
    buf.extend_from_slice(&icmp);
    buf
}

/// A reply as read from a network-layer packet socket (no Ethernet header): which address
/// it answers for, to which address, and who answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The resolved address: ARP SPA, or the NA target.
    pub answered: IpAddr,
    /// The asker's address: ARP TPA, or the NA's IPv6 destination.
    pub to: IpAddr,
    /// The answerer's link-layer address: ARP SHA, or the NA target link-layer option.
    pub mac: MacAddr,
}

/// Reads an ARP reply (RFC 826) addressed to `to_mac` from the ARP packet alone.
pub fn arp_answer(arp: &[u8], to_mac: MacAddr) -> Option<Answer> {
    let arp = ArpPacket::new(arp)?;
    if arp.get_operation() != ArpOperations::Reply
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
        || arp.get_target_hw_addr() != to_mac
    {
        return None;
    }
    Some(Answer {
        answered: IpAddr::V4(arp.get_sender_proto_addr()),
        to: IpAddr::V4(arp.get_target_proto_addr()),
        mac: arp.get_sender_hw_addr(),
    })
}

/// Reads a solicited Neighbor Advertisement (RFC 4861 §4.4) from the IPv6 packet alone;
/// an NA without a target link-layer option has no answerer to name and is skipped.
pub fn na_answer(ipv6: &[u8]) -> Option<Answer> {
    let ip6 = Ipv6Packet::new(ipv6)?;
    if ip6.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
        return None;
    }
    let len = usize::from(ip6.get_payload_length()).min(ip6.payload().len());
    let icmp = &ip6.payload()[..len];
    // type 136, code 0, S flag set, then the target and a TLLA option (type 2, length 1).
    if icmp.len() < 32 || icmp[0] != 136 || icmp[1] != 0 || icmp[4] & 0x40 == 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let olen = usize::from(opts[1]) * 8;
        if olen == 0 || olen > opts.len() {
            return None;
        }
        if opts[0] == 2 {
            return Some(Answer {
                answered: IpAddr::V6(target),
                to: IpAddr::V6(ip6.get_destination()),
                mac: MacAddr::new(opts[2], opts[3], opts[4], opts[5], opts[6], opts[7]),
            });
        }
        opts = &opts[olen..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x51);

    /// A gratuitous ARP request for 203.0.113.10, as a speaker sends it (RFC 5227 §2.3).
    const GARP: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x11, 0x08, 0x06, //
        0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x11, 203, 0, 113, 10, //
        0, 0, 0, 0, 0, 0, 203, 0, 113, 10,
    ];

    /// An unsolicited NA (S=0, O=1) for 2001:db8:200::10 to ff02::1 with a target LL option
    /// (checksum left zero).
    fn unsolicited_na_frame() -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 0x12, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&"2001:db8:100::12".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]);
        f.extend_from_slice(&"2001:db8:200::10".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&[2, 1, 0x02, 0, 0, 0, 0, 0x12]);
        f
    }

    #[test]
    fn parses_gratuitous_arp() {
        let s = parse(&GARP, Instant::now()).unwrap();
        assert_eq!(s.kind, Kind::ArpRequest);
        assert!(s.gratuitous);
        assert_eq!(s.sender_mac, MacAddr::new(2, 0, 0, 0, 0, 0x11));
        assert!(s.answers_for("203.0.113.10".parse().unwrap()));
        assert!(!s.answers_for("203.0.113.11".parse().unwrap()));
    }

    #[test]
    fn parses_unsolicited_na() {
        let s = parse(&unsolicited_na_frame(), Instant::now()).unwrap();
        assert_eq!(s.kind, Kind::NeighborAdvertisement);
        assert!(s.gratuitous && s.override_flag);
        assert_eq!(s.sender_mac, MacAddr::new(2, 0, 0, 0, 0, 0x12));
        assert_eq!(s.target_ip, "2001:db8:200::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn arp_request_round_trips() {
        let f = arp_request(
            CLIENT,
            "198.51.100.51".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        );
        let s = parse(&f, Instant::now()).unwrap();
        assert_eq!(s.kind, Kind::ArpRequest);
        assert!(!s.gratuitous);
        assert_eq!(s.eth_dst, MacAddr::broadcast());
        assert_eq!(s.target_ip, "203.0.113.10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn solicitation_round_trips_with_valid_checksum() {
        let src: Ipv6Addr = "2001:db8:100::51".parse().unwrap();
        let target: Ipv6Addr = "2001:db8:200::10".parse().unwrap();
        let f = neighbor_solicitation(CLIENT, src, target);
        let s = parse(&f, Instant::now()).unwrap();
        assert_eq!(s.kind, Kind::NeighborSolicitation);
        assert_eq!(s.sender_mac, CLIENT);
        assert_eq!(s.target_ip, IpAddr::V6(target));
        assert_eq!(s.eth_dst, MacAddr::new(0x33, 0x33, 0xff, 0, 0, 0x10));
        let icmp = Icmpv6Packet::new(&f[54..]).unwrap();
        let group = solicited_node(target);
        assert_eq!(group, "ff02::1:ff00:10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            pnet_packet::icmpv6::checksum(&icmp, &src, &group),
            icmp.get_checksum()
        );
    }

    /// An ARP reply from 203.0.113.10 (02:00:00:00:00:11) to 198.51.100.130 at CLIENT, as
    /// a speaker answers it: the ARP packet without its Ethernet header.
    const ARP_REPLY: [u8; 28] = [
        0, 1, 0x08, 0, 6, 4, 0, 2, 0x02, 0, 0, 0, 0, 0x11, 203, 0, 113, 10, //
        0x02, 0, 0, 0, 0, 0x51, 198, 51, 100, 130,
    ];

    #[test]
    fn reads_arp_answers_to_us_only() {
        let a = arp_answer(&ARP_REPLY, CLIENT).unwrap();
        assert_eq!(a.answered, "203.0.113.10".parse::<IpAddr>().unwrap());
        assert_eq!(a.to, "198.51.100.130".parse::<IpAddr>().unwrap());
        assert_eq!(a.mac, MacAddr::new(2, 0, 0, 0, 0, 0x11));
        assert!(arp_answer(&ARP_REPLY, MacAddr::new(2, 0, 0, 0, 0, 0x52)).is_none());
        let mut request = ARP_REPLY;
        request[7] = 1;
        assert!(arp_answer(&request, CLIENT).is_none());
        assert!(arp_answer(&GARP[14..], CLIENT).is_none());
    }

    #[test]
    fn reads_solicited_na_answers() {
        // The unsolicited NA with S set and a unicast destination: a solicited answer.
        let mut na = unsolicited_na_frame();
        na[54 + 4] = 0x60;
        let to: Ipv6Addr = "2001:db8:100::1:7".parse().unwrap();
        na[38..54].copy_from_slice(&to.octets());
        let a = na_answer(&na[14..]).unwrap();
        assert_eq!(a.answered, "2001:db8:200::10".parse::<IpAddr>().unwrap());
        assert_eq!(a.to, IpAddr::V6(to));
        assert_eq!(a.mac, MacAddr::new(2, 0, 0, 0, 0, 0x12));
        assert!(na_answer(&unsolicited_na_frame()[14..]).is_none());
        let ns = neighbor_solicitation(CLIENT, to, "2001:db8:200::10".parse().unwrap());
        assert!(na_answer(&ns[14..]).is_none());
    }

    /// Checks an NDP frame's ICMPv6 checksum against its own IPv6 addresses.
    fn icmpv6_checksum_ok(f: &[u8]) -> bool {
        let ip6 = Ipv6Packet::new(&f[14..]).unwrap();
        let icmp = Icmpv6Packet::new(&f[54..]).unwrap();
        pnet_packet::icmpv6::checksum(&icmp, &ip6.get_source(), &ip6.get_destination())
            == icmp.get_checksum()
    }

    #[test]
    fn arp_probe_and_announcement() {
        let vip: Ipv4Addr = "203.0.113.10".parse().unwrap();
        let probe = parse(&arp_probe(CLIENT, vip), Instant::now()).unwrap();
        assert_eq!(probe.kind, Kind::ArpRequest);
        assert_eq!(probe.sender_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(probe.target_ip, IpAddr::V4(vip));
        assert!(!probe.gratuitous && !probe.answers_for(IpAddr::V4(vip)));
        // The announcement is byte for byte the speaker's gratuitous ARP, but for the MAC.
        let garp = gratuitous_arp(MacAddr::new(2, 0, 0, 0, 0, 0x11), vip);
        assert_eq!(garp, GARP);
        let seen = parse(&garp, Instant::now()).unwrap();
        assert!(seen.gratuitous && seen.answers_for(IpAddr::V4(vip)));
    }

    #[test]
    fn dad_solicitation_is_from_unspecified_without_options() {
        let target: Ipv6Addr = "2001:db8:200::10".parse().unwrap();
        let f = dad_solicitation(CLIENT, target);
        assert_eq!(f.len(), 14 + 40 + 24);
        let s = parse(&f, Instant::now()).unwrap();
        assert_eq!(s.kind, Kind::NeighborSolicitation);
        assert_eq!(s.sender_ip, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(s.target_ip, IpAddr::V6(target));
        assert_eq!(s.eth_dst, MacAddr::new(0x33, 0x33, 0xff, 0, 0, 0x10));
        assert!(icmpv6_checksum_ok(&f));
    }

    #[test]
    fn unsolicited_na_is_the_frame_parse_reads() {
        let target: Ipv6Addr = "2001:db8:200::10".parse().unwrap();
        let f = unsolicited_na(MacAddr::new(2, 0, 0, 0, 0, 0x12), target);
        let want = unsolicited_na_frame();
        // The same frame but the IPv6 source (the target itself here) and the checksum.
        assert_eq!(f[..22], want[..22]);
        assert_eq!(f[38..56], want[38..56]);
        assert_eq!(f[58..], want[58..]);
        let s = parse(&f, Instant::now()).unwrap();
        assert!(s.gratuitous && s.override_flag);
        assert_eq!(s.sender_ip, IpAddr::V6(target));
        assert!(s.answers_for(IpAddr::V6(target)));
        assert!(icmpv6_checksum_ok(&f));
    }

    #[test]
    fn ignores_other_frames() {
        assert!(parse(&[0u8; 10], Instant::now()).is_none());
        let mut ipv4 = GARP;
        ipv4[13] = 0x00; // ethertype 0x0800
        assert!(parse(&ipv4, Instant::now()).is_none());
    }
}
