//! The datagrams p2pchat sends, and how they are encoded.
//!
//! # Framing
//!
//! Every datagram, whoever sends it, is one UDP payload laid out as
//!
//! ```text
//! byte 0      0x50 ('P'), the magic byte
//! byte 1      the protocol version, currently 2 (see [`VERSION`])
//! bytes 2..   one or more MessagePack values, one per message, back to back
//! ```
//!
//! A receiver first checks the magic byte (anything else is dropped as garbage), then the
//! version (a different version gets a clear error, never a guess at the body), then decodes
//! the messages in order. The body must be whole messages with nothing after the last; if any
//! message in a datagram is malformed, the whole datagram is dropped. A datagram longer than
//! [`MAX_DATAGRAM`] bytes is refused before decoding.
//!
//! A sender may pack several messages for the same receiver into one datagram (p2pchat packs
//! what it has ready for one destination, up to [`PACK_LIMIT`] bytes, so that a burst of
//! chat messages or acknowledgements costs a few datagrams, not one each). A receiver handles
//! them as if they had come one by one, in order. A message bigger than the limit goes alone.
//! The rendezvous server handles at most 8 messages of one datagram and drops the rest. A
//! client handles at most 64 ([`MAX_PEER_MESSAGES`]) and drops the rest: a sender packs no
//! more (p2pchat's own datagrams of [`PACK_LIMIT`] bytes hold at most about 40 messages, the
//! smallest, `Ping` and `Pong`, being 30 bytes with field names).
//!
//! # No amplification
//!
//! A source address can be forged, so an answer can land on someone who asked nothing.
//! Neither the server nor a client ever sends an address that has not proved it receives
//! more bytes, in answer to one datagram from it, than that datagram had (1x, counted in
//! bytes with the header; QUIC allows 3x, RFC 9000 §8). An answer that would not fit is not
//! sent. Proof, for the server: the message carries the `token` of the registration at its
//! source address (`Keepalive`, `Leave`, `Claim`, `List`), which only the receiver of our
//! `Registered` knows; for a client: the server's address, and the address of a peer with
//! an open session. So a client pads every request to the server to at least
//! [`REQUEST_SIZE`] (256) bytes with the `pad` field: every answer to an unproven request
//! (`Registered`, the largest `Found`, `Inactive`, `Unknown`, `LeaveAck`, `Error`) fits in
//! that. A request sent unpadded may get no answer.
//!
//! # The message value
//!
//! The body is a MessagePack **map with one entry**: the key is the message's name as a string
//! (`"Register"`, `"Chat"`, ...), the value is a map from field name (string) to field value.
//! This is serde's "externally tagged" enum shape, written with field names so that other
//! implementations need not know the field order. Decoders also accept the fields as an array
//! in the documented order. For example `Lookup { id: 3 }` is the datagram
//!
//! ```text
//! 50 02 81 a6 4c 6f 6f 6b 75 70 81 a2 69 64 03
//! 'P' v2 map(1) "Lookup" map(1) "id" 3
//! ```
//!
//! Field types: ids are unsigned integers that fit in 32 bits ([`ClientId`]), tokens, session
//! ids and sequence numbers fit in 64 bits; an absent optional field is `nil`; an address is a
//! string such as `"127.0.0.1:40000"` or `"[::1]:40000"`; text (`text`, `detail`) is a UTF-8
//! string of at most [`MAX_TEXT`] bytes. Decoders skip fields they do not know, but a value
//! nested more than [`MAX_DEPTH`] deep anywhere in a message, or a longer text, makes the
//! message malformed: the decoder's work and stack stay small whatever a datagram holds, and
//! every message that decodes encodes again within [`MAX_DATAGRAM`].
//!
//! # Client and rendezvous server
//!
//! | message | fields | sent by | answered by |
//! |---|---|---|---|
//! | `Register` | `want_id`: id or nil, `key` (32-byte bin: the client's X25519 public key), `nonce`, `pad` | client | `Registered`, or `Error` (`ServerFull`, `IdTaken`, `RateLimited`) |
//! | `Registered` | `id`, `token`, `ttl_secs`, `key` (32-byte bin: the server's static key for this run), `nonce`, `turn`: map `{server, user, pass}` or absent (a TURN server and short-lived credentials, [`TurnGrant`]) | server | - |
//! | `Lookup` | `id`, `nonce`, `pad` | anyone | `Found` or `Inactive` |
//! | `Found` | `id`, `addr`, `key` (32-byte bin), `nonce` | server | - |
//! | `Inactive` | `id`, `nonce` | server | - (shown as "Client 3 Inactive") |
//! | `Leave` | `id`, `token`, `nonce`, `pad` | client | `LeaveAck`, or `Error` (`NotRegistered`) |
//! | `LeaveAck` | `id`, `nonce` | server | - |
//! | `Keepalive` | `id`, `token`, `nonce`, `pad`, `candidates` (array of at most [`MAX_CANDIDATES`] addresses; left out when none), `relay` (address string: our relayed address on a TURN server; left out when none) | client | nothing; `Error` (`NotRegistered`) if unknown |
//! | `Error` | `code`, `detail`, `nonce` | server | - |
//! | `Claim` | `id`, `token`, `name`, `display_name`: text or nil, `proof`: bin or absent, `nonce`, `pad` | client | `Claimed`, or `Error` (`NameTaken`, `BadName`, `NotRegistered`) |
//! | `Claimed` | `id`, `name`, `nonce` | server | - |
//! | `Resolve` | `name`, `nonce`, `pad` | anyone | `Found` or `Unknown` |
//! | `Unknown` | `name`, `nonce` | server | - |
//! | `List` | `id`, `token`, `after`: id or nil, `nonce`, `pad` | client | `Listing`, or `Error` (`ListDisabled`, `NotRegistered`) |
//! | `Listing` | `clients`: array of {`id`, `key`, `name`, `display_name` (each left out when none), `online_secs`}, `next`: id or nil, `total`, `nonce` | server | - |
//! | `Introduce` | `id`, `addr`, `candidates`: array of addresses, `punch`, `you`, `proof`, `pad`, `relay`: the other's relayed address or absent | server, unasked | - (probes: see "Across NATs") |
//!
//! `Found` also carries `name` and `display_name` when the client has claimed a name (the
//! fields are left out otherwise).
//!
//! `nonce` (unsigned, 64 bits; see [`Nonce`]) binds an answer to its request: a client puts
//! a fresh random one in every request it sends the server (every resend too), the server
//! copies it into every answer to that message, and a client takes a message from the
//! server's address only if it carries the nonce of one of its recent requests (p2pchat
//! remembers its last 256), once. Someone who can forge the server's address but cannot
//! read the client's requests cannot guess one, so a forged `Registered`, `Found` or
//! `Error` is not an answer. `pad` is a `bin` of any bytes (p2pchat sends zeros) that only
//! makes the request bigger (see "No amplification"; p2pchat pads `Lookup` and `Resolve` to
//! [`LOOKUP_SIZE`], 768, so that the answer may carry an `Introduce`). Both are left out
//! when 0 or empty,
//! and a decoder treats them as 0 and empty when absent, so a message without them encodes
//! and decodes as in earlier builds.
//!
//! # Names and listing
//!
//! A registered client may `Claim` one unique name (see [`check_name`]: letters, digits, `_`,
//! `-`, `.`, starting with a letter, at most [`MAX_NAME`] bytes; unique without regard to
//! ASCII case), and a free-form display name of at most [`MAX_DISPLAY_NAME`] bytes. A second
//! `Claim` replaces the first. A name held by another client is refused with `NameTaken`,
//! unless the holder registered the same `key` and `proof` proves it: a one-way
//! `Noise_X_25519_ChaChaPoly_BLAKE2s` message (prologue `"p2pchat v2 claim"`) to the
//! server's `key` from `Registered`, whose payload is the claimer's `token` (8 bytes,
//! big-endian). So a client claims its name back after a restart, before the old entry
//! expires, by holding its private key, not merely by showing the public one. The
//! name is released when its client leaves or expires.
//!
//! `List` pages through the table in id order: the server answers with as many clients as
//! fit in one datagram of [`PACK_LIMIT`] bytes, and `next` names the `after` of the next
//! page (the last id on the page); `nil` means there is no more. A client keeps asking
//! while `next` is not `nil`: a page may hold fewer clients than would fit, or none, when
//! the server stopped looking early (it looks at a bounded number of ids per page, so that
//! a table with long runs of free ids costs it bounded work), and `next` is then the last
//! id it looked at. Since pages follow ids, a client that stays online while the pages are
//! fetched is listed exactly once; one that joins or leaves meanwhile may or may not be.
//! `total` counts the clients online when the page was made, and `online_secs` is how long
//! each has been registered. Only a registered client may list (the answer is much larger
//! than the question, and must not go to a forged address), and a server started with
//! `--no-list` answers `Error` `ListDisabled`. `Claim` and `List` that match no
//! registration (address, id and token) are answered `Error` `NotRegistered`, like
//! `Keepalive`.
//!
//! The server records the *observed* source address of `Register` as the client's address:
//! a client must send everything (to the server and to its peers) from that one socket.
//! A client with no id yet asks for one with `want_id: nil` and gets the lowest free id
//! (starting at 1); with `want_id: N` it gets N if free, else `Error` `IdTaken`. A repeated
//! `Register` from an address already registered is answered with the same `Registered`
//! (same id and token): it is a retransmission, not a second client.
//!
//! `token` is a random 64-bit secret given in `Registered`; `Leave` and `Keepalive` carry it.
//! A `Leave` is honoured only from the registered address with the right token; a repeated
//! `Leave` whose `LeaveAck` was lost gets `LeaveAck` again. `ttl_secs` is how long the server
//! keeps an entry it hears nothing from: a client sends `Keepalive` (or anything else) well
//! within it, typically every third of it. A `Keepalive` or `Leave` the server cannot match
//! is answered with `Error` `NotRegistered`, which tells a client that the server has
//! forgotten it (for example after a restart) and should register again.
//!
//! `ttl_secs` tells how often to send a `Keepalive`; p2pchat believes at most an hour of it,
//! so that its keepalives never stop. `code` in `Error` is one of the strings `"ServerFull"`,
//! `"IdTaken"`, `"BadVersion"`, `"NotRegistered"`, `"RateLimited"`, `"NameTaken"`,
//! `"BadName"`, `"ListDisabled"`; `detail` is a human-readable sentence. A client told
//! `RateLimited` keeps trying at its own pace.
//!
//! New registrations from one network (an IPv4 /24, an IPv6 /56) are rate-limited: a token
//! bucket, by default 200 at once and 20 a second after that, whose tokens go first to the
//! addresses that were refused and ask again (so a flood from fresh ports cannot starve a
//! client that retries), and at most `max(16, max_clients / 8)` clients of one network are
//! registered at once. A refused address is told `RateLimited` at most once a second; its
//! other registrations are dropped unanswered. A datagram with the right magic byte but
//! another version is answered with `Error` `BadVersion` in this version's framing, when
//! that fits (a client's padded `Register` does); a client of another version can tell
//! from byte 1 alone that it cannot talk to this server.
//!
//! # Peer to peer
//!
//! Peers talk directly, each from the address the server has for it. Every peer message
//! carries `from`, the sender's id, and `session`, a random 64-bit id chosen by the peer that
//! sent the `ConnectRequest`. A peer acts on a message only when `from`, the source address
//! and `session` all match a session it has; anything else is dropped, so that strangers and
//! datagrams left over from an earlier session change nothing.
//!
//! **Encryption (version 2).** Every session is a Noise handshake, pattern
//! `Noise_IK_25519_AESGCM_BLAKE2s`, prologue `"p2pchat v2"` followed by the
//! requester's id (4 bytes, big-endian), the asked peer's id (4) and the session id (8).
//! The requester knows the asked peer's static key from the server (`Found`). The first
//! message rides in `ConnectRequest.hs` (payload: the requester's wall-clock time, 8
//! bytes, nanoseconds since the Unix epoch, big-endian), built once and resent unchanged;
//! the second in `Accept.hs` or `Reject.hs` (payload: 1 byte, 1 accept / 0 reject, then
//! the answerer's time, 8 bytes), likewise built once and sent again for a resent request.
//! The asked peer believes a request only if the static key it proves is the `key` the
//! server publishes for `from` (asked with `Lookup` when not known) and its time is newer
//! than any handshake seen from that key; a newer one from the key of a connected peer at
//! the same address is a restart and replaces that session at once. Every other message
//! of a session (the table below, and any added later) travels only inside
//! `Sealed { from, session, n, data }`: `data` is the AES-256-GCM encryption (Noise's `AESGCM`), with the
//! sender's transport key of the session and nonce `n` (0, 1, 2, ... per direction; as Noise encodes it for AESGCM: 4 zero bytes, then `n` big-endian; no associated data), of the
//! MessagePack values of one or more messages of that session and sender, back to back.
//! A receiver keeps a replay window of 2048 counters per session (one below the highest by
//! more than 1984 is refused) and drops a `Sealed` that does not open, one it saw, and any
//! session message in clear. So nothing of a conversation is readable on the wire, and a
//! forged `Terminate` or `Reject` changes nothing. There are no resets any more (they
//! cannot be authenticated): a stale session ends by its silence timeout.
//!
//! | message | fields | sent by | answered by |
//! |---|---|---|---|
//! | `ConnectRequest` | `from`, `session`, `hs` (bin, Noise message 1) | requester, every retry interval | `Accept` or `Reject` |
//! | `Accept` | `from`, `session`, `hs` (bin, Noise message 2, payload 1) | the asked peer (its own id in `from`) | - |
//! | `Reject` | `from`, `session`, `hs` (bin, Noise message 2, payload 0) | the asked peer | - |
//! | `Sealed` | `from`, `session`, `n`, `data` (bin, at most [`MAX_DATAGRAM`] bytes) | either side | - |
//! | `Chat` | `from`, `session`, `seq`, `text` | either side | `Ack` |
//! | `Ack` | `from`, `session`, `seq`, `cumulative` | receiver of a `Chat` | - |
//! | `Terminate` | `from`, `session` | either side | `TerminateAck` |
//! | `TerminateAck` | `from`, `session` | receiver of a `Terminate` | - |
//! | `Ping` | `from`, `session` | either side, when idle | `Pong` |
//! | `Pong` | `from`, `session` | receiver of a `Ping` | - |
//! | `Probe` | `from`, `punch` | either side of an introduction | - (see "Across NATs") |
//!
//! `Chat` messages are numbered `seq` = 1, 2, 3, ... in each direction of a session. The
//! receiver shows them once each, in order (one that arrives early waits for the gap before
//! it), and answers every `Chat` (duplicates too) with an `Ack` naming its `seq` (this one has
//! arrived) and `cumulative`, the highest number up to which every message has arrived and
//! been shown. One `Ack` may answer several `Chat`s: a receiver that has several to answer at
//! once (a burst it received before sending anything) may send a single `Ack` whose
//! `cumulative` covers them all, naming the newest in `seq`; a `Chat` that arrived early
//! (above `cumulative`) still gets an `Ack` naming it. The sender stops resending a `Chat`
//! once either number covers it, and counts it as delivered once `cumulative` does. A sender
//! may resend a `Chat` before its timeout once a `Chat` it sent well after it is acknowledged
//! by `seq` and it is not. A `Chat` too far ahead of the gap to be held (more than the
//! window, 256) is dropped without an `Ack` and is resent later. A sender that gets no
//! acknowledgement for a `Chat` after its tries ends the session with `Terminate`.
//!
//! A retransmitted `ConnectRequest` that was already answered gets the same answer again.
//! If both peers ask each other at once, the request with the smaller `session` wins and is
//! accepted automatically by the other side. A `Chat`, `Ack` or `Ping` for a session the
//! receiver does not know is answered with `Terminate` for that session (like a TCP reset),
//! so a peer that restarted makes the other side end the stale session at once. A
//! `Terminate` for an unknown session is still answered with `TerminateAck`.
//!
//! **Amplification.** A source address can be forged, so a client never answers an address
//! that has not proved it receives with more bytes than it received from it (1x, where QUIC,
//! RFC 9000 section 8, allows 3x). Addresses that have proved it: the rendezvous server's,
//! and those of connected sessions (the random session id of our request came back in
//! their `Accept`, or our person accepted their request), also after such a session ends
//! for as long as a `Terminate` of it may still be resent. To anyone else, the answers to
//! one datagram (each counted as if it went alone, header included) may total the
//! datagram's length plus what that address has sent and not been answered for while a
//! connection request was pending with it, either way; answers that do not fit are not
//! sent. So a reset or a `TerminateAck` to a stranger may not come (a `Ping` of 32 bytes is
//! smaller than the `Terminate` of 37 that would answer it): the stale session then ends by
//! its timeout. A peer we are asking to connect gets the reset of its stale session at its
//! second `Ping`.
//!
//! **Bounds.** A client holds at most 64 connection requests waiting for its person's answer,
//! and at most 8 from one source (an IPv4 address, or an IPv6 /64); it ignores others (no
//! answer) until some are answered or expire. It holds at most 16 file offers waiting for
//! an answer from one peer and 64 in all, and refuses others (`FileCancel` `Refused`).
//!
//! # Across NATs
//!
//! Most clients are behind NAT routers, which let a datagram in only in answer to one that
//! went out (and forget an idle mapping after 30 s to a few minutes). So that two clients
//! behind NATs can reach each other, the server introduces them and both send at once:
//!
//! - A registered client tells the server its own addresses in the `candidates` of its
//!   `Keepalive`s (its interfaces' addresses with the socket's port, at most
//!   [`MAX_CANDIDATES`]; never loopback, unspecified, multicast or IPv6 link-local, which
//!   the server drops anyway); p2pchat sends a `Keepalive` at once after `Registered` for
//!   that. A server that predates them skips the field. Those of a `Keepalive` that does
//!   not match a registration (address, id, token) are not kept.
//! - `Introduce` and `Probe` always travel alone in their datagram (a [`Packer`] sends them
//!   so), since a receiver that predates them drops a datagram that holds them, and with it
//!   whatever was packed beside them.
//! - When a client registered at the source address of a `Lookup` or `Resolve` finds
//!   another client, the server sends, after the `Found`, an `Introduce` to each: to the
//!   asker about the found client, and to the found client (at its registered address)
//!   about the asker. `id` is the other client, `addr` its address as the server sees it,
//!   `candidates` its `Candidates`, `punch` a random 64-bit secret of the pair (the same in
//!   both, kept for 30 s), `you` the receiver's own address as the server sees it, and
//!   `proof` the receiver's registration token. The asker's copy is part of the answer to
//!   its request (within its size: "No amplification"; padded to fill it, up to
//!   [`INTRODUCE_SIZE`]); the found client's copy is padded to [`INTRODUCE_SIZE`], and is
//!   sent at most once a second per pair.
//! - A client acts on an `Introduce` only if `proof` is its own token (someone who forges
//!   the server's address does not know it). It then sends `Probe { from: its id, punch }`
//!   to `addr` and each candidate that is not one of its own addresses: a round at once,
//!   then after 100, 200, 400 ms and every 500 ms, until the probes for that introduction
//!   would total more bytes than the `Introduce` had, or a session with the peer opens.
//!   Probes go to no other address.
//! - A `Probe` counts only if its `punch` is the secret of an introduction of `from` that
//!   the receiver holds, and it comes from one of the IPs of that introduction (any port:
//!   a NAT that changes ports maps the prober anew for each destination). It is never
//!   answered as such. Its source address has proved it is the peer, and that it receives
//!   (the secret went only there); a `ConnectRequest` of ours to that peer moves to the
//!   first such address and is sent there at once, without waiting for its retry.
//! - A requester that has heard no valid probe 1 s after the introduction (or after the
//!   `Found`, when no introduction came) sends its `Lookup` again, at most 3 times, so that
//!   a lost introduction is sent again. If after 5 s nothing came and both sides are behind
//!   NATs (for each, `addr` is not one of its `candidates`), the request ends: there is no
//!   direct path (p2pchat shows "no direct path to bob: both behind NATs that change
//!   ports").
//! - A `ConnectRequest` from another port of the IP of a peer we are asking (a NAT that
//!   changes ports) is taken as that peer's, and our request moves there.
//!
//! A client that knows none of this drops the datagrams of `Introduce` and `Probe` (they
//! are alone in theirs), and connects as before where no NAT is in the way.
//!
//! # Through a relay
//!
//! When both sides are behind NATs that change ports for every destination (or a
//! firewall passes nothing between them), no probe gets through. Then both go through
//! TURN relays (RFC 8656; coturn in the tests), relay to relay:
//!
//! - A client with a TURN server (its own `--turn`, or the `turn` of `Registered`: a
//!   server started with `--turn` hands out short-lived credentials, coturn's
//!   `use-auth-secret` scheme) makes an allocation as soon as it is registered, and tells
//!   the server its relayed address in the `relay` of its `Keepalive`s (one is sent at
//!   once). The server keeps the last one per client (forgotten with the client), and
//!   puts it in the `relay` of the `Introduce`s about that client. A client whose
//!   credentials are more than an hour old, before it allocates again, sends its
//!   `Register` again (same key, from its registered address): the answer is its
//!   `Registered` as it was, with a fresh `turn`.
//! - An `Introduce` with a `relay` makes the receiver ask its own TURN server for a
//!   permission and a channel to that address at once (so that the peer's datagrams
//!   through the relays are let in), and nothing more.
//! - A requester that has heard no valid probe 1 s after the introduction, and whose
//!   channel to the peer's relayed address is bound, moves its `ConnectRequest` there and
//!   sends it at once (no `NoPath` verdict follows). The datagrams are the same as on a
//!   direct path, wrapped in TURN ChannelData to the TURN server (4 bytes more), relayed
//!   from our allocation to the peer's, and unwrapped by the peer's client: the relays
//!   see addresses, sizes and timing, and only the handshake and sealed datagrams.
//! - The session on the relay keeps looking for a direct path: every `relay_upgrade`
//!   (3 x the retry interval) it looks the peer up again, so that the server introduces
//!   both again and both probe again. A probe from the peer, or a `Sealed` `Ping` of the
//!   session from one of the IPs of the peer's introduction, starts a path check: sealed
//!   `Ping`s to that address, 200 ms apart, at most 5. A `Sealed` from an address the
//!   session does not use is dropped unopened, unless the session is on the relay and the
//!   address is at one of the IPs of the peer's introduction: then it is opened (its keys
//!   prove the sender) but only a `Ping` in it is acted on, answered with a `Pong` to
//!   where it came from. A `Pong` from the checked
//!   address proves the path both ways: the session moves there (`path_changed`). What was
//!   in flight on the relay is still taken from the relay's address; chat sequence numbers
//!   drop anything that arrives twice.
//! - A relay that stops answering for 20 s, or whose allocation ends, ends the sessions
//!   through it (`relay_lost`); the client allocates again 5 s later, then twice as long
//!   each time up to 10 minutes. `leave` deletes the allocation (a Refresh with lifetime
//!   0) before the client stops.
//!
//! # File transfer
//!
//! Files go from peer to peer inside a session, as messages of the session (with its `from`
//! and `session`). Each transfer has a number `n`, chosen by the peer that offers the file
//! and never used twice by it in a session (p2pchat uses its own transfer counter), so a
//! transfer is named by its offerer and `n`.
//!
//! | message | fields | sent by | answered by |
//! |---|---|---|---|
//! | `FileOffer` | `from`, `session`, `n`, `name`, `size`, `sha256` (32-byte bin) | offerer, resent until answered | `FileGet`, or `FileCancel` (`Refused`) |
//! | `FileGet` | `from`, `session`, `n`, optional `window` | receiver | the chunks |
//! | `Chunk` | `from`, `session`, `n`, `seq`, `data` (bin, at most [`CHUNK_SIZE`] bytes) | offerer | `ChunkAck` |
//! | `ChunkAck` | `from`, `session`, `n`, `seq`, `cumulative`, optional `ranges`, optional `window` | receiver | - |
//! | `FileCancel` | `from`, `session`, `offerer`, `n`, `reason` | either side, resent until acknowledged | `FileCancelAck` |
//! | `FileCancelAck` | `from`, `session`, `offerer`, `n` | receiver of a `FileCancel` | - |
//!
//! `name` is only a suggestion: the receiver cleans it (no directories, no `..`, no control
//! characters) and never overwrites a file. The offer is resent (from the session's
//! retransmission timeout, doubling, at most every retry interval) until the receiver
//! answers; an offer unanswered for `connect_tries` retry intervals is withdrawn with
//! `FileCancel` `Expired`. The receiver answers a repeated offer with the same answer; a
//! `FileGet` that is lost is so repeated too, and the receiver also resends it until the
//! first chunk arrives (6 sends, like `FileCancel`; then it gives the transfer up with
//! `FileCancel` `Cancelled`).
//!
//! After `FileGet`, the file travels as `Chunk`s numbered `seq` = 1, 2, 3, ...: chunk `seq`
//! holds the bytes from `(seq - 1) * CHUNK_SIZE`, and every chunk but the last is full. A
//! file of `size` bytes has `max(1, ceil(size / CHUNK_SIZE))` chunks: an empty file is one
//! empty chunk. The receiver acknowledges what arrives at once (a `ChunkAck` may cover a
//! burst): `seq` the chunk that just arrived, `cumulative` every chunk up to it, `ranges`
//! the chunks above `cumulative` held for a gap to fill (inclusive `[first, last]` pairs,
//! the highest first, at most [`MAX_ACK_RANGES`]), and `window`, how many chunks beyond
//! `cumulative` it can take (flow control: what it can buffer). A chunk above
//! `cumulative + window` is dropped unacknowledged. A receiver that sends no `window` takes
//! [`DEFAULT_CHUNK_WINDOW`] (64) chunks, so an older receiver is never flooded; an older
//! sender ignores both fields and keeps its window of 64. `FileGet` carries the same
//! `window`, so that it holds from the first chunk, before any `ChunkAck` (absent: 64).
//!
//! How the offerer paces the chunks is its own business, not the protocol's; p2pchat's
//! sender (see [`crate::congestion`]) numbers every copy it sends, declares a chunk lost
//! once a chunk sent 3 after it, or 9/8 of a round trip after it, has been acknowledged
//! (RFC 9002), resends only the lost chunks, probes when acknowledgements stop, and keeps
//! what is in flight within a congestion window (CUBIC with a delay signal) and the
//! receiver's `window`, paced over the round trip.
//!
//! The receiver writes the chunks in order and hashes them as they come; it acknowledges
//! the **last** chunk with a `cumulative` that covers it only once the SHA-256 of the whole
//! file matches `sha256`, so that acknowledgement means "received and verified". If the
//! digest differs it sends `FileCancel` `ChecksumMismatch` instead. A repeated last chunk of
//! a finished transfer is acknowledged again.
//!
//! `reason` is one of `"Refused"`, `"Cancelled"`, `"ChecksumMismatch"`, `"DiskError"`,
//! `"Expired"`, `"Unknown"`. A reason added since travels in an optional field, `precise`,
//! with the nearest of those six in `reason`: `"NoSpace"` (the receiver does not have the
//! free space the offer's `size` needs, and refuses before writing anything) is sent as
//! `reason: "Refused", precise: "NoSpace"`. A peer that predates `precise` skips it (decoders
//! skip fields they do not know) and sees a refusal; had `"NoSpace"` been put in `reason`, its
//! decoder would have refused the whole datagram, with whatever was packed beside it. A
//! receiver takes `precise` when it knows its value, else `reason` (a value it does not know
//! in `precise` is not an error). A `FileCancel` is resent (like `Terminate`) until
//! `FileCancelAck`, and is acknowledged even when the transfer is unknown. A `Chunk`,
//! `FileGet` or `ChunkAck` for a transfer the receiver does not know is answered once with
//! `FileCancel` `Unknown` (not resent). When the session ends, every transfer of it ends
//! too.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A TURN server and credentials for it, in `Registered` (see [`crate::peer::relay`] and
/// [`crate::registry::turn`]): `user` is `"<expiry>:<id>"`, `pass` the base64 of an
/// HMAC-SHA1 over it with the secret shared by the rendezvous and TURN servers (coturn's
/// `use-auth-secret`). Longest: an IPv6 address, a 20-digit expiry and id, 28 base64
/// characters; it keeps `Registered` within [`REQUEST_SIZE`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnGrant {
    #[serde(with = "addr_as_string")]
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
}

