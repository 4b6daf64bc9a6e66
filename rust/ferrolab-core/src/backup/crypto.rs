//! Keys and authenticated encryption.
//!
//! * Every stored object (pack blob, pack header, index, snapshot, config) is sealed with
//!   XChaCha20-Poly1305 under the repository's 256-bit data key: `nonce (24 random bytes) || ciphertext ||
//!   tag (16)`. Random 192-bit nonces never repeat in practice.
//! * Blob ids are keyed BLAKE3 hashes of the plaintext (the id key is secret, so ids reveal nothing about the
//!   content to someone without the key).
//! * The master key (data key, id key, chunker seed) is stored in `keys/<id>` wrapped by a key-encryption key
//!   derived from a password with Argon2id, or from a key file with BLAKE3's key derivation.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Bytes a sealed object has on top of its plaintext (nonce + tag).
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// Fills `buf` with bytes from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// 32 random bytes as 64 hex digits (object names of indexes, snapshots, keys, locks).
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    hex(&b)
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for i in 0..N {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Variable-length hex decoding.
pub fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|c| {
            let hi = (c[0] as char).to_digit(16)?;
            let lo = (c[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// The repository format this build writes (see docs/backup-format.md): version 2 binds every sealed object
/// to its name and derives the whole chunker gear table from the key; version 1 repositories still open and
/// are written in their own format.
pub const FORMAT_VERSION: u32 = 2;

/// The repository's secrets, and the format version of the repository they were opened for (which decides
/// how objects are bound to their names and how the chunker's gear table is made).
#[derive(Clone)]
pub struct MasterKey {
    /// XChaCha20-Poly1305 key for every object.
    pub data: [u8; 32],
    /// BLAKE3 key of blob ids.
    pub id: [u8; 32],
    /// Seed of the version 1 chunker's gear table (XORed into FastCDC's public table).
    pub chunker_seed: u64,
    /// the repository's format version (1 or 2)
    pub format: u32,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct MasterKeyJson {
    data: String,
    id: String,
    chunker_seed: u64,
}

impl MasterKey {
    /// A fresh random master key (for the current format).
    pub fn generate() -> Self {
        let mut data = [0u8; 32];
        let mut id = [0u8; 32];
        let mut seed = [0u8; 8];
        random_bytes(&mut data);
        random_bytes(&mut id);
        random_bytes(&mut seed);
        Self::from_parts(data, id, u64::from_le_bytes(seed))
    }

    fn from_parts(data: [u8; 32], id: [u8; 32], chunker_seed: u64) -> Self {
        let cipher = XChaCha20Poly1305::new(&data.into());
        MasterKey {
            data,
            id,
            chunker_seed,
            format: FORMAT_VERSION,
            cipher,
        }
    }

    /// The associated data that binds a sealed object to its role and (format 2) its name, so an object
    /// cannot be swapped for another, moved, or replayed under another name.
    pub fn object_aad(&self, role: &str, name: &str) -> Vec<u8> {
        if self.format >= 2 {
            format!("ferrolab v2 {role}/{name}").into_bytes()
        } else {
            role.as_bytes().to_vec()
        }
    }

    /// The chunker's gear table and its left-shifted twin. Format 2: all 256 entries from BLAKE3's key
    /// derivation keyed by the id key (no public structure to recover from chunk lengths); format 1:
    /// FastCDC's public table XORed with the 64-bit seed.
    pub fn gear(&self) -> (Vec<u64>, Vec<u64>) {
        if self.format >= 2 {
            let mut h =
                blake3::Hasher::new_derive_key("ferrolab 2026-12 backup chunker gear table v2");
            h.update(&self.id);
            let mut bytes = [0u8; 256 * 8];
            h.finalize_xof().fill(&mut bytes);
            let gear: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let gear_ls = gear.iter().map(|g| g << 1).collect();
            (gear, gear_ls)
        } else {
            let (g, ls) = fastcdc::v2020::get_gear_with_seed(self.chunker_seed);
            (g.into_owned(), ls.into_owned())
        }
    }

    /// Seals an object named `name` in its role (`"index"`, `"snapshot"`, `"lock"`...).
    pub fn seal_object(&self, role: &str, name: &str, plain: &[u8]) -> Vec<u8> {
        self.seal(plain, &self.object_aad(role, name))
    }

    /// Opens an object sealed by [`MasterKey::seal_object`].
    pub fn open_object(&self, role: &str, name: &str, sealed: &[u8]) -> BResult<Vec<u8>> {
        self.open(
            sealed,
            &self.object_aad(role, name),
            &format_args!("{role} {name}"),
        )
    }

    /// The keyed BLAKE3 id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id, plaintext).as_bytes()
    }

    /// Seals `plain` into `out` (cleared first): nonce || ciphertext || tag; `aad` (e.g. the blob id) is
    /// authenticated but not stored.
    pub fn seal_into(&self, plain: &[u8], aad: &[u8], out: &mut Vec<u8>) {
        self.seal_parts_into(&[plain], aad, out)
    }

    /// Seals the concatenation of `parts` into `out` (cleared first), copying each part once.
    pub fn seal_parts_into(&self, parts: &[&[u8]], aad: &[u8], out: &mut Vec<u8>) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.clear();
        out.reserve(len + SEAL_OVERHEAD);
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        for p in parts {
            out.extend_from_slice(p);
        }
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[24..]).into())
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        out.extend_from_slice(tag.as_slice());
    }

    /// Seals `plain` into a new buffer.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(plain, aad, &mut out);
        out
    }

    /// Opens a sealed object; `what` names it in the error ("index abc..", "blob 12.. in pack 34..").
    pub fn open(
        &self,
        sealed: &[u8],
        aad: &[u8],
        what: &dyn std::fmt::Display,
    ) -> BResult<Vec<u8>> {
        open_with(&self.cipher, sealed, aad).ok_or_else(|| {
            CoreError::backup(
                BackupErrorKind::Corruption,
                format!("{what}: authentication failed (the data was modified or damaged)"),
            )
        })
    }

    /// Opens a sealed object in place: its ciphertext is authenticated, then decrypted where it lies, and the
    /// plaintext is returned as part of `sealed` (no copy). `None` when it does not authenticate; the buffer is
    /// then left as it was (the tag is checked before anything is decrypted).
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8], aad: &[u8]) -> Option<&'a [u8]> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, rest) = sealed.split_at_mut(24);
        let at = rest.len() - 16;
        let (ct, tag) = rest.split_at_mut(at);
        decrypt(&self.cipher, nonce, ct, tag, aad)?;
        Some(ct)
    }
}

