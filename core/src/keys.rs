//! Server secrets: the HMAC key for one-time codes and addresses, and the
//! Ed25519 key that signs access tokens. Both are read once at start-up and
//! are redacted in `Debug`.

use crate::domain::Secret;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA256 with a server secret: how codes and standalone-OTP addresses
/// are stored.
#[derive(Clone)]
pub struct CodeKey(Secret<Vec<u8>>);

impl CodeKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < 32 {
            return Err("must be at least 32 bytes".into());
        }
        Ok(CodeKey(Secret::new(bytes)))
    }

    pub fn from_base64(s: &str) -> Result<Self, String> {
        Self::new(STANDARD.decode(s.trim()).map_err(|_| "is not valid base64".to_string())?)
    }

    /// Hex HMAC over the parts, each length-prefixed so they cannot run
    /// into each other.
    pub fn mac(&self, domain: &str, parts: &[&str]) -> String {
        #[allow(clippy::expect_used)]
        let mut m = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        m.update(domain.as_bytes());
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p.as_bytes());
        }
        hex::encode(m.finalize().into_bytes())
    }
}

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey([redacted])")
    }
}

/// The audit trail's seal key: an HMAC-SHA256 key held only by whatever
/// appends to the trail (the stream processor on AWS, the audit feed in
/// the embedded runner) and by `verify-chain`. Each record's seal is a MAC
/// over its hash, which covers every field and the previous record's hash,
/// so whoever can write the audit store but does not hold this key cannot
/// edit, remove or reorder a record and re-seal what follows.
#[derive(Clone)]
pub struct AuditKey(CodeKey);

/// The seal's domain: a MAC made with the same bytes for anything else
/// never passes as a seal.
const AUDIT_SEAL_DOMAIN: &str = "latchkey/audit-seal/v1";

impl AuditKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        CodeKey::new(bytes).map(AuditKey)
    }

    pub fn from_base64(s: &str) -> Result<Self, String> {
        CodeKey::from_base64(s).map(AuditKey)
    }

    /// The seal of a record whose hash is `record_hash`, hex.
    pub fn seal(&self, record_hash: &str) -> String {
        self.0.mac(AUDIT_SEAL_DOMAIN, &[record_hash])
    }

    /// Whether `seal` is this key's seal of `record_hash`, compared in
    /// constant time.
    pub fn verifies(&self, record_hash: &str, seal: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.seal(record_hash).as_bytes().ct_eq(seal.as_bytes()).into()
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

/// The audit keys a chain is checked with: the keys rotation retired,
/// oldest first, then the current one (the one the trail's writer seals
/// with). Only the current key seals; the retired ones verify what they
/// sealed before the rotation.
#[derive(Clone)]
pub struct AuditKeyring(Vec<AuditKey>);

impl AuditKeyring {
    pub fn new(retired: Vec<AuditKey>, current: AuditKey) -> Self {
        let mut keys = retired;
        keys.push(current);
        AuditKeyring(keys)
    }

    /// How many keys: the retired ones and the current one.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a keyring holds at least its current key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The position (0 = the oldest retired key, `len() - 1` = the current
    /// one) of the key whose seal of `record_hash` `seal` is. Every key is
    /// tried, in constant time each.
    pub fn sealed_by(&self, record_hash: &str, seal: &str) -> Option<usize> {
        let mut found = None;
        for (i, k) in self.0.iter().enumerate() {
            if k.verifies(record_hash, seal) {
                found = Some(i);
            }
        }
        found
    }
}

impl From<AuditKey> for AuditKeyring {
    fn from(current: AuditKey) -> Self {
        AuditKeyring::new(Vec::new(), current)
    }
}

impl std::fmt::Debug for AuditKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKeyring([{} redacted])", self.0.len())
    }
}

/// SHA-256, hex: how high-entropy tokens (verification, refresh) are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits, URL-safe base64 (43 characters).
pub fn random_token(rng: &dyn crate::rng::SecureRng) -> String {
    URL_SAFE_NO_PAD.encode(rng.bytes32())
}

/// The access-token signing key (Ed25519, PKCS#8 v1/v2 DER).
#[derive(Clone)]
pub struct SigningKey {
    pkcs8: Secret<Vec<u8>>,
    verifying: VerifyingKey,
}

/// An Ed25519 public key that checks access tokens: the signing key's own,
/// or, for a rotation's overlap, the one it replaced. Its key id is the hex
/// of the first 8 bytes of the key's SHA-256, so a key given back by its
/// JWK has the id it was published with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    public: Vec<u8>,
    kid: String,
}

/// The encodings, with the sign bit of x cleared, of the Ed25519 points of
/// small order (dividing 8): y = 0, y = 1 (the identity), the two y of the
/// points of order 8, y = p - 1, and y = p and p + 1, which spell 0 and 1
/// again (libsodium's list; each y was checked with Python's integers to
/// give points P on the curve with [8]P the identity). A public key among
/// them verifies signatures that no private key made: one in a few signs
/// any token.
const SMALL_ORDER_Y: [[u8; 32]; 7] = {
    let mut y = [[0u8; 32]; 7];
    y[1][0] = 1;
    y[2] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf,
        0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05,
    ];
    y[3] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
        0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
    ];
    // p - 1, p, p + 1: 0x7fff...ffec, ...ed, ...ee, little-endian.
    let mut i = 4;
    while i < 7 {
        y[i] = [0xff; 32];
        y[i][0] = 0xec + (i as u8 - 4);
        y[i][31] = 0x7f;
        i += 1;
    }
    y
};

