//! Short-lived TURN credentials for registered clients (issue 16): the "TURN REST API"
//! scheme that coturn implements as `use-auth-secret` / `static-auth-secret`.
//!
//! The rendezvous server and the TURN server share a secret. For a client, the server
//! makes `username = "<expiry>:<id>"` (expiry in seconds since the Unix epoch) and
//! `password = base64(HMAC-SHA1(secret, username))`; coturn recomputes the password from
//! the username and refuses it once the expiry has passed. Nothing here is new
//! cryptography: HMAC-SHA1 comes from the RustCrypto `hmac` and `sha1` crates, as the
//! scheme requires.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// How long credentials handed to a client stay valid. The client registers again (and
/// is given new ones) long before: registrations live [`RegistryConfig::ttl`]
/// (seconds), and a TURN allocation made with valid credentials is refreshed with the
/// same ones, which coturn accepts while they are unexpired.
///
/// [`RegistryConfig::ttl`]: crate::registry::RegistryConfig
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The TURN server that the rendezvous server hands out, and the secret it shares with it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret {
    pub server: SocketAddr,
    pub secret: Vec<u8>,
    pub lifetime: Duration,
    /// An instant and the Unix time (seconds) at it: the registry has no clock of its
    /// own (`now` is passed in), and the expiry in a username is Unix time.
    pub clock: (Instant, u64),
}

impl fmt::Debug for TurnSecret {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSecret")
            .field("server", &self.server)
            .field("lifetime", &self.lifetime)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Credentials for one client.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// coturn's `use-auth-secret` credentials for `id`, valid until `expiry` (Unix seconds).
pub fn rest_credentials(secret: &[u8], id: &str, expiry: u64) -> Credentials {
    let username = format!("{expiry}:{id}");
    // HMAC accepts a key of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Credentials { username, password }
}

impl TurnSecret {
    /// Credentials for client `id`, `now_unix` being the current Unix time in seconds.
    pub fn credentials_for(&self, id: &str, now_unix: u64) -> Credentials {
        rest_credentials(
            &self.secret,
            id,
            now_unix.saturating_add(self.lifetime.as_secs()),
        )
    }

    /// Credentials for client `id` at `now` (converted to Unix time with `clock`).
    pub fn credentials_at(&self, id: &str, now: Instant) -> Credentials {
        let (at, unix) = self.clock;
        let unix_now = unix.saturating_add(now.saturating_duration_since(at).as_secs());
        self.credentials_for(id, unix_now)
    }

    /// What `Registered` carries for client `id` at `now`.
    pub fn grant(&self, id: crate::wire::ClientId, now: Instant) -> crate::wire::TurnGrant {
        let c = self.credentials_at(&id.to_string(), now);
        crate::wire::TurnGrant {
            server: self.server,
            user: c.username,
            pass: c.password,
        }
    }
}

/// Reads a shared secret from a file (`--turn-secret-file`): its content with surrounding
/// white space removed, which must not be empty.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim_ascii().to_vec();
    if secret.is_empty() {
        return Err(format!("{}: the TURN secret is empty", path.display()));
    }
    Ok(secret)
}

/// Parses `turn:HOST:PORT` (or `HOST:PORT`) where HOST is an IP address; a bare
/// `turn:HOST` gets port 3478. Names are not resolved here.
pub fn parse_turn_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("turn:").unwrap_or(url);
    if let Some(t) = rest.strip_prefix("turns:") {
        return Err(format!("{t}: TURN over TLS (turns:) is not supported"));
    }
    let rest = rest.split('?').next().unwrap_or(rest);
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = rest.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 3478));
    }
    Err(format!(
        "{url}: not a TURN address (expected turn:IP:PORT, e.g. turn:192.0.2.1:3478)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac_sha1() {
        // Computed with: printf '%s' '1700000000:42' | openssl dgst -sha1 -hmac 'north' -binary | base64
        let c = rest_credentials(b"north", "42", 1_700_000_000);
        assert_eq!(c.username, "1700000000:42");
        assert_eq!(c.password, OPENSSL_VECTOR);
        // A different secret, id or expiry gives a different password.
        assert_ne!(
            rest_credentials(b"south", "42", 1_700_000_000).password,
            c.password
        );
        assert_ne!(
            rest_credentials(b"north", "43", 1_700_000_000).password,
            c.password
        );
        assert_ne!(
            rest_credentials(b"north", "42", 1_700_000_001).password,
            c.password
        );
    }

    const OPENSSL_VECTOR: &str = "DWX3FI7DiPIpadEYQAZsnZBAagI=";

    #[test]
    fn expiry_is_now_plus_lifetime() {
        let s = TurnSecret {
            server: "192.0.2.1:3478".parse().unwrap(),
            secret: b"north".to_vec(),
            lifetime: Duration::from_secs(600),
            clock: (Instant::now(), 1000),
        };
        let c = s.credentials_for("7", 1000);
        let later = s.clock.0 + Duration::from_secs(50);
        assert_eq!(s.credentials_at("7", later).username, "1650:7");
        assert_eq!(s.grant(7, later).user, "1650:7");
        assert_eq!(
            s.grant(7, later).pass,
            rest_credentials(b"north", "7", 1650).password
        );
        assert_eq!(c.username, "1600:7");
        assert_eq!(c, rest_credentials(b"north", "7", 1600));
        assert!(!format!("{s:?}").contains("north"));
        assert!(!format!("{c:?}").contains(&c.password));
    }

    #[test]
    fn parses_turn_urls() {
        let a: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        assert_eq!(parse_turn_url("turn:192.0.2.1:3478"), Ok(a));
        assert_eq!(parse_turn_url("192.0.2.1:3478"), Ok(a));
        assert_eq!(parse_turn_url("turn:192.0.2.1"), Ok(a));
        assert_eq!(
            parse_turn_url("turn:[2001:db8::1]:5000"),
            Ok("[2001:db8::1]:5000".parse().unwrap())
        );
        assert_eq!(parse_turn_url("turn:192.0.2.1:3478?transport=udp"), Ok(a));
        assert!(parse_turn_url("turn:").is_err());
        assert!(parse_turn_url("turns:192.0.2.1:5349").is_err());
        assert!(parse_turn_url("turn:relay.example:3478").is_err());
    }

    #[test]
    fn secret_file_is_trimmed_and_not_empty() {
        let dir = std::env::temp_dir().join(format!("p2pchat-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "north\n").unwrap();
        assert_eq!(read_secret_file(&f), Ok(b"north".to_vec()));
        std::fs::write(&f, " \n").unwrap();
        assert!(read_secret_file(&f).unwrap_err().contains("empty"));
        assert!(read_secret_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
