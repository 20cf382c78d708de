//! IPv6 Neighbor Discovery: Neighbor Solicitation and Advertisement (RFC 4861 §4.3–4.4,
//! validation §7.1, answering §7.2), ICMPv6 checksum (RFC 4443 §2.3).
//!
//! ```text
//!  Ethernet  dst(6) src(6) type=0x86dd(2)                                          14
//!  IPv6      ver/tc/flow(4) payload_len(2) next=58(1) hop_limit=255(1) src(16) dst(16)  40
//!  ICMPv6    type=135 NS | 136 NA (1) code=0(1) checksum(2)
//!            NS: reserved(4)                NA: R|S|O flags(1) reserved(3)
//!            target(16)                                                            24
//!  options   type(1) len(1, in 8-octet units) data…   SLLA=1 / TLLA=2: MAC(6)       8 each
//! ```
//!
//! The IPv6 header must be followed directly by ICMPv6: NDP senders never put extension
//! headers in front of NS/NA (and neither Linux nor MetalLB follows them), so a frame with
//! extension headers is reported as [`WireError::NextHeader`]. Unknown options (e.g. the
//! RFC 7527 nonce Linux puts in DAD probes) are skipped; bytes after the IPv6 payload
//! (Ethernet padding) are ignored.

use std::net::Ipv6Addr;

use pnet_packet::ethernet::EthernetPacket;
use pnet_packet::icmpv6::Icmpv6Packet;
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::util::ipv6_checksum;

use super::{
    ETHERNET_HEADER_LEN, ETHERTYPE_IPV6, MacAddr, WireError, check_buffer, emit_ethernet, mac_from,
};

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of the NS/NA ICMPv6 body before options (type, code, checksum, flags, target).
pub const NDP_BODY_LEN: usize = 24;
/// Length of a source/target link-layer address option for Ethernet.
pub const LLADDR_OPTION_LEN: usize = 8;
/// ICMPv6 type of a Neighbor Solicitation.
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
/// Hop limit every NDP message carries and requires (RFC 4861 §7.1).
pub const NDP_HOP_LIMIT: u8 = 255;
/// All-nodes link-local multicast group, destination of unsolicited advertisements.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;
const IPPROTO_ICMPV6: u8 = 58;

/// The solicited-node multicast group of `ip` (RFC 4291 §2.7.1): `ff02::1:ffXX:XXXX`.
pub fn solicited_node_multicast(ip: Ipv6Addr) -> Ipv6Addr {
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

/// True if `ip` is in `ff02::1:ff00:0/104`, the solicited-node groups.
pub fn is_solicited_node_multicast(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
}

/// Ethernet multicast address of an IPv6 multicast group (RFC 2464 §7): `33:33` + low 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

/// A Neighbor Solicitation as received in an Ethernet frame (RFC 4861 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborSolicitRepr {
    /// Ethernet source; where a reply goes when the solicitation has no SLLA (NUD probes).
    pub eth_src: MacAddr,
    /// Ethernet destination (the solicited-node group's MAC or a unicast MAC).
    pub eth_dst: MacAddr,
    /// IPv6 source; `::` during duplicate address detection.
    pub src_ip: Ipv6Addr,
    /// IPv6 destination: solicited-node group of `target`, or `target` itself (NUD).
    pub dst_ip: Ipv6Addr,
    /// The address whose link-layer address is asked for.
    pub target: Ipv6Addr,
    /// Source link-layer address option, absent in DAD and often in NUD probes.
    pub source_lladdr: Option<MacAddr>,
    /// IPv6 hop limit; parsing accepts only 255.
    pub hop_limit: u8,
}

/// A Neighbor Advertisement with a target link-layer address option (RFC 4861 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighborAdvertRepr {
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination (the asker, or `33:33:00:00:00:01` for all-nodes).
    pub eth_dst: MacAddr,
    /// IPv6 source; we use the target address itself, as Linux does for its own addresses.
    pub src_ip: Ipv6Addr,
    /// IPv6 destination: the asker, or ff02::1.
    pub dst_ip: Ipv6Addr,
    /// The address being advertised.
    pub target: Ipv6Addr,
    /// R flag: the sender is a router. Always false for a load-balancer address.
    pub router: bool,
    /// S flag: this answers a solicitation (confirms reachability).
    pub solicited: bool,
    /// O flag: replace an existing cache entry; what takeover needs.
    pub override_: bool,
    /// Target link-layer address option: the MAC that answers for `target`.
    pub target_lladdr: MacAddr,
}