impl VerifyingKey {
    fn from_raw(public: Vec<u8>) -> Self {
        let kid = hex::encode(&Sha256::digest(&public)[..8]);
        VerifyingKey { public, kid }
    }

    /// From the `x` member of its JWK (RFC 8037: the raw 32-byte key,
    /// base64url without padding), as `/.well-known/jwks.json` publishes it.
    pub fn from_jwk_x(x: &str) -> Result<Self, String> {
        let raw = URL_SAFE_NO_PAD
            .decode(x.trim())
            .map_err(|_| "is not base64url without padding (the `x` of the key's JWK)".to_string())?;
        if raw.len() != 32 {
            return Err(format!("is {} bytes, not an Ed25519 public key's 32 (the `x` of the key's JWK)", raw.len()));
        }
        let mut y = [0u8; 32];
        y.copy_from_slice(&raw);
        y[31] &= 0x7f;
        if SMALL_ORDER_Y.contains(&y) {
            return Err("is a point of small order, which would verify forged signatures: no key of ours".into());
        }
        Ok(Self::from_raw(raw))
    }

    /// The key, raw 32 bytes.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK (RFC 8037).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&self.public),
        })
    }
}

impl SigningKey {
    pub fn from_pkcs8(der: Vec<u8>) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
            .map_err(|_| "is not an Ed25519 PKCS#8 key".to_string())?;
        let verifying = VerifyingKey::from_raw(pair.public_key().as_ref().to_vec());
        Ok(SigningKey { pkcs8: Secret::new(der), verifying })
    }

    pub fn from_base64(s: &str) -> Result<Self, String> {
        Self::from_pkcs8(STANDARD.decode(s.trim()).map_err(|_| "is not valid base64".to_string())?)
    }

    /// A new key from a seed drawn from the OS (getrandom), as every other
    /// secret here is. Not aws-lc's `generate_pkcs8`: it ignores the given
    /// generator and draws from aws-lc's own, which gathers CPU-jitter
    /// entropy the first time a process asks it for anything: 30-45 ms on
    /// this machine (perf at start-up: `jent_*`), most of a fresh local
    /// runner's start, and nothing else the runner does needs it.
    pub fn generate() -> Result<Self, String> {
        use crate::rng::SecureRng as _;
        let seed = Secret::new(crate::rng::OsSecureRng.bytes32());
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|e| e.to_string())?;
        let doc = pair.to_pkcs8().map_err(|e| e.to_string())?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.pkcs8.expose())
    }

    pub fn pkcs8(&self) -> &[u8] {
        self.pkcs8.expose()
    }

    /// The public half, which checks what this key signs.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The public key, raw 32 bytes.
    pub fn public_key(&self) -> &[u8] {
        self.verifying.public_key()
    }

    pub fn kid(&self) -> &str {
        self.verifying.kid()
    }

    /// The public key as a JWK (RFC 8037).
    pub fn jwk(&self) -> serde_json::Value {
        self.verifying.jwk()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_separates_parts() {
        let k = CodeKey::new(vec![7; 32]).unwrap();
        assert_ne!(k.mac("d", &["ab", "c"]), k.mac("d", &["a", "bc"]));
        assert_ne!(k.mac("d1", &["a"]), k.mac("d2", &["a"]));
        assert!(CodeKey::new(vec![0; 16]).is_err());
    }

    #[test]
    fn signing_key_round_trips() {
        let k = SigningKey::generate().unwrap();
        let k2 = SigningKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        assert_eq!(k.jwk()["kid"], k.kid());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn a_verifying_key_given_back_by_its_jwk_keeps_its_id() {
        let k = SigningKey::generate().unwrap();
        let x = k.jwk()["x"].as_str().unwrap().to_string();
        let back = VerifyingKey::from_jwk_x(&x).unwrap();
        assert_eq!(&back, k.verifying_key());
        assert_eq!(back.jwk(), k.jwk());
        for (bad, why) in [
            ("not base64!", "base64url"),
            (&x[..40], "30 bytes"),
            (&URL_SAFE_NO_PAD.encode([1u8; 31]), "31 bytes"),
            // Padded: the standard alphabet's form of the same key.
            (&STANDARD.encode(k.public_key()), "base64url"),
        ] {
            let e = VerifyingKey::from_jwk_x(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // The private key given by mistake is no public key either way.
        assert!(VerifyingKey::from_jwk_x(&k.to_base64()).is_err());
        // Points of small order, either sign of x: a placeholder of 43 `A`s
        // is y = 0.
        assert_eq!(URL_SAFE_NO_PAD.encode([0u8; 32]), "A".repeat(43));
        for y in SMALL_ORDER_Y {
            for sign in [0, 0x80] {
                let mut raw = y;
                raw[31] |= sign;
                let e = VerifyingKey::from_jwk_x(&URL_SAFE_NO_PAD.encode(raw)).unwrap_err();
                assert!(e.contains("small order"), "{raw:?}: {e}");
            }
        }
        assert_eq!(SMALL_ORDER_Y[4][..2], [0xec, 0xff]);
        assert_eq!((SMALL_ORDER_Y[6][0], SMALL_ORDER_Y[6][31]), (0xee, 0x7f));
    }

    #[test]
    fn generated_keys_are_strict_pkcs8_v2_and_each_is_new() {
        let (a, b) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        assert_ne!(a.public_key(), b.public_key());
        // v2 carries the public key, checked against the seed on parsing.
        let pair = Ed25519KeyPair::from_pkcs8(a.pkcs8()).expect("a strict PKCS#8 v2 document");
        assert_eq!(pair.public_key().as_ref(), a.public_key());
    }
}
