//! The registry auth handshake, as pure parts: `WWW-Authenticate` challenges, token scopes and
//! the token cache. The requests themselves are made by [`super::RegistryClient`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// One challenge of a `WWW-Authenticate` header: its scheme (lower case) and parameters
/// (keys lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Parse every challenge of one `WWW-Authenticate` value (RFC 9110 §11.6.1: schemes followed
/// by comma-separated `key=value` or `key="quoted value"` parameters; a quoted scope holds
/// commas of its own).
pub(super) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_token = |c: char| !c.is_whitespace() && !matches!(c, ',' | '=' | '"');
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && is_token(chars[i]) {
            i += 1;
        }
        if start == i {
            // A stray '=' or '"': skip it.
            i += 1;
            continue;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        if j < chars.len() && chars[j] == '=' && !out.is_empty() {
            // A parameter of the current challenge.
            j += 1;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let mut value = String::new();
            if j < chars.len() && chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                    }
                    value.push(chars[j]);
                    j += 1;
                }
                j += 1;
            } else {
                while j < chars.len() && chars[j] != ',' && !chars[j].is_whitespace() {
                    value.push(chars[j]);
                    j += 1;
                }
            }
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
            i = j;
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// A set of token scopes (`type:name:actions`), actions of the same resource merged, in a
/// canonical order so that equal sets give equal cache keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Scopes(BTreeMap<(String, String), BTreeSet<String>>);

impl Scopes {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn repository(name: &str, actions: &[&str]) -> Self {
        let mut s = Self::none();
        s.add(&format!("repository:{name}:{}", actions.join(",")));
        s
    }

    pub fn catalog() -> Self {
        let mut s = Self::none();
        s.add("registry:catalog:*");
        s
    }

    /// Add one scope string; one without two colons is ignored.
    pub fn add(&mut self, scope: &str) {
        let Some((kind, rest)) = scope.split_once(':') else {
            return;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            return;
        };
        let set = self.0.entry((kind.to_string(), name.to_string())).or_default();
        for a in actions.split(',').filter(|a| !a.is_empty()) {
            set.insert(a.to_string());
        }
    }

    /// Add every space-separated scope of a challenge's `scope` parameter.
    pub fn add_all(&mut self, scopes: &str) {
        for s in scopes.split_whitespace() {
            self.add(s);
        }
    }

    pub fn union(&self, other: &Scopes) -> Scopes {
        let mut out = self.clone();
        for ((kind, name), actions) in &other.0 {
            out.0
                .entry((kind.clone(), name.clone()))
                .or_default()
                .extend(actions.iter().cloned());
        }
        out
    }

    /// One scope string per resource, as the token request's `scope` parameters.
    pub fn strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|((kind, name), actions)| {
                format!(
                    "{kind}:{name}:{}",
                    actions.iter().cloned().collect::<Vec<_>>().join(",")
                )
            })
            .collect()
    }

    pub fn key(&self) -> String {
        self.strings().join(" ")
    }
}

/// How the registry wants to be authenticated, as learnt from its challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scheme {
    /// Not known yet: the next request goes without credentials and learns it from a 401.
    Unknown,
    /// Answered without a challenge so far.
    Anonymous,
    Basic,
    /// Docker's token protocol: tokens from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A bearer token (never printed) and when to stop using it.
#[derive(Clone)]
pub(super) struct Token {
    pub secret: String,
    pub renew_at: Instant,
    /// What it was asked for (the call's scopes, widened by challenges).
    pub scopes: Scopes,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("scopes", &self.scopes.key())
            .finish()
    }
}

impl Token {
    /// A token valid for `expires_in` seconds (the protocol's default is 60), used until a
    /// margin before that: a fifth of its life, at most 30 s.
    pub fn new(secret: String, expires_in: Option<u64>, scopes: Scopes, now: Instant) -> Self {
        let life = Duration::from_secs(expires_in.filter(|s| *s > 0).unwrap_or(60));
        let margin = (life / 5).min(Duration::from_secs(30));
        Self {
            secret,
            renew_at: now + (life - margin),
            scopes,
        }
    }
}

/// The auth state of one client: the scheme and the tokens, keyed by the scopes a call needs.
#[derive(Debug)]
pub(super) struct AuthState {
    pub scheme: Scheme,
    tokens: HashMap<String, Token>,
}

impl AuthState {
    pub fn new() -> Self {
        Self {
            scheme: Scheme::Unknown,
            tokens: HashMap::new(),
        }
    }

    /// The cached token for a call needing `scopes`, while it is fresh.
    pub fn token(&self, scopes: &Scopes, now: Instant) -> Option<Token> {
        self.tokens.get(&scopes.key()).filter(|t| t.renew_at > now).cloned()
    }

    pub fn store(&mut self, scopes: &Scopes, token: Token) {
        let now = Instant::now();
        self.tokens.retain(|_, t| t.renew_at > now);
        self.tokens.insert(scopes.key(), token);
    }

    pub fn forget(&mut self, scopes: &Scopes) {
        self.tokens.remove(&scopes.key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push repository:c:pull"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));

        let c = parse_challenges(r#"Basic realm="x\"y", Bearer realm=http://t/token , service=s"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("x\"y"));
        assert_eq!(c[1].param("realm"), Some("http://t/token"));
        assert_eq!(c[1].param("service"), Some("s"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("=,\"").len(), 0);
    }

    #[test]
    fn scopes_merge() {
        let mut a = Scopes::repository("ns/app", &["pull"]);
        a.add_all("repository:ns/app:push,pull registry:catalog:*");
        let b = Scopes::repository("other", &["pull"]);
        let u = a.union(&b);
        assert_eq!(
            u.strings(),
            vec![
                "registry:catalog:*",
                "repository:ns/app:pull,push",
                "repository:other:pull"
            ]
        );
        assert_eq!(u.key(), a.union(&b).key());
        assert_ne!(a.key(), u.key());
        assert!(Scopes::none().strings().is_empty());
    }

    #[test]
    fn tokens_expire_early() {
        let now = Instant::now();
        let t = Token::new("s".into(), Some(300), Scopes::none(), now);
        assert_eq!(t.renew_at, now + Duration::from_secs(270));
        let t = Token::new("topsecret".into(), None, Scopes::none(), now);
        assert_eq!(t.renew_at, now + Duration::from_secs(48));
        assert!(!format!("{t:?}").contains("topsecret"));
        let mut st = AuthState::new();
        let sc = Scopes::catalog();
        st.store(&sc, t);
        assert!(st.token(&sc, now).is_some());
        assert!(st.token(&sc, now + Duration::from_secs(49)).is_none());
        assert!(st.token(&Scopes::none(), now).is_none());
    }
}
