//! A connection's diagnostic files: its qlog trace (capped in size) and the TLS key
//! log.

use std::fs::OpenOptions;
#[cfg(feature = "qlog")]
use std::io::BufWriter;
#[cfg(feature = "qlog")]
use std::path::PathBuf;

use super::WorkerSetup;

/// Opens the connection's qlog and key log files where the settings ask for them. A
/// file that cannot be opened is logged and skipped: diagnostics never stop a
/// connection.
pub(super) fn setup_logging(setup: &mut WorkerSetup, scid: &str) {
    #[cfg(not(feature = "qlog"))]
    if setup.shared.qlog_dir.is_some() {
        let _ = (scid, setup.shared.qlog_max_bytes);
        tracing::warn!("qlog_dir is set but quic-io was built without its `qlog` feature");
    }
    #[cfg(feature = "qlog")]
    if let Some(dir) = &setup.shared.qlog_dir {
        let role = if setup.conn.is_server() {
            "server"
        } else {
            "client"
        };
        let path = dir.join(format!("{scid}-{role}.sqlog"));
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(&path)) {
            Ok(f) => setup.conn.set_qlog(
                Box::new(CappedWriter::new(
                    BufWriter::new(f),
                    setup.shared.qlog_max_bytes,
                    path,
                )),
                "quay".to_owned(),
                format!("{role} connection {scid}"),
            ),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write qlog"),
        }
    }
    if let Some(path) = &setup.shared.keylog_file {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        // The file holds the connection's secrets: readable by its owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(f) => setup.conn.set_keylog(Box::new(f)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write key log"),
        }
    }
}

/// A qlog writer that stops writing after `max` bytes, so one connection's trace
/// cannot fill the disk (a connection stuck sending can log gigabytes).
#[cfg(feature = "qlog")]
struct CappedWriter<W> {
    inner: W,
    left: u64,
    path: PathBuf,
}

#[cfg(feature = "qlog")]
impl<W> CappedWriter<W> {
    fn new(inner: W, max: u64, path: PathBuf) -> Self {
        Self {
            inner,
            left: max,
            path,
        }
    }
}

#[cfg(feature = "qlog")]
impl<W: std::io::Write> std::io::Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // Claimed written: quiche stops logging on an error, and a cut trace is
            // what the cap asks for.
            return Ok(buf.len());
        }
        if buf.len() as u64 > self.left {
            self.left = 0;
            tracing::warn!(path = %self.path.display(), "qlog size cap reached; the rest is not written");
            let _ = self.inner.flush();
            return Ok(buf.len());
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