/// Authenticates the ciphertext `ct` (with its stored `nonce` and `tag`), then decrypts it in place.
fn decrypt(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8],
    ct: &mut [u8],
    tag: &[u8],
    aad: &[u8],
) -> Option<()> {
    cipher
        .decrypt_inout_detached(
            &XNonce::try_from(nonce).ok()?,
            aad,
            ct.into(),
            tag.try_into().ok()?,
        )
        .ok()
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at(24);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut buf = ct.to_vec();
    decrypt(cipher, nonce, &mut buf, tag, aad)?;
    Some(buf)
}

/// How a key-encryption key is derived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kdf", rename_all = "lowercase")]
pub enum Kdf {
    /// Argon2id (RFC 9106) of the password.
    Argon2id {
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
    },
    /// BLAKE3 key derivation from the bytes of a key file.
    Keyfile { salt: String },
}

/// Default Argon2id cost: 32 MiB, 2 passes, 1 lane (above OWASP's 19 MiB/2 minimum; about 60 ms here).
pub const ARGON2_M_KIB: u32 = 32 * 1024;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

/// Argon2id parameters a key object may ask for: memory 8 KiB..1 GiB, 1..10 passes, 1..16 lanes, and memory x
/// passes at most 4 GiB (a few seconds). A planted key object with larger costs is refused (named in the
/// error) instead of making every open hang or exhaust memory.
pub const ARGON2_MAX_M_KIB: u32 = 1 << 20;
pub const ARGON2_MAX_T: u32 = 10;
pub const ARGON2_MAX_P: u32 = 16;
pub const ARGON2_MAX_WORK_KIB: u64 = 4 << 20;

/// The secret a key is opened with.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    Password(&'a [u8]),
    KeyFile(&'a [u8]),
}

impl<'a> Secret<'a> {
    /// The secret of a call of `func` that takes a password or a key file: exactly one of them must be given.
    pub fn one_of(
        func: &'static str,
        password: Option<&'a [u8]>,
        key_file: Option<&'a [u8]>,
    ) -> crate::Result<Secret<'a>> {
        match (password, key_file) {
            (Some(p), None) => Ok(Secret::Password(p)),
            (None, Some(k)) => Ok(Secret::KeyFile(k)),
            _ => Err(CoreError::value(
                func,
                "password",
                "or 'key_file': exactly one of them must be given",
            )),
        }
    }
}

