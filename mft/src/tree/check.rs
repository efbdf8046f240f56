//! Checking a manifest from a peer before anything of it touches a disk: every
//! path is a plain relative path whose parent is listed before it as a
//! directory, no two entries share a name (or, on request, a case-folded name),
//! links stay inside the tree, and modes and times are in range.

use std::collections::{HashMap, HashSet};

use super::TreeError;
use super::manifest::{EntryKind, MAX_PATH, Manifest};

/// How strict a check is beyond what is always refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Refuse names that differ only in case (`Report.pdf` and `report.pdf`),
    /// which would collide on a case-insensitive file system.
    pub case_insensitive: bool,
}

/// The longest one component may be, in bytes (as most file systems allow).
const MAX_COMPONENT: usize = 255;

/// The deepest a path may nest.
const MAX_DEPTH: usize = 256;

/// Whether `path` is a plain relative path: non-empty components joined by
/// `/`, none `.` or `..`, no control characters or backslashes, within the
/// length limits. Returns its components.
pub(crate) fn check_path(path: &str) -> Result<Vec<&str>, TreeError> {
    let bad = |why: &str| TreeError::Hostile(format!("path {path:?}: {why}"));
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute"));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    if path.contains('\\') {
        return Err(bad("holds a backslash"));
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.len() > MAX_DEPTH {
        return Err(bad("nested too deep"));
    }
    for c in &components {
        match *c {
            "" => return Err(bad("has an empty component")),
            "." | ".." => return Err(bad("has a . or .. component")),
            c if c.len() > MAX_COMPONENT => return Err(bad("has a component over 255 bytes")),
            _ => {}
        }
    }
    Ok(components)
}

impl Manifest {
    /// Refuses a manifest that could write anything outside the directory it is
    /// restored into, or that is not well formed; see the module documentation.
    pub fn check(&self, options: CheckOptions) -> Result<(), TreeError> {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Seen {
            Dir,
            File,
            Other,
        }
        let mut seen: HashMap<&str, Seen> = HashMap::with_capacity(self.entries.len());
        let mut folded: HashSet<String> = HashSet::new();
        let symlinks: HashSet<&str> = self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
            .map(|e| e.path.as_str())
            .collect();
        self.data_len()?;
        for e in &self.entries {
            let path = e.path.as_str();
            let components = check_path(path)?;
            let hostile = |why: String| TreeError::Hostile(format!("entry {path:?}: {why}"));
            if let Some((parent, _)) = path.rsplit_once('/')
                && seen.get(parent) != Some(&Seen::Dir)
            {
                return Err(hostile(format!(
                    "its parent {parent:?} is not a directory listed before it"
                )));
            }
            if options.case_insensitive && !folded.insert(path.to_lowercase()) {
                return Err(hostile(
                    "its name collides with another's when case is ignored".into(),
                ));
            }
            if e.mode > 0o7777 {
                return Err(hostile(format!(
                    "mode {:o} is not a permission mode",
                    e.mode
                )));
            }
            if e.mtime.nanos >= 1_000_000_000 {
                return Err(hostile(
                    "its mtime has more than a second of nanoseconds".into(),
                ));
            }
            let what = match &e.kind {
                EntryKind::Dir => Seen::Dir,
                EntryKind::File { .. } => Seen::File,
                EntryKind::Symlink { target } => {
                    check_link_target(&components, target, &symlinks).map_err(hostile)?;
                    Seen::Other
                }
                EntryKind::Hardlink { target } => {
                    if seen.get(target.as_str()) != Some(&Seen::File) {
                        return Err(hostile(format!(
                            "a hard link to {target:?}, which is not a file listed before it"
                        )));
                    }
                    Seen::Other
                }
            };
            if seen.insert(path, what).is_some() {
                return Err(hostile("listed twice".into()));
            }
        }
        Ok(())
    }
}