impl std::fmt::Debug for TurnGrant {
    // The password is a credential: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnGrant")
            .field("server", &self.server)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The first byte of every datagram.
pub const MAGIC: u8 = 0x50;
/// The protocol version this build speaks (byte 1 of every datagram).
pub const VERSION: u8 = 2;
/// Datagrams longer than this (8192) are refused without decoding.
pub const MAX_DATAGRAM: usize = 8192;
/// The longest chat text one `Chat` carries, in bytes (1200); longer lines are split by the client.
/// Also the longest `detail` of an `Error`. A longer one is malformed.
pub const MAX_TEXT: usize = 1200;
/// How deep MessagePack values may nest in a message (16; a message itself needs 2 levels: the
/// map naming it and the map of its fields). Deeper nesting, even in a field the decoder
/// skips, is malformed, so that a small datagram cannot make decoding recurse deeply.
pub const MAX_DEPTH: usize = 16;
/// A client handles at most this many messages of one datagram (the rest are dropped): a
/// datagram of tiny messages must not cost it more work, or answers, than a few.
pub const MAX_PEER_MESSAGES: usize = 64;
/// Senders pack messages into datagrams of at most this many bytes (1200; one message bigger than
/// this still goes, alone): small enough for a typical path MTU (1280 for IPv6, less headers).
pub const PACK_LIMIT: usize = 1200;

/// A client's numeric id, assigned by the rendezvous server. Ids start at 1.
pub type ClientId = u32;
/// A random secret the server hands out with an id; proves a `Leave` comes from the owner.
pub type Token = u64;
/// A static public key (X25519, 32 bytes): a client's identity, or the server's.
pub type Key = [u8; 32];
/// A random id chosen by the requester of a peer-to-peer session.
pub type SessionId = u64;
/// A random number a client puts in a request to the server, and the server copies into
/// every answer to it: an answer whose nonce the client did not send is not an answer
/// (someone off the path cannot guess it). 0 means none.
pub type Nonce = u64;

/// Every request a client sends the server is padded to at least this many bytes (the
/// whole datagram, header included): the server's answer to an address that has not
/// proved it receives is never larger than what it received from it, and every such
/// answer (`Registered`, `Found` with the longest names and an IPv6 address, `Inactive`,
/// `Unknown`, `LeaveAck`, an `Error`) fits in this many.
pub const REQUEST_SIZE: usize = 256;

/// `pad`: bytes that only make a request bigger (see [`REQUEST_SIZE`]). Encoded as a
/// MessagePack `bin` of zeros and decoded without keeping the bytes; an empty one is left
/// out of the encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Padding(pub u16);

impl Padding {
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl Serialize for Padding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const ZEROS: [u8; MAX_DATAGRAM] = [0; MAX_DATAGRAM];
        let len = usize::from(self.0).min(MAX_DATAGRAM);
        s.serialize_bytes(&ZEROS[..len])
    }
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl serde::de::Visitor<'_> for Len {
            type Value = Padding;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes of padding")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Padding, E> {
                Ok(Padding(u16::try_from(v.len()).unwrap_or(u16::MAX)))
            }
        }
        d.deserialize_bytes(Len)
    }
}