impl Kdf {
    /// Fresh parameters for `secret` (random salt).
    pub fn new_for(secret: &Secret<'_>) -> Self {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt);
        let salt = hex(&salt);
        match secret {
            Secret::Password(_) => Kdf::Argon2id {
                m_cost_kib: ARGON2_M_KIB,
                t_cost: ARGON2_T,
                p_cost: ARGON2_P,
                salt,
            },
            Secret::KeyFile(_) => Kdf::Keyfile { salt },
        }
    }

    /// Refuses parameters outside the bounds above (and salts that are not 16..64 bytes of hex).
    pub fn check(&self) -> BResult<()> {
        let bad = |m: String| CoreError::backup(BackupErrorKind::Corruption, m);
        let salt = match self {
            Kdf::Argon2id { salt, .. } | Kdf::Keyfile { salt } => salt,
        };
        if !(32..=128).contains(&salt.len()) || unhex_vec(salt).is_none() {
            return Err(bad("salt is not 16 to 64 bytes of hex".into()));
        }
        if let Kdf::Argon2id {
            m_cost_kib,
            t_cost,
            p_cost,
            ..
        } = *self
        {
            let ok = (1..=ARGON2_MAX_P).contains(&p_cost)
                && (8 * p_cost..=ARGON2_MAX_M_KIB).contains(&m_cost_kib)
                && (1..=ARGON2_MAX_T).contains(&t_cost)
                && m_cost_kib as u64 * t_cost as u64 <= ARGON2_MAX_WORK_KIB;
            if !ok {
                return Err(bad(format!(
                    "Argon2id parameters out of range (m_cost_kib={m_cost_kib}, t_cost={t_cost}, \
                     p_cost={p_cost}; allowed: p_cost 1..{ARGON2_MAX_P}, m_cost_kib 8*p_cost..{ARGON2_MAX_M_KIB}, \
                     t_cost 1..{ARGON2_MAX_T}, m_cost_kib*t_cost <= {ARGON2_MAX_WORK_KIB})"
                )));
            }
        }
        Ok(())
    }

    /// The work of deriving with these parameters, in KiB-passes (0 for a key file).
    pub fn cost(&self) -> u64 {
        match self {
            Kdf::Argon2id {
                m_cost_kib, t_cost, ..
            } => *m_cost_kib as u64 * *t_cost as u64,
            Kdf::Keyfile { .. } => 0,
        }
    }

    /// Derives the key-encryption key, or None when `secret` is of the other kind.
    fn derive(&self, secret: &Secret<'_>) -> BResult<Option<[u8; 32]>> {
        let bad = |m: String| CoreError::backup(BackupErrorKind::Corruption, m);
        match (self, secret) {
            (
                Kdf::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt,
                },
                Secret::Password(pw),
            ) => {
                let salt = unhex_vec(salt).ok_or_else(|| bad("key: salt is not hex".into()))?;
                let params = argon2::Params::new(*m_cost_kib, *t_cost, *p_cost, Some(32))
                    .map_err(|e| bad(format!("key: bad Argon2id parameters: {e}")))?;
                let a = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut out = [0u8; 32];
                a.hash_password_into(pw, &salt, &mut out)
                    .map_err(|e| bad(format!("key: Argon2id failed: {e}")))?;
                Ok(Some(out))
            }
            (Kdf::Keyfile { salt }, Secret::KeyFile(bytes)) => {
                let mut h = blake3::Hasher::new_derive_key("ferrolab 2026-11 backup key file v1");
                h.update(salt.as_bytes());
                h.update(bytes);
                Ok(Some(*h.finalize().as_bytes()))
            }
            _ => Ok(None),
        }
    }
}

/// The JSON of `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: String,
    #[serde(flatten)]
    pub kdf: Kdf,
    /// the sealed master key (hex)
    pub data: String,
}

