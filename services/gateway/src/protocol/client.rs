//! What kind of client a session serves, and the chat frame each kind gets.

use super::{classic, conversation};

/// The kinds of client, from the classic one up. A connection starts as
/// [`ClientKind::Classic`] over TCP (as [`ClientKind::Additions`] over
/// WebSocket) and becomes `Additions` the first time it uses one (`seq`,
/// a ping ...); a login with `acks` makes that session a
/// [`ClientKind::Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientKind {
    /// The classic C++ client: each `read()` is one JSON value, so every
    /// frame is its own write; chat frames are exactly the classic ones
    /// (no `conv`/`cseq`); one session per user.
    Classic,
    /// A client that uses the protocol's additions: it parses a stream
    /// (frames may share a write), chat frames keep `conv` and `cseq`, and
    /// it gets live events (receipts, typing, its own chats from other
    /// devices).
    Additions,
    /// A client that acknowledges (`acks`, msgid 12): chat frames carry
    /// `mid` and `rseq`, its inbox is trimmed on its acks, and it shares
    /// its user with the user's other devices.
    Device,
}

impl ClientKind {
    /// The kind of a session that logs in with `acks` on a connection of
    /// this kind.
    pub fn at_login(self, acks: bool) -> Self {
        if acks { Self::Device } else { self }
    }

    /// The client acknowledges its deliveries.
    pub fn acknowledges(self) -> bool {
        self == Self::Device
    }

    /// The client uses the additions (every kind but the classic one).
    pub fn uses_additions(self) -> bool {
        self != Self::Classic
    }
}

/// A chat frame as this kind of client gets it: with `mid` and `rseq` for
/// a client that acknowledges; as stored for one that uses the additions;
/// without `conv` and `cseq` for a classic one.
pub fn delivery_frame(kind: ClientKind, frame: Vec<u8>, mid: &str, seq: u64) -> Vec<u8> {
    match kind {
        ClientKind::Device => classic::with_delivery_fields(&frame, mid, seq),
        ClientKind::Additions => frame,
        ClientKind::Classic => conversation::strip(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_with_acks_makes_a_device_and_only_that() {
        assert_eq!(ClientKind::Classic.at_login(true), ClientKind::Device);
        assert_eq!(ClientKind::Additions.at_login(false), ClientKind::Additions);
        assert_eq!(ClientKind::Classic.at_login(false), ClientKind::Classic);
        assert!(ClientKind::Device.acknowledges() && ClientKind::Device.uses_additions());
        assert!(!ClientKind::Additions.acknowledges());
        assert!(!ClientKind::Classic.uses_additions());
    }
}
