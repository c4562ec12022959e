//! `sendmmsg(2)` with a segment size per message: the batches of one connection's
//! turn, each a GSO batch of its own, leave in one system call.
//!
//! The one place in quay that calls the C library itself: neither `quinn-udp`
//! (one message per call) nor `nix` (one set of control messages for every message,
//! and no count of the messages sent) offers it.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use crate::worker::batch::{Batch, MAX_BATCHES};

/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE(2)`, 24 bytes on 64-bit
/// Linux), aligned as `cmsghdr` must be.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 32]);

/// Sends `batches` (at most [`MAX_BATCHES`]; their bytes in `buf`) on `socket` in one
/// call; returns how many were sent. An error means the first was not: the kernel
/// reports a later message's error by sending fewer, and reports it again when that
/// message comes first.
pub(super) fn send(
    socket: &impl AsRawFd,
    v6_socket: bool,
    buf: &[u8],
    batches: &[Batch],
) -> io::Result<usize> {
    let n = batches.len().min(MAX_BATCHES);
    if n == 0 {
        return Ok(0);
    }
    let mut names = [MaybeUninit::<libc::sockaddr_storage>::zeroed(); MAX_BATCHES];
    let mut controls = [Control([0; 32]); MAX_BATCHES];
    let mut iovs = [MaybeUninit::<libc::iovec>::zeroed(); MAX_BATCHES];
    let mut hdrs = [MaybeUninit::<libc::mmsghdr>::zeroed(); MAX_BATCHES];
    for (i, b) in batches[..n].iter().enumerate() {
        let contents = &buf[b.offset..b.offset + b.len];
        let name_len = write_name(&mut names[i], b.dst, v6_socket);
        iovs[i].write(libc::iovec {
            iov_base: contents.as_ptr().cast_mut().cast(),
            iov_len: contents.len(),
        });
        // SAFETY: an all-zero `mmsghdr` is valid (null pointers, zero lengths).
        let hdr = unsafe { &mut hdrs[i].assume_init_mut().msg_hdr };
        hdr.msg_name = names[i].as_mut_ptr().cast();
        hdr.msg_namelen = name_len;
        hdr.msg_iov = iovs[i].as_mut_ptr();
        hdr.msg_iovlen = 1;
        if b.segment < b.len {
            // `segment` is at most a packet's size (1500 bytes), which fits a u16.
            let segment = u16::try_from(b.segment).unwrap_or(u16::MAX);
            // SAFETY: the control buffer outlives the call, is aligned for a
            // `cmsghdr` and holds CMSG_SPACE(2) bytes (checked first), so
            // CMSG_FIRSTHDR returns a pointer into it with room for the header and
            // its two data bytes.
            unsafe {
                let space = libc::CMSG_SPACE(2) as usize;
                debug_assert!(space <= std::mem::size_of::<Control>());
                hdr.msg_control = controls[i].0.as_mut_ptr().cast();
                hdr.msg_controllen = space as _;
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
    }
    // SAFETY: the first `n` headers are initialized and point at names, iovecs,
    // control buffers and bytes that all outlive the call; the kernel writes only
    // each header's `msg_len`.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
            n as libc::c_uint,
            0,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Writes `dst` as a C socket address (an IPv4 one mapped into IPv6 on an IPv6
/// socket); returns its length.
fn write_name(
    out: &mut MaybeUninit<libc::sockaddr_storage>,
    dst: SocketAddr,
    v6_socket: bool,
) -> libc::socklen_t {
    let dst = match dst {
        SocketAddr::V4(a) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    };
    let storage = out.as_mut_ptr();
    match dst {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for every
            // socket address type.
            unsafe { storage.cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}
