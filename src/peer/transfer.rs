//! One file transfer, on either side: the file as its offer describes it, where the
//! transfer stands ([`Kind`]), and the work that is its own: reading and sending chunks,
//! progress, its timers; and what a transfer is reached through (the [`FileSource`] and
//! [`FileSink`] of its bytes, the [`Link`] of its session). The table of transfers, the
//! answers to the peer's messages and the endings are in files.rs.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::Sha256;

use super::event::{Event, TransferFailure, TransferInfo};
use super::outputs::Outputs;
use super::retry::{Retry, Step};
use crate::congestion::ChunkSender;
use crate::reliable::RecvWindow;
use crate::wire::{ClientId, Message, SessionId, CHUNK_SIZE};

/// Where the offerer's bytes come from.
pub trait FileSource: Send {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 only at the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Where the receiver's bytes go: a temporary file until the digest matches.
pub trait FileSink: Send {
    /// Appends the next bytes of the file.
    fn write_chunk(&mut self, data: &[u8]) -> io::Result<()>;
    /// The whole file arrived and its SHA-256 matched: make it visible under its final name,
    /// which is returned.
    fn finish(self: Box<Self>) -> io::Result<PathBuf>;
    /// The transfer failed or was cancelled: remove what was written.
    fn abort(self: Box<Self>);
}

/// An in-memory file, for tests and examples.
impl FileSource for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// The session a transfer travels on, as the owning `Peer` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub peer: ClientId,
    pub session: SessionId,
    pub addr: SocketAddr,
    /// The session's current retransmission timeout: the first resend period of control
    /// messages.
    pub rto: Duration,
    /// The session's smoothed round trip, once measured (its handshake and chat): a
    /// transfer's sender starts from it rather than from an assumed one.
    pub srtt: Option<Duration>,
}

/// How many chunks a file of `size` bytes travels in (an empty file is one empty chunk).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE as u64).max(1)
}

pub(super) enum Kind {
    /// Our offer, waiting for the answer.
    Offering {
        source: Box<dyn FileSource>,
        /// Resends of the offer, bounded by `expires` rather than by a number of tries.
        retry: Retry,
        period: Duration,
        expires: Instant,
    },
    /// Our file, on its way.
    Sending {
        source: Box<dyn FileSource>,
        /// Loss detection, congestion control, pacing, flow control (congestion/sender.rs).
        tx: Box<ChunkSender>,
        /// The next chunk to read from the source.
        next_chunk: u64,
        /// Chunks acknowledged cumulatively.
        acked: u64,
    },
    /// The peer's offer, waiting for our user.
    Offered,
    /// The peer's file, arriving.
    Receiving {
        sink: Option<Box<dyn FileSink>>,
        rx: RecvWindow<Vec<u8>>,
        hasher: Sha256,
        written: u64,
        /// Resend of `FileGet` until the first chunk arrives.
        get: Option<Retry>,
        get_period: Duration,
        /// Where our latest `ChunkAck` waits in the queue (see `Peer`'s `queued_ack`).
        queued_ack: Option<u64>,
        /// When the latest chunk arrived (once one has).
        last_chunk: Option<Instant>,
    },
}

pub(super) struct Transfer {
    pub link: Link,
    /// Who offered it, and its number there: the transfer's name on the wire.
    pub offerer: ClientId,
    pub wire_n: u64,
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub chunks: u64,
    started: Instant,
    last_progress: Instant,
    progress_bytes: u64,
    pub kind: Kind,
}

/// A transfer's name on the wire: (peer, session, offerer, n).
pub(super) type Key = (ClientId, SessionId, ClientId, u64);

/// What [`Transfer::handle_timeout`] found due.
pub(super) enum Due {
    Nothing,
    ResendOffer,
    ResendGet,
    Fail(TransferFailure),
}

