//! Tokens that stand for an authenticated user, as etcd's `--auth-token` chooses them:
//!
//! - **simple** (the default): a random string handed out by Authenticate and replicated
//!   through the log, so every member knows it; each member forgets it after
//!   `--auth-token-ttl` seconds without use, when the user is deleted or changes password,
//!   when auth is disabled, and at a restart (clients then authenticate again, as with etcd).
//! - **jwt** (`--auth-token jwt,pub-key=...,priv-key=...,sign-method=RS256,ttl=5m`): a signed,
//!   stateless token carrying the user name, the auth revision and an expiry, etcd's claims.
//!
//! Also the password hashing (bcrypt at `--bcrypt-cost`) both kinds start from.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's `--auth-token-ttl` default, in seconds.
pub const DEFAULT_SIMPLE_TTL: u64 = 300;
/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// Hashes a password with bcrypt at `cost` (etcd's `--bcrypt-cost`, 4..=31).
pub fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    bcrypt::hash(password, cost).map_err(|e| format!("hashing the password: {e}"))
}

/// True when `password` matches the bcrypt `hash`.
pub fn password_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// The simple tokens this member knows: token → (user, deadline).
pub struct SimpleTokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    ttl_secs: AtomicU64,
}

impl Default for SimpleTokens {
    fn default() -> Self {
        SimpleTokens {
            tokens: Mutex::new(HashMap::new()),
            ttl_secs: AtomicU64::new(DEFAULT_SIMPLE_TTL),
        }
    }
}

impl SimpleTokens {
    /// Sets how long a token lives without use.
    pub fn set_ttl(&self, secs: u64) {
        self.ttl_secs.store(secs.max(1), Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.load(Ordering::Relaxed))
    }