/// The pieces of an Ethernet/IPv6/ICMPv6 frame both NDP messages share.
struct Icmpv6Frame<'a> {
    eth_src: MacAddr,
    eth_dst: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    hop_limit: u8,
    /// The ICMPv6 message, cut to the IPv6 payload length.
    icmp: &'a [u8],
}

/// Parses Ethernet + IPv6 and checks what every NS/NA must satisfy, in an order that
/// gives the most useful error first: not ICMPv6, wrong type, then hop limit, checksum,
/// code, length.
fn parse_icmpv6(frame: &[u8], want_type: u8) -> Result<Icmpv6Frame<'_>, WireError> {
    let eth = EthernetPacket::new(frame).ok_or(WireError::Truncated)?;
    let ethertype = eth.get_ethertype().0;
    if ethertype != ETHERTYPE_IPV6 {
        return Err(WireError::EtherType(ethertype));
    }
    let ip_bytes = &frame[ETHERNET_HEADER_LEN..];
    let ip = Ipv6Packet::new(ip_bytes).ok_or(WireError::Truncated)?;
    if ip.get_version() != 6 {
        return Err(WireError::IpVersion(ip.get_version()));
    }
    if ip.get_next_header().0 != IPPROTO_ICMPV6 {
        return Err(WireError::NextHeader(ip.get_next_header().0));
    }
    let payload_len = usize::from(ip.get_payload_length());
    let icmp = ip_bytes
        .get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len)
        .ok_or(WireError::Truncated)?;
    let view = Icmpv6Packet::new(icmp).ok_or(WireError::Truncated)?;
    if view.get_icmpv6_type().0 != want_type {
        return Err(WireError::IcmpType(view.get_icmpv6_type().0));
    }
    if ip.get_hop_limit() != NDP_HOP_LIMIT {
        return Err(WireError::HopLimit(ip.get_hop_limit()));
    }
    let (src_ip, dst_ip) = (ip.get_source(), ip.get_destination());
    let want = icmpv6_checksum(icmp, src_ip, dst_ip);
    if view.get_checksum() != want {
        return Err(WireError::Checksum {
            got: view.get_checksum(),
            want,
        });
    }
    if view.get_icmpv6_code().0 != 0 {
        return Err(WireError::IcmpCode(view.get_icmpv6_code().0));
    }
    if icmp.len() < NDP_BODY_LEN {
        return Err(WireError::Truncated);
    }
    Ok(Icmpv6Frame {
        eth_src: eth.get_source(),
        eth_dst: eth.get_destination(),
        src_ip,
        dst_ip,
        hop_limit: ip.get_hop_limit(),
        icmp,
    })
}

/// ICMPv6 checksum over the RFC 2460 §8.1 pseudo-header, the checksum field taken as zero.
fn icmpv6_checksum(icmp: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
    ipv6_checksum(icmp, 1, &[], &src, &dst, IpNextHeaderProtocols::Icmpv6)
}

