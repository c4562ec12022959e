use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    ToServer,
    ToClient,
}

/// What the in-memory link did with the datagrams it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Datagrams handed to the receiving connection.
    pub delivered: u64,
    /// Datagrams dropped by the loss model.
    pub dropped: u64,
    /// Datagrams held back and delivered after a later one.
    pub reordered: u64,
}

/// Scripted faults on a [`Pair`](super::Pair)'s link, set while it runs: a test keeps a
/// clone and cuts one direction off at the moment that matters (after a GOAWAY, say).
///
/// Clones share their state.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Per direction: drop everything until then.
    blackhole_until: [Option<Instant>; 2],
    /// Per direction: datagrams dropped by these faults.
    dropped: [u64; 2],
}

impl Faults {
    /// No faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every datagram the server sends during the next `d`.
    pub fn blackhole_to_client(&self, d: Duration) {
        self.blackhole(Direction::ToClient, d);
    }

    /// Drops every datagram the client sends during the next `d`.
    pub fn blackhole_to_server(&self, d: Duration) {
        self.blackhole(Direction::ToServer, d);
    }

    /// Datagrams these faults dropped: (client to server, server to client).
    pub fn dropped(&self) -> (u64, u64) {
        let s = self.lock();
        (s.dropped[0], s.dropped[1])
    }

    fn blackhole(&self, dir: Direction, d: Duration) {
        self.lock().blackhole_until[dir as usize] = Some(Instant::now() + d);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a datagram going `dir` now is dropped.
    fn drops(&self, dir: Direction) -> bool {
        let mut s = self.lock();
        let slot = dir as usize;
        match s.blackhole_until[slot] {
            Some(t) if Instant::now() < t => {
                s.dropped[slot] += 1;
                true
            }
            _ => false,
        }
    }
}

/// A lossy, reordering, instant link. Buffers are recycled, so a long run does not
/// allocate per datagram.
#[derive(Debug)]
pub(super) struct Link {
    rng: SmallRng,
    loss: f64,
    reorder: f64,
    queue: VecDeque<(Direction, Vec<u8>)>,
    /// One datagram per direction held back by the reorder model.
    held: [Option<Vec<u8>>; 2],
    spare: Vec<Vec<u8>>,
    stats: LinkStats,
    faults: Option<Faults>,
}

impl Link {
    pub(super) fn new(seed: u64, loss: f64, reorder: f64, faults: Option<Faults>) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            loss,
            reorder,
            queue: VecDeque::new(),
            held: [None, None],
            spare: Vec::new(),
            stats: LinkStats::default(),
            faults,
        }
    }

    pub(super) fn push(&mut self, dir: Direction, bytes: &[u8]) {
        if self.faults.as_ref().is_some_and(|f| f.drops(dir)) {
            self.stats.dropped += 1;
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.stats.dropped += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        let slot = dir as usize;
        if self.held[slot].is_none() && self.reorder > 0.0 && self.rng.random_bool(self.reorder) {
            self.stats.reordered += 1;
            self.held[slot] = Some(buf);
            return;
        }
        self.queue.push_back((dir, buf));
        if let Some(held) = self.held[slot].take() {
            self.queue.push_back((dir, held));
        }
    }

    /// Releases held datagrams when nothing follows them; returns whether any was.
    pub(super) fn release_held(&mut self) -> bool {
        let mut any = false;
        for dir in [Direction::ToServer, Direction::ToClient] {
            if self.queue.iter().all(|(d, _)| *d != dir)
                && let Some(held) = self.held[dir as usize].take()
            {
                self.queue.push_back((dir, held));
                any = true;
            }
        }
        any
    }

    pub(super) fn pop(&mut self) -> Option<(Direction, Vec<u8>)> {
        let item = self.queue.pop_front()?;
        self.stats.delivered += 1;
        Some(item)
    }

    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.push(buf);
    }

    pub(super) fn stats(&self) -> LinkStats {
        self.stats
    }
}
