//! Validation of repository names, tags and digests, from the grammar of the OCI
//! distribution spec. Nothing that fails these checks reaches storage.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

use super::{OciError as Error, Result};

/// Longest repository name accepted (the spec lets registries refuse long names).
pub const MAX_NAME_LEN: usize = 255;

static NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
        .unwrap_or_else(|e| panic!("static regex: {e}"))
});
static TAG_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap_or_else(|e| panic!("static regex: {e}"))
});

/// A validated repository name such as `onap/so/catalog-db`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() > MAX_NAME_LEN {
            return Err(Error::NameInvalid(format!("longer than {MAX_NAME_LEN} characters")));
        }
        if !NAME_RE.is_match(s) {
            return Err(Error::NameInvalid(format!(
                "{s:?} does not match the repository name grammar"
            )));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The namespace: the first path segment, where quotas and (later) access rules attach.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
pub fn parse_tag(s: &str) -> Result<&str> {
    if TAG_RE.is_match(s) {
        Ok(s)
    } else {
        Err(Error::TagInvalid(format!("{s:?} does not match the tag grammar")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

/// A content digest `algorithm:hex`, lowercase hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algo: Algorithm,
    text: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| Error::DigestInvalid(format!("{s:?} is not algorithm:encoded")))?;
        let (algo, len) = match algo {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            other => return Err(Error::Unsupported(format!("digest algorithm {other:?}"))),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::DigestInvalid(format!("{s:?} is not a valid digest")));
        }
        Ok(Self {
            algo,
            text: s.to_string(),
        })
    }

    pub fn sha256_of_hex(hex: &str) -> Self {
        Self {
            algo: Algorithm::Sha256,
            text: format!("sha256:{hex}"),
        }
    }

    pub fn sha256(bytes: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self::sha256_of_hex(&hex::encode(Sha256::digest(bytes)))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The encoded part: only `[0-9a-f]`, safe to use in a file path.
    pub fn hex(&self) -> &str {
        &self.text[self.text.find(':').map_or(0, |i| i + 1)..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            parse_tag(s).map(|t| Reference::Tag(t.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/ubuntu", "a.b/c_d/e__f/g--h", "0x/1"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/../b",
            "..",
            "a//b",
            "/a",
            "a/",
            "a%2Fb",
            "a__-b",
            "-a",
            "a.",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_and_refs() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&d).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(matches!(Digest::parse("md5:abc"), Err(Error::Unsupported(_))));
        assert_eq!(Digest::parse(&d).map(|d| d.hex().len()).ok(), Some(64));
        assert!(matches!(Reference::parse("v1.0"), Ok(Reference::Tag(_))));
        assert!(Reference::parse(".bad").is_err());
        assert!(Reference::parse(&"t".repeat(129)).is_err());
    }
}
