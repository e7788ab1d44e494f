//! Docker token `scope` parsing (`type:name:actions` items separated by spaces).
#![no_main]

use im_formats::scope::{parse_scope, parse_scope_item, ScopeItem};
use libfuzzer_sys::fuzz_target;

fn render(item: &ScopeItem) -> String {
    match item {
        ScopeItem::Repository { repo, actions } => {
            let a: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
            format!("repository:{}:{}", repo.as_str(), a.join(","))
        }
        ScopeItem::Catalog => "registry:catalog:*".to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let items: Vec<&str> = s.split(' ').filter(|i| !i.is_empty()).collect();
    let whole = parse_scope(s);
    // The whole string parses exactly when every item does, to the same items in order.
    let each: Result<Vec<ScopeItem>, _> = items.iter().map(|i| parse_scope_item(i)).collect();
    assert_eq!(whole.is_ok(), each.is_ok(), "{s:?}");
    let Ok(parsed) = whole else { return };
    assert_eq!(Ok(&parsed), each.as_ref().map_err(|_| ()), "{s:?}");
    assert_eq!(parsed.len(), items.len());
    for item in &parsed {
        if let ScopeItem::Repository { repo, .. } = item {
            assert!(
                im_formats::oci::RepoName::parse(repo.as_str()).is_ok(),
                "{s:?}: invalid repository name accepted"
            );
            assert!(!repo.as_str().contains(':'), "{s:?}: name with ':'");
        }
    }
    // Written back, the items parse to themselves.
    let again: Vec<String> = parsed.iter().map(render).collect();
    assert_eq!(parse_scope(&again.join(" ")).ok().as_ref(), Some(&parsed), "{s:?}");
});
