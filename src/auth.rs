//! Bearer tokens with scopes.
//!
//! Each token has a name (for logs and messages; the secret itself is never
//! logged), a secret and the scopes it grants. Only the SHA-256 digest of a
//! secret is kept in memory, and a presented token is compared with every
//! known digest in constant time, so neither a match nor its position leaks
//! through timing.
//!
//! Tokens come from a TOML file:
//!
//! ```toml
//! [[tokens]]
//! name = "routing"
//! secret = "a long random string"   # or secret_sha256 = "<64 hex digits>"
//! scopes = ["read"]
//! ```
//!
//! or from one environment variable of comma-separated `name:scopes:secret`
//! entries, scopes joined by `+`: `routing:read:s3cr3t...,etl:read+write:...`.

use std::{fmt, path::Path, str::FromStr};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Shortest secret accepted: anything shorter can be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Score accounts and read accounts, priorities, summaries and history.
    Read,
    /// Write accounts and signals.
    Write,
    /// Administer the server (reload the model).
    Admin,
}

impl Scope {
    /// The scope's name as written in token files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown scope {other:?}; scopes are read, write and admin"
            )),
        }
    }
}

/// A token file or variable that cannot be used.
#[derive(Debug, Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("token file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One entry is wrong.
    #[error("{source_name}: token {index} ({name:?}): {problem}")]
    Entry {
        /// The file path or variable name.
        source_name: String,
        /// 1-based position of the entry.
        index: usize,
        /// Its name, if it has one.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// No token at all.
    #[error("{0} defines no token")]
    Empty(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    secret: Option<String>,
    secret_sha256: Option<String>,
    scopes: Vec<Scope>,
}

struct Token {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The known tokens.
pub struct Tokens {
    tokens: Vec<Token>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: digests are as good as secrets to an offline guesser.
        f.debug_list()
            .entries(self.tokens.iter().map(|t| &t.name))
            .finish()
    }
}

/// Who a request comes from, once its token is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    /// The token's name.
    pub name: &'a str,
    scopes: &'a [Scope],
}

impl Caller<'_> {
    /// Whether the caller holds `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

