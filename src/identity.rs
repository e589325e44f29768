//! Long-term identities: a client's X25519 static key pair, its fingerprint, and the
//! one-way Noise `X` message a client uses to prove to the rendezvous server that it holds
//! the private half of the key it registered (to claim its name back after a restart).
//!
//! No cryptography is written here: key pairs, Diffie-Hellman and every AEAD come from
//! the `snow` crate (the Noise reference implementation, default resolver); the
//! fingerprint is SHA-256 from `sha2`. This module only names what the protocol uses.
//! The peer-to-peer handshake and the sealing of datagrams are in `peer/secure.rs`.

use std::fmt;

use sha2::{Digest, Sha256};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::wire::Key;

/// The handshake between peers: `IK` (the requester knows the asked peer's static key
/// from the server), X25519, AES-256-GCM, BLAKE2s. (AES-GCM rather than ChaCha20-Poly1305:
/// measured on the development machine with snow's default resolver, sealing and opening
/// a chat datagram costs 1.1 µs against 3.8, a chunk 2.5 µs against 5.4; both are
/// constant-time in the RustCrypto crates snow uses, AES-GCM with AES-NI where present.)
pub const PEER_PATTERN: &str = "Noise_IK_25519_AESGCM_BLAKE2s";
/// The proof of a key to the server: the one-way `X` pattern to the server's static key.
pub const PROOF_PATTERN: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// Bound into every `X` proof (the Noise prologue), so that it proves nothing elsewhere.
pub const PROOF_PROLOGUE: &[u8] = b"p2pchat v2 claim";

/// A static X25519 key pair. The private half never leaves this struct except through
/// [`Identity::secret`] (to be written to the state directory).
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    public: Key,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", fingerprint(&self.public))
    }
}

pub(crate) fn params(pattern: &str) -> NoiseParams {
    pattern.parse().expect("a valid Noise pattern name")
}

impl Identity {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Identity {
        let kp = snow::Builder::new(params(PEER_PATTERN))
            .generate_keypair()
            .expect("the operating system's randomness is available");
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&kp.private);
        Identity::from_secret(secret)
    }

    /// The key pair of a private key (32 bytes, as [`Identity::secret`] gave them).
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        let mut dh = DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("the default resolver has X25519");
        dh.set(&secret);
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Identity { secret, public }
    }

    pub fn public(&self) -> &Key {
        &self.public
    }

    /// The private key, for the state directory only.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// A one-way Noise `X` message to `server` (its static key) whose payload is
    /// `payload`: proves to the server that we hold our private key.
    pub fn prove(&self, server: &Key, payload: &[u8]) -> Vec<u8> {
        let mut hs = snow::Builder::new(params(PROOF_PATTERN))
            .local_private_key(&self.secret)
            .and_then(|b| b.remote_public_key(server))
            .and_then(|b| b.prologue(PROOF_PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("valid X parameters");
        let mut out = vec![0u8; 96 + payload.len() + 16];
        let n = hs
            .write_message(payload, &mut out)
            .expect("a small payload fits");
        out.truncate(n);
        out
    }

    /// Reads a proof made with [`Identity::prove`] to our key: the sender's static key
    /// (authenticated) and the payload, or `None` if it does not decrypt.
    pub fn verify_proof(&self, proof: &[u8]) -> Option<(Key, Vec<u8>)> {
        let mut hs = snow::Builder::new(params(PROOF_PATTERN))
            .local_private_key(&self.secret)
            .and_then(|b| b.prologue(PROOF_PROLOGUE))
            .and_then(|b| b.build_responder())
            .ok()?;
        let mut payload = vec![0u8; proof.len()];
        let n = hs.read_message(proof, &mut payload).ok()?;
        payload.truncate(n);
        let key: Key = hs.get_remote_static()?.try_into().ok()?;
        Some((key, payload))
    }
}

/// Bits of SHA-256 of the public key that a fingerprint shows.
pub const FINGERPRINT_BITS: usize = 100;

/// The fingerprint of a public key: the first 100 bits of its SHA-256, in base32
/// (RFC 4648 alphabet), four groups of five characters, e.g. `"K7QXM-2ZC4A-HJ3NP-WTY5R"`.
/// Short enough to read aloud; 2^100 work to find a second key with the same one.
pub fn fingerprint(key: &Key) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(23);
    for i in 0..FINGERPRINT_BITS / 5 {
        let bit = i * 5;
        let (byte, shift) = (bit / 8, bit % 8);
        let pair = (u16::from(digest[byte]) << 8) | u16::from(digest[byte + 1]);
        let v = (pair >> (11 - shift)) & 0x1f;
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(v)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_gives_back_the_same_public_key() {
        let id = Identity::generate();
        let again = Identity::from_secret(*id.secret());
        assert_eq!(id.public(), again.public());
        assert_ne!(Identity::generate().public(), id.public());
    }

    #[test]
    fn fingerprints_are_twenty_base32_characters_in_four_groups() {
        let fp = fingerprint(&[0u8; 32]);
        assert_eq!(fp.len(), 23);
        let groups: Vec<&str> = fp.split('-').collect();
        assert_eq!(groups.len(), 4);
        assert!(groups.iter().all(|g| g.len() == 5));
        // SHA-256 of 32 zero bytes starts 66 68 7a ad f8 ...: 01100 11001 10100 00111 ...
        assert!(fp.starts_with("MZUH"), "{fp}");
        assert_ne!(fingerprint(&[1u8; 32]), fp);
    }

    #[test]
    fn a_proof_shows_the_key_and_payload_to_the_server_only() {
        let (client, server, other) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let proof = client.prove(server.public(), b"challenge");
        let (key, payload) = server.verify_proof(&proof).expect("verifies");
        assert_eq!(&key, client.public());
        assert_eq!(payload, b"challenge");
        assert!(other.verify_proof(&proof).is_none());
        let mut bent = proof.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(server.verify_proof(&bent).is_none());
    }
}
