//! The request tasks of one connection.

use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use slab::Slab;
use tokio::task::AbortHandle;

/// The request tasks of one connection: awaited together when the connection ends,
/// aborted together when the set is dropped (its connection's task was, at a shutdown
/// deadline). Tasks are started through a [`Spawner`], which the connection's driver
/// holds. A task leaves the set itself as it finishes, so the connection's task is not
/// woken once per finished request, as it would be to collect each from a `JoinSet`.
pub(super) struct InFlight {
    shared: Arc<Shared>,
}

/// Starts tasks in an [`InFlight`] set; once the set is dropped, starts none.
pub(super) struct Spawner {
    shared: Arc<Shared>,
}

struct Shared {
    tasks: Mutex<Tasks>,
    /// How many tasks run, or `CLOSED`: kept beside the lock, so that the room for
    /// another task (looked at for every request) is read without taking it.
    running: AtomicUsize,
}

/// `Shared::running` once the set is dropped: no limit lets another task start.
const CLOSED: usize = usize::MAX;

struct Tasks {
    /// The running tasks; a slot is `None` from just before its task is spawned until
    /// its abort handle is stored.
    running: Slab<Option<AbortHandle>>,
    /// Woken when the last task leaves.
    idle: Option<Waker>,
    /// The set was dropped: its tasks were aborted, and no more start.
    closed: bool,
}

impl InFlight {
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                tasks: Mutex::new(Tasks {
                    running: Slab::new(),
                    idle: None,
                    closed: false,
                }),
                running: AtomicUsize::new(0),
            }),
        }
    }

    /// A handle that starts tasks in this set.
    pub(super) fn spawner(&self) -> Spawner {
        Spawner {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many tasks are running.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.shared).running.len()
    }

    /// Waits until every task has finished.
    pub(super) async fn wait(&self) {
        poll_fn(|cx| {
            let mut tasks = lock(&self.shared);
            if tasks.running.is_empty() {
                return Poll::Ready(());
            }
            match &tasks.idle {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => tasks.idle = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }
}

impl Spawner {
    /// Spawns `task` into the set; drops it instead if the set is gone.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let key = {
            let mut tasks = lock(&self.shared);
            if tasks.closed {
                return;
            }
            let key = tasks.running.insert(None);
            self.shared.note_running(&tasks);
            key
        };
        let leave = Leave {
            shared: Arc::clone(&self.shared),
            key,
        };
        let handle = tokio::spawn(async move {
            let _leave = leave;
            task.await;
        });
        // Only this method adds slots, so a slot already gone is this task's own:
        // it has finished. A set dropped meanwhile took the slot and missed the
        // handle: the task is aborted here.
        let mut tasks = lock(&self.shared);
        if tasks.closed {
            drop(tasks);
            handle.abort();
        } else if let Some(slot) = tasks.running.get_mut(key) {
            *slot = Some(handle.abort_handle());
        }
    }

    /// Whether another task may start: the set is still there and runs fewer than
    /// `limit`.
    pub(super) fn has_room(&self, limit: usize) -> bool {
        // A snapshot, as a count read under the lock would be: the set can close or
        // a task end right after.
        self.shared.running.load(Ordering::Acquire) < limit
    }

    /// How many tasks are running.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.shared).running.len()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let running = {
            let mut tasks = lock(&self.shared);
            tasks.closed = true;
            self.shared.note_running(&tasks);
            std::mem::take(&mut tasks.running)
        };
        // Outside the lock: an aborted task that is not running is dropped at once,
        // and its `Leave` takes the lock.
        for (_, handle) in running {
            if let Some(h) = handle {
                h.abort();
            }
        }
    }
}

/// Removes a task's slot when the task ends: finished, panicked or aborted.
struct Leave {
    shared: Arc<Shared>,
    key: usize,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut tasks = lock(&self.shared);
        tasks.running.try_remove(self.key);
        self.shared.note_running(&tasks);
        let idle = if tasks.running.is_empty() {
            tasks.idle.take()
        } else {
            None
        };
        drop(tasks);
        if let Some(w) = idle {
            w.wake();
        }
    }
}

impl Shared {
    /// Publishes how many tasks run, as `tasks` (held under the lock) has it.
    fn note_running(&self, tasks: &Tasks) {
        let running = if tasks.closed {
            CLOSED
        } else {
            tasks.running.len()
        };
        self.running.store(running, Ordering::Release);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Tasks> {
    // The lock is held only for slab updates, which do not panic midway.
    shared.tasks.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_tasks_leave_and_wait_returns_after_the_last() {
        let set = InFlight::new();
        let spawner = set.spawner();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        for _ in 0..50 {
            let done = Arc::clone(&done);
            let mut rx = rx.clone();
            spawner.spawn(async move {
                let _ = rx.wait_for(|go| *go).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Tasks that finish at once leave too.
        for _ in 0..50 {
            spawner.spawn(async {});
        }
        assert!(set.len() >= 50);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), set.wait())
            .await
            .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 50);
        assert_eq!(set.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_set_aborts_the_running_tasks() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let set = InFlight::new();
        let spawner = set.spawner();
        let dropped = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let flag = Flag(Arc::clone(&dropped));
            spawner.spawn(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            });
        }
        let shared = Arc::clone(&set.shared);
        drop(set);
        // Aborted tasks drop their futures on their next turn on the runtime.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) < 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tasks still running"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(lock(&shared).running.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spawner_outliving_its_set_starts_nothing() {
        let set = InFlight::new();
        let spawner = set.spawner();
        let ran = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (ran2, flag) = (Arc::clone(&ran), Flag(Arc::clone(&dropped)));
        spawner.spawn(async move {
            let _flag = flag;
            ran2.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::timeout(Duration::from_secs(10), set.wait())
            .await
            .unwrap();
        assert_eq!((ran.load(Ordering::SeqCst), spawner.len()), (1, 0));
        assert!(spawner.has_room(1) && !spawner.has_room(0));
        drop(set);
        let (ran2, flag) = (Arc::clone(&ran), Flag(Arc::clone(&dropped)));
        spawner.spawn(async move {
            let _flag = flag;
            ran2.fetch_add(1, Ordering::SeqCst);
        });
        // The task was dropped unstarted, not spawned, and the set has no room.
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert!(!spawner.has_room(usize::MAX));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((ran.load(Ordering::SeqCst), spawner.len()), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_room_counts_the_running_tasks() {
        let set = InFlight::new();
        let spawner = set.spawner();
        let (tx, rx) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            let mut rx = rx.clone();
            spawner.spawn(async move {
                let _ = rx.wait_for(|go| *go).await;
            });
        }
        // Three running: room under a limit of 4, none under 3.
        assert_eq!(spawner.len(), 3);
        assert!(spawner.has_room(4) && !spawner.has_room(3));
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), set.wait())
            .await
            .unwrap();
        // All three left: room under a limit of 1 again.
        assert!(spawner.has_room(1) && !spawner.has_room(0));
    }
}
