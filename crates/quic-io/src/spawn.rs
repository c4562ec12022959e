//! The one place tasks are spawned, so every task carries its tracing span.

use std::future::Future;

/// Spawns `fut` on the current tokio runtime. The caller attaches the span with
/// `tracing::Instrument`; this helper exists so that every task of the crate starts the
/// same way, and so a future change (task names, a runtime handle) happens once.
pub(crate) fn task<F>(fut: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(fut)
}
