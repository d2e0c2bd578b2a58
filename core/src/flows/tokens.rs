use crate::clock::Timestamp;
use crate::domain::{SessionId, UserId};
use crate::keys::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Signs and checks access tokens: EdDSA only, with `iss`, `aud`, `exp`
/// and `nbf` checked against latchkey's own clock. Tokens are signed with
/// the current key. Two more keys may be accepted, and are published after
/// it in the JWKS: the standby key (the other of Terraform's two key slots:
/// the next key before a rotation switches to it, the replaced one after)
/// and a replaced key given by its public part alone (`previous`).
pub struct TokenIssuer {
    key: SigningKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
    standby: Option<(VerifyingKey, DecodingKey)>,
    previous: Option<(VerifyingKey, DecodingKey)>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

/// The key ids a [`TokenIssuer`] signs with and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIds<'a> {
    pub signing: &'a str,
    pub standby: Option<&'a str>,
    pub previous: Option<&'a str>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("kids", &self.kids()).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl TokenIssuer {
    pub fn new(key: SigningKey, issuer: String, audience: String, ttl_secs: i64) -> Result<Self, String> {
        if !(1..=600).contains(&ttl_secs) {
            return Err("access tokens live at most 10 minutes".into());
        }
        let encoding = EncodingKey::from_ed_der(key.pkcs8());
        let decoding = DecodingKey::from_ed_der(key.public_key());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[audience.as_str()]);
        // exp and nbf are checked below against the Clock port.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"].iter().map(|s| s.to_string()).collect();
        Ok(TokenIssuer {
            key,
            encoding,
            decoding,
            standby: None,
            previous: None,
            validation,
            issuer,
            audience,
            ttl_secs,
        })
    }

    /// Also accept the tokens the standby key signed, and publish it after
    /// the signing key. Before a rotation it is the next key: published
    /// ahead, so relying parties that cache the JWKS, and instances still
    /// running the old configuration, know it before anything signs with
    /// it. After one it is the key that signed before, accepted through the
    /// overlap (its tokens live at most the access lifetime), until a new
    /// key is written in its place. The signing key's own public key adds
    /// nothing and is left out (the caller says so).
    pub fn with_standby(mut self, standby: Option<VerifyingKey>) -> Self {
        if let Some(k) = standby.filter(|k| k.kid() != self.key.kid()) {
            if self.previous.as_ref().is_some_and(|(p, _)| p.kid() == k.kid()) {
                self.previous = None;
            }
            let decoding = DecodingKey::from_ed_der(k.public_key());
            self.standby = Some((k, decoding));
        }
        self
    }

    /// Also accept the tokens `previous` signed (and publish it), for the
    /// overlap of a rotation: the tokens the replaced key signed live at
    /// most the access lifetime, and relying parties' copies of the JWKS
    /// at most its cache time. Never after a leak: the leaked key would
    /// go on signing tokens this accepts. The signing key's own public key
    /// adds nothing and is left out (a rotation whose new key was not
    /// written; the caller says so), and so does the standby key's.
    pub fn with_previous(mut self, previous: Option<VerifyingKey>) -> Self {
        let standby = self.standby.as_ref().map(|(k, _)| k.kid());
        if let Some(p) = previous.filter(|p| p.kid() != self.key.kid() && Some(p.kid()) != standby) {
            let decoding = DecodingKey::from_ed_der(p.public_key());
            self.previous = Some((p, decoding));
        }
        self
    }

    /// The ids of the key it signs with and of the others it accepts.
    pub fn kids(&self) -> KeyIds<'_> {
        KeyIds {
            signing: self.key.kid(),
            standby: self.standby.as_ref().map(|(k, _)| k.kid()),
            previous: self.previous.as_ref().map(|(k, _)| k.kid()),
        }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn jwks(&self) -> serde_json::Value {
        let others = self.standby.iter().chain(&self.previous).map(|(k, _)| k.jwk());
        let keys: Vec<_> = std::iter::once(self.key.jwk()).chain(others).collect();
        serde_json::json!({ "keys": keys })
    }

    /// An access token for `session` of `user`, living the access lifetime
    /// but not past `session_end` (the session's own expiry), so that no
    /// reader, not even one that checks only the token, accepts it after
    /// the session is over.
    pub fn issue(
        &self,
        user: &UserId,
        session: &SessionId,
        now: Timestamp,
        session_end: Timestamp,
        jti: String,
    ) -> Result<String, crate::Error> {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now,
            nbf: now,
            exp: (now + self.ttl_secs).min(session_end),
            jti,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| crate::Error::Internal(Box::new(e)))
    }

    /// Checks signature, algorithm, key id, issuer, audience,
    /// `nbf <= now < exp`, and that the token is no older and lives no
    /// longer than one this issuer makes now could. The key id picks the
    /// key: every token this issuer signs names its key, and only the
    /// named key's signature counts.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<AccessClaims, crate::Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| crate::Error::Unauthorized)?;
        let decoding = match header.kid.as_deref() {
            Some(kid) if kid == self.key.kid() => &self.decoding,
            Some(kid) => match self.standby.iter().chain(&self.previous).find(|(key, _)| kid == key.kid()) {
                Some((_, decoding)) => decoding,
                None => return Err(crate::Error::Unauthorized),
            },
            None => return Err(crate::Error::Unauthorized),
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, decoding, &self.validation)
            .map_err(|_| crate::Error::Unauthorized)?;
        let c = data.claims;
        // A small allowance for clock skew between instances.
        const LEEWAY: i64 = 5;
        // The lifetime cap `exp - iat` holds only with `iat` not in the
        // future: a signed `iat` far ahead would carry an `exp` as far.
        if c.exp <= now || c.nbf > now + LEEWAY || c.iat > now + LEEWAY || c.exp - c.iat > self.ttl_secs {
            return Err(crate::Error::Unauthorized);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::OsSecureRng;
    use base64::Engine;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(SigningKey::generate().unwrap(), "https://iss".into(), "aud".into(), 600).unwrap()
    }

    #[test]
    fn round_trip_and_expiry() {
        let t = issuer();
        let (u, s) = (UserId::random(&OsSecureRng), SessionId::random(&OsSecureRng));
        let jwt = t.issue(&u, &s, 1000, i64::MAX, "j".into()).unwrap();
        assert_eq!(t.verify(&jwt, 1000).unwrap().sub, u.to_string());
        assert!(t.verify(&jwt, 1599).is_ok());
        assert!(t.verify(&jwt, 1600).is_err(), "expired at exp");
        assert!(t.verify(&jwt, 900).is_err(), "not yet valid");
    }

    #[test]
    fn a_token_ends_with_its_session() {
        let t = issuer();
        let (u, s) = (UserId::random(&OsSecureRng), SessionId::random(&OsSecureRng));
        let jwt = t.issue(&u, &s, 1000, 1300, "j".into()).unwrap();
        assert_eq!(t.verify(&jwt, 1000).unwrap().exp, 1300);
        assert!(t.verify(&jwt, 1299).is_ok());
        assert!(t.verify(&jwt, 1300).is_err(), "over when the session is, not 600 s after `now`");
    }

    /// Signs arbitrary claims with the issuer's own key and algorithm.
    fn forge(key: &SigningKey, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_string());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(key.pkcs8())).unwrap()
    }

    #[test]
    fn refuses_bad_claims_even_when_signed() {
        let key = SigningKey::generate().unwrap();
        let t = TokenIssuer::new(key.clone(), "https://iss".into(), "aud".into(), 600).unwrap();
        let good = serde_json::json!({"iss": "https://iss", "aud": "aud", "sub": "u", "sid": "s", "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j"});
        assert!(t.verify(&forge(&key, good.clone()), 1000).is_ok(), "the baseline verifies");
        let cases: [(&str, serde_json::Value); 8] = [
            (
                "issued in the future, with exp as far",
                serde_json::json!({"iat": 1_000_000_000, "nbf": 1000, "exp": 1_000_000_600}),
            ),
            ("exp as a string", serde_json::json!("1600")),
            ("nbf in the future", serde_json::json!(2000)),
            ("wrong aud", serde_json::json!("other")),
            ("wrong iss", serde_json::json!("https://evil")),
            ("no exp", serde_json::Value::Null),
            ("lifetime over the cap", serde_json::json!(1000 + 601)),
            ("expired", serde_json::json!(999)),
        ];
        for (name, v) in cases {
            let mut c = good.clone();
            if let Some(claims) = v.as_object() {
                for (k, x) in claims {
                    c[k] = x.clone();
                }
                assert!(t.verify(&forge(&key, c), 1000).is_err(), "{name} accepted");
                continue;
            }
            let field = match name {
                "exp as a string" | "lifetime over the cap" | "expired" => "exp",
                "no exp" => "exp",
                "nbf in the future" => "nbf",
                "wrong aud" => "aud",
                _ => "iss",
            };
            if v.is_null() {
                c.as_object_mut().unwrap().remove(field);
            } else {
                c[field] = v;
            }
            assert!(t.verify(&forge(&key, c), 1000).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn refuses_tokens_that_name_another_key_or_none() {
        let key = SigningKey::generate().unwrap();
        let t = TokenIssuer::new(key.clone(), "https://iss".into(), "aud".into(), 600).unwrap();
        let claims = serde_json::json!({"iss": "https://iss", "aud": "aud", "sub": "u", "sid": "s", "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j"});
        let signed = |kid: Option<&str>| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = kid.map(str::to_string);
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(key.pkcs8())).unwrap()
        };
        assert!(t.verify(&signed(Some(key.kid())), 1000).is_ok(), "the baseline verifies");
        assert!(t.verify(&signed(Some("another-key")), 1000).is_err());
        assert!(t.verify(&signed(None), 1000).is_err());
    }

    #[test]
    fn a_rotation_overlap_accepts_the_replaced_keys_tokens_by_their_key_id() {
        let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let make = |k: &SigningKey| TokenIssuer::new(k.clone(), "https://iss".into(), "aud".into(), 600).unwrap();
        let (u, s) = (UserId::random(&OsSecureRng), SessionId::random(&OsSecureRng));
        let before = make(&old).issue(&u, &s, 1000, i64::MAX, "j".into()).unwrap();

        let plain = make(&new);
        assert!(plain.verify(&before, 1000).is_err(), "without the overlap the replaced key's tokens end");
        assert_eq!(plain.jwks()["keys"].as_array().unwrap().len(), 1);
        assert_eq!(plain.kids(), KeyIds { signing: new.kid(), standby: None, previous: None });

        let overlap = make(&new).with_previous(Some(old.verifying_key().clone()));
        assert_eq!(overlap.verify(&before, 1000).unwrap().sub, u.to_string());
        assert!(overlap.verify(&before, 1600).is_err(), "still only until its own exp");
        // It signs with the new key, published first; the old one follows.
        let after = overlap.issue(&u, &s, 1000, i64::MAX, "j".into()).unwrap();
        assert!(plain.verify(&after, 1000).is_ok());
        assert!(make(&old).verify(&after, 1000).is_err());
        let jwks = overlap.jwks();
        assert_eq!(jwks["keys"][0]["kid"], new.kid());
        assert_eq!(jwks["keys"][1], old.jwk());
        assert_eq!(overlap.kids(), KeyIds { signing: new.kid(), standby: None, previous: Some(old.kid()) });

        // The key id picks the key: the old key's id on a token the new
        // key did not sign, or the new key's id on one the old key signed,
        // is refused.
        let claims = serde_json::json!({"iss": "https://iss", "aud": "aud", "sub": "u", "sid": "s", "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j"});
        let swapped = |named: &SigningKey, signer: &SigningKey| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(named.kid().to_string());
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(signer.pkcs8())).unwrap()
        };
        assert!(overlap.verify(&swapped(&old, &old), 1000).is_ok(), "the baseline verifies");
        assert!(overlap.verify(&swapped(&old, &new), 1000).is_err());
        assert!(overlap.verify(&swapped(&new, &old), 1000).is_err());
        let stranger = SigningKey::generate().unwrap();
        assert!(overlap.verify(&swapped(&stranger, &stranger), 1000).is_err());

        let same = make(&new).with_previous(Some(new.verifying_key().clone()));
        assert_eq!(same.kids().previous, None, "its own key is no previous one");
        assert_eq!(same.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    /// A rotation through the two key slots: the next key is published and
    /// accepted before anything signs with it, so after the switch the
    /// instances still on the old configuration accept the new tokens, and
    /// the new ones the old tokens; a new key written into the retired
    /// slot ends the old key's tokens.
    #[test]
    fn a_standby_key_is_published_and_accepted_before_and_after_the_switch() {
        let (a, b) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let make = |signing: &SigningKey, standby: &SigningKey| {
            TokenIssuer::new(signing.clone(), "https://iss".into(), "aud".into(), 600)
                .unwrap()
                .with_standby(Some(standby.verifying_key().clone()))
        };
        let (u, s) = (UserId::random(&OsSecureRng), SessionId::random(&OsSecureRng));
        let before = make(&a, &b);
        assert_eq!(before.kids(), KeyIds { signing: a.kid(), standby: Some(b.kid()), previous: None });
        let kids = |t: &TokenIssuer| -> Vec<String> {
            t.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(kids(&before), [a.kid(), b.kid()], "the signing key first, the next one published after it");
        let of_a = before.issue(&u, &s, 1000, i64::MAX, "j".into()).unwrap();

        let switched = make(&b, &a);
        let of_b = switched.issue(&u, &s, 1000, i64::MAX, "j".into()).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&of_b).unwrap().kid.as_deref(), Some(b.kid()), "it signs with b");
        assert!(
            before.verify(&of_b, 1000).is_ok(),
            "an instance on the old configuration accepts the new key's tokens"
        );
        assert!(switched.verify(&of_a, 1000).is_ok(), "and the new ones the old key's, through the overlap");
        assert_eq!(kids(&switched), [b.kid(), a.kid()]);

        // A new key written into the retired slot: a's tokens end.
        let a2 = SigningKey::generate().unwrap();
        let retired = make(&b, &a2);
        assert!(retired.verify(&of_a, 1000).is_err());
        assert!(retired.verify(&of_b, 1000).is_ok());
        assert_eq!(kids(&retired), [b.kid(), a2.kid()]);

        // The signing key as its own standby adds nothing; a previous key
        // equal to the standby is listed once, as the standby.
        assert_eq!(make(&a, &a).kids(), KeyIds { signing: a.kid(), standby: None, previous: None });
        for t in [
            make(&a, &b).with_previous(Some(b.verifying_key().clone())),
            TokenIssuer::new(a.clone(), "https://iss".into(), "aud".into(), 600)
                .unwrap()
                .with_previous(Some(b.verifying_key().clone()))
                .with_standby(Some(b.verifying_key().clone())),
        ] {
            assert_eq!(t.kids(), KeyIds { signing: a.kid(), standby: Some(b.kid()), previous: None });
            assert_eq!(kids(&t), [a.kid(), b.kid()]);
        }
        // With all three, each is accepted by its own key id only.
        let c = SigningKey::generate().unwrap();
        let three = make(&a, &b).with_previous(Some(c.verifying_key().clone()));
        assert_eq!(kids(&three), [a.kid(), b.kid(), c.kid()]);
        let of_c = TokenIssuer::new(c.clone(), "https://iss".into(), "aud".into(), 600)
            .unwrap()
            .issue(&u, &s, 1000, i64::MAX, "j".into())
            .unwrap();
        for t in [&of_a, &of_b, &of_c] {
            assert!(three.verify(t, 1000).is_ok());
        }
        let claims = serde_json::json!({"iss": "https://iss", "aud": "aud", "sub": "u", "sid": "s", "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j"});
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(b.kid().to_string());
        let named_b_signed_c = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(c.pkcs8())).unwrap();
        assert!(three.verify(&named_b_signed_c, 1000).is_err(), "the key id picks the key");
    }

    /// Claims `TokenIssuer::new(_, "https://iss", "aud", 600)` accepts at 1000.
    fn valid_claims() -> serde_json::Value {
        serde_json::json!({"iss": "https://iss", "aud": "aud", "sub": "u", "sid": "s", "iat": 1000, "nbf": 1000, "exp": 1600, "jti": "j"})
    }

    /// Algorithm confusion: an HMAC token keyed with the public key (as raw
    /// bytes, and as the JWKS publishes it), naming the real signing key's
    /// id, so that the key lookup passes and only the algorithm allow-list
    /// stands between it and acceptance.
    #[test]
    fn refuses_hs256_confusion_with_the_public_key() {
        let key = SigningKey::generate().unwrap();
        let t = TokenIssuer::new(key.clone(), "https://iss".into(), "aud".into(), 600).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_string());
        let baseline = jsonwebtoken::encode(&header, &valid_claims(), &EncodingKey::from_ed_der(key.pkcs8())).unwrap();
        assert!(t.verify(&baseline, 1000).is_ok(), "the baseline verifies");
        let x = key.jwk()["x"].as_str().unwrap().to_string();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            header.alg = alg;
            for secret in [key.public_key(), x.as_bytes()] {
                let forged = jsonwebtoken::encode(&header, &valid_claims(), &EncodingKey::from_secret(secret)).unwrap();
                let named = jsonwebtoken::decode_header(&forged).unwrap();
                assert_eq!((named.alg, named.kid.as_deref()), (alg, Some(key.kid())), "it names the real key");
                assert!(t.verify(&forged, 1000).is_err(), "{alg:?} keyed with the public key accepted");
            }
        }
    }

    /// Another key's signature under a known key's id, and `alg: none`
    /// naming the real key: both get past the key lookup, so the signature
    /// check and the algorithm check are what refuse them.
    #[test]
    fn refuses_other_keys_and_alg_none() {
        let (key, other) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let t = TokenIssuer::new(key.clone(), "https://iss".into(), "aud".into(), 600).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_string());
        let signed_by = |k: &SigningKey| {
            jsonwebtoken::encode(&header, &valid_claims(), &EncodingKey::from_ed_der(k.pkcs8())).unwrap()
        };
        assert!(t.verify(&signed_by(&key), 1000).is_ok(), "the baseline verifies");
        assert!(t.verify(&signed_by(&other), 1000).is_err(), "another key's signature under the real key's id");

        // Hand-made: the real key's id, valid claims. Named EdDSA and signed,
        // the same token verifies; named none with no signature (or with
        // the real signature left on) it is refused.
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = |alg: &str| e.encode(serde_json::json!({"alg": alg, "kid": key.kid(), "typ": "JWT"}).to_string());
        let payload = e.encode(valid_claims().to_string());
        let signing_input = format!("{}.{payload}", head("EdDSA"));
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_ed_der(key.pkcs8()),
            Algorithm::EdDSA,
        )
        .unwrap();
        assert!(t.verify(&format!("{signing_input}.{signature}"), 1000).is_ok(), "the hand-made baseline verifies");
        for alg in ["none", "None", "NONE"] {
            let unsigned = format!("{}.{payload}.", head(alg));
            assert!(t.verify(&unsigned, 1000).is_err(), "alg {alg} accepted");
            assert!(t.verify(&format!("{unsigned}{signature}"), 1000).is_err(), "alg {alg} with a signature accepted");
        }
    }
}
