//! What this node lets its clients hold: connections with nobody logged
//! in, per client address; the bytes of unfinished TCP requests of all
//! connections together; the bytes of live deliveries queued for all
//! sessions together.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

/// The node's admission budgets.
pub struct Admission {
    /// Bytes of unfinished requests held by this node's TCP connections.
    pub partial: ByteBudget,
    /// Bytes of live deliveries queued for all of this node's sessions.
    pub live_queues: Arc<ByteBudget>,
    /// Connections with nobody logged in, per client address.
    anonymous: Mutex<HashMap<IpAddr, u32>>,
    anonymous_per_address: u32,
}

impl Admission {
    pub fn new(
        partial_budget_bytes: usize,
        live_queue_bytes: usize,
        anonymous_per_address: u32,
    ) -> Self {
        Self {
            partial: ByteBudget::new(partial_budget_bytes),
            live_queues: Arc::new(ByteBudget::new(live_queue_bytes)),
            anonymous: Mutex::default(),
            anonymous_per_address,
        }
    }

    /// Counts a connection from `ip` with nobody logged in; false (nothing
    /// counted) when `ip` has its limit of them already.
    fn enter_anonymous(&self, ip: IpAddr) -> bool {
        let mut counts = self.anonymous.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.anonymous_per_address {
            return false;
        }
        *count += 1;
        true
    }

    fn leave_anonymous(&self, ip: IpAddr) {
        let mut counts = self.anonymous.lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut count) = counts.entry(ip) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// A count of bytes held against a bound: the unfinished requests of a
/// node's TCP connections, one session's live queue, all of them together.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `bytes`; false (and nothing taken) when that would pass the bound.
    pub fn take(&self, bytes: usize) -> bool {
        if self.used.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back `bytes` taken before.
    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Moves a holder's charge from `*held` to `want`; false (and nothing
    /// changed) when growing it would pass the budget.
    pub fn recharge(&self, held: &mut usize, want: usize) -> bool {
        if want > *held {
            if !self.take(want - *held) {
                return false;
            }
        } else {
            self.give_back(*held - want);
        }
        *held = want;
        true
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What per-address limits count by: an IPv4 address, or an IPv6 /64 (one
/// subscriber's network: one host can have all of its addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(std::net::Ipv6Addr::from(prefix).into())
            }
            v4 => Self(v4),
        }
    }
}

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// A connection counted among its address's connections with nobody logged
/// in; uncounted when dropped.
pub struct AnonymousSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl AnonymousSlot {
    pub fn take(admission: &Arc<Admission>, ip: IpAddr) -> Option<Self> {
        let ip = ClientAddress::of(ip).0;
        admission.enter_anonymous(ip).then(|| Self {
            admission: admission.clone(),
            ip,
        })
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.admission.leave_anonymous(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_limits_count_ipv6_by_its_64() {
        let a = |s: &str| ClientAddress::of(s.parse().expect("ip"));
        assert_eq!(a("2001:db8:1:2:aaaa::1"), a("2001:db8:1:2:bbbb::9"));
        assert_ne!(a("2001:db8:1:2::1"), a("2001:db8:1:3::1"));
        assert_eq!(a("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(a("::ffff:203.0.113.7").to_string(), "203.0.113.7");
        assert_ne!(a("203.0.113.7"), a("203.0.113.8"));
    }

    #[test]
    fn anonymous_connections_are_counted_per_address_and_released() {
        let admission = Arc::new(Admission::new(1024, 1024, 2));
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let first = AnonymousSlot::take(&admission, ip);
        let second = AnonymousSlot::take(&admission, ip);
        assert!(first.is_some() && second.is_some());
        assert!(
            AnonymousSlot::take(&admission, ip).is_none(),
            "over the limit"
        );
        drop(first);
        assert!(
            AnonymousSlot::take(&admission, ip).is_some(),
            "a slot freed"
        );
    }
}