fn is_zero(n: &Nonce) -> bool {
    *n == 0
}

/// Why the server refused a request.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The table holds `--max-clients` entries already.
    ServerFull,
    /// `Register` asked for an id another client holds.
    IdTaken,
    /// The datagram had another protocol version.
    BadVersion,
    /// A `Leave`, `Keepalive`, `Claim` or `List` that matches no registration from that
    /// address and token.
    NotRegistered,
    /// Too many new registrations from the sender's network (IPv4 /24, IPv6 /56); the
    /// client tries again later.
    RateLimited,
    /// `Claim` asked for a name another client holds.
    NameTaken,
    /// `Claim` asked for a name (or display name) that breaks the rules in [`check_name`].
    BadName,
    /// The server was started with `--no-list` and does not tell who is online.
    ListDisabled,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::ServerFull => "server full",
            ErrorCode::IdTaken => "id taken",
            ErrorCode::BadVersion => "bad protocol version",
            ErrorCode::NotRegistered => "not registered",
            ErrorCode::RateLimited => "too many registrations",
            ErrorCode::NameTaken => "name taken",
            ErrorCode::BadName => "bad name",
            ErrorCode::ListDisabled => "listing disabled",
        })
    }
}

/// `with_nonce!(msg, n => yes, no)`: `yes` with `n` bound to the `nonce` field of a message
/// between a client and the server (by reference, shared or mutable as `msg` is), `no` for
/// the others. The one list of the messages that carry a nonce.
macro_rules! with_nonce {
    ($msg:expr, $n:ident => $yes:expr, $no:expr) => {
        match $msg {
            Message::Register { nonce: $n, .. }
            | Message::Lookup { nonce: $n, .. }
            | Message::Leave { nonce: $n, .. }
            | Message::Keepalive { nonce: $n, .. }
            | Message::Claim { nonce: $n, .. }
            | Message::Resolve { nonce: $n, .. }
            | Message::List { nonce: $n, .. }
            | Message::Registered { nonce: $n, .. }
            | Message::Found { nonce: $n, .. }
            | Message::Claimed { nonce: $n, .. }
            | Message::Unknown { nonce: $n, .. }
            | Message::Listing { nonce: $n, .. }
            | Message::Inactive { nonce: $n, .. }
            | Message::LeaveAck { nonce: $n, .. }
            | Message::Error { nonce: $n, .. } => $yes,
            _ => $no,
        }
    };
}