impl Transfer {
    /// A transfer starting `now` on `link`: file `n` of `offerer`, as its offer describes it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        link: Link,
        offerer: ClientId,
        n: u64,
        name: String,
        size: u64,
        sha256: [u8; 32],
        kind: Kind,
    ) -> Self {
        Transfer {
            link,
            offerer,
            wire_n: n,
            name,
            size,
            sha256,
            chunks: chunk_count(size),
            started: now,
            last_progress: now,
            progress_bytes: 0,
            kind,
        }
    }

    /// When it began (the offer was made or arrived), until it starts moving.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The transfer starts moving `now`, as `kind`: progress and rate count from here.
    pub fn start(&mut self, now: Instant, kind: Kind) {
        self.started = now;
        self.last_progress = now;
        self.kind = kind;
    }

    pub fn outgoing(&self) -> bool {
        matches!(self.kind, Kind::Offering { .. } | Kind::Sending { .. })
    }

    fn done_bytes(&self) -> u64 {
        match &self.kind {
            Kind::Sending { acked, .. } => (acked * CHUNK_SIZE as u64).min(self.size),
            Kind::Receiving { written, .. } => *written,
            _ => 0,
        }
    }

    pub fn key(&self) -> Key {
        (self.link.peer, self.link.session, self.offerer, self.wire_n)
    }

    /// The row of `transfers` for this transfer, local number `n`.
    pub fn info(&self, n: u64) -> TransferInfo {
        TransferInfo {
            n,
            peer: self.link.peer,
            outgoing: self.outgoing(),
            name: self.name.clone(),
            size: self.size,
            done: self.done_bytes(),
            state: match self.kind {
                Kind::Offering { .. } => "offered",
                Kind::Offered => "waiting for you",
                Kind::Sending { .. } => "sending",
                Kind::Receiving { .. } => "receiving",
            },
        }
    }

    /// The sender's congestion-control counters, while sending.
    pub fn sender_stats(&self) -> Option<crate::congestion::SenderStats> {
        match &self.kind {
            Kind::Sending { tx, .. } => Some(tx.stats().clone()),
            _ => None,
        }
    }

    /// Chunks resent so far.
    pub fn retransmissions(&self) -> u64 {
        match &self.kind {
            Kind::Sending { tx, .. } => tx.retransmissions(),
            _ => 0,
        }
    }

    /// Our `FileOffer` of it.
    pub fn offer(&self, me: ClientId) -> Message {
        Message::FileOffer {
            from: me,
            session: self.link.session,
            n: self.wire_n,
            name: self.name.clone(),
            size: self.size,
            sha256: self.sha256,
        }
    }

    /// Sends the chunks the windows and the pacer let go now, each read from the source as
    /// it leaves (a resend is read again: the sender holds no chunk's bytes between sends,
    /// whatever its window), and reports progress at most every `interval`. A file that
    /// cannot be read fails the transfer: the reason is returned (what was sent before
    /// stays sent).
    pub fn flush(
        &mut self,
        now: Instant,
        me: ClientId,
        local: u64,
        interval: Duration,
        out: &mut Outputs,
    ) -> Option<TransferFailure> {
        let mut failed = None;
        if let Kind::Sending {
            source,
            tx,
            next_chunk,
            ..
        } = &mut self.kind
        {
            loop {
                if *next_chunk <= self.chunks && tx.wants_data() {
                    let offset = (*next_chunk - 1) * CHUNK_SIZE as u64;
                    tx.push((self.size - offset).min(CHUNK_SIZE as u64) as usize);
                    *next_chunk += 1;
                }
                let Some(chunk) = tx.poll_transmit(now) else {
                    break;
                };
                // Read as it leaves, a first copy or a resend: nothing of the file is held
                // between sends.
                let mut data = vec![0u8; chunk.len];
                let offset = (chunk.seq - 1) * CHUNK_SIZE as u64;
                if let Err(e) = read_full(source.as_mut(), offset, &mut data) {
                    failed = Some(TransferFailure::DiskError(e.to_string()));
                    break;
                }
                out.transmit(
                    self.link.addr,
                    Message::Chunk {
                        from: me,
                        session: self.link.session,
                        n: self.wire_n,
                        seq: chunk.seq,
                        data,
                    },
                );
            }
        }
        let done = self.done_bytes();
        let moving = matches!(self.kind, Kind::Sending { .. } | Kind::Receiving { .. });
        if moving && done != self.progress_bytes && now >= self.last_progress + interval {
            let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
            let rate = if elapsed > 0.0 {
                (done as f64 / elapsed) as u64
            } else {
                0
            };
            let eta = (rate > 0).then(|| (self.size - done).div_ceil(rate));
            self.last_progress = now;
            self.progress_bytes = done;
            out.event(Event::FileProgress {
                peer: self.link.peer,
                n: local,
                outgoing: self.outgoing(),
                bytes: done,
                size: self.size,
                rate,
                eta_secs: eta,
            });
        }
        failed
    }

    /// What is due at `now`: a resend of the offer or of the `FileGet` (their periods
    /// doubling up to `max_rto`; `get_tries` of these at most), or the end of the transfer
    /// (offer expired, no chunk after every `FileGet` or for `stall`, chunks unacknowledged).
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        max_rto: Duration,
        get_tries: u32,
        stall: Duration,
    ) -> Due {
        match &mut self.kind {
            Kind::Offering {
                retry,
                period,
                expires,
                ..
            } => {
                if *expires <= now {
                    return Due::Fail(TransferFailure::Expired);
                }
                if let Some(Step::Resend) = retry.poll_doubling(now, u32::MAX, period, max_rto) {
                    return Due::ResendOffer;
                }
            }
            Kind::Receiving {
                get: Some(get),
                get_period,
                ..
            } if get.next() <= now => {
                match get.poll_doubling(now, get_tries, get_period, max_rto) {
                    Some(Step::GiveUp) => return Due::Fail(TransferFailure::NotStarted),
                    Some(Step::Resend) => return Due::ResendGet,
                    None => {}
                }
            }
            Kind::Receiving {
                last_chunk: Some(last),
                ..
            } if *last + stall <= now => return Due::Fail(TransferFailure::Stalled),
            Kind::Sending { tx, .. } => {
                tx.handle_timeout(now);
                if tx.is_broken() {
                    return Due::Fail(TransferFailure::Undeliverable);
                }
            }
            _ => {}
        }
        Due::Nothing
    }

    /// When [`Transfer::handle_timeout`] has something to do; `stall` as there.
    pub fn poll_timeout(&self, stall: Duration) -> Option<Instant> {
        let times: [Option<Instant>; 2] = match &self.kind {
            Kind::Offering { retry, expires, .. } => [Some(retry.next()), Some(*expires)],
            Kind::Sending { tx, .. } => [tx.poll_timeout(), None],
            Kind::Receiving {
                get, last_chunk, ..
            } => [
                get.as_ref().map(Retry::next),
                last_chunk.map(|last| last + stall),
            ],
            Kind::Offered => [None, None],
        };
        times.into_iter().flatten().min()
    }
}

/// Fills `buf` from `offset`, or fails if the file is shorter than it was when offered.
fn read_full(source: &mut dyn FileSource, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read_at(offset + filled as u64, &mut buf[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when it was offered",
                ))
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
