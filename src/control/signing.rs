//! Ed25519 signing of bundles: `manymodel keygen`, `publish --signing-key` and the daemon's
//! `[model] trusted_keys`.
//!
//! The signature covers the SHA-256 digest of the bundle file behind a fixed prefix, so a
//! signature made for a manymodel bundle cannot be replayed as a signature of anything else.
//! The bundle file records its own version and base, so the digest binds those as well.
//!
//! Keys are files of hex text: `KEY` holds the 32-byte secret seed (mode 0600) and `KEY.pub`
//! the 32-byte public key, which is what `trusted_keys` lists (the hex itself or the file).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, Result};

/// What the signature is made over: this prefix, then the 32 digest bytes.
const DOMAIN: &[u8] = b"manymodel bundle sha256:";

/// Writes a new key pair to `out` (secret) and `out.pub` (public); refuses to overwrite.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let public = public_path(out);
    for path in [out, public.as_path()] {
        if path.exists() {
            return Err(Error::Usage(format!(
                "{} exists; keygen never overwrites a key: choose another --out or move it away",
                path.display()
            )));
        }
    }
    let mut seed = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let key = SigningKey::from_bytes(&seed);
    write_secret(out, &format!("{}\n", hex::encode(seed)))?;
    std::fs::write(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )
    .map_err(|e| Error::io(&public, e))?;
    Ok((out.to_owned(), public))
}

fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[cfg(unix)]
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn write_secret(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn hex32(text: &str) -> std::result::Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, a key has 32", b.len()))
}

/// A secret key that signs bundles.
pub struct BundleSigner(SigningKey);

impl BundleSigner {
    /// Reads a secret key file written by `manymodel keygen`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let seed = hex32(&text).map_err(|e| {
            Error::Usage(format!(
                "{}: not a manymodel secret key ({e}); create one with `manymodel keygen --out KEY`",
                path.display()
            ))
        })?;
        Ok(BundleSigner(SigningKey::from_bytes(&seed)))
    }

    /// The signature of a bundle with this digest, hex.
    pub fn sign(&self, digest: &[u8; 32]) -> String {
        hex::encode(self.0.sign(&message(digest)).to_bytes())
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }
}

fn message(digest: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, digest.as_slice()].concat()
}

/// The public keys a daemon accepts bundles from; empty means signatures are not required.
#[derive(Debug, Default, Clone)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Parses `trusted_keys` entries: a public key in hex, or the path of a `.pub` file
    /// (relative to `base_dir`).
    pub fn load(entries: &[String], base_dir: &Path) -> std::result::Result<Self, String> {
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = if hex32(entry).is_ok() {
                entry.clone()
            } else {
                let path = base_dir.join(entry);
                std::fs::read_to_string(&path).map_err(|e| {
                    format!("trusted key {entry:?} is neither 64 hex digits nor a readable file ({}: {e})", path.display())
                })?
            };
            let bytes = hex32(&text).map_err(|e| format!("trusted key {entry:?}: {e}"))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| format!("trusted key {entry:?} is not an ed25519 public key: {e}"))?;
            keys.push(key);
        }
        Ok(TrustedKeys(keys))
    }

    /// True when bundles must be signed.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks `signature` (hex) of `digest` against every trusted key.
    pub fn verify(&self, digest: &[u8; 32], signature: &str) -> std::result::Result<(), String> {
        let bytes =
            hex::decode(signature.trim()).map_err(|e| format!("signature is not hex: {e}"))?;
        let signature =
            Signature::from_slice(&bytes).map_err(|e| format!("not an ed25519 signature: {e}"))?;
        let msg = message(digest);
        if self.0.iter().any(|k| k.verify(&msg, &signature).is_ok()) {
            Ok(())
        } else {
            Err("signed by none of the trusted keys".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_under_its_own_key_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(&dir.path().join("k")).unwrap();
        let (other, _) = keygen(&dir.path().join("other")).unwrap();
        assert!(keygen(&secret).is_err(), "never overwrites");
        let signer = BundleSigner::load(&secret).unwrap();
        let trusted = TrustedKeys::load(&[public.display().to_string()], dir.path()).unwrap();
        let by_hex = TrustedKeys::load(&[signer.public_hex()], Path::new("/")).unwrap();
        let digest = [7u8; 32];
        let sig = signer.sign(&digest);
        assert!(trusted.verify(&digest, &sig).is_ok());
        assert!(by_hex.verify(&digest, &sig).is_ok());
        assert!(trusted.verify(&[8u8; 32], &sig).is_err());
        let forged = BundleSigner::load(&other).unwrap().sign(&digest);
        assert!(trusted.verify(&digest, &forged).is_err());
        assert!(trusted.verify(&digest, "zz").is_err());
        assert!(TrustedKeys::load(&["nope".into()], dir.path()).is_err());
    }
}