/// The `nonce` field of the messages between a client and the server, and the `pad` field
/// of the requests.
impl Message {
    /// The nonce of a request to the server or of an answer from it; `None` for the
    /// messages that have none (peer-to-peer messages).
    pub fn nonce(&self) -> Option<Nonce> {
        with_nonce!(self, nonce => Some(*nonce), None)
    }

    /// Sets the nonce of a request or an answer (no effect on other messages).
    pub fn set_nonce(&mut self, value: Nonce) {
        with_nonce!(self, nonce => *nonce = value, ())
    }

    /// The padding of a request to the server; `None` for other messages.
    fn pad_mut(&mut self) -> Option<&mut Padding> {
        match self {
            Message::Register { pad, .. }
            | Message::Lookup { pad, .. }
            | Message::Leave { pad, .. }
            | Message::Keepalive { pad, .. }
            | Message::Claim { pad, .. }
            | Message::Resolve { pad, .. }
            | Message::List { pad, .. }
            | Message::Introduce { pad, .. } => Some(pad),
            _ => None,
        }
    }

    /// Whether this is a request a client sends the server.
    pub fn is_server_request(&self) -> bool {
        matches!(
            self,
            Message::Register { .. }
                | Message::Lookup { .. }
                | Message::Leave { .. }
                | Message::Keepalive { .. }
                | Message::Claim { .. }
                | Message::Resolve { .. }
                | Message::List { .. }
        )
    }
}

