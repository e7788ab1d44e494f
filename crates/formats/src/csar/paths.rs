//! Paths inside a package: normalising relative references, and telling YAML, signature and URI
//! names apart.

/// Joins `rel` to the directory `base_dir` (both `/`-separated, relative to the package root) and
/// resolves `.` and `..`. `None` if the result would leave the root or `rel` is not a plain path.
pub(super) fn normalize_rel(base_dir: &str, rel: &str) -> Option<String> {
    let rel = rel.trim();
    if rel.is_empty() || rel.contains('\\') || rel.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = base_dir.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    for comp in rel.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

pub(super) fn parent_dir(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

pub(super) fn is_yaml(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}

pub(super) fn is_signature_file(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let file = lower.rsplit('/').next().unwrap_or(&lower);
    [".cert", ".crt", ".pem", ".cms", ".p7s", ".p7b", ".sig", ".sm"]
        .iter()
        .any(|ext| file.ends_with(ext))
        || file.contains(".sig.")
}

pub(super) fn is_uri(s: &str) -> bool {
    match s.find("://") {
        Some(i) if i > 0 => {
            let scheme = &s[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_paths() {
        assert_eq!(
            normalize_rel("Definitions", "../Files/a.img").as_deref(),
            Some("Files/a.img")
        );
        assert_eq!(
            normalize_rel("Definitions", "./sub/../b.yaml").as_deref(),
            Some("Definitions/b.yaml")
        );
        assert_eq!(normalize_rel("Definitions", "../../a"), None);
        assert_eq!(normalize_rel("", "a\\b"), None);
        assert!(is_uri("https://x/y") && !is_uri("Files/a://b") && !is_uri("://x"));
    }
}
