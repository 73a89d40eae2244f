//! Who may open a connection at all, decided before the handshake: a cap on connections in
//! all and per address, and throttling of addresses that keep failing to log in. One function
//! ([`ConnectionGate::admit`]) that each accept loop (SSH, HTTPS) calls; a permit that gives
//! the slot back when the connection ends.
//!
//! The cap per address is what keeps one client (a flood, a stuck script) from taking every
//! slot of the cap in all: set it well below the latter.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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

#[derive(Default)]
struct GateState {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

pub struct ConnectionGate {
    limits: GateLimits,
    state: Mutex<GateState>,
}

/// A connection slot; dropping it frees the slot.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
}

impl ConnectionGate {
    pub fn new(limits: GateLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            limits,
            state: Mutex::new(GateState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a slot for a new connection from `address`, or says why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, GateRefusal> {
        let address = address.to_canonical();
        let now = Instant::now();
        let mut state = self.lock();
        if self.limits.failure_limit > 0
            && let Some(failures) = state.failures.get_mut(&address)
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
        if state.open >= self.limits.max_connections {
            return Err(GateRefusal::Full(state.open));
        }
        let open = state.per_address.get(&address).copied().unwrap_or(0);
        if open >= self.limits.max_per_address {
            return Err(GateRefusal::AddressFull { address, open });
        }
        state.open += 1;
        *state.per_address.entry(address).or_insert(0) += 1;
        Ok(ConnectionPermit {
            gate: self.clone(),
            address,
        })
    }

    /// Counts a failed login (a connection that tried and never authenticated).
    pub fn record_failure(&self, address: IpAddr) {
        if self.limits.failure_limit == 0 {
            return;
        }
        let address = address.to_canonical();
        let now = Instant::now();
        let window = self.limits.failure_window;
        let mut state = self.lock();
        if state.failures.len() >= SWEEP_ABOVE {
            state.failures.retain(|_, failures| {
                failures
                    .back()
                    .is_some_and(|at| now.duration_since(*at) < window)
            });
        }
        let failures = state.failures.entry(address).or_default();
        failures.push_back(now);
        let keep = self.limits.failure_limit as usize;
        while failures.len() > keep {
            failures.pop_front();
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(open) = state.per_address.get_mut(&self.address) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.per_address.remove(&self.address);
            }
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