/// Walks the options (RFC 4861 §4.6) and returns the first link-layer address option of
/// type `want`; rejects zero-length and overrunning options, skips unknown ones.
fn find_lladdr_option(mut opts: &[u8], want: u8) -> Result<Option<MacAddr>, WireError> {
    let mut found = None;
    while !opts.is_empty() {
        if opts.len() < 2 {
            return Err(WireError::OptionTruncated);
        }
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return Err(WireError::OptionZeroLength);
        }
        if len > opts.len() {
            return Err(WireError::OptionTruncated);
        }
        if opts[0] == want && found.is_none() {
            // len >= 8, so the 6 address bytes after type and length are there.
            found = Some(mac_from(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Ok(found)
}

fn target_of(icmp: &[u8]) -> Ipv6Addr {
    let mut t = [0u8; 16];
    t.copy_from_slice(&icmp[8..24]);
    Ipv6Addr::from(t)
}

/// Writes Ethernet + IPv6 headers and an NDP body with one link-layer option, then the
/// checksum. `buf` has been checked to hold `len` bytes.
#[allow(clippy::too_many_arguments)]
fn emit_ndp(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ips: (Ipv6Addr, Ipv6Addr),
    hop_limit: u8,
    icmp_type: u8,
    flags: u8,
    target: Ipv6Addr,
    option: Option<(u8, MacAddr)>,
) -> Result<usize, WireError> {
    let icmp_len = NDP_BODY_LEN + option.map_or(0, |_| LLADDR_OPTION_LEN);
    let total = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + icmp_len;
    check_buffer(buf, total)?;
    let buf = &mut buf[..total];
    emit_ethernet(buf, eth.1, eth.0, ETHERTYPE_IPV6);
    {
        let mut ip =
            MutableIpv6Packet::new(&mut buf[ETHERNET_HEADER_LEN..]).ok_or(WireError::Truncated)?;
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_length(icmp_len as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(hop_limit);
        ip.set_source(ips.0);
        ip.set_destination(ips.1);
    }
    let icmp = &mut buf[ETHERNET_HEADER_LEN + IPV6_HEADER_LEN..];
    icmp[0] = icmp_type;
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4] = flags;
    icmp[5..8].fill(0);
    icmp[8..24].copy_from_slice(&target.octets());
    if let Some((kind, mac)) = option {
        icmp[24] = kind;
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&mac.octets());
    }
    let sum = icmpv6_checksum(icmp, ips.0, ips.1);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ok(total)
}

impl NeighborSolicitRepr {
    /// Parses and validates a whole Ethernet frame per RFC 4861 §7.1.1.
    pub fn parse(frame: &[u8]) -> Result<NeighborSolicitRepr, WireError> {
        let f = parse_icmpv6(frame, TYPE_NEIGHBOR_SOLICIT)?;
        let target = target_of(f.icmp);
        if target.is_multicast() {
            return Err(WireError::MulticastTarget);
        }
        // RFC 4291 §2.7: never a source. Answering would send a solicited advertisement to a
        // multicast address, which RFC 4861 §7.1.2 makes invalid (found by fuzzing).
        if f.src_ip.is_multicast() {
            return Err(WireError::MulticastSource);
        }
        let source_lladdr = find_lladdr_option(&f.icmp[NDP_BODY_LEN..], OPT_SOURCE_LLADDR)?;
        if f.src_ip.is_unspecified() {
            if source_lladdr.is_some() {
                return Err(WireError::UnspecifiedSourceWithLladdr);
            }
            if !is_solicited_node_multicast(f.dst_ip) {
                return Err(WireError::UnspecifiedSourceNotSolicitedNode);
            }
        }
        Ok(NeighborSolicitRepr {
            eth_src: f.eth_src,
            eth_dst: f.eth_dst,
            src_ip: f.src_ip,
            dst_ip: f.dst_ip,
            target,
            source_lladdr,
            hop_limit: f.hop_limit,
        })
    }

    /// A solicitation for `target` from `src_ip`/`our_mac` to its solicited-node group,
    /// as a host resolving an address sends it (with SLLA unless the source is `::`).
    pub fn multicast(src_ip: Ipv6Addr, our_mac: MacAddr, target: Ipv6Addr) -> Self {
        let group = solicited_node_multicast(target);
        NeighborSolicitRepr {
            eth_src: our_mac,
            eth_dst: multicast_mac(group),
            src_ip,
            dst_ip: group,
            target,
            source_lladdr: (!src_ip.is_unspecified()).then_some(our_mac),
            hop_limit: NDP_HOP_LIMIT,
        }
    }

    /// True during duplicate address detection: the source is `::`.
    pub fn is_dad(&self) -> bool {
        self.src_ip.is_unspecified()
    }

    /// Bytes [`NeighborSolicitRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
            + IPV6_HEADER_LEN
            + NDP_BODY_LEN
            + self.source_lladdr.map_or(0, |_| LLADDR_OPTION_LEN)
    }

    /// Writes the whole Ethernet frame with a correct checksum into `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        emit_ndp(
            buf,
            (self.eth_src, self.eth_dst),
            (self.src_ip, self.dst_ip),
            self.hop_limit,
            TYPE_NEIGHBOR_SOLICIT,
            0,
            self.target,
            self.source_lladdr.map(|m| (OPT_SOURCE_LLADDR, m)),
        )
    }

    /// The emitted frame as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0; self.buffer_len()];
        // Cannot fail: the buffer has exactly buffer_len() bytes.
        let _ = self.emit(&mut buf);
        buf
    }
}

