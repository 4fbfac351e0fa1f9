//! Bearer-token check for the status endpoint's POST routes.
//!
//! Owns: the token (redacted in `Debug`), parsing the `Authorization`
//! header, and the comparison, which takes the same time whatever the
//! presented token is: both sides are hashed with SHA-256 and the two
//! 32-byte digests are compared with a branch-free fold, so neither the
//! position of the first differing byte nor the token's length shows in the
//! timing.
//! Must never: log, echo or return the configured or the presented token.

use sha2::{Digest, Sha256};
use std::fmt;

/// The configured token. Compared, never shown.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    /// Whether `presented` is this token, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let a: [u8; 32] = Sha256::digest(self.0.as_bytes()).into();
        let b: [u8; 32] = Sha256::digest(presented).into();
        ct_eq(&a, &b)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Constant-time equality of two equally long byte arrays: every byte is
/// visited and folded into one accumulator; the only branch is on the final
/// value. `black_box` keeps the optimiser from turning the fold into an
/// early-exit comparison.
pub fn ct_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut diff = 0u8;
    for i in 0..N {
        diff |= std::hint::black_box(a[i] ^ b[i]);
    }
    std::hint::black_box(diff) == 0
}

/// Why a request is not authorised (the reason is shown to the client; it
/// never includes either token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Wrong,
}

impl AuthFailure {
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing bearer token: send Authorization: Bearer <status.token>"
            }
            AuthFailure::Malformed => {
                "malformed Authorization header: expected Authorization: Bearer <status.token>"
            }
            AuthFailure::Wrong => "wrong bearer token",
        }
    }
}

/// Check an `Authorization` header value against the token.
pub fn check(header: Option<&[u8]>, token: &Token) -> Result<(), AuthFailure> {
    let Some(h) = header else {
        return Err(AuthFailure::Missing);
    };
    // The scheme is case-insensitive (RFC 9110), the token is not.
    let scheme_len = "bearer ".len();
    if h.len() <= scheme_len || !h[..scheme_len].eq_ignore_ascii_case(b"bearer ") {
        return Err(AuthFailure::Malformed);
    }
    let presented = h[scheme_len..].trim_ascii();
    if token.matches(presented) {
        Ok(())
    } else {
        Err(AuthFailure::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(&[1, 2, 3], &[1, 2, 3]));
        assert!(!ct_eq(&[1, 2, 3], &[1, 2, 4]));
        assert!(!ct_eq(&[0, 2, 3], &[1, 2, 3]));
        assert!(ct_eq::<0>(&[], &[]));
        // Every single-bit difference anywhere is seen.
        let a = [0u8; 32];
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!ct_eq(&a, &b), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn tokens_match_only_themselves() {
        let t = Token::new("s3cret-token");
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-toke"));
        assert!(!t.matches(b"s3cret-token "));
        assert!(!t.matches(b""));
        assert!(!t.matches(b"S3CRET-TOKEN"));
    }

    #[test]
    fn header_parsing() {
        let t = Token::new("s3cret-token");
        assert_eq!(check(Some(b"Bearer s3cret-token"), &t), Ok(()));
        assert_eq!(check(Some(b"bearer s3cret-token"), &t), Ok(()));
        assert_eq!(check(None, &t), Err(AuthFailure::Missing));
        assert_eq!(check(Some(b"Basic abc"), &t), Err(AuthFailure::Malformed));
        assert_eq!(check(Some(b"Bearer "), &t), Err(AuthFailure::Malformed));
        assert_eq!(check(Some(b"Bearer nope"), &t), Err(AuthFailure::Wrong));
    }

    #[test]
    fn the_token_never_prints() {
        let t = Token::new("s3cret-token");
        assert!(!format!("{t:?}").contains("s3cret"));
        for f in [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Wrong,
        ] {
            assert!(!f.message().contains("s3cret"));
        }
    }
}
