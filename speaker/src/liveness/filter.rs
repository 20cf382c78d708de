//! The kernel's half of the source check: a classic BPF program on the heartbeat socket
//! that passes only datagrams whose source (address and port) is a member's heartbeat
//! address, so a flood from anywhere else (another host, or another socket of a member's
//! host) is dropped by the kernel before it is queued: it never wakes the heartbeat
//! thread nor fills its receive buffer.
//!
//! ```text
//!   ldb [net+0] >> 4 ─ 4 ─▶ ldh [0] (UDP source port) == a member's? ─▶ ld [net+12]
//!                  │                                  (IPv4 source) == a member's? ─▶ accept
//!                  └ 6 ─▶ ldh [0] == ? ─▶ ld [net+8], [net+12], [net+16], [net+20] == ? ─▶ accept
//!   anything else ─▶ drop
//! ```
//!
//! Loads at `SKF_NET_OFF` read the IP header whatever the socket's family, so a dual-stack
//! socket filters IPv4 datagrams by their real IPv4 source (members published as
//! IPv4-mapped addresses are compared as IPv4); a UDP socket's filter sees the datagram
//! from its UDP header, so `ldh [0]` is the source port (a speaker sends from the port it
//! listens on and publishes). Members are grouped by port (one group in practice), each
//! group a linear scan: two instructions per IPv4 member, nine per IPv6 member, within the
//! kernel's 4,096 (`BPF_MAXINSNS`): about 2,000 IPv4 or 450 IPv6 members. Beyond that there
//! is no kernel filter and the thread's own lookup does the job alone.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

pub use crate::bpf::Insn;
use crate::bpf::{
    ACCEPT, BPF_ALU_RSH_K, BPF_JMP_JA, BPF_LD_B_ABS, BPF_LD_H_ABS, BPF_LD_W_ABS, BPF_RET_K, jeq, op,
};

/// Negative load offsets from here address the network (IP) header (`SKF_NET_OFF`).
const SKF_NET_OFF: u32 = 0xfff0_0000;
/// Longest classic BPF program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// `ip`, with an IPv4-mapped IPv6 address as plain IPv4 (what arrives on the wire).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One family's section: per port, a dispatch (`ldh [0]`, `jeq`, `ja`), then per port
/// the list of addresses; `compare` emits one address's test (ending in an accept) given
/// the section's instructions so far.
fn section<A: Copy>(
    groups: &BTreeMap<u16, Vec<A>>,
    per_addr: usize,
    load: &[Insn],
    compare: impl Fn(A) -> Vec<Insn>,
) -> Option<Vec<Insn>> {
    let mut p = Vec::new();
    // Dispatch: 3 instructions per port, then a drop; the lists follow.
    let dispatch = 3 * groups.len() + 1;
    let mut list_at = dispatch;
    for (i, (port, addrs)) in groups.iter().enumerate() {
        p.push(op(BPF_LD_H_ABS, 0));
        p.push(jeq(u32::from(*port), 0, 1));
        // From after this ja (3i + 3) to this port's list.
        p.push(op(BPF_JMP_JA, u32::try_from(list_at - (3 * i + 3)).ok()?));
        list_at += load.len() + per_addr * addrs.len() + 1;
    }
    p.push(op(BPF_RET_K, 0));
    for addrs in groups.values() {
        p.extend_from_slice(load);
        for a in addrs {
            p.extend(compare(*a));
        }
        p.push(op(BPF_RET_K, 0));
    }
    Some(p)
}

/// The filter passing datagrams from `sources` (address and port) only; `None` when it
/// would not fit [`MAX_INSNS`] (then the socket runs without one).
pub fn source_filter(sources: impl IntoIterator<Item = SocketAddr>) -> Option<Vec<Insn>> {
    let mut v4: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    let mut v6: BTreeMap<u16, Vec<[u32; 4]>> = BTreeMap::new();
    for s in sources {
        match canonical(s.ip()) {
            IpAddr::V4(a) => v4.entry(s.port()).or_default().push(u32::from(a)),
            IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                v6.entry(s.port())
                    .or_default()
                    .push([w(0), w(4), w(8), w(12)]);
            }
        }
    }
    for list in v4.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    for list in v6.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    // IPv4: the source address at offset 12; each member: equal → the next insn accepts.
    let v4_section = section(&v4, 2, &[op(BPF_LD_W_ABS, SKF_NET_OFF + 12)], |a| {
        vec![jeq(a, 0, 1), op(BPF_RET_K, ACCEPT)]
    })?;
    // IPv6: the source address at offsets 8–23; each member a block of nine whose every
    // mismatch jumps to the next block.
    let v6_section = section(&v6, 9, &[], |a: [u32; 4]| {
        let mut block = Vec::with_capacity(9);
        for (i, w) in a.iter().enumerate() {
            let skip = 7 - 2 * i as u8;
            block.push(op(BPF_LD_W_ABS, SKF_NET_OFF + 8 + 4 * i as u32));
            block.push(jeq(*w, 0, skip));
        }
        block.push(op(BPF_RET_K, ACCEPT));
        block
    })?;
    let len = 7 + v4_section.len() + v6_section.len();
    if len > MAX_INSNS {
        return None;
    }
    let mut p = Vec::with_capacity(len);
    // 0–6: dispatch on the IP version; the sections may be longer than a jeq can jump.
    p.push(op(BPF_LD_B_ABS, SKF_NET_OFF));
    p.push(op(BPF_ALU_RSH_K, 4));
    p.push(jeq(4, 0, 1));
    p.push(op(BPF_JMP_JA, 3)); // → 7, the IPv4 section
    p.push(jeq(6, 0, 1));
    p.push(op(BPF_JMP_JA, u32::try_from(1 + v4_section.len()).ok()?)); // → the IPv6 section
    p.push(op(BPF_RET_K, 0));
    p.extend(v4_section);
    p.extend(v6_section);
    Some(p)
}

