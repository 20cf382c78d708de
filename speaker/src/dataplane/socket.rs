//! Thin socket glue: one AF_PACKET socket per (interface, family), and solicited-node
//! multicast memberships.
//!
//! ```text
//!  socket2: AF_PACKET/SOCK_RAW, protocol 0 (receives nothing yet) ─▶ attach BPF ─▶ dup
//!     └─▶ pnet_datalink::channel(socket_fd, Layer3(ethertype)) binds ifindex + ethertype,
//!         then is dropped: the dup, bound and blocking, is the ResponderSocket
//!  worker: recv (blocks, SO_RCVTIMEO) ─▶ decide ─▶ send (bound address: no sockaddr)
//! ```
//!
//! Binding to ETH_P_ARP / ETH_P_IPV6 rather than ETH_P_ALL keeps the node's other traffic
//! out of user space and off the transmit path (ETH_P_ALL taps clone every sent packet).
//! The classic BPF filter ([`responder_filter`]) then passes only frames that really
//! arrived untagged on this interface (and, for NDP, only ICMPv6 Neighbor Solicitations,
//! plus Advertisements when conflict detection reads other hosts' claims).
//! The socket is not promiscuous. No `unsafe` here: socket2 and pnet own the system calls.
//!
//! pnet is used for the `bind` only (socket2 cannot build a `sockaddr_ll` safely). Its
//! channel polls before every read and every write; the responder instead blocks in `recv`
//! and sends on the bound socket directly: two system calls per answered frame instead of
//! four, no lock and no allocation between them.
//!
//! ## VLAN-tagged frames on the parent interface
//! A protocol socket bound to `eth0` is also handed frames that arrived on `eth0` tagged:
//! the kernel moves the 802.1Q/802.1ad tag out of the frame (NIC offload or
//! `skb_vlan_untag`) before protocol delivery, so the frame looks untagged. Then either
//! - a VLAN device for that VID exists (`eth0.100`): the frame is delivered with
//!   `skb->dev` = the VLAN device but still to `eth0`'s sockets (they match the original
//!   device), or
//! - none exists: the kernel marks it `PACKET_OTHERHOST` and clears the tag.
//!
//! Answering either would answer a tagged request untagged, on the wrong VLAN. pnet reads
//! with `recvfrom` and drops the `sockaddr_ll` (packet type, ifindex) and there is no
//! PACKET_AUXDATA to read, so the check runs in the kernel instead: the filter drops frames
//! whose packet type is OTHERHOST, whose device is not this interface, or that still carry
//! a tag in metadata (SKF_AD_PKTTYPE, SKF_AD_IFINDEX, SKF_AD_VLAN_TAG_PRESENT), whatever
//! the offload. The responder also refuses frames whose Ethernet type is 802.1Q/802.1ad
//! ([`super::DropReason::VlanTagged`]). Priority-tagged frames (VID 0) belong to the
//! untagged LAN and are answered, as the kernel's own ARP does.

use std::io::{self, Read};
use std::net::Ipv6Addr;
use std::os::fd::IntoRawFd;
use std::time::Duration;

use pnet_datalink::{Channel, ChannelType, FanoutOption, FanoutType, NetworkInterface};
use socket2::{Domain, Protocol, Socket, Type};

use super::links::LinkInfo;
pub use crate::bpf::Insn;
use crate::bpf::{self, ACCEPT, BPF_LD_B_ABS, BPF_LD_W_ABS, BPF_RET_K, jeq, op};
use crate::wire::{ETHERTYPE_ARP, ETHERTYPE_IPV6};

/// Address family of a responder: ARP for IPv4, NDP for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4: ARP.
    V4,
    /// IPv6: Neighbor Discovery.
    V6,
}

impl Family {
    /// `arp` or `ndp`, for logs and thread names.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "arp",
            Family::V6 => "ndp",
        }
    }
}

/// Ancillary loads (linux/filter.h): `SKF_AD_OFF` (-0x1000) plus the field.
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PKTTYPE: u32 = SKF_AD_OFF + 4;
const SKF_AD_IFINDEX: u32 = SKF_AD_OFF + 8;
const SKF_AD_VLAN_TAG_PRESENT: u32 = SKF_AD_OFF + 48;
/// `skb->pkt_type` of a frame for another host (linux/if_packet.h).
const PACKET_OTHERHOST: u32 = 3;

