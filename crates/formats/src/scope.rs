//! Docker token `scope` parsing: `type:name:actions` items separated by spaces.

use crate::oci::{OciError, RepoName};

/// What can be done to a namespace's repositories (or the namespace itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    /// Push blobs and manifests, move tags.
    Push,
    /// Delete manifests, tags and blobs; set metadata.
    Delete,
    /// Manage members, visibility and quota of a namespace.
    Admin,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }
}

/// One item of a Docker token `scope` parameter, as the token endpoint understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeItem {
    /// `repository:NAME:ACTIONS`: the actions asked for, in the order written, `*` expanded to
    /// pull, push and delete, unknown actions dropped, repeats kept (granting filters them).
    Repository { repo: RepoName, actions: Vec<Action> },
    /// `registry:catalog:ACTIONS` (the actions are not looked at).
    Catalog,
}

/// Why a scope item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not `type:name:actions`.
    #[error("invalid scope {0:?}")]
    Invalid(String),
    /// A type other than `repository`, or `registry` with a name other than `catalog`.
    #[error("unsupported scope {0:?}")]
    Unsupported(String),
    /// A `repository` item whose name is not a valid repository name.
    #[error(transparent)]
    Name(#[from] OciError),
}

/// The items of one scope string: separated by spaces, empty ones skipped.
pub fn scope_items(scope: &str) -> impl Iterator<Item = &str> {
    scope.split(' ').filter(|s| !s.is_empty())
}

/// Parses one `type:name:actions` item. The name is what lies between the first and the last
/// `:`; anything but a valid repository or the registry catalog is refused.
pub fn parse_scope_item(item: &str) -> Result<ScopeItem, ScopeError> {
    let (kind, rest) = item
        .split_once(':')
        .ok_or_else(|| ScopeError::Invalid(item.to_string()))?;
    let (name, actions) = rest
        .rsplit_once(':')
        .ok_or_else(|| ScopeError::Invalid(item.to_string()))?;
    match kind {
        "repository" => {
            let repo = RepoName::parse(name)?;
            let mut wanted = Vec::new();
            for a in actions.split(',') {
                match a {
                    "*" => wanted.extend([Action::Pull, Action::Push, Action::Delete]),
                    other => wanted.extend(Action::parse(other)),
                }
            }
            Ok(ScopeItem::Repository { repo, actions: wanted })
        }
        "registry" if name == "catalog" => Ok(ScopeItem::Catalog),
        _ => Err(ScopeError::Unsupported(item.to_string())),
    }
}

/// Parses a whole scope string (space-separated items; Docker clients send one `scope`
/// parameter per item or several items in one): every item, or the first one refused.
pub fn parse_scope(scope: &str) -> Result<Vec<ScopeItem>, ScopeError> {
    scope_items(scope).map(parse_scope_item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_item_by_item() {
        let repo = |n: &str, actions: Vec<Action>| ScopeItem::Repository {
            repo: RepoName::parse(n).expect("name"),
            actions,
        };
        assert_eq!(
            parse_scope("repository:a/b:pull,push  registry:catalog:*").ok(),
            Some(vec![repo("a/b", vec![Action::Pull, Action::Push]), ScopeItem::Catalog])
        );
        assert_eq!(
            parse_scope("repository:a:*,pull,admin,bogus,").ok(),
            Some(vec![repo(
                "a",
                vec![Action::Pull, Action::Push, Action::Delete, Action::Pull, Action::Admin]
            )])
        );
        assert_eq!(parse_scope("repository:a:").ok(), Some(vec![repo("a", vec![])]));
        assert_eq!(parse_scope(" ").ok(), Some(vec![]));
        assert!(parse_scope("repository:a").is_err());
        assert!(parse_scope("repository:A:pull").is_err());
        assert!(parse_scope("registry:other:*").is_err());
        assert!(parse_scope("repository:a:pull nothing").is_err());
        assert!(parse_scope_item("user:a:pull").is_err());
    }
}
