//! A UDP socket as the drivers need it off loopback:
//!
//! - **Addresses in their own family.** On an IPv6 socket bound to `[::]` (dual stack), IPv4
//!   peers appear as `[::ffff:a.b.c.d]`. [`Udp::recv`] gives them back as plain IPv4
//!   addresses, so that the state machines (and the server's table, which hands addresses
//!   to other clients) only ever see `a.b.c.d:port`; [`Udp::send`] maps an IPv4 destination
//!   back to `[::ffff:a.b.c.d]` when the socket is IPv6.
//! - **Answers from the address that was reached.** A socket bound to an unspecified
//!   address (`0.0.0.0`, `[::]`) on a machine with several addresses would otherwise answer
//!   from whichever address the kernel's routing picks, and a client (or the NAT in front
//!   of it) drops an answer from an address it did not send to. Such a socket asks the kernel
//!   for each datagram's destination address (`IP_PKTINFO`, `IPV6_RECVPKTINFO`), and
//!   [`Udp::send`] can name the source address of an answer the same way. Linux only;
//!   elsewhere the kernel picks, as before.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use mio::net::UdpSocket;

/// A datagram received: its length in the buffer, who sent it, and (on a socket bound to an
/// unspecified address) which of this machine's addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub to: Option<IpAddr>,
}

/// How many datagrams one `sendmmsg` or `recvmmsg` carries at most.
pub(crate) const BATCH: usize = 32;

/// The room for one received datagram in a [`RecvBatch`]: more than the longest datagram
/// the decoder accepts ([`crate::wire::MAX_DATAGRAM`]) even wrapped for a TURN relay, so that
/// any longer one still arrives longer than that and is refused as too large.
pub(crate) const SLOT: usize = crate::wire::MAX_DATAGRAM + 512;

/// Datagrams waiting to be sent by [`Udp::send_batch`]: their bytes one after another, and
/// for each its destination, start and length.
#[derive(Default)]
pub(crate) struct SendBatch {
    data: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl SendBatch {
    pub(crate) fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.items.push((to, self.data.len(), datagram.len()));
        self.data.extend_from_slice(datagram);
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
    }
}

/// Room for [`BATCH`] received datagrams, [`SLOT`] bytes each, filled by
/// [`Udp::recv_batch`].
pub(crate) struct RecvBatch {
    data: Vec<u8>,
    received: [Received; BATCH],
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        let none = Received {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            to: None,
        };
        RecvBatch {
            data: vec![0; BATCH * SLOT],
            received: [none; BATCH],
        }
    }

    /// The `k`th datagram of the last [`Udp::recv_batch`]: what is known of it, and its bytes.
    pub(crate) fn get(&self, k: usize) -> (Received, &[u8]) {
        let r = self.received[k];
        (r, &self.data[k * SLOT..k * SLOT + r.len])
    }
}

/// A mio UDP socket with the address handling above.
pub(crate) struct Udp {
    socket: UdpSocket,
    /// The socket is IPv6 (and may carry IPv4 as mapped addresses).
    v6: bool,
    /// The kernel tells each datagram's destination address.
    pktinfo: bool,
}

