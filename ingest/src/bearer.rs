//! Bearer-token checks shared by the HTTP routes (`POST /sql`,
//! `POST /ingest/{source}`).

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// Bearer tokens a route accepts, kept as SHA-256 digests.
#[derive(Clone, Default)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({})", self.0.len())
    }
}

impl Tokens {
    /// Tokens from their text. An empty token is refused.
    pub fn parse<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut t = Tokens::default();
        for token in tokens {
            t.push(token)?;
        }
        Ok(t)
    }

    /// Accepts one more token. An empty token is refused.
    pub fn push(&mut self, token: &str) -> Result<(), String> {
        if token.trim().is_empty() {
            return Err("an HTTP token cannot be empty".into());
        }
        self.0.push(Sha256::digest(token.trim().as_bytes()).into());
        Ok(())
    }

    /// Whether requests must carry a token.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `headers` carry an accepted token (always, when none are
    /// configured).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Digests of equal length compared in full: no early exit on the
        // first differing byte of a secret.
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        self.0.iter().fold(false, |ok, d| {
            ok | (d.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
        })
    }
}
