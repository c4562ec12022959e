//! The request tasks of one connection.

use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use slab::Slab;
use tokio::task::AbortHandle;

/// The request tasks of one connection: awaited together when the connection ends,
/// aborted together when the set is dropped (its connection's task was, at a shutdown
/// deadline). A task leaves the set itself as it finishes, so the connection's task
/// is not woken once per finished request, as it would be to collect each from a
/// `JoinSet`.
pub(super) struct InFlight {
    /// Made with the first task: a connection that never sees a request costs
    /// nothing here.
    shared: Option<Arc<Mutex<Tasks>>>,
}

struct Tasks {
    /// The running tasks; a slot is `None` from just before its task is spawned until
    /// its abort handle is stored.
    running: Slab<Option<AbortHandle>>,
    /// Woken when the last task leaves.
    idle: Option<Waker>,
}

impl InFlight {
    pub(super) fn new() -> Self {
        Self { shared: None }
    }

    /// Spawns `task` into the set.
    pub(super) fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared.get_or_insert_with(|| {
            Arc::new(Mutex::new(Tasks {
                running: Slab::new(),
                idle: None,
            }))
        });
        let key = lock(shared).running.insert(None);
        let leave = Leave {
            shared: Arc::clone(shared),
            key,
        };
        let handle = tokio::spawn(async move {
            let _leave = leave;
            task.await;
        });
        // Only this method adds slots, so a slot already gone is this task's own:
        // it has finished.
        if let Some(slot) = lock(shared).running.get_mut(key) {
            *slot = Some(handle.abort_handle());
        }
    }

    /// How many tasks are running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| lock(s).running.len())
    }

    /// Waits until every task has finished.
    pub(super) async fn wait(&self) {
        let Some(shared) = &self.shared else { return };
        poll_fn(|cx| {
            let mut tasks = lock(shared);
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

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        let running = std::mem::take(&mut lock(shared).running);
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
    shared: Arc<Mutex<Tasks>>,
    key: usize,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut tasks = lock(&self.shared);
        tasks.running.try_remove(self.key);
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

fn lock(shared: &Mutex<Tasks>) -> MutexGuard<'_, Tasks> {
    // The lock is held only for slab updates, which do not panic midway.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_tasks_leave_and_wait_returns_after_the_last() {
        let mut set = InFlight::new();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        for _ in 0..50 {
            let done = Arc::clone(&done);
            let mut rx = rx.clone();
            set.spawn(async move {
                let _ = rx.wait_for(|go| *go).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Tasks that finish at once leave too.
        for _ in 0..50 {
            set.spawn(async {});
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
        let mut set = InFlight::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let flag = Flag(Arc::clone(&dropped));
            set.spawn(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            });
        }
        let shared = Arc::clone(set.shared.as_ref().unwrap());
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
}
