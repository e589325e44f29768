//! File transfers between peers: the state machines of both sides, sans IO.
//!
//! [`Files`] holds every transfer of a client (one transfer, its chunks, progress and timers,
//! is in transfer.rs). Like [`crate::peer::Peer`], which owns it, it
//! never touches a socket, a file or the clock: the file is reached through a
//! [`FileSource`] (offerer) or a [`FileSink`] (receiver) that the driver implements with
//! real files (the client's `downloads` module) and the tests in memory, and `now` is passed in.
//!
//! Memory stays bounded whatever the size of the file: the offerer reads a chunk only as
//! it leaves (its congestion window and the receiver's window have room), and reads it
//! again for a resend, so it holds no chunk's bytes between sends, whatever its window; the
//! receiver holds at most `receive_window` chunks
//! that arrived early (it advertises that window in its `ChunkAck`s and drops what is
//! beyond) and writes every chunk as soon as it is next in order. Both SHA-256 digests are
//! computed while streaming (the offerer's by the driver before offering, since the offer
//! carries it).
//!
//! Chunks are sent by a [`ChunkSender`] (crate::congestion: RFC 9002 loss detection with
//! acknowledgement ranges, a probe timeout, a congestion window that follows the path's
//! queue, pacing, flow control) and received through a [`RecvWindow`] (dedupe, reorder
//! hold, the ranges it reports). Chat goes first: the owning `Peer` hands out its own
//! datagrams before the chunks queued here, and a transfer queues only what its windows
//! and its pacer let go at once.
//!
//! The wire protocol is described in [`crate::wire`], section "File transfer".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::event::{EndReason, Event, FileError, TransferFailure, TransferInfo};
use super::outputs::{Outputs, Tally};
use super::retry::{Retry, Step};
pub use super::transfer::{chunk_count, FileSink, FileSource, Link};
use super::transfer::{Due, Key, Kind, Transfer};
use crate::congestion::{ChunkSender, SenderConfig, SenderStats};
use crate::reliable::{Received, RecvWindow, SendConfig};
use crate::wire::{ClientId, FileEnd, Message, SessionId, Transmit, CHUNK_SIZE, MAX_ACK_RANGES};

/// Settings of file transfers.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// How chunks are sent: controller, probe timeouts, tries (congestion/sender.rs).
    pub sender: SenderConfig,
    /// Chunks beyond the cumulative number the receiver takes (and so may hold while a
    /// gap fills): the `window` of its `ChunkAck`s, the bound of flow control.
    pub receive_window: usize,
    /// `file_progress` events come at most this often per transfer.
    pub progress_interval: Duration,
    /// An offer not answered for this long is withdrawn.
    pub offer_lifetime: Duration,
    /// `FileCancel` sends before giving up on its acknowledgement.
    pub cancel_tries: u32,
    /// Most offers from one peer waiting for our answer; more are refused.
    pub max_pending_offers: usize,
    /// Most offers waiting for our answer, from all peers; more are refused.
    pub max_offers: usize,
    /// Offers refused for being past those bounds are shown as one count at most this
    /// often.
    pub summary_interval: Duration,
    /// A transfer being received that gets no chunk for this long (once started) fails:
    /// the session may live on (its keepalives answered) while the sender has stopped.
    pub stall_timeout: Duration,
    /// Where the driver writes received files (the state machine never touches it).
    pub downloads: PathBuf,
}

impl FileConfig {
    /// Derives the settings from the chat's: the same number of tries, probe timeouts of
    /// at most the retry interval, and a receive window of 2,048 chunks (2.2 MiB: the
    /// bandwidth-delay product of 100 Mbit/s over 100 ms with room for a queue of a
    /// quarter of it, and what a client's socket receive buffer of 2 MiB holds).
    pub fn from_chat(chat: &SendConfig, retry_interval: Duration, connect_tries: u32) -> Self {
        FileConfig {
            sender: SenderConfig {
                max_tries: chat.max_tries,
                max_pto: retry_interval,
                initial_rtt: Duration::from_millis(333).min(retry_interval),
                chunk_size: CHUNK_SIZE as u64,
                ..SenderConfig::default()
            },
            receive_window: 2048,
            progress_interval: Duration::from_millis(500),
            offer_lifetime: retry_interval * connect_tries.max(1),
            cancel_tries: 6,
            max_pending_offers: 16,
            max_offers: 64,
            summary_interval: Duration::from_secs(5),
            stall_timeout: retry_interval.min(Duration::from_secs(5)) * 6,
            downloads: PathBuf::from("."),
        }
    }
}