/// Requests to the server as a client builds them, with no nonce and no padding yet (they
/// are added as the request leaves: see [`pad_request`], and the client's `Requests`).
impl Message {
    pub fn register(want_id: Option<ClientId>, key: Key) -> Message {
        Message::Register {
            want_id,
            key,
            nonce: 0,
            pad: Padding(0),
        }
    }

    pub fn lookup(id: ClientId) -> Message {
        Message::Lookup {
            id,
            nonce: 0,
            pad: Padding(0),
        }
    }

    pub fn keepalive(id: ClientId, token: Token) -> Message {
        Self::keepalive_with(id, token, Vec::new())
    }

    /// A `Keepalive` that tells the server our own addresses.
    pub fn keepalive_with(id: ClientId, token: Token, candidates: Vec<SocketAddr>) -> Message {
        Message::Keepalive {
            id,
            token,
            nonce: 0,
            pad: Padding(0),
            candidates,
            relay: None,
        }
    }

    pub fn leave(id: ClientId, token: Token) -> Message {
        Message::Leave {
            id,
            token,
            nonce: 0,
            pad: Padding(0),
        }
    }

    pub fn resolve(name: impl Into<String>) -> Message {
        Message::Resolve {
            name: name.into(),
            nonce: 0,
            pad: Padding(0),
        }
    }
}

/// Pads a request to the server so that its datagram, alone, is at least [`REQUEST_SIZE`]
/// bytes, [`LOOKUP_SIZE`] for `Lookup` and `Resolve` (no effect on other messages, or on a
/// request already that big).
pub fn pad_request(msg: &mut Message) {
    if !msg.is_server_request() {
        return;
    }
    let size = match msg {
        Message::Lookup { .. } | Message::Resolve { .. } => LOOKUP_SIZE,
        _ => REQUEST_SIZE,
    };
    pad_to(msg, size);
}

/// Every `Lookup` and `Resolve` a client sends is padded to at least this many bytes, so
/// that the server's answer may also carry an [`Message::Introduce`] to the asker (see
/// "Across NATs"); a smaller one is still answered, without it when it does not fit.
pub const LOOKUP_SIZE: usize = 768;

/// Pads a message that has a `pad` field (a request to the server, an `Introduce`) so that
/// its datagram, alone, is at least `size` bytes (at most [`MAX_DATAGRAM`]).
pub fn pad_to(msg: &mut Message, size: usize) {
    let target = size.min(MAX_DATAGRAM);
    let Some(pad) = msg.pad_mut() else { return };
    *pad = Padding(0);
    let mut size = encoded_len(msg);
    // The field costs its name (4 bytes) and a bin header (2, or 3 past 255 bytes) besides
    // the padding itself; one more pass settles a header that grew.
    for _ in 0..3 {
        if size >= target {
            return;
        }
        let pad = msg.pad_mut().expect("a request");
        let missing = target - size;
        let current = usize::from(pad.0);
        let overhead = if current == 0 { 6 } else { 0 };
        let grow = missing.saturating_sub(overhead).max(1);
        *pad = Padding(u16::try_from(current + grow).unwrap_or(u16::MAX));
        size = encoded_len(msg);
    }
}

/// Encodes `msg` alone as a client sends it: a request to the server padded with
/// [`pad_request`], anything else as [`encode`] does.
pub fn encode_request(msg: &Message) -> Vec<u8> {
    let mut msg = msg.clone();
    pad_request(&mut msg);
    encode(&msg)
}

/// The size of `msg` alone in a datagram, header included.
pub fn encoded_len(msg: &Message) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(2);
    let _ = write_body(msg, &mut count);
    count.0
}

