//! Classic BPF as plain data: the instructions the speaker's two kernel filters are built
//! from (the responder's, `dataplane::socket::responder_filter`, and the heartbeat
//! socket's, `liveness::filter::source_filter`), so each program can be checked without a
//! socket and handed to one.

// Opcodes (linux/filter.h).
pub const BPF_LD_W_ABS: u16 = 0x20;
pub const BPF_LD_H_ABS: u16 = 0x28;
pub const BPF_LD_B_ABS: u16 = 0x30;
pub const BPF_ALU_RSH_K: u16 = 0x74;
pub const BPF_JMP_JA: u16 = 0x05;
pub const BPF_JEQ_K: u16 = 0x15;
pub const BPF_RET_K: u16 = 0x06;
/// What a filter returns to keep a packet: how many bytes of it (more than any we read).
pub const ACCEPT: u32 = 0x0004_0000;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

/// An instruction without jumps: a load, an ALU step, `ja` or `ret`.
pub fn op(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// `jeq #k, jt, jf`.
pub fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The program in the form a socket takes.
pub fn to_socket(prog: &[Insn]) -> Vec<socket2::SockFilter> {
    prog.iter()
        .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
        .collect()
}
