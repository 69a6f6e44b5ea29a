//! Secrets at rest: webhook secrets (and, later, CRM credentials) are sealed with AES-256-GCM
//! under the hub's secret key (`TANDEM_SECRET_KEY`, 32 bytes in base64). On SQLite the key is
//! generated next to the database file when absent; PostgreSQL deployments (several instances)
//! must configure one so that every instance shares it.

use std::path::{Path, PathBuf};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};

const SEALED_PREFIX: &str = "v1:";
const KEY_LEN: usize = 32;

/// Why the secret key could not be loaded or a sealed value opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `TANDEM_SECRET_KEY` is not 32 bytes of base64.
    #[error(
        "TANDEM_SECRET_KEY must be 32 bytes encoded in base64 (for example `openssl rand -base64 32`)"
    )]
    InvalidKey,
    /// PostgreSQL without a configured key.
    #[error("TANDEM_SECRET_KEY is required with PostgreSQL: every instance must share it")]
    MissingKey,
    /// The key file could not be read or written.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sealed value does not open with this key (wrong key or corrupted data).
    #[error("a stored secret cannot be decrypted with this TANDEM_SECRET_KEY")]
    Unseal,
}

/// The key sealing secrets at rest. Its `Debug` never shows the key.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) {
    // The system RNG only fails when the OS has no entropy source at all.
    SystemRandom::new()
        .fill(buf)
        .expect("the operating system's random number generator is unavailable");
}

/// A new Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_standard_secret() -> String {
    let mut key = [0u8; KEY_LEN];
    random_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

impl SecretKey {
    /// A key from its base64 form.
    pub fn from_base64(encoded: &str) -> Result<SecretKey, SecretError> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| SecretError::InvalidKey)?;
        if bytes.len() != KEY_LEN {
            return Err(SecretError::InvalidKey);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretError::InvalidKey)?;
        Ok(SecretKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Resolves the key for a database: the configured one; else, for a SQLite file, the key
    /// stored beside it (generated on first use, mode 0600); else, for in-memory SQLite, a
    /// random key for this process.
    pub fn resolve(configured: Option<&str>, database_url: &str) -> Result<SecretKey, SecretError> {
        if let Some(encoded) = configured.filter(|k| !k.trim().is_empty()) {
            return SecretKey::from_base64(encoded);
        }
        if !database_url.starts_with("sqlite:") {
            return Err(SecretError::MissingKey);
        }
        match sqlite_key_path(database_url) {
            Some(path) => load_or_create_key_file(&path),
            None => {
                let mut bytes = [0u8; KEY_LEN];
                random_bytes(&mut bytes);
                SecretKey::from_base64(&STANDARD.encode(bytes))
            }
        }
    }

    /// Seals a secret: `v1:` + base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        let mut in_out = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut in_out,
            )
            .expect("AES-GCM sealing of a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed by [`SecretKey::seal`].
    pub fn open(&self, sealed: &str) -> Result<SecretString, SecretError> {
        let encoded = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretError::Unseal)?;
        let mut bytes = STANDARD.decode(encoded).map_err(|_| SecretError::Unseal)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Unseal);
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SecretError::Unseal)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut ciphertext)
            .map_err(|_| SecretError::Unseal)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Unseal)?;
        Ok(SecretString::from(text))
    }
}

/// `sqlite://./tandem.db?mode=rwc` → `./tandem.db.key`; `None` for in-memory databases.
fn sqlite_key_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(format!("{path}.key")))
}

fn load_or_create_key_file(path: &Path) -> Result<SecretKey, SecretError> {
    let io = |source| SecretError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(encoded) => SecretKey::from_base64(&encoded),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; KEY_LEN];
            random_bytes(&mut bytes);
            let encoded = STANDARD.encode(bytes);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    std::io::Write::write_all(&mut file, format!("{encoded}\n").as_bytes())
                        .map_err(io)?;
                    file.sync_all().map_err(io)?;
                    SecretKey::from_base64(&encoded)
                }
                // Another process created it first: use theirs.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    SecretKey::from_base64(&std::fs::read_to_string(path).map_err(io)?)
                }
                Err(err) => Err(io(err)),
            }
        }
        Err(err) => Err(io(err)),
    }
}

/// Compares a candidate secret with a stored one without leaking timing.
pub fn secrets_equal(a: &SecretString, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.expose_secret().as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let key = SecretKey::resolve(None, "sqlite::memory:").unwrap();
        let sealed = key.seal("whsec_abc");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(key.open(&sealed).unwrap().expose_secret(), "whsec_abc");
        assert_ne!(key.seal("whsec_abc"), sealed, "nonces differ");
        let other = SecretKey::resolve(None, "sqlite::memory:").unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(key.open("v1:AAAA").is_err());
        assert!(key.open("garbage").is_err());
    }

    #[test]
    fn key_rules() {
        assert!(matches!(
            SecretKey::resolve(None, "postgres://x/y"),
            Err(SecretError::MissingKey)
        ));
        assert!(matches!(
            SecretKey::from_base64("c2hvcnQ="),
            Err(SecretError::InvalidKey)
        ));
        assert_eq!(
            sqlite_key_path("sqlite://./tandem.db?mode=rwc"),
            Some(PathBuf::from("./tandem.db.key"))
        );
        assert_eq!(sqlite_key_path("sqlite::memory:"), None);
        let dir = std::env::temp_dir().join(format!("tandem-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/t.db", dir.display());
        let first = SecretKey::resolve(None, &url).unwrap();
        let sealed = first.seal("s");
        let again = SecretKey::resolve(None, &url).unwrap();
        assert_eq!(again.open(&sealed).unwrap().expose_secret(), "s");
        std::fs::remove_dir_all(dir).ok();
    }
}
