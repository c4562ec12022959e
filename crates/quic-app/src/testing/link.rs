use std::collections::VecDeque;

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
}

impl Link {
    pub(super) fn new(seed: u64, loss: f64, reorder: f64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            loss,
            reorder,
            queue: VecDeque::new(),
            held: [None, None],
            spare: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    pub(super) fn push(&mut self, dir: Direction, bytes: &[u8]) {
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