/// One test of the filter: load a value, compare it with a constant, drop on mismatch
/// (`keep_if_equal`) or on match (`!keep_if_equal`).
struct Check {
    load: Insn,
    value: u32,
    keep_if_equal: bool,
}

/// The kernel filter of a responder socket on interface `ifindex`: passes only frames that
/// arrived untagged on that very interface, for this host or broadcast/multicast (see the
/// module documentation); for NDP, only ICMPv6 (next header 58 right after the fixed
/// header) Neighbor Solicitations (type 135), and Neighbor Advertisements (136) too when
/// `advertisements` (conflict detection reads them for other hosts' claims).
pub fn responder_filter(family: Family, ifindex: u32, advertisements: bool) -> Vec<Insn> {
    let mut checks = vec![
        Check {
            load: op(BPF_LD_W_ABS, SKF_AD_PKTTYPE),
            value: PACKET_OTHERHOST,
            keep_if_equal: false,
        },
        Check {
            load: op(BPF_LD_W_ABS, SKF_AD_IFINDEX),
            value: ifindex,
            keep_if_equal: true,
        },
        Check {
            load: op(BPF_LD_W_ABS, SKF_AD_VLAN_TAG_PRESENT),
            value: 0,
            keep_if_equal: true,
        },
    ];
    // ICMPv6 types passed (any of them), for NDP.
    let mut types: Vec<u32> = Vec::new();
    if family == Family::V6 {
        checks.push(Check {
            load: op(BPF_LD_B_ABS, 20), // IPv6 next header
            value: 58,
            keep_if_equal: true,
        });
        types.push(135);
        if advertisements {
            types.push(136);
        }
    }
    // Layout: (load, jeq) per check; then, for NDP, one load of the ICMPv6 type and a jeq
    // per accepted type; then "ret ACCEPT", then "ret 0".
    let n = checks.len();
    let len = 2 * n + if types.is_empty() { 0 } else { 1 + types.len() } + 2;
    let (accept, drop) = (len - 2, len - 1);
    // Offset of a jump from the instruction at `pc` to `to`.
    let off = |pc: usize, to: usize| u8::try_from(to - pc - 1).expect("short program");
    let mut prog = Vec::with_capacity(len);
    for c in checks {
        let pc = prog.len() + 1;
        let (jt, jf) = if c.keep_if_equal {
            (0, off(pc, drop))
        } else {
            (off(pc, drop), 0)
        };
        prog.push(c.load);
        prog.push(jeq(c.value, jt, jf));
    }
    if !types.is_empty() {
        prog.push(op(BPF_LD_B_ABS, 54)); // ICMPv6 type
        for (j, t) in types.iter().enumerate() {
            let pc = prog.len();
            let jf = if j + 1 == types.len() {
                off(pc, drop)
            } else {
                0
            };
            prog.push(jeq(*t, off(pc, accept), jf));
        }
    }
    prog.push(op(BPF_RET_K, ACCEPT));
    prog.push(op(BPF_RET_K, 0));
    debug_assert_eq!(prog.len(), len);
    prog
}

/// Longest a send may block on a full socket buffer before it fails.
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// Receive buffer asked for: frames queue here while the responder thread waits for a CPU
/// (a storm on a busy node). The kernel doubles it, capped at twice `net.core.rmem_max`:
/// 2 MiB, or 416 KiB with the default `rmem_max` (about 500 queued requests, 25 ms at
/// 20,000 requests/s), against 208 KiB by default.
const RECV_BUFFER_BYTES: usize = 1 << 20;

/// A responder's AF_PACKET socket, bound to one interface and one protocol, filtered
/// ([`responder_filter`]) and blocking: frames in, whole Ethernet frames out.
#[derive(Debug)]
pub struct ResponderSocket {
    socket: Socket,
}