/// Every datagram of the protocol: see the module documentation for who sends what.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Message {
    // ---- client -> server ----
    /// Ask for an id; `want_id` asks for a particular one.
    Register {
        want_id: Option<ClientId>,
        /// The client's static public key (X25519, 32 bytes).
        #[serde(with = "serde_bytes")]
        key: Key,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },
    /// Ask where client `id` is.
    Lookup {
        id: ClientId,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },
    /// Leave the table. Only honoured from the registered address with the right token.
    Leave {
        id: ClientId,
        token: Token,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },
    /// "Still here": refreshes the entry so that it does not expire. `candidates`: the
    /// client's own addresses (see "Across NATs"), left out when none.
    Keepalive {
        id: ClientId,
        token: Token,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
        #[serde(
            default,
            skip_serializing_if = "Vec::is_empty",
            with = "addrs_as_strings"
        )]
        candidates: Vec<SocketAddr>,
        /// Our relayed address on a TURN server (see "Through a relay"), told so that the
        /// server hands it to the peers it introduces us to; left out when we have none.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_addr_as_string"
        )]
        relay: Option<SocketAddr>,
    },
    /// Registered client `id` (proved by `token`) takes the unique `name`, with an optional
    /// free-form `display_name`. If the entry holding `name` has the same key as this
    /// client and `proof` proves the private key, it is a leftover of this client's last run
    /// and is removed.
    Claim {
        id: ClientId,
        token: Token,
        #[serde(deserialize_with = "bounded_text")]
        name: String,
        #[serde(default, deserialize_with = "bounded_opt_text")]
        display_name: Option<String>,
        /// A one-way Noise `X` message to the server's key (from `Registered`) whose
        /// payload is `token` (8 bytes, big-endian): proves that the sender holds the
        /// private key it registered. Needed only to take a name from an entry with the
        /// same key (this client's previous run); left out otherwise.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "bounded_opt_bytes"
        )]
        proof: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },
    /// Ask where the client named `name` is (names match without regard to ASCII case).
    Resolve {
        #[serde(deserialize_with = "bounded_text")]
        name: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },
    /// Registered client `id` (proved by `token`) asks who is online: the clients with ids
    /// above `after` (from the first with `nil`), in id order, one datagram's worth.
    List {
        id: ClientId,
        token: Token,
        #[serde(default)]
        after: Option<ClientId>,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
    },

    // ---- server -> client ----
    /// The id assigned to the sender's address, its token, and the entry's time to live.
    Registered {
        id: ClientId,
        token: Token,
        ttl_secs: u32,
        /// The server's static public key (X25519) for this run, to which a `Claim`'s
        /// `proof` is made.
        #[serde(with = "serde_bytes")]
        key: Key,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
        /// A TURN server and short-lived credentials for it (issue 16), when the server
        /// was started with `--turn` and `--turn-secret-file`; left out otherwise (older
        /// encodings stay valid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn: Option<TurnGrant>,
    },
    /// Client `id` is registered at `addr`, with its name if it has claimed one.
    Found {
        id: ClientId,
        #[serde(with = "addr_as_string")]
        addr: SocketAddr,
        /// The static public key client `id` registered with.
        #[serde(with = "serde_bytes")]
        key: Key,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "bounded_opt_text"
        )]
        name: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "bounded_opt_text"
        )]
        display_name: Option<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// The `Claim` of `name` by client `id` was done.
    Claimed {
        id: ClientId,
        #[serde(deserialize_with = "bounded_text")]
        name: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// No client is named `name`.
    Unknown {
        #[serde(deserialize_with = "bounded_text")]
        name: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// One page of the answer to `List`: `clients` in id order; `next` is the `after` to ask
    /// for the next page (`nil` on the last page); `total` counts every client online.
    Listing {
        clients: Vec<Listed>,
        #[serde(default)]
        next: Option<ClientId>,
        total: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// No client `id` is registered ("Client 3 Inactive").
    Inactive {
        id: ClientId,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// The `Leave` of client `id` was done.
    LeaveAck {
        id: ClientId,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },
    /// The request was refused.
    Error {
        code: ErrorCode,
        #[serde(deserialize_with = "bounded_text")]
        detail: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        nonce: Nonce,
    },

    // ---- peer <-> peer ----
    /// "Peer `from` would like to chat", resent every retry interval until answered
    /// (the same bytes each time). `hs` is the first Noise `IK` handshake message.
    ConnectRequest {
        from: ClientId,
        session: SessionId,
        #[serde(with = "serde_bytes")]
        hs: Vec<u8>,
    },
    /// The asked peer (`from`) accepts the session: `hs` is the second handshake message,
    /// whose payload says so.
    Accept {
        from: ClientId,
        session: SessionId,
        #[serde(with = "serde_bytes")]
        hs: Vec<u8>,
    },
    /// The asked peer (`from`) declines the session: `hs` is the second handshake message,
    /// whose payload says so.
    Reject {
        from: ClientId,
        session: SessionId,
        #[serde(with = "serde_bytes")]
        hs: Vec<u8>,
    },
    /// Every other message of a session, encrypted: `data` is AES-256-GCM with the
    /// session's key of the sender's direction and nonce `n`, over the MessagePack values
    /// of one or more messages of the session, back to back.
    Sealed {
        from: ClientId,
        session: SessionId,
        n: u64,
        #[serde(
            serialize_with = "serde_bytes::serialize",
            deserialize_with = "bounded_sealed"
        )]
        data: Vec<u8>,
    },
    /// Chat message number `seq` of the sender's direction of the session.
    Chat {
        from: ClientId,
        session: SessionId,
        seq: u64,
        #[serde(deserialize_with = "bounded_text")]
        text: String,
    },
    /// `Chat` number `seq` has arrived; every number up to `cumulative` has been shown.
    Ack {
        from: ClientId,
        session: SessionId,
        seq: u64,
        cumulative: u64,
    },
    /// Ends the session; resent until acknowledged.
    Terminate { from: ClientId, session: SessionId },
    /// Acknowledges a `Terminate`.
    TerminateAck { from: ClientId, session: SessionId },
    /// Session keepalive, sent when a session has been idle.
    Ping { from: ClientId, session: SessionId },
    /// Answer to `Ping`.
    Pong { from: ClientId, session: SessionId },

    // ---- file transfer ----
    /// Offers file transfer `n` (numbered by the offerer, per session): a file called `name`
    /// of `size` bytes whose SHA-256 is `sha256`. Resent until answered.
    FileOffer {
        from: ClientId,
        session: SessionId,
        n: u64,
        #[serde(deserialize_with = "bounded_text")]
        name: String,
        size: u64,
        #[serde(with = "serde_bytes")]
        sha256: [u8; 32],
    },
    /// The receiver of offer `n` wants the file: send the chunks.
    FileGet {
        from: ClientId,
        session: SessionId,
        n: u64,
        /// Flow control from the first chunk: the `window` of the receiver's `ChunkAck`s,
        /// before its first one. Absent or 0: [`DEFAULT_CHUNK_WINDOW`].
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        window: u64,
    },
    /// Chunk `seq` (1, 2, 3, ...) of transfer `n`: bytes `(seq - 1) * CHUNK_SIZE` onwards.
    Chunk {
        from: ClientId,
        session: SessionId,
        n: u64,
        seq: u64,
        #[serde(
            serialize_with = "serde_bytes::serialize",
            deserialize_with = "bounded_bytes"
        )]
        data: Vec<u8>,
    },
    /// Chunk `seq` of transfer `n` has arrived; every chunk up to `cumulative` has been
    /// written. A `cumulative` that covers the last chunk also says the SHA-256 matched.
    ChunkAck {
        from: ClientId,
        session: SessionId,
        n: u64,
        seq: u64,
        cumulative: u64,
        /// Chunks above `cumulative` that have arrived and wait for the gap before them to
        /// fill, as inclusive `[first, last]` pairs, the highest first, at most
        /// [`MAX_ACK_RANGES`] of them (selective acknowledgement). Absent: none (or a peer
        /// that predates the field).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ranges: Vec<(u64, u64)>,
        /// Flow control: the receiver takes chunks up to `cumulative + window`. Absent or 0:
        /// 64 (what every receiver took before the field existed).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        window: u64,
    },
    /// Ends transfer `n` offered by `offerer` (either side may send it): refused, cancelled,
    /// or failed. Resent until `FileCancelAck`.
    ///
    /// A reason that older peers do not know (see [`FileEnd::is_new`]) travels in
    /// `precise`, with `reason` set to the nearest one they know
    /// ([`FileEnd::compatible`]): build it with [`Message::file_cancel`], read it with
    /// [`Message::file_end`].
    FileCancel {
        from: ClientId,
        session: SessionId,
        offerer: ClientId,
        n: u64,
        reason: FileEnd,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_file_end"
        )]
        precise: Option<FileEnd>,
    },
    /// Acknowledges a `FileCancel`.
    FileCancelAck {
        from: ClientId,
        session: SessionId,
        offerer: ClientId,
        n: u64,
    },

    // ---- across NATs (see "Across NATs" above) ----
    /// The server introduces client `id` to the receiver, because one of the two looked
    /// the other up: `id` is at `addr` (as the server sees it) and at `candidates` (its
    /// own addresses); `punch` is a secret the two put in their `Probe`s. `you` is the
    /// receiver's address as the server sees it; `proof` is the receiver's registration
    /// token (only it and the server know it), so that a forged introduction is not
    /// acted on. Padded with `pad` so that the probes it causes never outweigh it.
    Introduce {
        id: ClientId,
        #[serde(with = "addr_as_string")]
        addr: SocketAddr,
        #[serde(default, with = "addrs_as_strings")]
        candidates: Vec<SocketAddr>,
        punch: Token,
        #[serde(with = "addr_as_string")]
        you: SocketAddr,
        proof: Token,
        #[serde(default, skip_serializing_if = "Padding::is_empty")]
        pad: Padding,
        /// The other client's relayed address on a TURN server, if it told one (the
        /// `relay` of its `Keepalive`): where to reach it when no probe gets through.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_addr_as_string"
        )]
        relay: Option<SocketAddr>,
    },
    /// A hole-punching probe: "I am `from`, introduced to you with `punch`". Sent only to
    /// addresses from an `Introduce`; never answered as such.
    Probe { from: ClientId, punch: Token },
}

/// The most addresses a client tells the server in the `candidates` of `Keepalive` (and the
/// server hands on in `Introduce`); a longer list is malformed.
pub const MAX_CANDIDATES: usize = 4;

/// The server pads every `Introduce` to at least this many bytes (header included): the
/// probes one introduction causes total at most this (see "Across NATs").
pub const INTRODUCE_SIZE: usize = 768;

/// Why a file transfer ended early (the `reason` of `FileCancel`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileEnd {
    /// The receiver said no.
    Refused,
    /// Either person cancelled it.
    Cancelled,
    /// The whole file arrived but its SHA-256 did not match the offer.
    ChecksumMismatch,
    /// Reading or writing the file failed.
    DiskError,
    /// The offer was not answered in time.
    Expired,
    /// The transfer is not known (any more) to the sender of the `FileCancel`.
    Unknown,
    /// The receiver does not have the free space the file needs: refused before any byte
    /// was written. New in this version: sent in `precise`, as `Refused` in `reason`.
    NoSpace,
}

