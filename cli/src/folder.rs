//! The files under a folder of masters, each listed once and none from outside it.
//!
//! Folders of masters are often assembled from links into other trees; `ln -s .. masters/loop`
//! or two links to one file must not render a master twice (or forever), and a link must not
//! pull in files the folder does not hold. Links are followed, but a directory is entered only
//! once and only if it resolves inside the folder, and a file is listed once however many names
//! reach it. What is left out is said, so that nothing disappears silently.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The files found, sorted, and what was left out (path relative to the folder, and why).
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub left_out: Vec<(String, String)>,
}

pub fn files_under(root: &Path) -> anyhow::Result<Listing> {
    let real_root = root.canonicalize().with_context(|| format!("cannot resolve {}", root.display()))?;
    let mut listing = Listing::default();
    let mut dirs_seen = HashSet::from([real_root.clone()]);
    // Each file with where it really is, resolved once.
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_string_lossy().replace('\\', "/");
    // Depth first in name order, so the same folder always yields the same names (request ids
    // are derived from them, and a re-run must admit nothing twice).
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries = std::fs::read_dir(&dir)
            .and_then(|it| it.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort();
        let mut subdirs = Vec::new();
        for path in entries {
            let Ok(real) = path.canonicalize() else {
                listing.left_out.push((rel(&path), "a link to nothing".to_owned()));
                continue;
            };
            if !real.starts_with(&real_root) {
                listing.left_out.push((rel(&path), format!("a link to {}, outside the folder", real.display())));
            } else if real.is_dir() {
                if dirs_seen.insert(real) {
                    subdirs.push(path);
                }
            } else {
                files.push((path, real));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    // A file reached by several names is listed under the first of them in name order.
    files.sort();
    let mut targets: HashSet<PathBuf> = HashSet::new();
    listing.files = files.into_iter().filter(|(_, real)| targets.insert(real.clone())).map(|(path, _)| path).collect();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_never_list_a_file_twice_or_leave_the_folder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let masters = tmp.path().join("masters");
        std::fs::create_dir_all(masters.join("sub")).expect("mkdir");
        std::fs::write(tmp.path().join("outside.wav"), b"x").expect("write");
        std::fs::write(masters.join("a.wav"), b"x").expect("write");
        std::fs::write(masters.join("sub/b.wav"), b"x").expect("write");
        std::os::unix::fs::symlink("..", masters.join("loop")).expect("symlink");
        std::os::unix::fs::symlink(".", masters.join("sub/self")).expect("symlink");
        std::os::unix::fs::symlink("sub", masters.join("again")).expect("symlink");
        std::os::unix::fs::symlink("a.wav", masters.join("z-link.wav")).expect("symlink");
        std::os::unix::fs::symlink("missing.wav", masters.join("dangling.wav")).expect("symlink");

        let listing = files_under(&masters).expect("list");
        let names: Vec<String> =
            listing.files.iter().map(|p| p.strip_prefix(&masters).expect("inside").display().to_string()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"a.wav".to_owned()), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("b.wav")), "{names:?}");
        let why = |name: &str| listing.left_out.iter().find(|(p, _)| p == name).map(|(_, w)| w.clone());
        assert!(why("loop").is_some_and(|w| w.contains("outside the folder")), "{:?}", listing.left_out);
        assert_eq!(why("dangling.wav").as_deref(), Some("a link to nothing"));
    }
}
