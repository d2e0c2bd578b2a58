use std::fmt;

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh id from 122 random bits.
            pub fn random(rng: &dyn crate::rng::SecureRng) -> Self {
                let mut b = [0u8; 16];
                rng.fill(&mut b);
                $name(uuid::Builder::from_random_bytes(b).into_uuid())
            }
            pub fn parse(s: &str) -> Option<Self> {
                uuid::Uuid::try_parse(s).ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

id_type!(UserId, "An account's stable id.");
id_type!(ChallengeId, "A login attempt waiting for its emailed code.");
id_type!(SessionId, "A signed-in session (one refresh-token family).");