/// How a failure travels on the wire, both ways.
impl TransferFailure {
    /// The failure a peer's `FileCancel` says, for a transfer of `size` bytes.
    fn from_wire(reason: FileEnd, size: u64) -> Self {
        match reason {
            FileEnd::NoSpace => TransferFailure::NoSpace {
                needed: size,
                free: None,
            },
            FileEnd::Refused => TransferFailure::Refused,
            FileEnd::Cancelled => TransferFailure::Cancelled { by_peer: true },
            FileEnd::ChecksumMismatch => TransferFailure::ChecksumMismatch,
            FileEnd::DiskError => TransferFailure::DiskError(String::new()),
            FileEnd::Expired => TransferFailure::Expired,
            FileEnd::Unknown => TransferFailure::Unknown,
        }
    }

    fn to_wire(&self) -> FileEnd {
        match self {
            TransferFailure::Refused => FileEnd::Refused,
            TransferFailure::Cancelled { .. } | TransferFailure::SessionEnded(_) => {
                FileEnd::Cancelled
            }
            TransferFailure::ChecksumMismatch => FileEnd::ChecksumMismatch,
            TransferFailure::DiskError(_) => FileEnd::DiskError,
            TransferFailure::Expired => FileEnd::Expired,
            TransferFailure::Undeliverable => FileEnd::Cancelled,
            TransferFailure::Unknown => FileEnd::Unknown,
            TransferFailure::BadName(_) => FileEnd::Refused,
            TransferFailure::NotStarted | TransferFailure::Stalled => FileEnd::Cancelled,
            TransferFailure::NoSpace { .. } => FileEnd::NoSpace,
        }
    }
}

/// The SHA-256 of `data` in lowercase hex, as shown to users.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a finished transfer answers a repeat of its messages.
#[derive(Debug, Clone, Copy)]
enum Closed {
    /// Received and verified: a repeated last chunk is acknowledged again.
    Received { chunks: u64 },
    /// Sent and confirmed: late acknowledgements are ignored.
    Sent,
    /// Ended early: repeats get this `FileCancel` again.
    Failed(FileEnd),
}

/// A `FileCancel` resent until acknowledged.
struct Cancelling {
    key: Key,
    addr: SocketAddr,
    reason: FileEnd,
    retry: Retry,
    period: Duration,
}

/// How many finished transfers are remembered, to answer repeats of their messages.
const CLOSED_MEMORY: usize = 256;

/// Every file transfer of a client. See the module documentation.
pub struct Files {
    config: FileConfig,
    max_rto: Duration,
    next_local: u64,
    transfers: BTreeMap<u64, Transfer>,
    index: HashMap<Key, u64>,
    closed: HashMap<Key, Closed>,
    closed_order: VecDeque<Key>,
    cancelling: Vec<Cancelling>,
    out: Outputs,
    /// Chunks resent by transfers that have ended.
    retransmissions: u64,
    /// Offers refused for being past the bounds, shown as a count now and then.
    refused: Tally,
}

impl Files {
    /// `max_rto`: the longest any resend waits (the retry interval).
    pub fn new(config: FileConfig, max_rto: Duration) -> Self {
        Files {
            max_rto,
            next_local: 1,
            transfers: BTreeMap::new(),
            index: HashMap::new(),
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            cancelling: Vec::new(),
            out: Outputs::default(),
            retransmissions: 0,
            refused: Tally::new(config.summary_interval),
            config,
        }
    }