/// `addr` with an IPv4-mapped IPv6 address turned into plain IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl Udp {
    /// Wraps `socket`, bound to `local`; asks for destination addresses if `local` is an
    /// unspecified address (and says so in the debug log if the kernel refuses).
    pub(crate) fn new(socket: UdpSocket, local: SocketAddr) -> Udp {
        let v6 = local.is_ipv6();
        let pktinfo = local.ip().is_unspecified() && enable_pktinfo(&socket, v6);
        Udp {
            socket,
            v6,
            pktinfo,
        }
    }

    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Whether [`Received::to`] is filled in.
    #[cfg(test)]
    pub(crate) fn knows_destinations(&self) -> bool {
        self.pktinfo
    }

    /// Receives one datagram (non-blocking: `WouldBlock` when none is waiting).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        #[cfg(target_os = "linux")]
        if self.pktinfo {
            return pktinfo::recv(&self.socket, buf);
        }
        let (len, from) = self.socket.recv_from(buf)?;
        Ok(Received {
            len,
            from: canonical(from),
            to: None,
        })
    }

    /// Sends one datagram to `to`, from the address `from` if given (and the socket can
    /// choose its source), else from the address the kernel picks.
    pub(crate) fn send(
        &self,
        to: SocketAddr,
        from: Option<IpAddr>,
        payload: &[u8],
    ) -> io::Result<usize> {
        let to = self.in_socket_family(to);
        #[cfg(target_os = "linux")]
        if let (true, Some(from)) = (self.pktinfo, from) {
            return pktinfo::send(&self.socket, self.v6, to, from, payload);
        }
        let _ = from;
        self.socket.send_to(payload, to)
    }

    /// Sends the datagrams of `batch` in order, as many per system call as the kernel
    /// takes (`sendmmsg` on Linux, up to [`BATCH`] at once), from the address the kernel
    /// picks; empties `batch`. A datagram the system refuses is passed to `failed` with the
    /// error and skipped; the ones after it are still sent, in order.
    pub(crate) fn send_batch(
        &self,
        batch: &mut SendBatch,
        mut failed: impl FnMut(SocketAddr, io::Error),
    ) {
        let mut i = 0;
        while i < batch.items.len() {
            match self.send_some(batch, i) {
                Ok(sent) => i += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let to = batch.items[i].0;
                    log::debug!("send to {to} failed: {e}");
                    failed(to, e);
                    i += 1;
                }
            }
        }
        batch.clear();
    }

    /// Sends datagrams `first..` of `batch` (at least the first, or fails with its error);
    /// returns how many went.
    #[cfg(target_os = "linux")]
    fn send_some(&self, batch: &SendBatch, first: usize) -> io::Result<usize> {
        use std::mem::zeroed;
        use std::os::fd::AsRawFd;
        let items = &batch.items[first..];
        let n = items.len().min(BATCH);
        // SAFETY: every pointer in `msgs` points into `names`, `iovs` or `batch.data`, all of
        // which outlive the call and are not moved during it; `n` entries are filled in.
        unsafe {
            let mut names: [libc::sockaddr_storage; BATCH] = zeroed();
            let mut iovs: [libc::iovec; BATCH] = zeroed();
            let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
            for (k, &(to, start, len)) in items[..n].iter().enumerate() {
                let (name, name_len) = pktinfo::sockaddr(self.in_socket_family(to));
                names[k] = name;
                iovs[k] = libc::iovec {
                    iov_base: batch.data[start..start + len].as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                let hdr = &mut msgs[k].msg_hdr;
                hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = name_len;
                hdr.msg_iov = &mut iovs[k];
                hdr.msg_iovlen = 1;
            }
            let rc = libc::sendmmsg(self.socket.as_raw_fd(), msgs.as_mut_ptr(), n as _, 0);
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(rc as usize)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_some(&self, batch: &SendBatch, first: usize) -> io::Result<usize> {
        let (to, start, len) = batch.items[first];
        self.send(to, None, &batch.data[start..start + len])
            .map(|_| 1)
    }

    /// Receives the datagrams waiting, as many per system call as `batch` holds
    /// (`recvmmsg` on Linux; one at a time on a socket that asks for destination addresses,
    /// and elsewhere); returns how many are now in `batch` (non-blocking: `WouldBlock`
    /// when none is waiting).
    pub(crate) fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if !self.pktinfo {
            return self.recv_some(batch);
        }
        let r = self.recv(&mut batch.data[..SLOT])?;
        batch.received[0] = r;
        Ok(1)
    }

    #[cfg(target_os = "linux")]
    fn recv_some(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        use std::mem::{size_of, zeroed};
        use std::os::fd::AsRawFd;
        // SAFETY: every pointer in `msgs` points into `names`, `iovs` or `batch.data` (one
        // slot of SLOT bytes each), all of which outlive the call; the kernel writes at most
        // msg_namelen bytes of each name and iov_len bytes of each slot.
        unsafe {
            let mut names: [libc::sockaddr_storage; BATCH] = zeroed();
            let mut iovs: [libc::iovec; BATCH] = zeroed();
            let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
            let base = batch.data.as_mut_ptr();
            for k in 0..BATCH {
                iovs[k] = libc::iovec {
                    iov_base: base.add(k * SLOT).cast(),
                    iov_len: SLOT,
                };
                let hdr = &mut msgs[k].msg_hdr;
                hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdr.msg_iov = &mut iovs[k];
                hdr.msg_iovlen = 1;
            }
            let rc = libc::recvmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = rc as usize;
            for k in 0..n {
                let from = pktinfo::socket_addr(&names[k]).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a datagram from an unknown address family",
                    )
                })?;
                let len = msgs[k].msg_len as usize;
                if msgs[k].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    // Longer than a slot, so longer than any datagram the decoder accepts:
                    // handed on as it is (a slot's worth), and refused there as too large.
                    log::debug!("a datagram from {from} of more than {SLOT} bytes, truncated");
                }
                batch.received[k] = Received {
                    len: len.min(SLOT),
                    from: canonical(from),
                    to: None,
                };
            }
            Ok(n)
        }
    }

    /// `to` as this socket's family can carry it: an IPv4 address as IPv4-mapped IPv6 on an
    /// IPv6 socket. (An IPv6 address on an IPv4 socket stays as it is; the send fails with
    /// "address family not supported", which the caller reports.)
    fn in_socket_family(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            _ => to,
        }
    }
}

