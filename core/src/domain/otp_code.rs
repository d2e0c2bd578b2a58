use crate::clock::Timestamp;
use subtle::ConstantTimeEq;

/// A 6-digit one-time code. Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl OtpCode {
    /// Draws a code uniformly from 000000..=999999 with the CSPRNG.
    pub fn generate(rng: &dyn crate::rng::SecureRng) -> Self {
        OtpCode(format!("{:06}", rng.below(1_000_000)))
    }

    /// Accepts exactly six ASCII digits (surrounding spaces trimmed).
    pub fn parse(raw: &str, field: &'static str) -> Result<Self, crate::Error> {
        let s = raw.trim();
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(crate::Error::validation(field, "must be 6 digits"));
        }
        Ok(OtpCode(s.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison of two stored keyed hashes.
    pub fn hashes_equal(a: &str, b: &str) -> bool {
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }
}

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode([redacted])")
    }
}

/// Why a code can no longer be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClosed {
    Used,
    /// Its attempts (or wrong codes) reached the cap.
    Exhausted,
    Expired,
}

/// Whether a code with this state can still be tried at `now`, with `max`
/// attempts per code; checked in the order used, exhausted, expired.
pub(super) fn code_closed(
    used: bool,
    failures: u32,
    attempts: u32,
    expires_at: Timestamp,
    now: Timestamp,
    max: u32,
) -> Option<CodeClosed> {
    if used {
        Some(CodeClosed::Used)
    } else if failures >= max || attempts >= max {
        Some(CodeClosed::Exhausted)
    } else if expires_at <= now {
        Some(CodeClosed::Expired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::OsSecureRng;

    #[test]
    fn codes_are_six_digits_and_uniform() {
        // Chi-square over the first digit of 100k codes (9 degrees of
        // freedom; 27.88 is the 0.999 quantile).
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let c = OtpCode::generate(&OsSecureRng);
            assert_eq!(c.expose().len(), 6);
            assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
            counts[(c.expose().as_bytes()[0] - b'0') as usize] += 1;
        }
        let expected = 10_000.0;
        let chi: f64 = counts.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum();
        assert!(chi < 27.88, "chi-square {chi} over {counts:?}");
    }

    #[test]
    fn parse_rejects_non_digits() {
        for bad in ["12345", "1234567", "12a456", "１２３４５６", ""] {
            assert!(OtpCode::parse(bad, "code").is_err(), "{bad:?}");
        }
        assert!(OtpCode::parse(" 012345 ", "code").is_ok());
    }
}
