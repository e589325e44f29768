//! The client's private key and the keys it pinned by name, in the state directory
//! (`key.json` and `pins.json`, mode 0600 like every file there, in a 0700 directory).
//! Keys are written in hex.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, FORMAT_VERSION};
use crate::identity::Identity;
use crate::wire::Key;

const KEY_FILE: &str = "key.json";
const PINS_FILE: &str = "pins.json";

#[derive(Serialize, Deserialize)]
struct KeyFile {
    #[serde(default)]
    version: u32,
    /// The X25519 private key, 64 hex digits.
    secret: String,
}

#[derive(Serialize, Deserialize)]
struct PinsFile {
    #[serde(default)]
    version: u32,
    /// Name (ASCII lowercase) -> public key, 64 hex digits.
    pins: BTreeMap<String, String>,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Key> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

impl Store {
    /// The client's key pair: the saved one, or a new one, saved now. The flag says
    /// whether it is new.
    pub fn load_or_create_key(&self) -> Result<(Identity, bool), StoreError> {
        let path = self.dir.join(KEY_FILE);
        if let Some(file) = self.read::<KeyFile>(&path)? {
            return match from_hex(&file.secret) {
                Some(secret) => Ok((Identity::from_secret(secret), false)),
                None => Err(StoreError::Corrupt {
                    path,
                    detail: "the key is not 64 hex digits".into(),
                    kept: None,
                }),
            };
        }
        let identity = Identity::generate();
        self.write(
            &path,
            &KeyFile {
                version: FORMAT_VERSION,
                secret: to_hex(identity.secret()),
            },
        )?;
        Ok((identity, true))
    }

    /// The pinned keys, by name in ASCII lowercase; empty if none were saved. A pin that
    /// is not a key is skipped.
    pub fn load_pins(&self) -> Result<BTreeMap<String, Key>, StoreError> {
        let file = self.read::<PinsFile>(&self.dir.join(PINS_FILE))?;
        Ok(file
            .map(|f| f.pins)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, hex)| from_hex(&hex).map(|k| (name.to_ascii_lowercase(), k)))
            .collect())
    }

    /// Saves every pin, replacing those saved before.
    pub fn save_pins(&self, pins: &BTreeMap<String, Key>) -> Result<(), StoreError> {
        self.write(
            &self.dir.join(PINS_FILE),
            &PinsFile {
                version: FORMAT_VERSION,
                pins: pins.iter().map(|(n, k)| (n.clone(), to_hex(k))).collect(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_created_once_kept_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("p2pchat-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let (first, new) = store.load_or_create_key().unwrap();
        assert!(new);
        let (again, new) = store.load_or_create_key().unwrap();
        assert!(!new);
        assert_eq!(first.public(), again.public());
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut pins = BTreeMap::new();
        pins.insert("alice".to_string(), [7u8; 32]);
        store.save_pins(&pins).unwrap();
        assert_eq!(store.load_pins().unwrap(), pins);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
