//! Limits on websocket connections: how many one client address and one API key may hold
//! open. A slot is taken when a socket opens (address) and when it authenticates (key), and
//! given back when its [`Slot`] is dropped with the connection.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Open sockets per client address and per key.
pub struct SocketLimits {
    per_address: Counter<IpAddr>,
    per_key: Counter<String>,
}

struct Counter<K> {
    open: Mutex<HashMap<K, u32>>,
    max: u32,
}

impl<K: Hash + Eq + Clone> Counter<K> {
    fn take(&self, key: &K) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: &K) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                open.remove(key);
            }
        }
    }
}

/// One open socket's place under a limit; dropping it frees the place.
pub struct Slot {
    limits: Arc<SocketLimits>,
    held: Held,
}

enum Held {
    Address(IpAddr),
    Key(String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.held {
            Held::Address(ip) => self.limits.per_address.give_back(ip),
            Held::Key(key) => self.limits.per_key.give_back(key),
        }
    }
}

impl SocketLimits {
    /// Limits of `max_per_address` and `max_per_key` open sockets.
    pub fn new(max_per_address: u32, max_per_key: u32) -> Arc<SocketLimits> {
        Arc::new(SocketLimits {
            per_address: Counter {
                open: Mutex::default(),
                max: max_per_address,
            },
            per_key: Counter {
                open: Mutex::default(),
                max: max_per_key,
            },
        })
    }

    /// A place for one more socket from `ip`, or `None` when it holds its maximum.
    pub fn address(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        self.per_address.take(&ip).then(|| Slot {
            limits: self.clone(),
            held: Held::Address(ip),
        })
    }

    /// A place for one more socket authenticated with the key `key_id`.
    pub fn key(self: &Arc<Self>, key_id: &str) -> Option<Slot> {
        let key = key_id.to_string();
        self.per_key.take(&key).then(|| Slot {
            limits: self.clone(),
            held: Held::Key(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let limits = SocketLimits::new(2, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limits.address(ip).unwrap();
        let _b = limits.address(ip).unwrap();
        assert!(limits.address(ip).is_none());
        assert!(limits.address("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limits.address(ip).is_some());
        let k = limits.key("key-1").unwrap();
        assert!(limits.key("key-1").is_none());
        assert!(limits.key("key-2").is_some());
        drop(k);
        assert!(limits.key("key-1").is_some());
    }
}