#[cfg(target_os = "linux")]
fn enable_pktinfo(socket: &UdpSocket, v6: bool) -> bool {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    let (level, option) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt on a socket we own, with an int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!(
            "cannot ask for destination addresses: {}; answers leave from the address the kernel picks",
            io::Error::last_os_error()
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn enable_pktinfo(_: &UdpSocket, _: bool) -> bool {
    false
}

/// `recvmsg` and `sendmsg` with packet-information control messages.
#[cfg(target_os = "linux")]
mod pktinfo {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use mio::net::UdpSocket;

    use super::{canonical, Received};

    /// Room for one control message of either family, aligned for `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    pub(super) fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: every pointer handed to recvmsg points into a local of the stated size
        // that outlives the call; the control messages are read within msg_controllen with
        // the CMSG_* macros, and their payloads with read_unaligned.
        unsafe {
            let mut name: libc::sockaddr_storage = zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = Control([0; 64]);
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = control.0.len() as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let from = socket_addr(&name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a datagram from an unknown address family",
                )
            })?;
            let mut to = None;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                        // ipi_spec_dst: the local address to answer from.
                        let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                        to = Some(IpAddr::V4(ip));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                        to =
                            Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok(Received {
                len: n as usize,
                from: canonical(from),
                to,
            })
        }
    }

    pub(super) fn send(
        socket: &UdpSocket,
        v6: bool,
        to: SocketAddr,
        from: IpAddr,
        payload: &[u8],
    ) -> io::Result<usize> {
        // SAFETY: as in `recv`: locals of the stated sizes, a control buffer large enough
        // for the one message written into it with the CMSG_* macros.
        unsafe {
            let (mut name, name_len) = sockaddr(to);
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let mut control = Control([0; 64]);
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = name_len;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            let space = if v6 {
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32)
            } else {
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32)
            };
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            let data = libc::CMSG_DATA(cmsg);
            match (v6, from) {
                (true, from) => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                    let ip = match from {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: ip.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
                }
                (false, IpAddr::V4(ip)) => {
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(ip).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
                }
                // An IPv6 source on an IPv4 socket cannot be: let the kernel pick.
                (false, IpAddr::V6(_)) => {
                    msg.msg_control = std::ptr::null_mut();
                    msg.msg_controllen = 0;
                }
            }
            let n = libc::sendmsg(socket.as_raw_fd(), &msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }

    /// The address in `name`, if it is IPv4 or IPv6.
    pub(super) unsafe fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(name.ss_family) {
            libc::AF_INET => {
                let a = &*(name as *const libc::sockaddr_storage as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(name as *const libc::sockaddr_storage as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// `addr` as a `sockaddr_storage` and its length.
    pub(super) unsafe fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        let mut name: libc::sockaddr_storage = zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin =
                    &mut *(&mut name as *mut libc::sockaddr_storage as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                (name, size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(a) => {
                let sin6 =
                    &mut *(&mut name as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_scope_id = a.scope_id();
                (name, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn bind(addr: &str) -> Udp {
        let socket = UdpSocket::bind(addr.parse().unwrap()).unwrap();
        let local = socket.local_addr().unwrap();
        Udp::new(socket, local)
    }

    /// Waits (bounded) for one datagram on a non-blocking socket.
    fn recv_one(udp: &Udp) -> (Received, Vec<u8>) {
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        loop {
            match udp.recv(&mut buf) {
                Ok(r) => return (r, buf[..r.len].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < Duration::from_secs(5), "nothing arrived");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    }

    #[test]
    fn canonical_turns_mapped_addresses_into_ipv4_and_leaves_the_rest() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:7070".parse().unwrap();
        assert_eq!(canonical(mapped), "10.1.2.3:7070".parse().unwrap());
        for plain in ["10.1.2.3:7070", "[2001:db8::1]:7070", "[::1]:9"] {
            let a: SocketAddr = plain.parse().unwrap();
            assert_eq!(canonical(a), a);
        }
    }

    #[test]
    fn a_socket_on_an_unspecified_address_learns_where_each_datagram_was_sent() {
        let server = bind("0.0.0.0:0");
        assert!(server.knows_destinations());
        let port = server.socket().local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        let (r, data) = recv_one(&server);
        assert_eq!(data, b"hello");
        assert_eq!(r.from, client.local_addr().unwrap());
        assert_eq!(r.to, Some("127.0.0.1".parse().unwrap()));
        // The answer names its source; it arrives from the address the client sent to.
        server.send(r.from, r.to, b"answer").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(from, SocketAddr::new("127.0.0.1".parse().unwrap(), port));
    }

    #[test]
    fn a_bound_address_needs_no_destinations() {
        let server = bind("127.0.0.1:0");
        assert!(!server.knows_destinations());
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(b"x", server.socket().local_addr().unwrap())
            .unwrap();
        let (r, _) = recv_one(&server);
        assert_eq!(r.to, None);
    }

    #[test]
    fn a_dual_stack_socket_shows_ipv4_peers_as_ipv4_and_answers_them() {
        let Ok(socket) = UdpSocket::bind("[::]:0".parse().unwrap()) else {
            eprintln!("skipped: no IPv6 on this machine");
            return;
        };
        let local = socket.local_addr().unwrap();
        let server = Udp::new(socket, local);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"v4", ("127.0.0.1", local.port())).unwrap();
        let (r, _) = recv_one(&server);
        assert_eq!(r.from, client.local_addr().unwrap(), "not mapped");
        assert_eq!(r.to, Some("127.0.0.1".parse().unwrap()));
        // A plain IPv4 destination is mapped back for the IPv6 socket, with and without a
        // source address.
        server.send(r.from, r.to, b"one").unwrap();
        server.send(r.from, None, b"two").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        for want in [&b"one"[..], b"two"] {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(from.port(), local.port());
        }
    }

    /// Receives (bounded in time) until `want` datagrams are in, batch by batch.
    fn recv_all(udp: &Udp, want: usize) -> Vec<(Received, Vec<u8>)> {
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < want {
            match udp.recv_batch(&mut batch) {
                Ok(n) => {
                    assert!((1..=BATCH).contains(&n), "{n} datagrams in one batch");
                    for k in 0..n {
                        let (r, data) = batch.get(k);
                        got.push((r, data.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "only {} of {want} arrived",
                        got.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        got
    }

    #[test]
    fn a_batch_goes_out_in_order_past_a_refused_datagram_and_names_only_that_one() {
        let sender = bind("127.0.0.1:0");
        let a = bind("127.0.0.1:0");
        let b = bind("127.0.0.1:0");
        let (to_a, to_b) = (
            a.socket().local_addr().unwrap(),
            b.socket().local_addr().unwrap(),
        );
        // An IPv6 destination on an IPv4 socket: the kernel refuses that one datagram.
        let bad: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let mut batch = SendBatch::default();
        // More than three batches' worth, so that sendmmsg is called several times, with
        // the refused datagram in the middle of one and one more at the very end.
        let count = 3 * BATCH + 7;
        for i in 0..count {
            let to = if i % 2 == 0 { to_a } else { to_b };
            batch.push(to, format!("datagram {i}").as_bytes());
            if i == BATCH + 5 {
                batch.push(bad, b"refused");
            }
        }
        batch.push(bad, b"refused too");
        let mut failed = Vec::new();
        sender.send_batch(&mut batch, |to, e| failed.push((to, e.raw_os_error())));
        assert_eq!(batch.len(), 0, "the batch is emptied");
        assert_eq!(
            failed,
            vec![
                (bad, Some(libc::EAFNOSUPPORT)),
                (bad, Some(libc::EAFNOSUPPORT))
            ]
        );
        let from = sender.socket().local_addr().unwrap();
        for (udp, first) in [(&a, 0), (&b, 1)] {
            let got = recv_all(udp, count.div_ceil(2) - first);
            let want: Vec<Vec<u8>> = (first..count)
                .step_by(2)
                .map(|i| format!("datagram {i}").into_bytes())
                .collect();
            assert!(got.iter().all(|(r, _)| r.from == from && r.to.is_none()));
            let data: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
            assert_eq!(data, want, "lost or out of order");
        }
    }

    #[test]
    fn a_batch_on_an_unspecified_address_still_learns_destinations() {
        let server = bind("0.0.0.0:0");
        let port = server.socket().local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            client.send_to(&[i; 5], ("127.0.0.1", port)).unwrap();
        }
        let got = recv_all(&server, 3);
        for (i, (r, data)) in got.iter().enumerate() {
            assert_eq!(data, &vec![i as u8; 5]);
            assert_eq!(r.from, client.local_addr().unwrap());
            assert_eq!(r.to, Some("127.0.0.1".parse().unwrap()));
        }
    }

    #[test]
    fn a_datagram_longer_than_a_slot_arrives_too_long_for_the_decoder() {
        let server = bind("127.0.0.1:0");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.socket().local_addr().unwrap();
        client.send_to(&vec![7u8; SLOT + 1000], to).unwrap();
        client.send_to(b"after", to).unwrap();
        let got = recv_all(&server, 2);
        assert_eq!(got[0].1.len(), SLOT);
        assert!(got[0].1.len() > crate::wire::MAX_DATAGRAM);
        assert!(crate::wire::decode_all(&got[0].1).is_err());
        assert_eq!(got[1].1, b"after");
    }
}