    /// While a datagram from `to` is handled that has not proved it receives: what goes
    /// back to it from here may total `budget` bytes (see [`Outputs::limit`]).
    pub fn limit(&mut self, to: SocketAddr, budget: usize) {
        self.out.limit(to, budget);
    }

    /// Ends the limit; returns what it had left.
    pub fn unlimit(&mut self) -> usize {
        self.out.unlimit()
    }

    /// Messages not sent for a limit.
    pub fn withheld(&self) -> u64 {
        self.out.withheld()
    }

    /// Offers refused for being past the bounds.
    pub fn offers_refused(&self) -> u64 {
        self.refused.total()
    }

    /// Chunks resent so far, by every transfer.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
            + self
                .transfers
                .values()
                .map(Transfer::retransmissions)
                .sum::<u64>()
    }

    /// The congestion-control counters of every transfer we are sending, by local number.
    pub fn sender_stats(&self) -> Vec<(u64, SenderStats)> {
        self.transfers
            .iter()
            .filter_map(|(&n, t)| t.sender_stats().map(|s| (n, s)))
            .collect()
    }

    /// Takes transfer `n` out, keeping its counters.
    fn take(&mut self, n: u64) -> Option<Transfer> {
        let t = self.transfers.remove(&n)?;
        self.retransmissions += t.retransmissions();
        Some(t)
    }

    /// The next datagram to send (after the owning peer's own).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.poll_event()
    }

    /// True when no transfer is going on or waiting (to leave at the end of a script).
    pub fn is_idle(&self) -> bool {
        self.transfers
            .values()
            .all(|t| matches!(t.kind, Kind::Offered))
    }

    /// Every transfer going on or waiting, by local number.
    pub fn list(&self) -> Vec<TransferInfo> {
        self.transfers.iter().map(|(&n, t)| t.info(n)).collect()
    }

    /// The offer `n` (or the only one waiting) for our answer: its number, peer, name and
    /// size.
    pub fn pick_offer(&self, n: Option<u64>) -> Result<(u64, ClientId, String, u64), FileError> {
        let n = match n {
            Some(n) => match self.transfers.get(&n) {
                Some(t) if matches!(t.kind, Kind::Offered) => n,
                Some(_) => return Err(FileError::NotAnOffer(n)),
                None => return Err(FileError::NoTransfer(n)),
            },
            None => {
                let offers = self.offers();
                match offers[..] {
                    [n] => n,
                    _ => {
                        return Err(FileError::Ambiguous {
                            what: "file offer waiting for your answer",
                            count: offers.len(),
                        })
                    }
                }
            }
        };
        let t = &self.transfers[&n];
        Ok((n, t.link.peer, t.name.clone(), t.size))
    }

    /// The offers of peers waiting for our answer, by local number.
    fn offers(&self) -> Vec<u64> {
        self.transfers
            .iter()
            .filter(|(_, t)| matches!(t.kind, Kind::Offered))
            .map(|(&n, _)| n)
            .collect()
    }

    fn pick_any(&self, n: Option<u64>) -> Result<u64, FileError> {
        match n {
            Some(n) if self.transfers.contains_key(&n) => Ok(n),
            Some(n) => Err(FileError::NoTransfer(n)),
            None => {
                let mut all = self.transfers.keys();
                match (all.next(), all.next()) {
                    (Some(&n), None) => Ok(n),
                    _ => Err(FileError::Ambiguous {
                        what: "transfer",
                        count: self.transfers.len(),
                    }),
                }
            }
        }
    }

    // ------------------------------------------------------------------ commands

    /// Offers a file on `link`; returns its local number. `sha256` is the file's digest,
    /// which the caller computed (the offer carries it).
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        now: Instant,
        me: ClientId,
        link: Link,
        name: String,
        size: u64,
        sha256: [u8; 32],
        source: Box<dyn FileSource>,
    ) -> u64 {
        let n = self.next_local;
        self.next_local += 1;
        let period = link.rto.min(self.max_rto);
        let kind = Kind::Offering {
            source,
            retry: Retry::first(now + period),
            period,
            expires: now + self.config.offer_lifetime,
        };
        // The local number is unique in the client, hence in the session.
        let t = Transfer::new(now, link, me, n, name, size, sha256, kind);
        self.send_offer(me, &t);
        self.index.insert(t.key(), n);
        self.out.event(Event::FileOffered {
            peer: link.peer,
            n,
            name: t.name.clone(),
            size,
        });
        self.transfers.insert(n, t);
        n
    }

    fn send_offer(&mut self, me: ClientId, t: &Transfer) {
        self.out.transmit(t.link.addr, t.offer(me));
    }

    /// Accepts offer `n`: the file will be written to `sink`.
    pub fn get(
        &mut self,
        now: Instant,
        me: ClientId,
        n: u64,
        sink: Box<dyn FileSink>,
    ) -> Result<(), FileError> {
        let window = self.config.receive_window;
        let max_rto = self.max_rto;
        let t = match self.transfers.get_mut(&n) {
            Some(t) if matches!(t.kind, Kind::Offered) => t,
            Some(_) => {
                sink.abort();
                return Err(FileError::NotAnOffer(n));
            }
            None => {
                sink.abort();
                return Err(FileError::NoTransfer(n));
            }
        };
        let period = t.link.rto.min(max_rto);
        t.start(
            now,
            Kind::Receiving {
                sink: Some(sink),
                rx: RecvWindow::for_payload(window),
                hasher: Sha256::new(),
                written: 0,
                get: Some(Retry::first(now + period)),
                get_period: period,
                queued_ack: None,
                last_chunk: None,
            },
        );
        let (to, session, wire_n) = (t.link.addr, t.link.session, t.wire_n);
        self.out.transmit(
            to,
            Message::FileGet {
                from: me,
                session,
                n: wire_n,
                window: window as u64,
            },
        );
        Ok(())
    }

    /// Refuses offer `n` (or the only one waiting), telling the peer `why` (the person's
    /// `refuse` is [`TransferFailure::Refused`]). Returns its number.
    pub fn refuse(
        &mut self,
        now: Instant,
        me: ClientId,
        n: Option<u64>,
        why: TransferFailure,
    ) -> Result<u64, FileError> {
        let (n, _, _, _) = self.pick_offer(n)?;
        self.end(now, me, n, why, true);
        Ok(n)
    }

    /// Cancels transfer `n` (or the only one), in either direction, at any stage.
    pub fn cancel(&mut self, now: Instant, me: ClientId, n: Option<u64>) -> Result<u64, FileError> {
        let n = self.pick_any(n)?;
        let refusing = matches!(self.transfers[&n].kind, Kind::Offered);
        let why = if refusing {
            TransferFailure::Refused
        } else {
            TransferFailure::Cancelled { by_peer: false }
        };
        self.end(now, me, n, why, true);
        Ok(n)
    }

    /// At the end of a script's input: refuses every offer still waiting for an answer.
    pub fn refuse_all(&mut self, now: Instant, me: ClientId) {
        let offers = self.offers();
        for n in offers {
            self.end(now, me, n, TransferFailure::Refused, true);
        }
    }

    // ------------------------------------------------------------------ endings

    /// Ends transfer `n`: removes the partial file, tells the user, and (with `tell_peer`)
    /// the peer, with a `FileCancel` resent until acknowledged.
    fn end(&mut self, now: Instant, me: ClientId, n: u64, why: TransferFailure, tell_peer: bool) {
        let Some(t) = self.take(n) else {
            return;
        };
        let key = t.key();
        self.index.remove(&key);
        if let Kind::Receiving { sink: Some(s), .. } = t.kind {
            s.abort();
        }
        let reason = why.to_wire();
        self.remember(key, Closed::Failed(reason));
        if tell_peer {
            let period = t.link.rto.min(self.max_rto);
            self.send_cancel(me, key, t.link.addr, reason);
            self.cancelling.push(Cancelling {
                key,
                addr: t.link.addr,
                reason,
                retry: Retry::first(now + period),
                period,
            });
        }
        self.out.event(Event::FileFailed {
            peer: t.link.peer,
            n,
            reason: why,
        });
    }

    fn send_cancel(&mut self, me: ClientId, key: Key, to: SocketAddr, reason: FileEnd) {
        let (_, session, offerer, n) = key;
        let cancel = Message::file_cancel(me, session, offerer, n, reason);
        self.out.transmit(to, cancel);
    }

    fn remember(&mut self, key: Key, how: Closed) {
        if self.closed.insert(key, how).is_none() {
            self.closed_order.push_back(key);
        }
        while self.closed_order.len() > CLOSED_MEMORY {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    /// The session `session` with `peer` moved to `addr` (off a relay): its transfers go
    /// there from now on.
    pub fn migrate(&mut self, peer: ClientId, session: SessionId, addr: SocketAddr) {
        for t in self.transfers.values_mut() {
            if t.link.peer == peer && t.link.session == session {
                t.link.addr = addr;
            }
        }
    }

    /// The session with `peer` ended: every transfer on it fails, partial files go.
    pub fn session_ended(&mut self, peer: ClientId, session: SessionId, reason: EndReason) {
        let gone: Vec<u64> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.link.peer == peer && t.link.session == session)
            .map(|(&n, _)| n)
            .collect();
        for n in gone {
            let t = self.take(n).expect("listed above");
            self.index.remove(&t.key());
            if let Kind::Receiving { sink: Some(s), .. } = t.kind {
                s.abort();
            }
            self.out.event(Event::FileFailed {
                peer,
                n,
                reason: TransferFailure::SessionEnded(reason),
            });
        }
        self.cancelling
            .retain(|c| !(c.key.0 == peer && c.key.1 == session));
    }

    // ------------------------------------------------------------------ network input

    /// A file message on a session that the owning peer has matched to `link`.
    pub fn handle_message(&mut self, now: Instant, me: ClientId, link: Link, msg: Message) {
        let peer = link.peer;
        match msg {
            Message::FileOffer {
                n,
                name,
                size,
                sha256,
                ..
            } => {
                let key = (peer, link.session, peer, n);
                if let Some(&local) = self.index.get(&key) {
                    // A resend: our answer was lost, or is yet to come.
                    if let Some(Kind::Receiving { written: 0, .. }) =
                        self.transfers.get(&local).map(|t| &t.kind)
                    {
                        self.reply(
                            link,
                            Message::FileGet {
                                from: me,
                                session: link.session,
                                n,
                                window: self.config.receive_window as u64,
                            },
                        );
                    }
                    return;
                }
                if let Some(Closed::Failed(reason)) = self.closed.get(&key).copied() {
                    self.send_cancel(me, key, link.addr, reason);
                    return;
                }
                if self.closed.contains_key(&key) {
                    return;
                }
                let (mut waiting, mut from_peer) = (0, 0);
                for t in self.transfers.values() {
                    if matches!(t.kind, Kind::Offered) {
                        waiting += 1;
                        from_peer += usize::from(t.link.peer == peer);
                    }
                }
                if waiting >= self.config.max_offers || from_peer >= self.config.max_pending_offers
                {
                    // Refused at once, without a line each: counted, and shown as a count.
                    log::debug!("{peer}: too many offers waiting for an answer; refused {n}");
                    self.refused.add(now);
                    self.remember(key, Closed::Failed(FileEnd::Refused));
                    self.send_cancel(me, key, link.addr, FileEnd::Refused);
                    return;
                }
                let local = self.next_local;
                self.next_local += 1;
                if let Err(why) = crate::text::safe_file_name(&name) {
                    self.remember(key, Closed::Failed(FileEnd::Refused));
                    self.send_cancel(me, key, link.addr, FileEnd::Refused);
                    self.out.event(Event::FileFailed {
                        peer,
                        n: local,
                        reason: TransferFailure::BadName(why),
                    });
                    return;
                }
                self.index.insert(key, local);
                self.out.event(Event::FileOffer {
                    from: peer,
                    n: local,
                    name: name.clone(),
                    size,
                    sha256: hex(&sha256),
                });
                let t = Transfer::new(now, link, peer, n, name, size, sha256, Kind::Offered);
                self.transfers.insert(local, t);
            }
            Message::FileGet { n, window, .. } => {
                let key = (peer, link.session, me, n);
                let Some(&local) = self.index.get(&key) else {
                    match self.closed.get(&key).copied() {
                        Some(Closed::Failed(reason)) => {
                            self.send_cancel(me, key, link.addr, reason)
                        }
                        Some(_) => {}
                        None => self.send_cancel(me, key, link.addr, FileEnd::Unknown),
                    }
                    return;
                };
                let mut sender = self.config.sender.clone();
                let t = self.transfers.get_mut(&local).expect("indexed");
                // Until a chunk's round trip is measured, the sender assumes RFC 9002's 333
                // ms (§6.2: for the initial window's pacing and the first probe timeout),
                // or less when the path is known to be shorter: the round trip the session
                // measured (its chat), and the time from our offer to this answer, which
                // cannot have come sooner than one round trip after the offer left (an
                // upper bound of the round trip, whoever answered and however late).
                let answered = now.saturating_duration_since(t.started());
                let rtt = [Some(sender.initial_rtt), Some(answered), link.srtt]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(sender.initial_rtt);
                sender.initial_rtt = rtt.max(Duration::from_millis(1));
                // The receiver's window from the first chunk (an older one says nothing:
                // the default stays).
                if window > 0 {
                    sender.default_window = window;
                }
                if let Kind::Offering { .. } = t.kind {
                    let Kind::Offering { source, .. } =
                        std::mem::replace(&mut t.kind, Kind::Offered)
                    else {
                        unreachable!("checked above")
                    };
                    t.start(
                        now,
                        Kind::Sending {
                            source,
                            tx: Box::new(ChunkSender::new(now, sender)),
                            next_chunk: 1,
                            acked: 0,
                        },
                    );
                }
            }
            Message::Chunk { n, seq, data, .. } => {
                let key = (peer, link.session, peer, n);
                let Some(&local) = self.index.get(&key) else {
                    match self.closed.get(&key).copied() {
                        Some(Closed::Received { chunks }) => {
                            self.reply(link, chunk_ack(me, link, n, seq, chunks, Vec::new(), 0))
                        }
                        Some(Closed::Failed(reason)) => {
                            self.send_cancel(me, key, link.addr, reason)
                        }
                        Some(Closed::Sent) => {}
                        None => self.send_cancel(me, key, link.addr, FileEnd::Unknown),
                    }
                    return;
                };
                self.on_chunk(now, me, local, seq, data);
            }
            Message::ChunkAck {
                n,
                seq,
                cumulative,
                ranges,
                window,
                ..
            } => {
                let key = (peer, link.session, me, n);
                let Some(&local) = self.index.get(&key) else {
                    if !self.closed.contains_key(&key) {
                        self.send_cancel(me, key, link.addr, FileEnd::Unknown);
                    }
                    return;
                };
                let t = self.transfers.get_mut(&local).expect("indexed");
                let Kind::Sending { tx, acked, .. } = &mut t.kind else {
                    return;
                };
                tx.on_ack(now, seq, cumulative, &ranges, window);
                *acked = tx.cumulative();
                if *acked >= t.chunks {
                    let t = self.take(local).expect("present");
                    self.index.remove(&key);
                    self.remember(key, Closed::Sent);
                    self.out.event(Event::FileSent {
                        peer,
                        n: local,
                        size: t.size,
                    });
                }
            }
            Message::FileCancel { offerer, n, .. } => {
                let reason = msg.file_end().unwrap_or(FileEnd::Cancelled);
                let key = (peer, link.session, offerer, n);
                self.reply(
                    link,
                    Message::FileCancelAck {
                        from: me,
                        session: link.session,
                        offerer,
                        n,
                    },
                );
                if let Some(&local) = self.index.get(&key) {
                    let size = self.transfers[&local].size;
                    let why = TransferFailure::from_wire(reason, size);
                    self.end(now, me, local, why, false);
                }
            }
            Message::FileCancelAck { offerer, n, .. } => {
                let key = (peer, link.session, offerer, n);
                self.cancelling.retain(|c| c.key != key);
            }
            _ => {}
        }
    }

    fn reply(&mut self, link: Link, message: Message) {
        self.out.transmit(link.addr, message);
    }

    fn on_chunk(&mut self, now: Instant, me: ClientId, local: u64, seq: u64, data: Vec<u8>) {
        let t = self.transfers.get_mut(&local).expect("indexed");
        let (chunks, size) = (t.chunks, t.size);
        let link = t.link;
        let wire_n = t.wire_n;
        let Kind::Receiving {
            sink,
            rx,
            hasher,
            written,
            get,
            queued_ack,
            last_chunk,
            ..
        } = &mut t.kind
        else {
            return;
        };
        *get = None;
        *last_chunk = Some(now);
        // A chunk must be where the offer says: full, except the last.
        let expected = if seq == chunks {
            size - (chunks - 1) * CHUNK_SIZE as u64
        } else {
            CHUNK_SIZE as u64
        };
        if seq == 0 || seq > chunks || data.len() as u64 != expected {
            log::debug!(
                "transfer {local}: chunk {seq} of {} bytes dropped",
                data.len()
            );
            return;
        }
        let received = rx.receive(seq, data);
        let mut failure = None;
        match received {
            Received::Deliver(ready) => {
                for (_, data) in ready {
                    hasher.update(&data);
                    *written += data.len() as u64;
                    if let Some(s) = sink.as_mut() {
                        if let Err(e) = s.write_chunk(&data) {
                            failure = Some(TransferFailure::DiskError(e.to_string()));
                            break;
                        }
                    }
                }
            }
            Received::Held | Received::Duplicate => {}
            Received::TooFarAhead => return,
        }
        if let Some(why) = failure {
            self.end(now, me, local, why, true);
            return;
        }
        let cumulative = rx.cumulative();
        if cumulative == chunks {
            // Every byte is here: the acknowledgement of the last chunk says it is verified.
            let digest: [u8; 32] = std::mem::take(hasher).finalize().into();
            if digest != t.sha256 {
                self.end(now, me, local, TransferFailure::ChecksumMismatch, true);
                return;
            }
            let sink = sink.take().expect("a receiving transfer has its sink");
            match sink.finish() {
                Ok(path) => {
                    let t = self.transfers.remove(&local).expect("present");
                    let key = t.key();
                    self.index.remove(&key);
                    self.remember(key, Closed::Received { chunks });
                    self.out.event(Event::FileReceived {
                        from: link.peer,
                        n: local,
                        path,
                        size: t.size,
                        sha256: hex(&t.sha256),
                    });
                }
                Err(e) => {
                    self.end(
                        now,
                        me,
                        local,
                        TransferFailure::DiskError(e.to_string()),
                        true,
                    );
                    return;
                }
            }
            self.reply(
                link,
                chunk_ack(me, link, wire_n, seq, cumulative, Vec::new(), 0),
            );
            return;
        }
        let ranges = rx.ranges(MAX_ACK_RANGES);
        let window = rx.capacity();
        // An acknowledgement still queued is replaced by this one, which says all it said
        // (the cumulative number only grows; held chunks stay held until it covers them).
        if let Some(Transmit {
            message: queued @ Message::ChunkAck { .. },
            ..
        }) = self.out.queued_mut(*queued_ack)
        {
            *queued = chunk_ack(me, link, wire_n, seq, cumulative, ranges, window);
            return;
        }
        *queued_ack = Some(self.out.next_position());
        self.reply(
            link,
            chunk_ack(me, link, wire_n, seq, cumulative, ranges, window),
        );
    }

    // ------------------------------------------------------------------ output

    /// Reads and queues the chunks the windows have room for, and reports progress. Called
    /// by the owning peer after every input.
    pub fn flush(&mut self, now: Instant, me: ClientId) {
        let mut failed = Vec::new();
        let interval = self.config.progress_interval;
        for (&local, t) in self.transfers.iter_mut() {
            if let Some(why) = t.flush(now, me, local, interval, &mut self.out) {
                failed.push((local, why));
            }
        }
        for (n, why) in failed {
            self.end(now, me, n, why, true);
        }
    }

    /// Resends offers, `FileGet`s, chunks and `FileCancel`s that are due; gives up on those
    /// out of time or tries.
    pub fn handle_timeout(&mut self, now: Instant, me: ClientId) {
        let max_rto = self.max_rto;
        let mut resend_offer = Vec::new();
        let mut resend_get = Vec::new();
        let mut failed = Vec::new();
        let (tries, stall) = (self.config.cancel_tries, self.config.stall_timeout);
        for (&n, t) in self.transfers.iter_mut() {
            match t.handle_timeout(now, max_rto, tries, stall) {
                Due::Nothing => {}
                Due::ResendOffer => resend_offer.push(n),
                Due::ResendGet => resend_get.push((t.link, t.wire_n)),
                Due::Fail(why) => failed.push((n, why)),
            }
        }
        for n in resend_offer {
            let t = &self.transfers[&n];
            self.out.transmit(t.link.addr, t.offer(me));
        }
        for (link, n) in resend_get {
            self.reply(
                link,
                Message::FileGet {
                    from: me,
                    session: link.session,
                    n,
                    window: self.config.receive_window as u64,
                },
            );
        }
        for (n, why) in failed {
            self.end(now, me, n, why, true);
        }
        let tries = self.config.cancel_tries;
        let mut resend = Vec::new();
        self.cancelling.retain_mut(|c| {
            match c.retry.poll_doubling(now, tries, &mut c.period, max_rto) {
                Some(Step::GiveUp) => return false,
                Some(Step::Resend) => resend.push((c.key, c.addr, c.reason)),
                None => {}
            }
            true
        });
        for (key, addr, reason) in resend {
            self.send_cancel(me, key, addr, reason);
        }
        if let Some(count) = self.refused.take_due(now) {
            self.out.event(Event::OffersRefused { count });
        }
        self.flush(now, me);
    }

    /// When [`Files::handle_timeout`] has work to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stall = self.config.stall_timeout;
        let transfers = self
            .transfers
            .values()
            .filter_map(|t| t.poll_timeout(stall));
        let cancels = self.cancelling.iter().map(|c| c.retry.next());
        transfers
            .chain(cancels)
            .chain(self.refused.poll_timeout())
            .min()
    }
}

/// Our acknowledgement of chunk `seq` of transfer `n` on `link`, of every chunk up to
/// `cumulative` and of those in `ranges`; `window`: the chunks beyond `cumulative` we take.
fn chunk_ack(
    me: ClientId,
    link: Link,
    n: u64,
    seq: u64,
    cumulative: u64,
    ranges: Vec<(u64, u64)>,
    window: u64,
) -> Message {
    Message::ChunkAck {
        from: me,
        session: link.session,
        n,
        seq,
        cumulative,
        ranges,
        window,
    }
}

/// The first message field of a file-transfer message: who sent it on which session.
pub(crate) fn route(msg: &Message) -> Option<(ClientId, SessionId)> {
    match *msg {
        Message::FileOffer { from, session, .. }
        | Message::FileGet { from, session, .. }
        | Message::Chunk { from, session, .. }
        | Message::ChunkAck { from, session, .. }
        | Message::FileCancel { from, session, .. }
        | Message::FileCancelAck { from, session, .. } => Some((from, session)),
        _ => None,
    }
}
