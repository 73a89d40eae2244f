//! Who may open a connection at all, decided before the handshake: a cap on connections in
//! all and per address, and throttling of addresses that keep failing to log in. One function
//! ([`ConnectionGate::admit`]) that each accept loop (SSH, HTTPS) calls; a permit that gives
//! the slot back when the connection ends. The caps themselves are [`Slots`], which the SSH
//! gateway also uses for commands running at once, in all and per user.
//!
//! The cap per address is what keeps one client (a flood, a stuck script) from taking every
//! slot of the cap in all: set it well below the latter.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failure records kept before expired ones are swept.
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Failed logins within `failure_window` that get an address refused; 0 never refuses.
    pub failure_limit: u32,
    pub failure_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    #[error("the server has {0} connections open, its limit")]
    Full(usize),
    #[error("{address} has {open} connections open, the limit per address")]
    AddressFull { address: IpAddr, open: usize },
    #[error(
        "{address} failed to log in {failures} times recently; refused for up to {window_secs} s"
    )]
    Throttled {
        address: IpAddr,
        failures: usize,
        window_secs: u64,
    },
}

/// Slots in all and per key, taken and given back by permits: connections per address,
/// commands per user. A permit gives its slot back when dropped.
pub struct Slots<K: Hash + Eq + Clone> {
    total: usize,
    per_key: usize,
    state: Mutex<SlotCounts<K>>,
}

struct SlotCounts<K> {
    open: usize,
    per_key: HashMap<K, usize>,
}

/// Why [`Slots::take`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsFull {
    /// Every slot is taken; how many that is.
    Total(usize),
    /// The key holds its share; how many that is.
    Key(usize),
}

/// One slot of a [`Slots`]; dropping it gives the slot back.
pub struct SlotPermit<K: Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(total: usize, per_key: usize) -> Arc<Slots<K>> {
        Arc::new(Slots {
            total,
            per_key,
            state: Mutex::new(SlotCounts {
                open: 0,
                per_key: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotCounts<K>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for `key`, or says which cap is reached.
    pub fn take(self: &Arc<Self>, key: K) -> Result<SlotPermit<K>, SlotsFull> {
        let mut state = self.lock();
        if state.open >= self.total {
            return Err(SlotsFull::Total(state.open));
        }
        let held = state.per_key.get(&key).copied().unwrap_or(0);
        if held >= self.per_key {
            return Err(SlotsFull::Key(held));
        }
        state.open += 1;
        *state.per_key.entry(key.clone()).or_insert(0) += 1;
        Ok(SlotPermit {
            slots: self.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for SlotPermit<K> {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(held) = state.per_key.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.per_key.remove(&self.key);
            }
        }
    }
}

pub struct ConnectionGate {
    limits: GateLimits,
    slots: Arc<Slots<IpAddr>>,
    /// When each address failed to log in, newest last.
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// A connection slot; dropping it frees the slot.
pub type ConnectionPermit = SlotPermit<IpAddr>;

impl ConnectionGate {
    pub fn new(limits: GateLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            limits,
            slots: Slots::new(limits.max_connections, limits.max_per_address),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn failures(&self) -> MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a new connection from `address`, or says why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, GateRefusal> {
        let address = address.to_canonical();
        let now = Instant::now();
        if self.limits.failure_limit > 0
            && let Some(failures) = self.failures().get_mut(&address)
        {
            while failures
                .front()
                .is_some_and(|at| now.duration_since(*at) >= self.limits.failure_window)
            {
                failures.pop_front();
            }
            if failures.len() >= self.limits.failure_limit as usize {
                return Err(GateRefusal::Throttled {
                    address,
                    failures: failures.len(),
                    window_secs: self.limits.failure_window.as_secs(),
                });
            }
        }
        self.slots.take(address).map_err(|full| match full {
            SlotsFull::Total(open) => GateRefusal::Full(open),
            SlotsFull::Key(open) => GateRefusal::AddressFull { address, open },
        })
    }

    /// Counts a failed login: a connection that ended or timed out without authenticating,
    /// whether it tried a key, a password, or only a key exchange.
    pub fn record_failure(&self, address: IpAddr) {
        if self.limits.failure_limit == 0 {
            return;
        }
        let address = address.to_canonical();
        let now = Instant::now();
        let window = self.limits.failure_window;
        let mut all = self.failures();
        if all.len() >= SWEEP_ABOVE {
            all.retain(|_, failures| {
                failures
                    .back()
                    .is_some_and(|at| now.duration_since(*at) < window)
            });
        }
        let failures = all.entry(address).or_default();
        failures.push_back(now);
        let keep = self.limits.failure_limit as usize;
        while failures.len() > keep {
            failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per: usize, failures: u32) -> Arc<ConnectionGate> {
        ConnectionGate::new(GateLimits {
            max_connections: total,
            max_per_address: per,
            failure_limit: failures,
            failure_window: Duration::from_secs(60),
        })
    }

    #[test]
    fn caps_in_all_and_per_address_and_frees_on_drop() {
        let gate = gate(3, 2, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(matches!(
            gate.admit(a),
            Err(GateRefusal::AddressFull { open: 2, .. })
        ));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(GateRefusal::Full(3)));
        drop(first);
        assert!(gate.admit(a).is_ok());
    }

    #[test]
    fn throttles_an_address_after_repeated_failures() {
        let gate = gate(10, 10, 2);
        let a: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        gate.record_failure(a);
        assert!(gate.admit(a).is_ok());
        gate.record_failure("10.0.0.1".parse().unwrap());
        assert!(matches!(
            gate.admit(a),
            Err(GateRefusal::Throttled { failures: 2, .. })
        ));
        assert!(gate.admit(other).is_ok());
    }
}
