//! Binary fixtures kept as hex text (reviewable in a diff): the ledger's golden entries and
//! snapshots, read back as bytes.

use std::path::{Path, PathBuf};

/// The bytes a hex fixture spells: its hex digits, two per byte, everything else ignored.
pub fn hex_bytes(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits.chunks(2).filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}

/// Every `*.hex` file one level below `root` (`root/<version>/<name>.hex`), as bytes.
pub fn hex_fixtures(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let versions = std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for version in versions {
        let dir = version.unwrap_or_else(|e| panic!("{}: {e}", root.display())).path();
        for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = file.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            if path.extension().is_some_and(|e| e == "hex") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path, hex_bytes(&text)));
            }
        }
    }
    out.sort();
    out
}
