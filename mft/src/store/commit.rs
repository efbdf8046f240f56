//! Group commit for [`FsStore`](super::FsStore): one thread owns the database's
//! write side and applies every write that is waiting in one transaction, made
//! durable by one commit.
//!
//! redb runs one write transaction at a time, and each commit is an fsync (or two)
//! plus bookkeeping. With writes each in their own transaction, concurrent
//! transfers queue up behind each other's commits: on a disk whose fsync takes a
//! millisecond, that caps a server near a thousand writes per second whatever its
//! cores. Here a write waits at most for the group in progress; the next group
//! takes everything that arrived meanwhile, so under load many writes share one
//! commit, and alone a write costs what it did.
//!
//! Every write answers only after the commit that made it durable. A write that is
//! *refused* ([`StoreError::AlreadyExists`]) must refuse before it writes anything,
//! so that the rest of its group commits without it. Any other failure aborts the
//! whole group, and every write in it fails (retryably: nothing was stored).

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, WriteTransaction};

use super::{StoreError, StoreResult};

/// One write, applied inside the group's transaction. It must refuse (return
/// [`StoreError::AlreadyExists`]) before changing anything; any other error aborts
/// the group.
pub(super) type Apply = Box<dyn FnOnce(&WriteTransaction) -> StoreResult<()> + Send>;

/// The most writes one transaction takes, so that one group's latency stays
/// bounded however deep the queue.
const MAX_GROUP: usize = 256;

/// Where a write's outcome goes.
enum Reply {
    /// A caller blocked on a thread of its own (the blocking pool).
    Blocking(mpsc::SyncSender<StoreResult<()>>),
    /// A caller on an async task.
    Async(tokio::sync::oneshot::Sender<StoreResult<()>>),
}

impl Reply {
    fn send(self, outcome: StoreResult<()>) {
        // A caller that gave up waiting no longer needs the answer.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Async(tx) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

struct Job {
    apply: Apply,
    reply: Reply,
}

/// The commit thread and the queue into it. Dropping it lets the queue drain and
/// waits for the thread, so the database is closed when the store is.
pub(super) struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread for `db`.
    pub(super) fn start(db: Arc<Database>) -> std::io::Result<Committer> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mftq-store-commit".into())
            .spawn(move || run(&db, &queue))?;
        Ok(Committer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Applies `apply` durably, blocking this thread until its group has committed.
    /// For callers on the blocking pool.
    pub(super) fn write_blocking(&self, apply: Apply) -> StoreResult<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Job {
            apply,
            reply: Reply::Blocking(tx),
        })?;
        rx.recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Applies `apply` durably; resolves once its group has committed.
    pub(super) async fn write(&self, apply: Apply) -> StoreResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Job {
            apply,
            reply: Reply::Async(tx),
        })?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn submit(&self, job: Job) -> StoreResult<()> {
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // Writes cannot panic the thread (each is caught), so joining only
            // waits for the queue to drain.
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the store's commit thread stopped".into())
}

/// The commit thread: a group per transaction until the queue closes.
fn run(db: &Database, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(db, group);
    }
}

/// Applies every write of `group` in one transaction and commits it, then answers
/// each write.
fn commit_group(db: &Database, group: Vec<Job>) {
    let tx = match db.begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            for job in group {
                job.reply.send(Err(StoreError::Database(e.to_string())));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(group.len());
    let mut failure: Option<String> = None;
    for job in group {
        let outcome = match &failure {
            Some(why) => Err(aborted(why)),
            // A panicking write fails like any other, and the thread lives on:
            // one bug must not stop every later write of the store.
            None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.apply)(&tx)))
                .unwrap_or_else(|_| Err(StoreError::Database("a write panicked".into()))),
        };
        if let Err(e) = &outcome
            && failure.is_none()
            && !matches!(e, StoreError::AlreadyExists(_))
        {
            failure = Some(e.to_string());
        }
        outcomes.push((job.reply, outcome));
    }
    let committed = match failure {
        // Dropping the transaction aborts it: nothing of this group is stored.
        Some(why) => Err(why),
        None => tx.commit().map_err(|e| e.to_string()),
    };
    for (reply, outcome) in outcomes {
        reply.send(match (&committed, outcome) {
            // Refusals and the failure itself keep their own error.
            (_, Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
            (Err(why), Ok(())) => Err(aborted(why)),
        });
    }
}