impl FileEnd {
    /// A short stable name, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            FileEnd::Refused => "refused",
            FileEnd::Cancelled => "cancelled",
            FileEnd::ChecksumMismatch => "checksum_mismatch",
            FileEnd::DiskError => "disk_error",
            FileEnd::Expired => "expired",
            FileEnd::Unknown => "unknown_transfer",
            FileEnd::NoSpace => "no_space",
        }
    }

    /// Whether peers of this protocol version that predate it may not know this reason
    /// (their decoder refuses a `FileCancel`, and the whole datagram with it, whose
    /// `reason` it does not know).
    pub fn is_new(self) -> bool {
        matches!(self, FileEnd::NoSpace)
    }

    /// The nearest reason every peer knows: what goes in `reason` when this one goes in
    /// `precise`.
    pub fn compatible(self) -> FileEnd {
        match self {
            FileEnd::NoSpace => FileEnd::Refused,
            known => known,
        }
    }
}

/// The most ranges a `ChunkAck` carries (a sender reads no more than 64 of them).
pub const MAX_ACK_RANGES: usize = 16;

/// The window a receiver that does not advertise one (`window` absent) takes.
pub const DEFAULT_CHUNK_WINDOW: u64 = 64;

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The most file bytes one `Chunk` carries (1056): with its fields, a `Chunk` sealed alone
/// in a `Sealed` stays within [`PACK_LIMIT`], so chunks never fragment. (Version 1 carried
/// 1100, which the sealing's 84 bytes would have pushed past it.)
pub const CHUNK_SIZE: usize = 1056;
/// The most bytes a `Chunk` may carry when decoded (a longer one is malformed).
pub const MAX_CHUNK: usize = 4096;

impl Message {
    /// The session a peer-to-peer message belongs to (`None` for client-server messages).
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Message::ConnectRequest { session, .. }
            | Message::Sealed { session, .. }
            | Message::Accept { session, .. }
            | Message::Reject { session, .. }
            | Message::Chat { session, .. }
            | Message::Ack { session, .. }
            | Message::Terminate { session, .. }
            | Message::TerminateAck { session, .. }
            | Message::Ping { session, .. }
            | Message::Pong { session, .. }
            | Message::FileOffer { session, .. }
            | Message::FileGet { session, .. }
            | Message::Chunk { session, .. }
            | Message::ChunkAck { session, .. }
            | Message::FileCancel { session, .. }
            | Message::FileCancelAck { session, .. } => Some(*session),
            _ => None,
        }
    }

    /// The message's name as it appears on the wire (`"Chat"`, `"Register"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Register { .. } => "Register",
            Message::Lookup { .. } => "Lookup",
            Message::Leave { .. } => "Leave",
            Message::Keepalive { .. } => "Keepalive",
            Message::Claim { .. } => "Claim",
            Message::Resolve { .. } => "Resolve",
            Message::List { .. } => "List",
            Message::Claimed { .. } => "Claimed",
            Message::Unknown { .. } => "Unknown",
            Message::Listing { .. } => "Listing",
            Message::Registered { .. } => "Registered",
            Message::Found { .. } => "Found",
            Message::Inactive { .. } => "Inactive",
            Message::LeaveAck { .. } => "LeaveAck",
            Message::Error { .. } => "Error",
            Message::ConnectRequest { .. } => "ConnectRequest",
            Message::Accept { .. } => "Accept",
            Message::Reject { .. } => "Reject",
            Message::Sealed { .. } => "Sealed",
            Message::Chat { .. } => "Chat",
            Message::Ack { .. } => "Ack",
            Message::Terminate { .. } => "Terminate",
            Message::TerminateAck { .. } => "TerminateAck",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::FileOffer { .. } => "FileOffer",
            Message::FileGet { .. } => "FileGet",
            Message::Chunk { .. } => "Chunk",
            Message::ChunkAck { .. } => "ChunkAck",
            Message::FileCancel { .. } => "FileCancel",
            Message::FileCancelAck { .. } => "FileCancelAck",
            Message::Introduce { .. } => "Introduce",
            Message::Probe { .. } => "Probe",
        }
    }

    /// A `FileCancel` for `reason`, readable by every peer: a reason older peers do not
    /// know goes in `precise`, with the nearest one they know in `reason`.
    pub fn file_cancel(
        from: ClientId,
        session: SessionId,
        offerer: ClientId,
        n: u64,
        reason: FileEnd,
    ) -> Message {
        Message::FileCancel {
            from,
            session,
            offerer,
            n,
            reason: reason.compatible(),
            precise: reason.is_new().then_some(reason),
        }
    }

    /// The reason of a `FileCancel`: `precise` when it has one this version knows, else
    /// `reason` (`None` for other messages).
    pub fn file_end(&self) -> Option<FileEnd> {
        match self {
            Message::FileCancel {
                reason, precise, ..
            } => Some(precise.unwrap_or(*reason)),
            _ => None,
        }
    }
}

/// One client in a `Listing`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: ClientId,
    /// The client's static public key.
    #[serde(with = "serde_bytes")]
    pub key: Key,
    /// Left out when the client has no name (so that a page holds more clients).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_opt_text"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_opt_text"
    )]
    pub display_name: Option<String>,
    /// For how many seconds the client has been registered.
    pub online_secs: u32,
}

/// The longest name, in bytes.
pub const MAX_NAME: usize = 32;
/// The longest display name, in bytes.
pub const MAX_DISPLAY_NAME: usize = 64;

/// Why a name or display name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub String);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadName {}

