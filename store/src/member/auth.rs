//! Auth at the member: who a request runs as (its token, or the CN of its client
//! certificate), Authenticate, and the auth state the API's own checks read (reads, watches,
//! admin RPCs; writes are checked where the log orders them, at apply).

use std::sync::Arc;
use std::time::Instant;

use super::Member;
use crate::auth::tokens::{SimpleTokens, TokenKind, password_matches};
use crate::auth::{AuthInfo, AuthState};
use crate::error::{Result, StoreError};
use crate::proto::lodestone as pb;

/// What a request presented: a `token` (gRPC metadata) and the CN of a verified client
/// certificate. A token wins over a certificate, as with etcd.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<String>,
}

impl Member {
    /// The auth store as this member applied it.
    pub fn auth(&self) -> Arc<AuthState> {
        self.sm.auth()
    }

    /// Who a request runs as. With auth disabled everyone is anonymous and nothing is
    /// checked; with it enabled an unknown or expired token is `InvalidAuthToken`, and no
    /// credentials at all is the anonymous user every check refuses.
    ///
    /// A simple token another member handed out a moment ago may not be applied here yet:
    /// an unknown one is looked up again after a linearizable barrier (which applies every
    /// entry committed before it) before it is refused.
    pub async fn who(&self, c: &Credentials) -> Result<AuthInfo> {
        match self.who_now(c) {
            Err(StoreError::InvalidAuthToken) if matches!(self.token_kind, TokenKind::Simple) => {
                self.linearizable_barrier().await?;
                self.who_now(c)
            }
            r => r,
        }
    }

    fn who_now(&self, c: &Credentials) -> Result<AuthInfo> {
        let auth = self.sm.auth();
        if !auth.enabled() {
            return Ok(AuthInfo::default());
        }
        if let Some(token) = &c.token {
            return match &self.token_kind {
                TokenKind::Simple => self
                    .sm
                    .tokens
                    .user(token, Instant::now())
                    .map(|username| AuthInfo {
                        username,
                        revision: auth.revision(),
                    })
                    .ok_or(StoreError::InvalidAuthToken),
                TokenKind::Jwt(j) => j
                    .verify(token)
                    .map(|(username, revision)| AuthInfo { username, revision })
                    .ok_or(StoreError::InvalidAuthToken),
            };
        }
        Ok(match &c.common_name {
            Some(cn) => AuthInfo {
                username: cn.clone(),
                revision: auth.revision(),
            },
            None => AuthInfo::default(),
        })
    }

    /// Authenticate: checks the password against the current auth store (after a
    /// linearizable barrier, so a just-changed password counts) and hands out a token. A
    /// simple token is replicated, and answered once this member applied it, so the client
    /// can use it here at once.
    pub async fn authenticate(self: &Arc<Self>, name: String, password: String) -> Result<String> {
        if !self.sm.auth().enabled() {
            return Err(StoreError::AuthNotEnabled);
        }
        self.linearizable_barrier().await?;
        let auth = self.sm.auth();
        if !auth.enabled() {
            return Err(StoreError::AuthNotEnabled);
        }
        let hash = auth.password_hash(&name)?;
        let matches = tokio::task::spawn_blocking(move || password_matches(&password, &hash))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        if !matches {
            return Err(StoreError::AuthFailed);
        }
        match &self.token_kind {
            TokenKind::Simple => {
                let token = SimpleTokens::generate().map_err(StoreError::Internal)?;
                let cmd = pb::Command {
                    kind: Some(pb::command::Kind::Authenticate(pb::Authenticate {
                        name,
                        token: token.clone(),
                    })),
                    auth: None,
                };
                self.propose(cmd).await?;
                // Applied on the leader; wait until it is applied here too.
                self.linearizable_barrier().await?;
                Ok(token)
            }
            TokenKind::Jwt(j) => j.sign(&name, auth.revision()).map_err(StoreError::Internal),
        }
    }

    /// Hashes a password at `--bcrypt-cost`, off the async runtime.
    pub async fn hash_password(&self, password: String) -> Result<String> {
        let cost = self.cfg.bcrypt_cost;
        tokio::task::spawn_blocking(move || crate::auth::tokens::hash_password(&password, cost))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(StoreError::Internal)
    }
}