fn aborted(why: &str) -> StoreError {
    StoreError::Database(format!(
        "the write was not stored: its transaction failed ({why})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    use std::sync::Barrier;

    const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

    fn insert(key: &'static [u8]) -> Apply {
        Box::new(move |tx| {
            let mut t = tx
                .open_table(T)
                .map_err(|e| StoreError::Database(e.to_string()))?;
            if t.get(key)
                .map_err(|e| StoreError::Database(e.to_string()))?
                .is_some()
            {
                return Err(StoreError::AlreadyExists("key".into()));
            }
            t.insert(key, b"v".as_slice())
                .map_err(|e| StoreError::Database(e.to_string()))?;
            Ok(())
        })
    }

    fn stored(db: &Database, key: &[u8]) -> bool {
        let tx = db.begin_read().unwrap();
        match tx.open_table(T) {
            Ok(t) => t.get(key).unwrap().is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// A database in a new temporary directory, and its commit thread.
    fn fresh() -> (tempfile::TempDir, Arc<Database>, Committer) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("db")).unwrap());
        let committer = Committer::start(db.clone()).unwrap();
        (dir, db, committer)
    }

    /// Holds the commit thread inside a first write until `release` is passed, so
    /// that everything submitted meanwhile forms one group.
    fn hold(committer: &Arc<Committer>) -> (Arc<Barrier>, std::thread::JoinHandle<()>) {
        let entered = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let (e, r) = (entered.clone(), release.clone());
        let c = committer.clone();
        let first = std::thread::spawn(move || {
            c.write_blocking(Box::new(move |_| {
                e.wait();
                r.wait();
                Ok(())
            }))
            .unwrap();
        });
        entered.wait();
        (release, first)
    }

    fn submit_all(
        committer: &Arc<Committer>,
        jobs: Vec<Apply>,
    ) -> Vec<std::thread::JoinHandle<StoreResult<()>>> {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let c = committer.clone();
                std::thread::spawn(move || c.write_blocking(job))
            })
            .collect();
        // Let every write reach the queue before the group is released.
        std::thread::sleep(std::time::Duration::from_millis(50));
        handles
    }

    #[test]
    fn a_group_commits_its_writes_and_refuses_only_the_refused() {
        let (_dir, db, committer) = fresh();
        let committer = Arc::new(committer);
        let (release, first) = hold(&committer);
        let waiting = submit_all(&committer, vec![insert(b"a"), insert(b"b"), insert(b"a")]);
        release.wait();
        first.join().unwrap();
        let outcomes: Vec<_> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::AlreadyExists(_))))
            .count();
        assert_eq!(refused, 1, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 2);
        assert!(stored(&db, b"a") && stored(&db, b"b"));
    }

    #[test]
    fn a_failed_write_aborts_its_group_and_nothing_of_it_is_stored() {
        let (_dir, db, committer) = fresh();
        let committer = Arc::new(committer);
        let (release, first) = hold(&committer);
        let failing: Apply = Box::new(|tx| {
            insert(b"half")(tx)?;
            Err(StoreError::Database("disk on fire".into()))
        });
        let waiting = submit_all(&committer, vec![insert(b"c"), failing]);
        release.wait();
        first.join().unwrap();
        for h in waiting {
            assert!(matches!(h.join().unwrap(), Err(StoreError::Database(_))));
        }
        assert!(!stored(&db, b"c") && !stored(&db, b"half"));
        // The next group is unaffected.
        committer.write_blocking(insert(b"c")).unwrap();
        assert!(stored(&db, b"c"));
    }

    #[test]
    fn a_panicking_write_fails_alone_and_the_store_goes_on() {
        let (_dir, db, committer) = fresh();
        let outcome = committer.write_blocking(Box::new(|_| panic!("a bug in a write")));
        assert!(
            matches!(outcome, Err(StoreError::Database(_))),
            "{outcome:?}"
        );
        committer.write_blocking(insert(b"after")).unwrap();
        assert!(stored(&db, b"after"));
    }

    #[tokio::test]
    async fn async_writes_and_closing_the_database_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = Arc::new(Database::create(&path).unwrap());
        let committer = Committer::start(db.clone()).unwrap();
        committer.write(insert(b"x")).await.unwrap();
        assert!(matches!(
            committer.write(insert(b"x")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        drop(db);
        drop(committer);
        // The thread has ended and dropped its handle: the file can be opened again.
        let again = Database::create(&path).unwrap();
        assert!(stored(&again, b"x"));
    }
}