pub use crate::bpf::to_socket;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::BPF_JEQ_K;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A received datagram as the filter sees it: its IP header (through `SKF_NET_OFF`
    /// loads) and its data from the UDP header on (plain loads).
    struct Datagram {
        ip: Vec<u8>,
        udp: Vec<u8>,
    }

    /// A classic BPF interpreter for the instructions the filter uses, as the kernel runs
    /// them on a UDP socket (an out-of-range load drops the datagram).
    fn run(prog: &[Insn], d: &Datagram) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        let at = |k: u32, n: usize| -> Option<&[u8]> {
            match k.checked_sub(SKF_NET_OFF) {
                Some(off) => d.ip.get(off as usize..off as usize + n),
                None => d.udp.get(k as usize..k as usize + n),
            }
        };
        for _ in 0..10_000 {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_B_ABS => match at(i.k, 1) {
                    Some(b) => a = u32::from(b[0]),
                    None => return 0,
                },
                BPF_LD_H_ABS => match at(i.k, 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                BPF_LD_W_ABS => match at(i.k, 4) {
                    Some(b) => a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    None => return 0,
                },
                BPF_ALU_RSH_K => a >>= i.k,
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("no return");
    }

    fn udp(src_port: u16) -> Vec<u8> {
        let mut u = src_port.to_be_bytes().to_vec();
        u.extend_from_slice(&[0x1d, 0x31, 0, 8, 0, 0]);
        u
    }

    fn datagram(from: SocketAddr) -> Datagram {
        let ip = match from.ip() {
            IpAddr::V4(a) => {
                let mut h = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&[198, 51, 100, 11]);
                h
            }
            IpAddr::V6(a) => {
                let mut h = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
                h.extend_from_slice(&a.octets());
                h.extend_from_slice(&"2001:db8:100::11".parse::<Ipv6Addr>().unwrap().octets());
                h
            }
        };
        Datagram {
            ip,
            udp: udp(from.port()),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn passes_members_and_drops_everyone_else() {
        let members = [
            "198.51.100.12:7473",
            "198.51.100.13:7473",
            "[2001:db8:100::12]:7473",
            "[::ffff:198.51.100.14]:7473",
            "198.51.100.15:7474",
        ]
        .map(addr);
        let prog = source_filter(members).unwrap();
        for from in [
            "198.51.100.12:7473",
            "198.51.100.13:7473",
            "198.51.100.14:7473",
            "[2001:db8:100::12]:7473",
            "198.51.100.15:7474",
        ] {
            assert_eq!(run(&prog, &datagram(addr(from))), ACCEPT, "{from}");
        }
        for from in [
            "198.51.100.51:7473",
            "198.51.100.12:40000",
            "198.51.100.15:7473",
            "198.51.100.12:7474",
            "[2001:db8:100::51]:7473",
            "[2001:db8:100::13]:7473",
            "[2001:db8:100::12]:7474",
            "[2001:db8:101::12]:7473",
            "[::ffff:198.51.100.51]:7473",
        ] {
            assert_eq!(run(&prog, &datagram(addr(from))), 0, "{from}");
        }
        // Neither IPv4 nor IPv6, or truncated: dropped.
        let mut odd = datagram(addr("198.51.100.12:7473"));
        odd.ip[0] = 0x55;
        assert_eq!(run(&prog, &odd), 0);
        let short = Datagram {
            ip: vec![0x45, 0, 0],
            udp: udp(7473),
        };
        assert_eq!(run(&prog, &short), 0);
        let short6 = Datagram {
            ip: vec![0x60; 12],
            udp: udp(7473),
        };
        assert_eq!(run(&prog, &short6), 0);
    }

    #[test]
    fn no_member_passes_nothing() {
        let prog = source_filter([]).unwrap();
        assert_eq!(run(&prog, &datagram(addr("198.51.100.12:7473"))), 0);
        assert_eq!(run(&prog, &datagram(addr("[2001:db8::1]:7473"))), 0);
    }

    #[test]
    fn large_memberships_fit_or_are_refused_whole() {
        // 500 IPv4 members (documentation ranges only), then 300 IPv6 ones, on two ports:
        // every member passes, a neighbour not.
        let v4: Vec<SocketAddr> = (1..=250u8)
            .flat_map(|i| {
                [
                    SocketAddr::from(([198, 51, 100, i], 7473)),
                    SocketAddr::from(([203, 0, 113, i], 7474)),
                ]
            })
            .collect();
        let v6: Vec<SocketAddr> = (0..300u16)
            .map(|i| {
                let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 1, i);
                SocketAddr::from((ip, 7473 + i % 2))
            })
            .collect();
        let prog = source_filter(v4.iter().chain(&v6).copied()).unwrap();
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
        for a in v4.iter().chain(&v6).step_by(7) {
            assert_eq!(run(&prog, &datagram(*a)), ACCEPT, "{a}");
            let other_port = SocketAddr::new(a.ip(), 7475);
            assert_eq!(run(&prog, &datagram(other_port)), 0, "{other_port}");
        }
        let last6 = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 1, 299);
        assert_eq!(run(&prog, &datagram((last6, 7474).into())), ACCEPT);
        let outside = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 1, 300);
        assert_eq!(run(&prog, &datagram((outside, 7473).into())), 0);
        let outside4 = Ipv4Addr::new(198, 51, 100, 251);
        assert_eq!(run(&prog, &datagram((outside4, 7473).into())), 0);
        // 500 IPv6 members do not fit: no filter rather than a wrong one.
        let many = (0..500u16)
            .map(|i| SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i), 7473)));
        assert_eq!(source_filter(many), None);
    }
}
