//! Typing notices, both ways: noticing that the user is typing a chat line
//! (so the client can send msgid 19), and keeping notices rare (one per
//! conversation every few seconds, sent or shown).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use rustyline::{
    Helper, completion::Completer, highlight::Highlighter, hint::Hinter, validate::Validator,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// At most one notice per key every `every`.
pub struct Throttle<K> {
    every: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Hash + Eq> Throttle<K> {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// True if a notice for `key` may go out at `now` (and counts it).
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        // Forget keys that are quiet again, so a long session stays small.
        if self.last.len() > 1024 {
            let every = self.every;
            self.last.retain(|_, at| now.duration_since(*at) < every);
        }
        match self.last.get(&key) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                self.last.insert(key, now);
                true
            }
        }
    }
}

/// Whom a chat line being typed goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    User(i64),
    Group(i64),
}

impl Target {
    /// The typing notice (msgid 19) for this target.
    pub fn request(self) -> Value {
        match self {
            Target::User(to) => json!({"msgid": 19, "toid": to}),
            Target::Group(group) => json!({"msgid": 19, "groupid": group}),
        }
    }
}

/// The target of a line being typed, once the message itself has begun:
/// `chat:2:h` or `groupchat:5:h`; `None` for anything else.
pub fn target_of(line: &str) -> Option<Target> {
    let (verb, rest) = line.split_once(':')?;
    let (id, message) = rest.split_once(':')?;
    if message.is_empty() {
        return None;
    }
    let id = id.trim().parse().ok()?;
    match verb {
        "chat" => Some(Target::User(id)),
        "groupchat" => Some(Target::Group(id)),
        _ => None,
    }
}

/// A rustyline helper that only watches: rustyline asks a hinter for a hint
/// after every edit of the line, which is the one place the editor shows the
/// line while it is typed. It never offers a hint; it reports chat lines
/// being typed (at most one report per target every 3 s).
pub struct TypingWatcher {
    typing: mpsc::UnboundedSender<Target>,
    throttle: Mutex<Throttle<Target>>,
}

impl TypingWatcher {
    pub fn new(typing: mpsc::UnboundedSender<Target>) -> Self {
        Self {
            typing,
            throttle: Mutex::new(Throttle::new(Duration::from_secs(3))),
        }
    }
}

impl Hinter for TypingWatcher {
    type Hint = String;

    fn hint(&self, line: &str, _pos: usize, _ctx: &rustyline::Context<'_>) -> Option<String> {
        if let Some(target) = target_of(line) {
            let mut throttle = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
            if throttle.allow(target, Instant::now()) {
                let _ = self.typing.send(target);
            }
        }
        None
    }
}

impl Completer for TypingWatcher {
    type Candidate = String;
}
impl Highlighter for TypingWatcher {}
impl Validator for TypingWatcher {}
impl Helper for TypingWatcher {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_per_key_and_interval() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(3));
        assert!(throttle.allow(1, start));
        assert!(!throttle.allow(1, start + Duration::from_secs(1)));
        assert!(throttle.allow(2, start + Duration::from_secs(1)), "per key");
        assert!(!throttle.allow(1, start + Duration::from_millis(2999)));
        assert!(throttle.allow(1, start + Duration::from_secs(3)));
    }

    #[test]
    fn throttle_forgets_quiet_keys() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(3));
        for key in 0..2000 {
            assert!(throttle.allow(key, start));
        }
        assert!(throttle.allow(5000, start + Duration::from_secs(4)));
        assert_eq!(throttle.last.len(), 1);
    }

    #[test]
    fn typing_starts_with_the_message() {
        assert_eq!(target_of("chat:2:h"), Some(Target::User(2)));
        assert_eq!(target_of("chat:2:hello: there"), Some(Target::User(2)));
        assert_eq!(target_of("groupchat:5:x"), Some(Target::Group(5)));
        for not_yet in [
            "",
            "chat",
            "chat:",
            "chat:2",
            "chat:2:",
            "chat:x:hi",
            "addgroup:5:x",
        ] {
            assert_eq!(target_of(not_yet), None, "{not_yet:?}");
        }
    }

    #[test]
    fn typing_requests() {
        assert_eq!(Target::User(2).request(), json!({"msgid": 19, "toid": 2}));
        assert_eq!(
            Target::Group(5).request(),
            json!({"msgid": 19, "groupid": 5})
        );
    }
}