/// Checks a name: 1 to [`MAX_NAME`] bytes of ASCII letters, digits, `_`, `-` and `.`,
/// starting with a letter (so that a name is never mistaken for a numeric id). Names are
/// unique without regard to ASCII case: `Alice` and `alice` are the same name.
pub fn check_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(BadName(format!(
            "a name has 1 to {MAX_NAME} characters, not {}",
            name.chars().count()
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(BadName(format!("name {name:?} must start with a letter")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(BadName(format!(
            "name {name:?} has {c:?}; use letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(())
}

/// Checks a display name: 1 to [`MAX_DISPLAY_NAME`] bytes, no control characters.
pub fn check_display_name(display: &str) -> Result<(), BadName> {
    if display.trim().is_empty() || display.len() > MAX_DISPLAY_NAME {
        return Err(BadName(format!(
            "a display name has 1 to {MAX_DISPLAY_NAME} bytes and is not blank"
        )));
    }
    if display.chars().any(char::is_control) {
        return Err(BadName("a display name has no control characters".into()));
    }
    Ok(())
}

/// Why a datagram could not be decoded. Decoding never panics; every failure is one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than the two header bytes.
    TooShort { len: usize },
    /// Longer than [`MAX_DATAGRAM`].
    TooLarge { len: usize },
    /// The first byte is not [`MAGIC`]: not a p2pchat datagram at all.
    BadMagic { found: u8 },
    /// A p2pchat datagram of another protocol version.
    BadVersion { found: u8 },
    /// Right header, but the body is not one valid message (wrong types, unknown message,
    /// truncated, trailing bytes...).
    Malformed { reason: String },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort { len } => write!(f, "datagram too short ({len} bytes)"),
            DecodeError::TooLarge { len } => {
                write!(f, "datagram too large ({len} bytes, limit {MAX_DATAGRAM})")
            }
            DecodeError::BadMagic { found } => {
                write!(f, "not a p2pchat datagram (first byte {found:#04x})")
            }
            DecodeError::BadVersion { found } => write!(
                f,
                "protocol version {found} is not supported (this build speaks version {VERSION})"
            ),
            DecodeError::Malformed { reason } => write!(f, "malformed message: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A message to send and where: what the state machines (the registry and the peer) hand
/// to the driver from their `poll_transmit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub message: Message,
}

/// Encodes a message as one datagram (header and body).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(msg, &mut out);
    out
}

/// Encodes a message into `out` (cleared first), reusing its allocation.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.push(MAGIC);
    out.push(VERSION);
    append_body(msg, out);
}

/// Appends one message's MessagePack value (fields by name) to `out`.
fn append_body(msg: &Message, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every field type of `Message` is serializable.
    write_body(msg, out).expect("serializing a Message into a Vec cannot fail");
}

/// Writes one message's MessagePack value (fields by name): the one place the body
/// encoding is decided, for single and packed datagrams and for measuring them.
fn write_body(msg: &Message, w: impl std::io::Write) -> Result<(), rmp_serde::encode::Error> {
    msg.serialize(&mut rmp_serde::Serializer::new(w).with_struct_map())
}

/// Decodes a datagram that must hold exactly one message. Never panics, whatever the bytes.
pub fn decode(datagram: &[u8]) -> Result<Message, DecodeError> {
    let mut all = decode_all(datagram)?;
    if all.len() != 1 {
        return Err(DecodeError::Malformed {
            reason: format!("{} messages where one was expected", all.len()),
        });
    }
    Ok(all.pop().expect("one message"))
}

/// Decodes every message of a datagram, in order. Never panics, whatever the bytes; if any
/// message is malformed, the whole datagram is refused.
pub fn decode_all(datagram: &[u8]) -> Result<Vec<Message>, DecodeError> {
    decode_body(check_header(datagram)?)
}

/// Appends one message's MessagePack value to `out`: what a datagram's body, or the
/// plaintext of a `Sealed`, is made of.
pub fn append_message(msg: &Message, out: &mut Vec<u8>) {
    append_body(msg, out);
}

/// Decodes the MessagePack values of a body (a datagram without its header, or the
/// plaintext of a `Sealed`), in order; at least one. Never panics.
pub fn decode_body(mut body: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut messages = Vec::with_capacity(1);
    while !body.is_empty() {
        let before = body.len();
        let mut de = rmp_serde::Deserializer::new(&mut body);
        de.set_max_depth(MAX_DEPTH);
        let msg = Message::deserialize(&mut de).map_err(|e| DecodeError::Malformed {
            reason: if messages.is_empty() {
                e.to_string()
            } else {
                format!("message {}: {e}", messages.len() + 1)
            },
        })?;
        debug_assert!(body.len() < before, "a decoded message consumes bytes");
        messages.push(msg);
    }
    if messages.is_empty() {
        return Err(DecodeError::Malformed {
            reason: "no message after the header".into(),
        });
    }
    Ok(messages)
}

/// Checks the header and returns the body.
fn check_header(datagram: &[u8]) -> Result<&[u8], DecodeError> {
    let len = datagram.len();
    if len > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge { len });
    }
    if len < 2 {
        return Err(DecodeError::TooShort { len });
    }
    if datagram[0] != MAGIC {
        return Err(DecodeError::BadMagic { found: datagram[0] });
    }
    if datagram[1] != VERSION {
        return Err(DecodeError::BadVersion { found: datagram[1] });
    }
    Ok(&datagram[2..])
}

/// Packs consecutive messages for the same destination into datagrams of at most
/// [`PACK_LIMIT`] bytes. IO-free: finished datagrams are handed to a callback.
///
/// ```
/// use p2pchat::wire::{Message, Packer, decode_all};
/// let to = "127.0.0.1:4000".parse().unwrap();
/// let mut sent = Vec::new();
/// let mut packer = Packer::new();
/// for id in 1..=3 {
///     let ack = Message::Ack { from: 1, session: 7, seq: id, cumulative: id };
///     packer.push(to, &ack, |_, d| sent.push(d.to_vec()));
/// }
/// packer.flush(|_, d| sent.push(d.to_vec()));
/// assert_eq!(sent.len(), 1);
/// assert_eq!(decode_all(&sent[0]).unwrap().len(), 3);
/// ```
#[derive(Debug, Default)]
pub struct Packer {
    to: Option<SocketAddr>,
    /// The datagram being packed holds a message that goes alone.
    alone: bool,
    datagram: Vec<u8>,
    scratch: Vec<u8>,
    datagrams: u64,
    messages: u64,
}

impl Packer {
    pub fn new() -> Self {
        Packer::default()
    }

    /// Adds a message for `to`. If it does not fit in the datagram being packed (another
    /// destination, or over the limit), that datagram is handed to `send` first. An
    /// `Introduce` or a `Probe` goes alone (see "Across NATs"): whatever follows it starts a
    /// datagram of its own.
    pub fn push(&mut self, to: SocketAddr, msg: &Message, mut send: impl FnMut(SocketAddr, &[u8])) {
        self.scratch.clear();
        append_body(msg, &mut self.scratch);
        let alone = matches!(msg, Message::Introduce { .. } | Message::Probe { .. });
        let fits = !alone
            && !self.alone
            && self.to == Some(to)
            && self.datagram.len() + self.scratch.len() <= PACK_LIMIT;
        if !fits {
            self.flush(&mut send);
            self.to = Some(to);
            self.datagram.push(MAGIC);
            self.datagram.push(VERSION);
        }
        self.datagram.extend_from_slice(&self.scratch);
        self.messages += 1;
        self.alone = alone;
    }

    /// Hands the datagram being packed, if any, to `send`.
    pub fn flush(&mut self, send: impl FnOnce(SocketAddr, &[u8])) {
        self.alone = false;
        if let Some(to) = self.to.take() {
            send(to, &self.datagram);
            self.datagram.clear();
            self.datagrams += 1;
        }
    }

    /// Datagrams finished so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    /// Messages packed so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

/// Decodes a text field, refusing one longer than [`MAX_TEXT`] bytes.
fn bounded_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() > MAX_TEXT {
        return Err(serde::de::Error::custom(format!(
            "text of {} bytes, limit {MAX_TEXT}",
            text.len()
        )));
    }
    Ok(text)
}

/// Decodes an optional text field, refusing one longer than [`MAX_TEXT`] bytes.
fn bounded_opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) if text.len() > MAX_TEXT => Err(serde::de::Error::custom(format!(
            "text of {} bytes, limit {MAX_TEXT}",
            text.len()
        ))),
        other => Ok(other),
    }
}

/// Decodes an optional `bin` field (a proof), refusing more than 256 bytes.
fn bounded_opt_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let data: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
    match data {
        Some(b) if b.len() > 256 => Err(serde::de::Error::custom(format!(
            "proof of {} bytes, limit 256",
            b.len()
        ))),
        other => Ok(other.map(serde_bytes::ByteBuf::into_vec)),
    }
}

/// Decodes the `data` of a `Sealed`, refusing more than [`MAX_DATAGRAM`] bytes.
fn bounded_sealed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let data: Vec<u8> = serde_bytes::deserialize(d)?;
    if data.len() > MAX_DATAGRAM {
        return Err(serde::de::Error::custom(format!(
            "sealed data of {} bytes, limit {MAX_DATAGRAM}",
            data.len()
        )));
    }
    Ok(data)
}

/// Decodes the bytes of a `Chunk`, refusing more than [`MAX_CHUNK`].
fn bounded_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let data: Vec<u8> = serde_bytes::deserialize(d)?;
    if data.len() > MAX_CHUNK {
        return Err(serde::de::Error::custom(format!(
            "chunk of {} bytes, limit {MAX_CHUNK}",
            data.len()
        )));
    }
    Ok(data)
}

/// Decodes the optional `precise` reason of a `FileCancel`, taking a reason this version
/// does not know (one added later) as absent rather than as a malformed message, so that
/// `reason` is used instead.
fn lenient_file_end<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<FileEnd>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Known(FileEnd),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Lenient>::deserialize(d)? {
        Some(Lenient::Known(end)) => Some(end),
        Some(Lenient::Other(_)) | None => None,
    })
}

/// A list of at most [`MAX_CANDIDATES`] addresses, each as a string (see `addr_as_string`).
mod addrs_as_strings {
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addrs: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(|a| a.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        let texts = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        if texts.len() > super::MAX_CANDIDATES {
            return Err(D::Error::custom(format!(
                "{} addresses, limit {}",
                texts.len(),
                super::MAX_CANDIDATES
            )));
        }
        texts
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|_| D::Error::custom(format!("not a socket address: {t:?}")))
            })
            .collect()
    }
}

/// Addresses travel as strings ("127.0.0.1:40000", "[::1]:40000") so that any language can
/// read them; a string that is not an address fails decoding.
mod addr_as_string {
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("not a socket address: {text:?}")))
    }
}

/// An optional address, as a string when present (see `addr_as_string`).
mod opt_addr_as_string {
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let Some(text) = Option::<std::borrow::Cow<'de, str>>::deserialize(d)? else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("not a socket address: {text:?}")))
    }
}

#[cfg(test)]
mod tests;