    /// A new random token: 16 letters, a dot and 16 more (etcd's shape is `<16 letters>.<n>`;
    /// clients treat it as opaque).
    pub fn generate() -> Result<String, String> {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| format!("random token: {e}"))?;
        let mut s: String = raw
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
            .collect();
        s.insert(16, '.');
        Ok(s)
    }

    /// Learns a token (from an applied Authenticate).
    pub fn assign(&self, token: &str, user: &str, now: Instant) {
        let mut t = self.tokens.lock().expect("tokens lock");
        // Expired tokens go when new ones come, so the map stays as large as the live set.
        if t.len() >= 64 && t.len().is_power_of_two() {
            t.retain(|_, (_, deadline)| *deadline > now);
        }
        t.insert(token.to_string(), (user.to_string(), now + self.ttl()));
    }

    /// The user of a live token; each use extends its life by the TTL.
    pub fn user(&self, token: &str, now: Instant) -> Option<String> {
        let mut t = self.tokens.lock().expect("tokens lock");
        match t.get_mut(token) {
            Some((user, deadline)) if *deadline > now => {
                *deadline = now + self.ttl();
                Some(user.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens.lock().expect("tokens lock").retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.tokens.lock().expect("tokens lock").clear();
    }
}

/// etcd's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// JWT tokens from `--auth-token jwt,...`.
pub struct Jwt {
    algorithm: Algorithm,
    /// Absent when only a public key was given: this member verifies but cannot issue.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithm", &self.algorithm)
            .field("signing", &self.signing.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What `--auth-token` selects.
#[derive(Debug)]
pub enum TokenKind {
    Simple,
    Jwt(Box<Jwt>),
}

impl TokenKind {
    /// What the member's `--auth-token` selects (key files read and checked now, so a bad
    /// flag stops start-up).
    pub fn from_config(cfg: &crate::config::Config) -> Result<TokenKind, crate::config::ConfigError> {
        TokenKind::parse(&cfg.auth_token).map_err(crate::config::ConfigError::AuthToken)
    }

    /// Parses `--auth-token`: `simple`, or `jwt,` followed by etcd's options `pub-key`,
    /// `priv-key`, `sign-method` (RS/PS/ES/HS families, EdDSA) and `ttl` (a duration).
    pub fn parse(spec: &str) -> Result<TokenKind, String> {
        let mut parts = spec.split(',');
        match parts.next().unwrap_or_default().trim() {
            "simple" | "" => Ok(TokenKind::Simple),
            "jwt" => {
                let mut opts = HashMap::new();
                for p in parts {
                    let (k, v) = p
                        .split_once('=')
                        .ok_or_else(|| format!("--auth-token: option {p:?} is not key=value"))?;
                    opts.insert(k.trim().to_string(), v.trim().to_string());
                }
                Jwt::from_options(&opts).map(|j| TokenKind::Jwt(Box::new(j)))
            }
            other => Err(format!(
                "--auth-token: unknown token type {other:?} (want simple or jwt,...)"
            )),
        }
    }
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--auth-token: reading {what} {path}: {e}"))
}

impl Jwt {
    fn from_options(opts: &HashMap<String, String>) -> Result<Jwt, String> {
        for k in opts.keys() {
            if !["pub-key", "priv-key", "sign-method", "ttl"].contains(&k.as_str()) {
                return Err(format!("--auth-token: unknown jwt option {k:?}"));
            }
        }
        let method = opts
            .get("sign-method")
            .ok_or("--auth-token jwt needs sign-method=<RS256|ES256|...>")?;
        let algorithm: Algorithm = method
            .parse()
            .map_err(|_| format!("--auth-token: unsupported sign-method {method:?}"))?;
        let ttl = match opts.get("ttl") {
            Some(t) => crate::config::parse_duration(t).map_err(|e| format!("--auth-token: ttl: {e}"))?,
            None => DEFAULT_JWT_TTL,
        };
        let pem = |what: &str| opts.get(what).map(|p| read(p, what)).transpose();
        let (public, private) = (pem("pub-key")?, pem("priv-key")?);
        let bad = |e: jsonwebtoken::errors::Error| format!("--auth-token: {method} key: {e}");
        use Algorithm::*;
        let (signing, verifying) = match algorithm {
            HS256 | HS384 | HS512 => {
                // An HMAC secret is the private key file's bytes, for signing and verifying.
                let secret = private.ok_or("--auth-token: HS* signing needs priv-key")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let public = public.ok_or("--auth-token jwt needs pub-key=<file>")?;
                let verifying = match algorithm {
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(&public),
                    ES256 | ES384 => DecodingKey::from_ec_pem(&public),
                    _ => DecodingKey::from_ed_pem(&public),
                }
                .map_err(bad)?;
                let signing = private
                    .map(|k| match algorithm {
                        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(&k),
                        ES256 | ES384 => EncodingKey::from_ec_pem(&k),
                        _ => EncodingKey::from_ed_pem(&k),
                    })
                    .transpose()
                    .map_err(bad)?;
                (signing, verifying)
            }
        };
        Ok(Jwt {
            algorithm,
            signing,
            verifying,
            ttl,
        })
    }

    /// A token for `user` at auth `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let key = self
            .signing
            .as_ref()
            .ok_or("this member has no priv-key in --auth-token and cannot issue tokens")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: (now + self.ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| format!("signing a token: {e}"))
    }

    /// The user and auth revision of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut v = Validation::new(self.algorithm);
        v.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.verifying, &v)
            .ok()
            .map(|d| (d.claims.username, d.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_refresh_and_go_with_their_user() {
        let t = SimpleTokens::default();
        t.set_ttl(10);
        let now = Instant::now();
        let a = SimpleTokens::generate().unwrap();
        assert_eq!(a.len(), 33);
        assert_ne!(a, SimpleTokens::generate().unwrap());
        t.assign(&a, "alice", now);
        assert_eq!(t.user(&a, now + Duration::from_secs(9)).as_deref(), Some("alice"));
        // The use above moved the deadline to 19 s.
        assert_eq!(t.user(&a, now + Duration::from_secs(18)).as_deref(), Some("alice"));
        assert_eq!(t.user(&a, now + Duration::from_secs(40)), None);
        assert_eq!(t.user(&a, now), None, "an expired token is forgotten");
        t.assign(&a, "alice", now);
        t.assign("b", "bob", now);
        t.invalidate_user("alice");
        assert_eq!(t.user(&a, now), None);
        assert_eq!(t.user("b", now).as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.user("b", now), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("secret", 4).unwrap();
        assert!(password_matches("secret", &h));
        assert!(!password_matches("Secret", &h));
        assert!(!password_matches("secret", "not a hash"));
    }

    #[test]
    fn jwt_tokens_carry_user_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"0123456789abcdef0123456789abcdef").unwrap();
        let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display());
        let TokenKind::Jwt(j) = TokenKind::parse(&spec).unwrap() else {
            panic!("not jwt")
        };
        let tok = j.sign("alice", 7).unwrap();
        assert_eq!(j.verify(&tok), Some(("alice".to_string(), 7)));
        assert_eq!(j.verify(&format!("{tok}x")), None);
        assert!(matches!(TokenKind::parse("simple"), Ok(TokenKind::Simple)));
        assert!(TokenKind::parse("jwt,sign-method=RS256").is_err(), "needs a public key");
        assert!(TokenKind::parse("jwt,sign-method=XX1").is_err());
        assert!(TokenKind::parse("opaque").is_err());
    }
}