impl KeyFile {
    /// Wraps `key` under `secret`.
    pub fn wrap(key: &MasterKey, secret: &Secret<'_>, created: String) -> BResult<Self> {
        let kdf = Kdf::new_for(secret);
        let kek = kdf.derive(secret)?.expect("kdf made for this secret");
        let cipher = XChaCha20Poly1305::new(&kek.into());
        let json = serde_json::to_vec(&MasterKeyJson {
            data: hex(&key.data),
            id: hex(&key.id),
            chunker_seed: key.chunker_seed,
        })
        .expect("serializable");
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&json);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(nonce), b"key", (&mut out[24..]).into())
            .expect("in-memory encryption");
        out.extend_from_slice(tag.as_slice());
        Ok(KeyFile {
            version: 1,
            created,
            kdf,
            data: hex(&out),
        })
    }

    /// Unwraps the master key: Ok(None) when `secret` does not open this key.
    pub fn unwrap_key(&self, secret: &Secret<'_>) -> BResult<Option<MasterKey>> {
        self.kdf.check()?;
        let Some(kek) = self.kdf.derive(secret)? else {
            return Ok(None);
        };
        let cipher = XChaCha20Poly1305::new(&kek.into());
        let sealed = unhex_vec(&self.data).ok_or_else(|| {
            CoreError::backup(BackupErrorKind::Corruption, "key: data is not hex")
        })?;
        let Some(plain) = open_with(&cipher, &sealed, b"key") else {
            return Ok(None);
        };
        let mk: MasterKeyJson = serde_json::from_slice(&plain).map_err(|e| {
            CoreError::backup(
                BackupErrorKind::Corruption,
                format!("key: bad master key: {e}"),
            )
        })?;
        match (unhex::<32>(&mk.data), unhex::<32>(&mk.id)) {
            (Some(d), Some(i)) => Ok(Some(MasterKey::from_parts(d, i, mk.chunker_seed))),
            _ => Err(CoreError::backup(
                BackupErrorKind::Corruption,
                "key: bad master key encoding",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_exactly_one_of_password_and_key_file() {
        assert!(matches!(
            Secret::one_of("f", Some(b"pw"), None),
            Ok(Secret::Password(b"pw"))
        ));
        assert!(matches!(
            Secret::one_of("f", None, Some(b"k")),
            Ok(Secret::KeyFile(b"k"))
        ));
        for (p, k) in [(None, None), (Some(&b"pw"[..]), Some(&b"k"[..]))] {
            let e = Secret::one_of("Repository.open", p, k)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.starts_with("Repository.open(): argument 'password' or 'key_file'"),
                "{e}"
            );
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = MasterKey::generate();
        let s = k.seal(b"hello", b"ad");
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(k.open(&s, b"ad", &"x").unwrap(), b"hello");
        assert!(k.open(&s, b"other", &"x").is_err());
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(k.open(&t, b"ad", &"x").is_err(), "flip at {i} accepted");
        }
        assert!(k.open(&s[..10], b"ad", &"x").is_err());
    }

    #[test]
    fn open_in_place_decrypts_where_it_lies_and_leaves_a_forgery_untouched() {
        let k = MasterKey::generate();
        let s = k.seal(b"hello world", b"ad");
        let mut buf = s.clone();
        assert_eq!(k.open_in_place(&mut buf, b"ad").unwrap(), b"hello world");
        assert_eq!(&buf[24..24 + 11], b"hello world");
        let mut other = s.clone();
        assert!(k.open_in_place(&mut other, b"other").is_none());
        assert_eq!(
            other, s,
            "a buffer that does not authenticate is left as it was"
        );
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            let forged = t.clone();
            assert!(
                k.open_in_place(&mut t, b"ad").is_none(),
                "flip at {i} accepted"
            );
            assert_eq!(t, forged);
        }
        assert!(k
            .open_in_place(&mut s.clone()[..SEAL_OVERHEAD - 1], b"ad")
            .is_none());
    }

    #[test]
    fn key_wrap_password_and_keyfile() {
        let k = MasterKey::generate();
        let kf = KeyFile::wrap(&k, &Secret::Password(b"pw"), "now".into()).unwrap();
        let back = kf.unwrap_key(&Secret::Password(b"pw")).unwrap().unwrap();
        assert_eq!(back.data, k.data);
        assert_eq!(back.id, k.id);
        assert_eq!(back.chunker_seed, k.chunker_seed);
        assert!(kf.unwrap_key(&Secret::Password(b"pW")).unwrap().is_none());
        assert!(kf.unwrap_key(&Secret::KeyFile(b"pw")).unwrap().is_none());
        let kf2 = KeyFile::wrap(&k, &Secret::KeyFile(b"0123"), "now".into()).unwrap();
        assert!(kf2.unwrap_key(&Secret::KeyFile(b"0123")).unwrap().is_some());
        assert!(kf2.unwrap_key(&Secret::KeyFile(b"0124")).unwrap().is_none());
        let json = serde_json::to_string(&kf).unwrap();
        let kf3: KeyFile = serde_json::from_str(&json).unwrap();
        assert!(kf3.unwrap_key(&Secret::Password(b"pw")).unwrap().is_some());
    }
}
