//! Splits a classic client's byte stream into JSON values.
//!
//! The classic protocol has no framing: clients send a JSON object followed by
//! a NUL byte, some send a newline, some nothing, and TCP may split or merge
//! writes anyhow. [`JsonSplitter`] accepts all of that: values separated by
//! NUL, newline, whitespace or nothing; a value split across reads is kept
//! until it is complete; one value is bounded in size.
//!
//! It only finds value boundaries (braces outside strings); whether the value
//! is valid JSON is for the parser to say. To re-synchronise after bad input:
//! - bytes outside any value that cannot start one are reported once per run
//!   and skipped up to the next NUL, newline or `{`;
//! - a NUL outside a string always ends the current value (classic clients
//!   end every request with one), so an unbalanced value cannot swallow the
//!   requests after it;
//! - an oversized value is reported once and its remaining bytes discarded
//!   until it ends.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The value grew past the limit; the rest of it is being discarded.
    TooLarge { max: usize },
    /// Bytes that are not part of any JSON object.
    NotAnObject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Value(Vec<u8>),
    Invalid(FrameError),
    /// The transport heard from the client without a request (a WebSocket
    /// pong): proof of life for the idle timeout.
    Heartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Garbage,
    InValue,
    Discarding,
}

#[derive(Debug)]
pub struct JsonSplitter {
    max: usize,
    state: State,
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonSplitter {
    pub fn new(max_value_bytes: usize) -> Self {
        Self {
            max: max_value_bytes,
            state: State::Between,
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// True while part of a value is buffered.
    pub fn has_partial(&self) -> bool {
        matches!(self.state, State::InValue | State::Discarding)
    }

    /// Bytes of memory held for the unfinished value (its buffer's capacity).
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Feeds `data`, appending every completed frame to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        for &byte in data {
            self.step(byte, out);
        }
    }

    fn start_value(&mut self, byte: u8) {
        self.state = State::InValue;
        self.buf.clear();
        self.buf.push(byte);
        self.depth = 1;
        self.in_string = false;
        self.escaped = false;
    }

    fn step(&mut self, byte: u8, out: &mut Vec<Frame>) {
        match self.state {
            State::Between => match byte {
                b'{' => self.start_value(byte),
                b'\0' | b'\n' | b'\r' | b' ' | b'\t' => {}
                _ => {
                    out.push(Frame::Invalid(FrameError::NotAnObject));
                    self.state = State::Garbage;
                }
            },
            State::Garbage => match byte {
                b'{' => self.start_value(byte),
                b'\0' | b'\n' => self.state = State::Between,
                _ => {}
            },
            State::InValue | State::Discarding => {
                if byte == b'\0' && !self.in_string {
                    // A NUL ends a classic request whatever came before it.
                    if self.state == State::InValue {
                        out.push(Frame::Value(std::mem::take(&mut self.buf)));
                    }
                    self.state = State::Between;
                    return;
                }
                if self.state == State::InValue {
                    if self.buf.len() >= self.max {
                        out.push(Frame::Invalid(FrameError::TooLarge { max: self.max }));
                        self.buf = Vec::new();
                        self.state = State::Discarding;
                    } else {
                        self.buf.push(byte);
                    }
                }
                if self.track(byte) {
                    if self.state == State::InValue {
                        out.push(Frame::Value(std::mem::take(&mut self.buf)));
                    }
                    self.state = State::Between;
                }
            }
        }
    }

    /// Follows strings and nesting; true when the value just ended.
    fn track(&mut self, byte: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return false;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut splitter = JsonSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        out
    }

    fn value(s: &str) -> Frame {
        Frame::Value(s.as_bytes().to_vec())
    }

    #[test]
    fn nul_newline_and_nothing_all_separate_values() {
        let got = split(&[b"{\"a\":1}\0{\"b\":2}\n{\"c\":3}{\"d\":4}"], 1024);
        assert_eq!(
            got,
            vec![
                value("{\"a\":1}"),
                value("{\"b\":2}"),
                value("{\"c\":3}"),
                value("{\"d\":4}")
            ]
        );
    }

    #[test]
    fn a_value_split_across_reads_is_kept_until_complete() {
        let got = split(
            &[
                b"{\"msg\":\"hel",
                b"lo }\"",
                b",\"x\":{\"y\":[1,2]}",
                b"}\0",
            ],
            1024,
        );
        assert_eq!(
            got,
            vec![value("{\"msg\":\"hello }\",\"x\":{\"y\":[1,2]}}")]
        );
    }

    #[test]
    fn every_byte_on_its_own_read_still_works() {
        let input = b"{\"a\":\"}\\\"{\"}\0{\"b\":1}";
        let mut splitter = JsonSplitter::new(1024);
        let mut out = Vec::new();
        for b in input {
            splitter.push(&[*b], &mut out);
        }
        assert_eq!(out, vec![value("{\"a\":\"}\\\"{\"}"), value("{\"b\":1}")]);
    }

    #[test]
    fn braces_and_nul_inside_strings_do_not_end_a_value() {
        let got = split(&[b"{\"m\":\"{{{ ]]] \\\\\"}"], 1024);
        assert_eq!(got, vec![value("{\"m\":\"{{{ ]]] \\\\\"}")]);
    }

    #[test]
    fn garbage_is_reported_once_and_skipped() {
        let got = split(&[b"hello world\n{\"a\":1}garbage{\"b\":2}"], 1024);
        assert_eq!(
            got,
            vec![
                Frame::Invalid(FrameError::NotAnObject),
                value("{\"a\":1}"),
                Frame::Invalid(FrameError::NotAnObject),
                value("{\"b\":2}"),
            ]
        );
    }

    #[test]
    fn an_unbalanced_value_ends_at_nul() {
        let got = split(&[b"{\"msgid\":1,\0{\"msgid\":4}\0"], 1024);
        assert_eq!(got, vec![value("{\"msgid\":1,"), value("{\"msgid\":4}")]);
    }

    #[test]
    fn oversized_values_are_reported_and_discarded_then_the_stream_continues() {
        let big = format!("{{\"msg\":\"{}\"}}", "x".repeat(100));
        let input = format!("{big}{{\"ok\":1}}");
        let got = split(&[input.as_bytes()], 32);
        assert_eq!(
            got,
            vec![
                Frame::Invalid(FrameError::TooLarge { max: 32 }),
                value("{\"ok\":1}")
            ]
        );
    }

    #[test]
    fn top_level_arrays_and_scalars_are_not_requests() {
        let got = split(&[b"[1,2]\n42\n{\"a\":1}"], 1024);
        assert_eq!(got.last(), Some(&value("{\"a\":1}")));
        assert!(
            got[..got.len() - 1]
                .iter()
                .all(|f| *f == Frame::Invalid(FrameError::NotAnObject))
        );
    }
}
