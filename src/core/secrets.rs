//! Secrets at rest: VIM passwords and application-credential secrets are sealed with
//! AES-256-GCM (ring) before they reach the metadata store, and opened only when a VIM is
//! called. A sealed value is `v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`; the key id
//! (the first 8 bytes of the key's SHA-256, hex) says which configured key opens it, and the
//! associated data binds it to its record (the VIM id), so a sealed value copied to another
//! row does not open.
//!
//! Keys come from the configuration (`[secrets]`, see `config::SecretsConfig`): the current
//! key seals; old keys only open, so that `image-manager secrets rotate` (and any read of a
//! value sealed under an old key) can re-seal under the current one.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest as _, Sha256};

use crate::config::SecretsConfig;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key: {0}")]
    Key(String),
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret is under key {0}, which is not configured (secrets.key / secrets.old_keys)")]
    UnknownKey(String),
    #[error("sealed secret does not open with its key (corrupted, or moved to another record)")]
    Open,
    #[error("sealing failed")]
    Seal,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != 32 {
            return Err(SecretError::Key(format!(
                "a key is 32 bytes (base64 of `openssl rand -base64 32`), this one is {}",
                bytes.len()
            )));
        }
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SecretError::Key("unusable key".into()))?;
        Ok(Key {
            id,
            key: LessSafeKey::new(unbound),
        })
    }

    fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| SecretError::Key(format!("not base64: {e}")))?;
        Self::from_bytes(&bytes)
    }

    fn from_file(path: &Path) -> Result<Self, SecretError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SecretError::Key(format!("reading {}: {e}", path.display())))?;
        Self::from_base64(&text).map_err(|e| SecretError::Key(format!("{}: {e}", path.display())))
    }
}

/// Seals and opens secrets with the configured keys.
pub struct Sealer {
    current: Key,
    old: Vec<Key>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.current.id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of the configuration. Without a key configured, the key file
    /// `<data_dir>/secret.key` is read, or created (mode 0600) when missing.
    pub fn from_config(c: &SecretsConfig, data_dir: &Path) -> Result<Self, SecretError> {
        let current = match (&c.key, &c.key_file) {
            (Some(k), _) if !k.0.trim().is_empty() => Key::from_base64(&k.0)?,
            (_, Some(file)) => Key::from_file(file)?,
            _ => Self::default_key(&data_dir.join("secret.key"))?,
        };
        let mut old = Vec::new();
        for k in &c.old_keys {
            old.push(Key::from_base64(&k.0)?);
        }
        for f in &c.old_key_files {
            old.push(Key::from_file(f)?);
        }
        Ok(Sealer {
            current,
            old,
            rng: SystemRandom::new(),
        })
    }

    /// A sealer with one key (tests).
    pub fn with_key(bytes: &[u8; 32]) -> Result<Self, SecretError> {
        Ok(Sealer {
            current: Key::from_bytes(bytes)?,
            old: Vec::new(),
            rng: SystemRandom::new(),
        })
    }

    fn default_key(path: &Path) -> Result<Key, SecretError> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Key::from_base64(&text),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SecretError::Key(format!("reading {}: {e}", path.display())))
            }
            Err(_) => {}
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Key("no random numbers".into()))?;
        let text = STANDARD.encode(bytes);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| SecretError::Key(format!("creating {}: {e}", dir.display())))?;
        }
        write_private(path, &text).map_err(|e| SecretError::Key(format!("writing {}: {e}", path.display())))?;
        // Two processes starting at once: the file that won is the key.
        Key::from_file(path)
    }

    /// The id of the key that seals.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Seal `plain`, bound to `record` (the id of the row it is stored in).
    pub fn seal(&self, record: &str, plain: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Seal)?;
        let mut buf = plain.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1:{}:{}", self.current.id, URL_SAFE_NO_PAD.encode(out)))
    }

    /// Open a sealed value of `record`; the second value is true when it was sealed under an
    /// old key (the caller should re-seal it).
    pub fn open(&self, record: &str, sealed: &str) -> Result<(Vec<u8>, bool), SecretError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(kid), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretError::Malformed);
        };
        let (key, old) = if kid == self.current.id {
            (&self.current, false)
        } else {
            let key = self
                .old
                .iter()
                .find(|k| k.id == kid)
                .ok_or_else(|| SecretError::UnknownKey(kid.to_string()))?;
            (key, true)
        };
        let raw = URL_SAFE_NO_PAD.decode(data).map_err(|_| SecretError::Malformed)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(record.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Open)?;
        Ok((plain.to_vec(), old))
    }

    /// Whether `sealed` is under the current key.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split(':').nth(1).is_some_and(|kid| kid == self.current.id)
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_the_record() {
        let s = Sealer::with_key(&[7u8; 32]).unwrap();
        let sealed = s.seal("vim-1", b"hunter2").unwrap();
        assert!(sealed.starts_with(&format!("v1:{}:", s.key_id())));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open("vim-1", &sealed).unwrap(), (b"hunter2".to_vec(), false));
        assert!(matches!(s.open("vim-2", &sealed), Err(SecretError::Open)));
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sealed, s.seal("vim-1", b"hunter2").unwrap());
        let mut bad = sealed.clone();
        bad.pop();
        bad.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open("vim-1", &bad).is_err());
        assert!(matches!(s.open("vim-1", "v2:x:y"), Err(SecretError::Malformed)));
    }

    #[test]
    fn old_keys_open_and_report_it() {
        let old = Sealer::with_key(&[1u8; 32]).unwrap();
        let sealed = old.seal("r", b"s").unwrap();
        let cfg = SecretsConfig {
            key: Some(crate::config::SecretString(STANDARD.encode([2u8; 32]))),
            old_keys: vec![crate::config::SecretString(STANDARD.encode([1u8; 32]))],
            ..Default::default()
        };
        let new = Sealer::from_config(&cfg, Path::new("/nonexistent")).unwrap();
        assert_eq!(new.open("r", &sealed).unwrap(), (b"s".to_vec(), true));
        assert!(!new.is_current(&sealed));
        let resealed = new.seal("r", b"s").unwrap();
        assert!(new.is_current(&resealed));
        let only_new = Sealer::with_key(&[2u8; 32]).unwrap();
        assert!(matches!(only_new.open("r", &sealed), Err(SecretError::UnknownKey(_))));
    }

    #[test]
    fn default_key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::from_config(&SecretsConfig::default(), dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join("secret.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = Sealer::from_config(&SecretsConfig::default(), dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let short = SecretsConfig {
            key: Some(crate::config::SecretString(STANDARD.encode([2u8; 16]))),
            ..Default::default()
        };
        assert!(matches!(
            Sealer::from_config(&short, dir.path()),
            Err(SecretError::Key(_))
        ));
    }
}
