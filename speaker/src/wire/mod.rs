//! Packet codecs for the layer-2 announcer: ARP (IPv4) and NDP (IPv6).
//!
//! ```text
//!   raw Ethernet frame ──parse──▶ typed Repr ──(responder decides)──▶ Repr ──emit──▶ frame
//!        &[u8]            (pnet_packet views,                              &mut [u8]
//!                          checked once)
//! ```
//!
//! Pure code in the smoltcp `wire` style: `pnet_packet` supplies zero-copy views of the
//! fixed headers, each codec puts a small typed `Repr` on top with `parse`, `buffer_len`
//! and `emit`. Nothing here touches a socket or the clock; every parser returns a precise
//! [`WireError`] and never panics on arbitrary input (see the fuzz loops in the tests and
//! the `fuzz/` target).

pub mod arp;
pub mod ndp;

pub use pnet_base::MacAddr;

/// Ethernet header length (no VLAN tag: AF_PACKET delivers frames with the tag stripped).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4 (the ARP protocol type for IPv4).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Why a frame could not be parsed or emitted; each variant names the exact rule broken.
///
/// None is retryable: the same bytes always fail the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is shorter than the headers it must or claims to contain.
    #[error("truncated frame")]
    Truncated,
    /// The EtherType is not the one this codec handles.
    #[error("unexpected ethertype {0:#06x}")]
    EtherType(u16),
    /// ARP hardware type is not Ethernet (1).
    #[error("ARP hardware type {0} is not Ethernet")]
    ArpHardwareType(u16),
    /// ARP protocol type is not IPv4 (0x0800).
    #[error("ARP protocol type {0:#06x} is not IPv4")]
    ArpProtocolType(u16),
    /// ARP hardware address length is not 6.
    #[error("ARP hardware address length {0} is not 6")]
    ArpHardwareLen(u8),
    /// ARP protocol address length is not 4.
    #[error("ARP protocol address length {0} is not 4")]
    ArpProtocolLen(u8),
    /// ARP operation is neither request (1) nor reply (2).
    #[error("ARP operation {0} is neither request nor reply")]
    ArpOperation(u16),
    /// The IP version nibble is not 6.
    #[error("IP version {0} is not 6")]
    IpVersion(u8),
    /// The IPv6 next header is not ICMPv6 (58); extension headers are not followed.
    #[error("IPv6 next header {0} is not ICMPv6")]
    NextHeader(u8),
    /// NDP messages must have hop limit 255 (RFC 4861 §7.1), proving they are on-link.
    #[error("hop limit {0} is not 255")]
    HopLimit(u8),
    /// The ICMPv6 checksum (RFC 4443 §2.3) does not match.
    #[error("ICMPv6 checksum {got:#06x}, expected {want:#06x}")]
    Checksum {
        /// Checksum carried by the packet.
        got: u16,
        /// Checksum computed over pseudo-header and message.
        want: u16,
    },
    /// The ICMPv6 type is not the NDP message this codec parses.
    #[error("ICMPv6 type {0} is not the expected NDP message")]
    IcmpType(u8),
    /// NDP messages must have ICMPv6 code 0.
    #[error("ICMPv6 code {0} is not 0")]
    IcmpCode(u8),
    /// The NDP target address is multicast (RFC 4861 §7.1.1, §7.1.2).
    #[error("NDP target is a multicast address")]
    MulticastTarget,
    /// The IPv6 source address is multicast (RFC 4291 §2.7: never a source).
    #[error("IPv6 source is a multicast address")]
    MulticastSource,
    /// A solicitation from `::` carries a source link-layer address option (RFC 4861 §7.1.1).
    #[error("solicitation from :: carries a source link-layer address")]
    UnspecifiedSourceWithLladdr,
    /// A solicitation from `::` is not sent to a solicited-node group (RFC 4861 §7.1.1).
    #[error("solicitation from :: is not sent to a solicited-node multicast group")]
    UnspecifiedSourceNotSolicitedNode,
    /// An advertisement to a multicast group has the Solicited flag set (RFC 4861 §7.1.2).
    #[error("multicast advertisement has the solicited flag")]
    SolicitedToMulticast,
    /// An advertisement carries no target link-layer address option (this codec needs one).
    #[error("advertisement carries no target link-layer address")]
    MissingTargetLladdr,
    /// An NDP option has length 0 (RFC 4861 §4.6: such packets must be discarded).
    #[error("NDP option with length 0")]
    OptionZeroLength,
    /// An NDP option runs past the end of the message.
    #[error("NDP option runs past the end of the message")]
    OptionTruncated,
    /// The output buffer is shorter than `buffer_len()`.
    #[error("buffer of {got} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the caller gave.
        got: usize,
    },
}

impl WireError {
    /// Stable snake_case label, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::EtherType(_) => "ethertype",
            WireError::ArpHardwareType(_) => "arp_hardware_type",
            WireError::ArpProtocolType(_) => "arp_protocol_type",
            WireError::ArpHardwareLen(_) => "arp_hardware_len",
            WireError::ArpProtocolLen(_) => "arp_protocol_len",
            WireError::ArpOperation(_) => "arp_operation",
            WireError::IpVersion(_) => "ip_version",
            WireError::NextHeader(_) => "next_header",
            WireError::HopLimit(_) => "hop_limit",
            WireError::Checksum { .. } => "checksum",
            WireError::IcmpType(_) => "icmp_type",
            WireError::IcmpCode(_) => "icmp_code",
            WireError::MulticastTarget => "multicast_target",
            WireError::MulticastSource => "multicast_source",
            WireError::UnspecifiedSourceWithLladdr => "unspecified_source_with_lladdr",
            WireError::UnspecifiedSourceNotSolicitedNode => "unspecified_source_not_solicited_node",
            WireError::SolicitedToMulticast => "solicited_to_multicast",
            WireError::MissingTargetLladdr => "missing_target_lladdr",
            WireError::OptionZeroLength => "option_zero_length",
            WireError::OptionTruncated => "option_truncated",
            WireError::BufferTooSmall { .. } => "buffer_too_small",
        }
    }
}

/// Fails with [`WireError::BufferTooSmall`] unless `buf` holds `needed` bytes.
fn check_buffer(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        return Err(WireError::BufferTooSmall {
            needed,
            got: buf.len(),
        });
    }
    Ok(())
}

/// Writes an Ethernet II header at the start of `buf` (caller checked the length).
fn emit_ethernet(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst.octets());
    buf[6..12].copy_from_slice(&src.octets());
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Parses a 6-byte hardware address; `bytes` must be at least 6 long.
fn mac_from(bytes: &[u8]) -> MacAddr {
    MacAddr::new(bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5])
}

/// Decodes a hex dump (whitespace ignored) into bytes; test vectors are written this way.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            other => panic!("not a hex digit: {}", other as char),
        })
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

/// A tiny deterministic PRNG (xorshift64*) so the "never panics" loops need no dependency.
#[cfg(test)]
pub(crate) struct TestRng(u64);

#[cfg(test)]
impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        TestRng(seed | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Random bytes, or a valid frame with a few bytes flipped and a random truncation.
    pub(crate) fn frame(&mut self, seeds: &[&[u8]]) -> Vec<u8> {
        if self.below(4) == 0 || seeds.is_empty() {
            let len = self.below(128);
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        let mut f = seeds[self.below(seeds.len())].to_vec();
        for _ in 0..=self.below(4) {
            let i = self.below(f.len());
            f[i] = self.next_u64() as u8;
        }
        let cut = self.below(f.len() + 8);
        f.truncate(cut);
        f
    }
}
