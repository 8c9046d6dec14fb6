//! Tokens: HS256 JWTs whose `sub` is the user id.
//!
//! The handshake takes the token from `?token=` (browsers cannot set
//! headers on a WebSocket) or from `Authorization: Bearer`. A token must be
//! signed with the server's secret, carry an `exp` in the future and a
//! `sub` that is a valid user id ([`valid_user`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The longest user id.
pub const MAX_USER_BYTES: usize = 64;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenClaims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was not accepted.
#[derive(Debug)]
pub struct TokenError(String);

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad token: {}", self.0)
    }
}

impl std::error::Error for TokenError {}

/// Whether `user` may be a user id: 1 to 64 bytes of ASCII letters, digits,
/// `_`, `-` and `.`. Ids appear in frames unescaped, so nothing else.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_BYTES
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("algorithm", &"HS256")
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Keys for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user` that expires after `ttl`.
    pub fn sign(&self, user: &str, ttl: Duration) -> Result<String, TokenError> {
        if !valid_user(user) {
            return Err(TokenError(format!("`{user}` is not a valid user id")));
        }
        let claims = TokenClaims {
            sub: user.to_owned(),
            exp: unix_now() + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError(e.to_string()))
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError(e.to_string()))?;
        if !valid_user(&data.claims.sub) {
            return Err(TokenError("`sub` is not a valid user id".into()));
        }
        Ok(data.claims)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random 32-byte secret (hex), for `--dev` runs without one.
pub(crate) fn random_secret() -> Vec<u8> {
    let bytes: [u8; 32] = rand::random();
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let t = Tokens::new(&[1; 32]);
        let tok = t.sign("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(t.verify(&tok).unwrap().sub, "alice");
        assert!(
            Tokens::new(&[2; 32]).verify(&tok).is_err(),
            "another secret"
        );
        assert!(t.verify("not.a.token").is_err());
        assert!(t.sign("<script>", Duration::from_secs(60)).is_err());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &TokenClaims {
                sub: "alice".into(),
                exp: unix_now() - 3600,
            },
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(t.verify(&expired).is_err(), "expired");
        let none = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &TokenClaims {
                sub: "alice".into(),
                exp: unix_now() + 3600,
            },
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(t.verify(&none).is_err(), "another algorithm");
    }
}