impl NeighborAdvertRepr {
    /// Parses and validates a whole Ethernet frame per RFC 4861 §7.1.2; an advertisement
    /// without a target link-layer address option is refused (we only model that form).
    pub fn parse(frame: &[u8]) -> Result<NeighborAdvertRepr, WireError> {
        let f = parse_icmpv6(frame, TYPE_NEIGHBOR_ADVERT)?;
        let target = target_of(f.icmp);
        if target.is_multicast() {
            return Err(WireError::MulticastTarget);
        }
        let flags = f.icmp[4];
        let solicited = flags & FLAG_SOLICITED != 0;
        if solicited && f.dst_ip.is_multicast() {
            return Err(WireError::SolicitedToMulticast);
        }
        let target_lladdr = find_lladdr_option(&f.icmp[NDP_BODY_LEN..], OPT_TARGET_LLADDR)?
            .ok_or(WireError::MissingTargetLladdr)?;
        Ok(NeighborAdvertRepr {
            eth_src: f.eth_src,
            eth_dst: f.eth_dst,
            src_ip: f.src_ip,
            dst_ip: f.dst_ip,
            target,
            router: flags & FLAG_ROUTER != 0,
            solicited,
            override_: flags & FLAG_OVERRIDE != 0,
            target_lladdr,
        })
    }

    /// The answer to `ns` (RFC 4861 §7.2.4): Override set, sent from the target address.
    ///
    /// A DAD probe (source `::`) is answered to all-nodes with Solicited clear; otherwise
    /// the reply is unicast with Solicited set, to the SLLA or, for NUD probes without one,
    /// to the Ethernet source of the solicitation.
    pub fn reply_to(ns: &NeighborSolicitRepr, our_mac: MacAddr) -> NeighborAdvertRepr {
        let (dst_ip, eth_dst, solicited) = if ns.is_dad() {
            (ALL_NODES, multicast_mac(ALL_NODES), false)
        } else {
            (ns.src_ip, ns.source_lladdr.unwrap_or(ns.eth_src), true)
        };
        NeighborAdvertRepr {
            eth_src: our_mac,
            eth_dst,
            src_ip: ns.target,
            dst_ip,
            target: ns.target,
            router: false,
            solicited,
            override_: true,
            target_lladdr: our_mac,
        }
    }

    /// Unsolicited advertisement at takeover (RFC 4861 §7.2.6): to ff02::1, O=1, S=0.
    pub fn unsolicited(vip: Ipv6Addr, our_mac: MacAddr) -> NeighborAdvertRepr {
        NeighborAdvertRepr {
            eth_src: our_mac,
            eth_dst: multicast_mac(ALL_NODES),
            src_ip: vip,
            dst_ip: ALL_NODES,
            target: vip,
            router: false,
            solicited: false,
            override_: true,
            target_lladdr: our_mac,
        }
    }