/// Whether a symbolic link at `link` (its components) pointing to `target`
/// stays inside the tree: relative, never climbing above the root, and never
/// passing through another link of the tree (whose own target could lead
/// elsewhere than its name suggests).
pub(crate) fn check_link_target(
    link: &[&str],
    target: &str,
    symlinks: &HashSet<&str>,
) -> Result<(), String> {
    if target.is_empty() {
        return Err("a symbolic link to nothing".into());
    }
    if target.len() > MAX_PATH || target.chars().any(char::is_control) {
        return Err("a symbolic link whose target is too long or holds a control character".into());
    }
    if target.starts_with('/') {
        return Err(format!("a symbolic link to the absolute path {target:?}"));
    }
    // Resolved from the link's directory, one component at a time.
    let mut at: Vec<&str> = link[..link.len() - 1].to_vec();
    let parts: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            if at.pop().is_none() {
                return Err(format!("a symbolic link to {target:?}, outside the tree"));
            }
            continue;
        }
        at.push(part);
        let last = i + 1 == parts.len();
        if !last && symlinks.contains(at.join("/").as_str()) {
            return Err(format!(
                "a symbolic link to {target:?}, through another symbolic link"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{Entry, Timestamp};
    use super::*;

    fn dir(path: &str) -> Entry {
        entry(path, EntryKind::Dir)
    }

    fn file(path: &str) -> Entry {
        entry(
            path,
            EntryKind::File {
                size: 1,
                sha256: [0; 32],
            },
        )
    }

    fn symlink(path: &str, target: &str) -> Entry {
        entry(
            path,
            EntryKind::Symlink {
                target: target.into(),
            },
        )
    }

    fn hardlink(path: &str, target: &str) -> Entry {
        entry(
            path,
            EntryKind::Hardlink {
                target: target.into(),
            },
        )
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            mtime: Timestamp::default(),
            kind,
        }
    }

    fn check(entries: Vec<Entry>) -> Result<(), TreeError> {
        Manifest { entries }.check(CheckOptions::default())
    }

    #[test]
    fn a_plain_tree_passes() {
        let tree = vec![
            dir("top"),
            file("top/a.txt"),
            dir("top/sub"),
            file("top/sub/b"),
            symlink("top/sub/up", "../a.txt"),
            symlink("top/here", "./sub/./b"),
            symlink("top/to-link", "sub/up"),
            hardlink("top/again", "top/a.txt"),
            file("loose file with spaces"),
        ];
        assert!(check(tree).is_ok());
    }

    #[test]
    fn every_hostile_path_is_refused() {
        let long = "x".repeat(MAX_PATH + 1);
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let wide = "w".repeat(256);
        for path in [
            "",
            "/etc/passwd",
            "..",
            ".",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "bad\nname",
            "nul\0",
            "esc\x1b",
            &long,
            &deep,
            &wide,
        ] {
            let err = check(vec![file(path)]).expect_err(path);
            assert!(matches!(err, TreeError::Hostile(_)), "{path:?}: {err}");
        }
    }

    #[test]
    fn structure_is_checked() {
        // A parent that is missing, later, or not a directory.
        assert!(check(vec![file("d/x")]).is_err());
        assert!(check(vec![file("d/x"), dir("d")]).is_err());
        assert!(check(vec![file("d"), file("d/x")]).is_err());
        assert!(check(vec![symlink("d", "e"), dir("e"), file("d/x")]).is_err());
        // Twice the same name, whatever the kinds.
        assert!(check(vec![file("a"), file("a")]).is_err());
        assert!(check(vec![dir("a"), file("a")]).is_err());
        // Case collisions only on request.
        let cased = || vec![file("Report.pdf"), file("report.PDF")];
        assert!(check(cased()).is_ok());
        let strict = CheckOptions {
            case_insensitive: true,
        };
        assert!(Manifest { entries: cased() }.check(strict).is_err());
        // Modes and times in range.
        let mut setuid_and_more = file("m");
        setuid_and_more.mode = 0o17777;
        assert!(check(vec![setuid_and_more]).is_err());
        let mut late = file("t");
        late.mtime.nanos = 1_000_000_000;
        assert!(check(vec![late]).is_err());
    }

    #[test]
    fn links_that_lead_out_are_refused() {
        for (link, target) in [
            ("l", "/etc/passwd"),
            ("l", ".."),
            ("l", "../outside"),
            ("l", ""),
            ("l", "x\ny"),
        ] {
            assert!(
                check(vec![symlink(link, target)]).is_err(),
                "{link} -> {target}"
            );
        }
        assert!(check(vec![dir("d"), symlink("d/l", "../../x")]).is_err());
        // Inside, lexically, but through a link that climbs: d/up -> .. is the
        // root, so via/../.. would leave it.
        let through = vec![
            dir("d"),
            symlink("d/up", ".."),
            symlink("via", "d/up/../.."),
        ];
        assert!(check(through).is_err());
        // Hard links only to files listed before them.
        assert!(check(vec![hardlink("h", "f"), file("f")]).is_err());
        assert!(check(vec![dir("d"), hardlink("h", "d")]).is_err());
        assert!(check(vec![hardlink("h", "/etc/shadow")]).is_err());
        assert!(check(vec![hardlink("h", "../x")]).is_err());
    }
}
