//! Kernel steering for sharded listeners (Linux): a classic BPF program attached to
//! the listener's SO_REUSEPORT group picks, for each datagram, the socket whose shard
//! its destination connection ID names.
//!
//! The kernel runs the program on the UDP payload and uses its return value as an
//! index into the group, in the order its sockets were bound; a value past the last
//! socket makes it fall back to its hash of the 4-tuple. So short-header packets go
//! by the shard number in the low five bits of their connection ID's first octet, and
//! long-header packets (whose DCID may be the client's choice) by the hash, which
//! keeps a handshake on one socket while its 4-tuple holds.

use std::io;

use nix::libc::sock_filter;
use nix::sys::socket::{setsockopt, sockopt::AttachReusePortCbpf};

use crate::cid::SHARD_MASK;

// Classic BPF opcodes (linux/filter.h): BPF_LD (0x00) | BPF_B | BPF_ABS, and so on.
const BPF_LD_B_ABS: u16 = 0x10 | 0x20;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_RET_A: u16 = 0x06 | 0x10;
const BPF_RET_K: u16 = 0x06;

/// The steering program.
fn program() -> [sock_filter; 6] {
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    [
        // A = the first octet.
        op(BPF_LD_B_ABS, 0, 0, 0),
        // A long header (form bit set): to the hash.
        op(BPF_JMP_JSET_K, 3, 0, 0x80),
        // A = the first octet of the destination connection ID.
        op(BPF_LD_B_ABS, 0, 0, 1),
        op(BPF_ALU_AND_K, 0, 0, u32::from(SHARD_MASK)),
        op(BPF_RET_A, 0, 0, 0),
        // Past any group's end: the kernel hashes the 4-tuple.
        op(BPF_RET_K, 0, 0, u32::MAX),
    ]
}

/// Attaches the steering program to the reuseport group `socket` belongs to.
pub(crate) fn attach(socket: &std::net::UdpSocket) -> io::Result<()> {
    let mut filter = program();
    let fprog = nix::libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    setsockopt(socket, AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}
