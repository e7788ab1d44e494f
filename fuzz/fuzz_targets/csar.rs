//! The CSAR (ETSI SOL004 zip) reader, on the bytes in memory.
#![no_main]

use std::io::Cursor;

use im_formats::csar::{open_reader, Limits};
use libfuzzer_sys::fuzz_target;

fn safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path.split('/').all(|c| c != ".." && c != ".")
}

fuzz_target!(|data: &[u8]| {
    // Small limits, so that a hostile archive costs little memory and time.
    let limits = Limits {
        max_entries: 64,
        max_total_uncompressed: 16 << 20,
        max_ratio: 100,
        ratio_min_size: 64 << 10,
        max_text_bytes: 1 << 20,
    };
    let pkg = match open_reader(Cursor::new(data), &limits) {
        Ok(p) => p,
        Err(e) => {
            let _ = (e.code(), e.is_client_error(), e.to_string());
            return;
        }
    };
    assert!(pkg.files.len() <= limits.max_entries);
    let total: u64 = pkg.files.iter().map(|f| f.size).sum();
    assert!(total <= limits.max_total_uncompressed);
    for f in &pkg.files {
        assert!(
            safe(&f.path) && !f.path.ends_with('/'),
            "unsafe entry accepted: {:?}",
            f.path
        );
    }
    let has = |p: &str| pkg.files.iter().any(|f| f.path == p);
    assert!(
        has(&pkg.entry_definitions),
        "entry definitions {:?} not in the archive",
        pkg.entry_definitions
    );
    if let Some(mf) = &pkg.manifest_path {
        assert!(has(mf), "manifest {mf:?} not in the archive");
    }
    for p in &pkg.files_not_in_manifest {
        assert!(has(p));
    }
    assert!(pkg.signatures.windows(2).all(|w| w[0] <= w[1]), "signatures not sorted");
    let _ = serde_json::to_string(&pkg).expect("serialises");
    // Same bytes, same package.
    assert_eq!(open_reader(Cursor::new(data), &limits).ok().as_ref(), Some(&pkg));
});
