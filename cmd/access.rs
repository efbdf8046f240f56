//! Who `mftq serve` admits: the senders' and retrievers' allow-lists, checked at
//! the door (the TLS handshake refuses every key on neither list) and again by
//! direction for each request, and reloaded on SIGHUP without a restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use flow::PeerKey;

use crate::config::read_allow_list;
use crate::error::CliError;

/// The two allow-lists, where they are read from, and what they say now.
#[derive(Debug)]
pub struct Access {
    senders_file: Option<PathBuf>,
    retrievers_file: Option<PathBuf>,
    lists: RwLock<Lists>,
}

#[derive(Debug, Default, Clone)]
struct Lists {
    senders: HashSet<PeerKey>,
    retrievers: HashSet<PeerKey>,
}

impl Lists {
    fn admits(&self, key: &PeerKey) -> bool {
        self.senders.contains(key) || self.retrievers.contains(key)
    }
}

fn read(flag: &str, path: &Option<PathBuf>) -> Result<HashSet<PeerKey>, CliError> {
    match path {
        Some(p) => read_allow_list(flag, p),
        None => {
            tracing::warn!("no {flag} file: no key is authorised for it");
            Ok(HashSet::new())
        }
    }
}

impl Access {
    /// Reads both lists; a missing file (none given) admits nobody for its
    /// direction.
    pub fn load(
        senders_file: Option<PathBuf>,
        retrievers_file: Option<PathBuf>,
    ) -> Result<Arc<Self>, CliError> {
        let lists = Lists {
            senders: read("--senders", &senders_file)?,
            retrievers: read("--retrievers", &retrievers_file)?,
        };
        Ok(Arc::new(Access {
            senders_file,
            retrievers_file,
            lists: RwLock::new(lists),
        }))
    }

    fn lists(&self) -> Lists {
        self.lists.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `key` is on either list: the only keys the TLS handshake accepts.
    pub fn admits(&self, key: &PeerKey) -> bool {
        self.lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .admits(key)
    }

    /// Whether the request may go ahead: senders send into their own
    /// namespaces and may list them and delete from them; retrievers retrieve
    /// and list every one. Nobody deletes from another's namespace.
    pub fn allows(&self, request: &mft::Request<'_>) -> bool {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        let key = request.key;
        match request.direction {
            mft::Direction::Send => lists.senders.contains(key),
            mft::Direction::Retrieve => lists.retrievers.contains(key),
            mft::Direction::List => {
                lists.retrievers.contains(key)
                    || (request.own_namespace() && lists.senders.contains(key))
            }
            mft::Direction::Delete => request.own_namespace() && lists.senders.contains(key),
        }
    }

    /// Reads both files again and switches to them, returning the keys admitted
    /// before and not now. A file that fails to read or parse changes nothing,
    /// and the error says which line.
    pub fn reload(&self) -> Result<Vec<PeerKey>, CliError> {
        let new = Lists {
            senders: read("--senders", &self.senders_file)?,
            retrievers: read("--retrievers", &self.retrievers_file)?,
        };
        let old = self.lists();
        let removed = old
            .senders
            .union(&old.retrievers)
            .filter(|k| !new.admits(k))
            .copied()
            .collect();
        *self.lists.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_switches_lists_and_names_the_keys_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (
            flow::Identity::generate().public_key(),
            flow::Identity::generate().public_key(),
        );
        let senders = dir.path().join("senders.txt");
        let retrievers = dir.path().join("retrievers.txt");
        std::fs::write(&senders, format!("{a}\n")).expect("write");
        std::fs::write(&retrievers, format!("{b}\n")).expect("write");
        let access = Access::load(Some(senders.clone()), Some(retrievers.clone())).expect("load");
        assert!(access.admits(&a) && access.admits(&b));
        let allows = |key: &PeerKey, owner: &PeerKey, direction| {
            access.allows(&mft::Request::new(
                key,
                b"",
                owner.as_bytes(),
                b"x",
                direction,
            ))
        };
        assert!(allows(&a, &a, mft::Direction::Send));
        assert!(!allows(&a, &a, mft::Direction::Retrieve));
        // A sender lists its own namespace, not others'; a retriever lists all.
        assert!(allows(&a, &a, mft::Direction::List));
        assert!(!allows(&a, &b, mft::Direction::List));
        assert!(allows(&b, &a, mft::Direction::List));
        // A sender deletes its own batches; nobody deletes another's.
        assert!(allows(&a, &a, mft::Direction::Delete));
        assert!(!allows(&b, &a, mft::Direction::Delete));
        assert!(!allows(&b, &b, mft::Direction::Delete));

        std::fs::write(&senders, format!("{b}\n")).expect("write");
        assert_eq!(access.reload().expect("reload"), vec![a]);
        assert!(!access.admits(&a));
        assert!(allows(&b, &b, mft::Direction::Send));

        // A broken file keeps the lists as they were.
        std::fs::write(&retrievers, "not a key\n").expect("write");
        assert!(access.reload().is_err());
        assert!(allows(&b, &a, mft::Direction::Retrieve));
    }
}