impl Tokens {
    /// Reads a TOML token file.
    ///
    /// # Errors
    /// A [`TokenError`] naming the file and, for a bad entry, which one.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: shown.clone(),
            source,
        })?;
        let file: TokenFile = toml::from_str(&text).map_err(|e| TokenError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let entries = file
            .tokens
            .into_iter()
            .map(|e| (e.name, e.secret, e.secret_sha256, e.scopes))
            .collect();
        Self::build(&shown, entries)
    }

    /// Parses the compact `name:scope+scope:secret,...` form.
    ///
    /// # Errors
    /// A [`TokenError`] naming `source_name` and the entry.
    pub fn from_compact(source_name: &str, text: &str) -> Result<Self, TokenError> {
        let mut entries = Vec::new();
        for (i, item) in text.split(',').map(str::trim).enumerate() {
            let bad = |problem: String| TokenError::Entry {
                source_name: source_name.to_owned(),
                index: i + 1,
                name: String::new(),
                problem,
            };
            let mut parts = item.splitn(3, ':');
            let (Some(name), Some(scopes), Some(secret)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected name:scopes:secret".into()));
            };
            let scopes = scopes
                .split('+')
                .map(Scope::from_str)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            entries.push((name.to_owned(), Some(secret.to_owned()), None, scopes));
        }
        Self::build(source_name, entries)
    }

    #[allow(clippy::type_complexity)]
    fn build(
        source_name: &str,
        entries: Vec<(String, Option<String>, Option<String>, Vec<Scope>)>,
    ) -> Result<Self, TokenError> {
        let mut tokens: Vec<Token> = Vec::with_capacity(entries.len());
        for (i, (name, secret, secret_sha256, scopes)) in entries.into_iter().enumerate() {
            let bad = |problem: &str| TokenError::Entry {
                source_name: source_name.to_owned(),
                index: i + 1,
                name: name.clone(),
                problem: problem.to_owned(),
            };
            if name.trim().is_empty() {
                return Err(bad("name is empty"));
            }
            if scopes.is_empty() {
                return Err(bad(
                    "grants no scope; give at least one of read, write, admin",
                ));
            }
            let digest = match (secret, secret_sha256) {
                (Some(secret), None) => {
                    if secret.chars().count() < MIN_SECRET_LEN {
                        return Err(bad(&format!(
                            "secret is shorter than {MIN_SECRET_LEN} characters"
                        )));
                    }
                    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(bad("secret holds whitespace or control characters"));
                    }
                    Sha256::digest(secret.as_bytes()).into()
                }
                (None, Some(hex_digest)) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut digest)
                        .map_err(|_| bad("secret_sha256 is not 64 hexadecimal digits"))?;
                    digest
                }
                (Some(_), Some(_)) => return Err(bad("give secret or secret_sha256, not both")),
                (None, None) => return Err(bad("has neither secret nor secret_sha256")),
            };
            if tokens.iter().any(|t| t.name == name) {
                return Err(bad("name is used by an earlier token"));
            }
            if tokens.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
                return Err(bad("secret is the same as an earlier token's"));
            }
            let mut scopes = scopes;
            scopes.sort_by_key(|s| *s as u8);
            scopes.dedup();
            tokens.push(Token {
                name,
                digest,
                scopes,
            });
        }
        if tokens.is_empty() {
            return Err(TokenError::Empty(source_name.to_owned()));
        }
        Ok(Self { tokens })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there is no token (never true for a built set).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller a presented secret belongs to. Every known digest is
    /// compared, whatever matches, so the time taken does not depend on
    /// which token (if any) matched.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller<'_>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(Caller {
                    name: &token.name,
                    scopes: &token.scopes,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_form_grants_the_listed_scopes() {
        let tokens = Tokens::from_compact(
            "HEALTHSCORE_AUTH_TOKENS",
            "routing:read:0123456789abcdef, etl:read+write:fedcba9876543210:x",
        )
        .unwrap();
        let routing = tokens.identify(b"0123456789abcdef").unwrap();
        assert_eq!(routing.name, "routing");
        assert!(routing.may(Scope::Read) && !routing.may(Scope::Write));
        // The secret may itself hold colons.
        let etl = tokens.identify(b"fedcba9876543210:x").unwrap();
        assert!(etl.may(Scope::Write) && !etl.may(Scope::Admin));
        assert!(tokens.identify(b"fedcba9876543210").is_none());
        assert!(tokens.identify(b"").is_none());
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            ("a:read:short", "shorter than 16"),
            ("a:reed:0123456789abcdef", "unknown scope \"reed\""),
            ("a:read", "expected name:scopes:secret"),
            (":read:0123456789abcdef", "name is empty"),
            (
                "a:read:0123456789abcdef,a:write:0123456789abcdeX",
                "token 2 (\"a\"): name is used",
            ),
            (
                "a:read:0123456789abcdef,b:write:0123456789abcdef",
                "same as an earlier token",
            ),
        ];
        for (text, expected) in cases {
            let error = Tokens::from_compact("VAR", text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.starts_with("VAR"), "{error}");
        }
    }

    #[test]
    fn token_file_accepts_digests_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let digest = hex::encode(Sha256::digest(b"a-secret-of-some-length"));
        std::fs::write(
            &path,
            format!(
                "[[tokens]]\nname = \"ops\"\nsecret_sha256 = \"{digest}\"\nscopes = [\"admin\", \"read\"]\n"
            ),
        )
        .unwrap();
        let tokens = Tokens::from_file(&path).unwrap();
        let ops = tokens.identify(b"a-secret-of-some-length").unwrap();
        assert!(ops.may(Scope::Admin) && ops.may(Scope::Read) && !ops.may(Scope::Write));
        assert!(!format!("{tokens:?}").contains(&digest));

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ops\"\nsecret = \"0123456789abcdef\"\nscope = [\"read\"]\n",
        )
        .unwrap();
        let error = Tokens::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown field `scope`"), "{error}");
        assert!(error.contains("line 4"), "{error}");
    }
}