impl ResponderSocket {
    /// Opens the responder socket of `family` on interface `name`; a receive waits at most
    /// `read_timeout`; `advertisements`: NDP sockets also read Neighbor Advertisements.
    /// `fanout`: joins the PACKET_FANOUT_CPU group of that id, whose frames each go to the
    /// member numbered (the CPU that received it) modulo (the group's size), the members
    /// numbered in the order they joined.
    pub fn open(
        name: &str,
        link: &LinkInfo,
        family: Family,
        read_timeout: Duration,
        advertisements: bool,
        fanout: Option<u16>,
    ) -> io::Result<ResponderSocket> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        socket.attach_filter(&bpf::to_socket(&responder_filter(
            family,
            link.index,
            advertisements,
        )))?;
        // The dup shares the socket (filter, binding, flags); pnet's descriptor closes
        // with its channel below.
        let responder = socket.try_clone()?;
        let ethertype = match family {
            Family::V4 => ETHERTYPE_ARP,
            Family::V6 => ETHERTYPE_IPV6,
        };
        let iface = NetworkInterface {
            name: name.to_string(),
            description: String::new(),
            index: link.index,
            mac: Some(link.mac),
            ips: Vec::new(),
            flags: 0,
        };
        let config = pnet_datalink::Config {
            channel_type: ChannelType::Layer3(ethertype),
            promiscuous: false,
            socket_fd: Some(socket.into_raw_fd()),
            linux_fanout: fanout.map(|group_id| FanoutOption {
                group_id,
                fanout_type: FanoutType::CPU,
                defrag: false,
                rollover: false,
            }),
            ..Default::default()
        };
        match pnet_datalink::channel(&iface, config)? {
            Channel::Ethernet(..) => {}
            _ => return Err(io::Error::other("pnet returned a non-Ethernet channel")),
        }
        // pnet made the (shared) file non-blocking; the responder blocks in recv instead.
        responder.set_nonblocking(false)?;
        responder.set_recv_buffer_size(RECV_BUFFER_BYTES)?;
        responder.set_read_timeout(Some(read_timeout))?;
        responder.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(ResponderSocket { socket: responder })
    }

    /// Waits (at most the read timeout) for one frame and reads it into `buf`; `None` when
    /// none came in time or a signal interrupted the wait. A longer frame is truncated.
    pub fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        match (&self.socket).read(buf) {
            Ok(n) => Ok(Some(&buf[..n.min(buf.len())])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one whole Ethernet frame out of the bound interface (safe from any thread).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = self.socket.send(frame)?;
        if n != frame.len() {
            return Err(io::Error::other(format!(
                "short send: {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }
}

/// A membership in one IPv6 multicast group on one interface, held while it lives.
///
/// Real NICs filter multicast they were not asked for, so the solicited-node group of every
/// announced IPv6 address is joined (through an unbound UDP socket: no port is opened).
#[derive(Debug)]
pub struct Membership {
    _socket: Socket,
}

impl Membership {
    /// Joins `group` on interface `ifindex`; leaving happens on drop.
    pub fn join(group: Ipv6Addr, ifindex: u32) -> io::Result<Membership> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
        socket.join_multicast_v6(&group, ifindex)?;
        Ok(Membership { _socket: socket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::BPF_JEQ_K;
    use crate::wire::MacAddr;
    use crate::wire::arp::ArpRepr;
    use crate::wire::ndp::{NeighborAdvertRepr, NeighborSolicitRepr};

    /// What the kernel knows about a received frame besides its bytes.
    #[derive(Clone, Copy)]
    struct Meta {
        pkttype: u32,
        ifindex: u32,
        vlan_tag_present: bool,
    }

    const HOST: u32 = 0;
    const BROADCAST: u32 = 1;
    const MULTICAST: u32 = 2;
    const ETH0: u32 = 2;
    const ETH0_100: u32 = 7;

    /// A classic BPF interpreter for the instructions the filter uses, as the kernel
    /// runs them (an out-of-range packet load drops the frame).
    fn run(prog: &[Insn], frame: &[u8], meta: Meta) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        SKF_AD_PKTTYPE => meta.pkttype,
                        SKF_AD_IFINDEX => meta.ifindex,
                        SKF_AD_VLAN_TAG_PRESENT => u32::from(meta.vlan_tag_present),
                        k => panic!("unexpected word load {k:#x}"),
                    }
                }
                BPF_LD_B_ABS => match frame.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const PEER: MacAddr = MacAddr(2, 0, 0, 0, 0, 0x21);

    fn meta(pkttype: u32) -> Meta {
        Meta {
            pkttype,
            ifindex: ETH0,
            vlan_tag_present: false,
        }
    }

    #[test]
    fn filter_passes_only_untagged_frames_of_this_interface() {
        let arp = ArpRepr {
            op: crate::wire::arp::ArpOp::Request,
            sender_mac: PEER,
            sender_ip: "198.51.100.21".parse().unwrap(),
            target_mac: MacAddr::zero(),
            target_ip: "203.0.113.10".parse().unwrap(),
        }
        .to_bytes();
        let ns = NeighborSolicitRepr::multicast(
            "2001:db8:100::21".parse().unwrap(),
            PEER,
            "2001:db8:200::10".parse().unwrap(),
        )
        .to_bytes();
        let na =
            NeighborAdvertRepr::unsolicited("2001:db8:200::10".parse().unwrap(), PEER).to_bytes();
        let tagged_elsewhere = Meta {
            ifindex: ETH0_100,
            ..meta(BROADCAST)
        };
        let tag_in_metadata = Meta {
            vlan_tag_present: true,
            ..meta(BROADCAST)
        };
        // (case, family, frame, metadata, passed)
        let cases: Vec<(&str, Family, &[u8], Meta, bool)> = vec![
            (
                "broadcast ARP request",
                Family::V4,
                &arp,
                meta(BROADCAST),
                true,
            ),
            ("unicast ARP to us", Family::V4, &arp, meta(HOST), true),
            (
                "tagged, no VLAN device: OTHERHOST",
                Family::V4,
                &arp,
                meta(3),
                false,
            ),
            (
                "tagged for eth0.100",
                Family::V4,
                &arp,
                tagged_elsewhere,
                false,
            ),
            (
                "tag still in metadata",
                Family::V4,
                &arp,
                tag_in_metadata,
                false,
            ),
            ("multicast NS", Family::V6, &ns, meta(MULTICAST), true),
            ("unicast NS (NUD)", Family::V6, &ns, meta(HOST), true),
            ("NA", Family::V6, &na, meta(MULTICAST), false),
            (
                "NA, with advertisements",
                Family::V6,
                &na,
                meta(MULTICAST),
                true,
            ),
            ("tagged NS, no VLAN device", Family::V6, &ns, meta(3), false),
            (
                "tagged NS for eth0.100",
                Family::V6,
                &ns,
                tagged_elsewhere,
                false,
            ),
            (
                "NS with tag in metadata",
                Family::V6,
                &ns,
                tag_in_metadata,
                false,
            ),
            (
                "truncated IPv6",
                Family::V6,
                &ns[..30],
                meta(MULTICAST),
                false,
            ),
        ];
        for (name, family, frame, m, passed) in cases {
            let prog = responder_filter(family, ETH0, name.contains("with advertisements"));
            let verdict = run(&prog, frame, m);
            assert_eq!(verdict != 0, passed, "{name}");
            if passed {
                assert_eq!(verdict, ACCEPT, "{name}");
            }
        }
    }

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        for (family, advertisements) in
            [(Family::V4, false), (Family::V6, false), (Family::V6, true)]
        {
            let prog = responder_filter(family, 9, advertisements);
            assert!(prog.len() <= 32);
            for (pc, i) in prog.iter().enumerate() {
                if i.code == BPF_JEQ_K {
                    for off in [i.jt, i.jf] {
                        let to = pc + 1 + usize::from(off);
                        assert!(to < prog.len(), "{family:?} pc {pc}");
                        assert!(matches!(
                            prog[to].code,
                            BPF_RET_K | BPF_LD_W_ABS | BPF_LD_B_ABS | BPF_JEQ_K
                        ));
                    }
                }
            }
            assert_eq!(prog[prog.len() - 1], op(BPF_RET_K, 0));
        }
    }
}
