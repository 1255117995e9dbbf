//! Password hashing with argon2id (OWASP parameters: 19 MiB, 2 passes).
//!
//! Hashing is CPU- and memory-heavy, so it runs on the blocking pool and at
//! most `concurrency` hashes run at once; a burst of logins queues here
//! instead of exhausting memory or starving the async runtime. The queue is
//! bounded too (`max_queue` waiting): a flood beyond it is refused at once
//! with [`UserError::Busy`], so it cannot grow the wait of every real login
//! past its deadline, and the refused caller learns to retry instead of
//! timing out.

use std::sync::Arc;

use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{domain::Password, error::UserError};

#[derive(Clone)]
pub struct PasswordHasher {
    /// Hashing now or waiting to: `concurrency + max_queue` permits, taken
    /// without waiting.
    admitted: Arc<Semaphore>,
    /// Hashing now: `concurrency` permits.
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that a wrong id
    /// costs as much time as a wrong password and ids cannot be probed.
    decoy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize, max_queue: usize) -> Result<Self, UserError> {
        let decoy_hash = hash_blocking(b"clusterchat decoy password")?;
        let concurrency = concurrency.max(1);
        Ok(Self {
            admitted: Arc::new(Semaphore::new(concurrency.saturating_add(max_queue))),
            permits: Arc::new(Semaphore::new(concurrency)),
            decoy_hash: decoy_hash.into(),
        })
    }

    /// A hash slot, waiting behind at most `max_queue` others; none free in
    /// the queue either → refused now.
    async fn slot(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), UserError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| UserError::Busy)?;
        let hashing = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        Ok((admitted, hashing))
    }

    pub async fn hash(&self, password: Password) -> Result<String, UserError> {
        let _slot = self.slot().await?;
        tokio::task::spawn_blocking(move || hash_blocking(password.expose()))
            .await
            .map_err(internal)?
    }

    /// Checks `password` against `stored`; with no stored hash, burns the
    /// same time and answers false.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, UserError> {
        let _slot = self.slot().await?;
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy_hash.to_string());
        let matches = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| internal(anyhow::anyhow!("{e}")))?;
            Ok::<_, UserError>(
                Argon2::default()
                    .verify_password(password.expose(), &parsed)
                    .is_ok(),
            )
        })
        .await
        .map_err(internal)??;
        Ok(known && matches)
    }
}

fn hash_blocking(password: &[u8]) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| internal(anyhow::anyhow!("{e}")))
}

fn internal(e: impl Into<anyhow::Error>) -> UserError {
    UserError::Internal(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_verifies_and_is_argon2id() {
        let hasher = PasswordHasher::new(2, 8).expect("hasher");
        let hash = hasher
            .hash(Password::parse("s3cret".into()).expect("pw"))
            .await
            .expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("s3cret"));
        assert!(
            hasher
                .verify(
                    Password::parse("s3cret".into()).expect("pw"),
                    Some(hash.clone())
                )
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify(Password::parse("wrong".into()).expect("pw"), Some(hash))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1, 8).expect("hasher");
        let decoy = Password::parse("clusterchat decoy password".into()).expect("pw");
        assert!(!hasher.verify(decoy, None).await.expect("verify"));
    }

    #[tokio::test]
    async fn beyond_the_queue_is_refused_at_once() {
        // One hashing, one waiting: a third is refused without waiting, and
        // once they are done there is room again.
        let hasher = PasswordHasher::new(1, 1).expect("hasher");
        let pw = || Password::parse("pw".into()).expect("pw");
        let first = hasher.slot().await.expect("hashing");
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash(pw()).await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while hasher.admitted.available_permits() > 0 {
            assert!(std::time::Instant::now() < deadline, "second never queued");
            tokio::task::yield_now().await;
        }
        let refused = hasher.verify(pw(), None).await.expect_err("queue full");
        assert!(matches!(refused, UserError::Busy), "{refused:?}");
        drop(first);
        waiting.await.expect("task").expect("queued hash succeeds");
        assert!(!hasher.verify(pw(), None).await.expect("room again"));
    }
}