    /// Bytes [`NeighborAdvertRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + NDP_BODY_LEN + LLADDR_OPTION_LEN
    }

    /// Writes the whole Ethernet frame (hop limit 255, TLLA option, checksum) into `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut flags = 0;
        if self.router {
            flags |= FLAG_ROUTER;
        }
        if self.solicited {
            flags |= FLAG_SOLICITED;
        }
        if self.override_ {
            flags |= FLAG_OVERRIDE;
        }
        emit_ndp(
            buf,
            (self.eth_src, self.eth_dst),
            (self.src_ip, self.dst_ip),
            NDP_HOP_LIMIT,
            TYPE_NEIGHBOR_ADVERT,
            flags,
            self.target,
            Some((OPT_TARGET_LLADDR, self.target_lladdr)),
        )
    }

    /// The emitted frame as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0; self.buffer_len()];
        // Cannot fail: the buffer has exactly buffer_len() bytes.
        let _ = self.emit(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{TestRng, hex};

    const NODE_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x11);
    const CLIENT_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x21);
    const NODE_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11);
    const CLIENT_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x21);

    /// Linux 6.18 client resolving 2001:db8:100::11 (captured with tcpdump in a lab netns).
    fn captured_ns() -> Vec<u8> {
        hex("3333 ff00 0011 0200 0000 0021 86dd 6000
             0000 0020 3aff 2001 0db8 0100 0000 0000
             0000 0000 0021 ff02 0000 0000 0000 0000
             0001 ff00 0011 8700 19c9 0000 0000 2001
             0db8 0100 0000 0000 0000 0000 0011 0101
             0200 0000 0021")
    }

    /// Linux 6.18 kernel's answer to [`captured_ns`] (captured).
    fn captured_na() -> Vec<u8> {
        hex("0200 0000 0021 0200 0000 0011 86dd 6000
             0000 0020 3aff 2001 0db8 0100 0000 0000
             0000 0000 0011 2001 0db8 0100 0000 0000
             0000 0000 0021 8800 8724 6000 0000 2001
             0db8 0100 0000 0000 0000 0000 0011 0201
             0200 0000 0011")
    }

    /// Linux 6.18 DAD probe for 2001:db8:100::11, with an RFC 7527 nonce option (captured).
    fn captured_dad() -> Vec<u8> {
        hex("3333 ff00 0011 0200 0000 0011 86dd 6000
             0000 0020 3aff 0000 0000 0000 0000 0000
             0000 0000 0000 ff02 0000 0000 0000 0000
             0001 ff00 0011 8700 ba4c 0000 0000 2001
             0db8 0100 0000 0000 0000 0000 0011 0e01
             5a3b 6013 c928")
    }

    /// Linux 6.18 unsolicited NA (`ndisc_notify=1`) for 2001:db8:100::11 (captured).
    fn captured_unsolicited() -> Vec<u8> {
        hex("3333 0000 0001 0200 0000 0011 86dd 6000
             0000 0020 3aff 2001 0db8 0100 0000 0000
             0000 0000 0011 ff02 0000 0000 0000 0000
             0000 0000 0001 8800 f6fa 2000 0000 2001
             0db8 0100 0000 0000 0000 0000 0011 0201
             0200 0000 0011")
    }

    /// Unicast NUD probe without SLLA, as non-Linux hosts send it (hand-assembled,
    /// checksum computed independently).
    fn nud_probe() -> Vec<u8> {
        hex("0200 0000 0011 0200 0000 0021 86dd 6000
             0000 0018 3aff 2001 0db8 0100 0000 0000
             0000 0000 0021 2001 0db8 0100 0000 0000
             0000 0000 0011 8700 ec3e 0000 0000 2001
             0db8 0100 0000 0000 0000 0000 0011")
    }

    #[test]
    fn helpers() {
        let vip: Ipv6Addr = "2001:db8:200::1234:5678".parse().unwrap();
        let group = solicited_node_multicast(vip);
        assert_eq!(group, "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap());
        assert!(is_solicited_node_multicast(group));
        assert!(!is_solicited_node_multicast(ALL_NODES));
        assert!(!is_solicited_node_multicast(vip));
        assert_eq!(
            multicast_mac(group),
            MacAddr(0x33, 0x33, 0xff, 0x34, 0x56, 0x78)
        );
        assert_eq!(multicast_mac(ALL_NODES), MacAddr(0x33, 0x33, 0, 0, 0, 1));
    }

    #[test]
    fn parses_captured_solicitation_and_emits_it_back() {
        let ns = NeighborSolicitRepr::parse(&captured_ns()).unwrap();
        assert_eq!(
            ns,
            NeighborSolicitRepr {
                eth_src: CLIENT_MAC,
                eth_dst: MacAddr(0x33, 0x33, 0xff, 0, 0, 0x11),
                src_ip: CLIENT_IP,
                dst_ip: solicited_node_multicast(NODE_IP),
                target: NODE_IP,
                source_lladdr: Some(CLIENT_MAC),
                hop_limit: 255,
            }
        );
        assert!(!ns.is_dad());
        assert_eq!(ns.to_bytes(), captured_ns());
        assert_eq!(
            NeighborSolicitRepr::multicast(CLIENT_IP, CLIENT_MAC, NODE_IP),
            ns
        );
    }

    #[test]
    fn answer_matches_the_kernel_byte_for_byte() {
        let ns = NeighborSolicitRepr::parse(&captured_ns()).unwrap();
        let na = NeighborAdvertRepr::reply_to(&ns, NODE_MAC);
        assert!(na.solicited && na.override_ && !na.router);
        assert_eq!(na.to_bytes(), captured_na());
        assert_eq!(NeighborAdvertRepr::parse(&captured_na()).unwrap(), na);
    }

    #[test]
    fn unsolicited_matches_the_kernel_byte_for_byte() {
        let na = NeighborAdvertRepr::unsolicited(NODE_IP, NODE_MAC);
        assert_eq!(na.to_bytes(), captured_unsolicited());
        assert_eq!(
            NeighborAdvertRepr::parse(&captured_unsolicited()).unwrap(),
            na
        );
    }

    #[test]
    fn dad_probe_is_answered_to_all_nodes() {
        let ns = NeighborSolicitRepr::parse(&captured_dad()).unwrap();
        assert!(ns.is_dad());
        assert_eq!(ns.source_lladdr, None);
        assert_eq!(ns.target, NODE_IP);
        let na = NeighborAdvertRepr::reply_to(&ns, CLIENT_MAC);
        assert_eq!(na.dst_ip, ALL_NODES);
        assert_eq!(na.eth_dst, multicast_mac(ALL_NODES));
        assert!(!na.solicited && na.override_);
        assert_eq!(NeighborAdvertRepr::parse(&na.to_bytes()), Ok(na));
    }

    #[test]
    fn nud_probe_without_slla_is_answered_to_the_ethernet_source() {
        let ns = NeighborSolicitRepr::parse(&nud_probe()).unwrap();
        assert_eq!(ns.source_lladdr, None);
        assert_eq!(ns.dst_ip, NODE_IP);
        let na = NeighborAdvertRepr::reply_to(&ns, NODE_MAC);
        assert_eq!(na.eth_dst, CLIENT_MAC);
        assert_eq!(na.dst_ip, CLIENT_IP);
        assert!(na.solicited);
        let mut emitted = ns;
        emitted.source_lladdr = None;
        assert_eq!(emitted.to_bytes(), nud_probe());
    }

    #[test]
    fn padding_is_ignored() {
        let mut frame = nud_probe();
        frame.extend_from_slice(&[0; 10]);
        assert_eq!(
            NeighborSolicitRepr::parse(&frame),
            NeighborSolicitRepr::parse(&nud_probe())
        );
    }

    /// Rewrites IPv6 payload bytes and fixes the checksum so that later checks are reached.
    fn patched(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
        let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
        let end = (54 + len).min(f.len());
        let sum = icmpv6_checksum(&f[54..end], src, dst);
        f[56..58].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn every_solicitation_error_variant() {
        let ok = captured_ns();
        let parse = |f: &[u8]| NeighborSolicitRepr::parse(f);
        assert_eq!(parse(&ok[..13]), Err(WireError::Truncated));
        assert_eq!(parse(&ok[..53]), Err(WireError::Truncated));
        assert_eq!(parse(&ok[..85]), Err(WireError::Truncated));
        assert_eq!(
            parse(&patched(&ok, 12, &[0x08, 0x06])),
            Err(WireError::EtherType(0x0806))
        );
        assert_eq!(
            parse(&patched(&ok, 14, &[0x40])),
            Err(WireError::IpVersion(4))
        );
        assert_eq!(
            parse(&patched(&ok, 20, &[0])),
            Err(WireError::NextHeader(0))
        );
        assert_eq!(
            parse(&patched(&ok, 54, &[136])),
            Err(WireError::IcmpType(136))
        );
        assert_eq!(
            parse(&patched(&ok, 21, &[64])),
            Err(WireError::HopLimit(64))
        );
        let mut bad_sum = ok.clone();
        bad_sum[57] ^= 0xff;
        assert!(matches!(
            parse(&bad_sum),
            Err(WireError::Checksum {
                got: 0x1936,
                want: 0x19c9
            })
        ));
        assert_eq!(parse(&patched(&ok, 55, &[1])), Err(WireError::IcmpCode(1)));
        // Payload length 20: the ICMPv6 message is shorter than an NS.
        assert_eq!(
            parse(&patched(&ok, 18, &[0, 20])),
            Err(WireError::Truncated)
        );
        assert_eq!(
            parse(&patched(&ok, 62, &[0xff, 0x02])),
            Err(WireError::MulticastTarget)
        );
        // A multicast source (found by fuzzing: it was answered to a multicast address).
        assert_eq!(
            parse(&patched(&ok, 22, &[0xff, 0x02])),
            Err(WireError::MulticastSource)
        );
        assert_eq!(
            parse(&patched(&ok, 79, &[0])),
            Err(WireError::OptionZeroLength)
        );
        assert_eq!(
            parse(&patched(&ok, 79, &[2])),
            Err(WireError::OptionTruncated)
        );
        // Payload length 25: one stray byte after the body, too short for an option header.
        assert_eq!(
            parse(&patched(&ok, 18, &[0, 25])),
            Err(WireError::OptionTruncated)
        );
        // Source :: with an SLLA.
        assert_eq!(
            parse(&patched(&ok, 22, &[0; 16])),
            Err(WireError::UnspecifiedSourceWithLladdr)
        );
        // Source :: without SLLA, sent to all-nodes rather than the solicited-node group.
        let dad = captured_dad();
        assert_eq!(
            parse(&patched(&dad, 38, &ALL_NODES.octets())),
            Err(WireError::UnspecifiedSourceNotSolicitedNode)
        );
        let mut small = [0u8; 85];
        assert_eq!(
            NeighborSolicitRepr::parse(&ok).unwrap().emit(&mut small),
            Err(WireError::BufferTooSmall {
                needed: 86,
                got: 85
            })
        );
    }

    #[test]
    fn every_advertisement_error_variant() {
        let ok = captured_na();
        let parse = |f: &[u8]| NeighborAdvertRepr::parse(f);
        assert_eq!(
            parse(&captured_ns()),
            Err(WireError::IcmpType(TYPE_NEIGHBOR_SOLICIT))
        );
        assert_eq!(parse(&patched(&ok, 21, &[1])), Err(WireError::HopLimit(1)));
        assert_eq!(
            parse(&patched(&ok, 62, &[0xff, 0x02])),
            Err(WireError::MulticastTarget)
        );
        // Solicited flag on an advertisement to ff02::1.
        assert_eq!(
            parse(&patched(&captured_unsolicited(), 58, &[0x60])),
            Err(WireError::SolicitedToMulticast)
        );
        // Option type 2 turned into 1 (SLLA): no TLLA left.
        assert_eq!(
            parse(&patched(&ok, 78, &[1])),
            Err(WireError::MissingTargetLladdr)
        );
        let mut small = [0u8; 10];
        assert!(matches!(
            NeighborAdvertRepr::unsolicited(NODE_IP, NODE_MAC).emit(&mut small),
            Err(WireError::BufferTooSmall { needed: 86, .. })
        ));
    }

    #[test]
    fn round_trips() {
        let mut rng = TestRng::new(11);
        let mac = |r: &mut TestRng| {
            let b = r.next_u64().to_be_bytes();
            MacAddr::new(b[0], b[1], b[2], b[3], b[4], b[5])
        };
        let unicast = |r: &mut TestRng| {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&r.next_u64().to_be_bytes());
            o[8..].copy_from_slice(&r.next_u64().to_be_bytes());
            o[0] = 0x20;
            Ipv6Addr::from(o)
        };
        for _ in 0..500 {
            let target = unicast(&mut rng);
            let ns = NeighborSolicitRepr::multicast(unicast(&mut rng), mac(&mut rng), target);
            assert_eq!(NeighborSolicitRepr::parse(&ns.to_bytes()), Ok(ns));
            let na = NeighborAdvertRepr {
                router: rng.below(2) == 0,
                ..NeighborAdvertRepr::reply_to(&ns, mac(&mut rng))
            };
            assert_eq!(NeighborAdvertRepr::parse(&na.to_bytes()), Ok(na));
            let un = NeighborAdvertRepr::unsolicited(target, mac(&mut rng));
            assert_eq!(NeighborAdvertRepr::parse(&un.to_bytes()), Ok(un));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let seeds = [
            captured_ns(),
            captured_na(),
            captured_dad(),
            captured_unsolicited(),
            nud_probe(),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let mut rng = TestRng::new(0xfeed);
        for _ in 0..20_000 {
            let frame = rng.frame(&seeds);
            if let Ok(ns) = NeighborSolicitRepr::parse(&frame) {
                assert_eq!(NeighborSolicitRepr::parse(&ns.to_bytes()), Ok(ns));
            }
            if let Ok(na) = NeighborAdvertRepr::parse(&frame) {
                assert_eq!(NeighborAdvertRepr::parse(&na.to_bytes()), Ok(na));
            }
        }
    }
}
