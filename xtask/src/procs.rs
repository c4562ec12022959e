//! Child processes the commands start and stop: every wait is bounded, and a child
//! that outlives its bound is killed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Result;

/// How long a server may take to print `listening on ADDR`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process that printed `listening on ADDR`.
pub(crate) struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `program`, its stderr on this process's stderr.
    pub(crate) fn start(program: &Path, args: &[&str]) -> Result<Self> {
        Self::start_logged(program, args, None)
    }

    /// Starts `program`, its stderr into `log` when given.
    pub(crate) fn start_logged(program: &Path, args: &[&str], log: Option<&Path>) -> Result<Self> {
        Self::start_with_env(program, args, log, &[])
    }

    /// Starts `program` with `env` added to its environment, its stderr into `log`
    /// when given.
    pub(crate) fn start_with_env(
        program: &Path,
        args: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let stderr = match log {
            Some(log) => Stdio::from(
                std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                let addr = addr.parse().map_err(|e| {
                    format!("{} printed a bad address {addr:?}: {e}", program.display())
                })?;
                Ok(Self { child, addr })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "{} did not start listening within {START_TIMEOUT:?} (exit: {status:?})",
                    program.display()
                ))
            }
        }
    }

    /// Starts `program`, which prints nothing useful, to serve on the UDP `addr` its
    /// arguments name; ready once `addr` is bound (another bind of it fails).
    pub(crate) fn start_on_udp(program: &Path, args: &[&str], addr: SocketAddr) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited before binding {addr}: {status}",
                    program.display()
                ));
            }
            if std::net::UdpSocket::bind(addr)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
            {
                return Ok(Self { child, addr });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not bind {addr} within {START_TIMEOUT:?}",
                    program.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the server to exit on its own; its exit status, or
    /// `None` (and the server killed) if it is still running then.
    pub(crate) fn wait_exit(mut self, limit: Duration) -> Option<ExitStatus> {
        wait_or_kill(&mut self.child, limit)
    }

    /// Asks the server to stop (SIGINT, so it closes its connections), then waits.
    pub(crate) fn stop(mut self) -> Result {
        stop(&mut self.child, "INT", Duration::from_secs(10));
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached on early returns: never leave a server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `program` with `env` added, stdout and stderr into `log`, stdin empty.
pub(crate) fn spawn_logged(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// Waits up to `limit` for `child` to exit; kills it after. `None` when it was killed
/// (or could not be waited for).
pub(crate) fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Sends `signal` (`INT`, `TERM`) to `child` and waits up to `grace` for it to exit,
/// then kills it. A process started with the signal ignored (SIGINT, by a
/// non-interactive shell's `&`) never sees it; the bound covers that too.
pub(crate) fn stop(child: &mut Child, signal: &str, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    wait_or_kill(child, if sent { grace } else { Duration::ZERO })
}
