//! The framing splitter fed a byte stream in arbitrary chunks.
//!
//! Input layout (read with [`arbitrary::Unstructured`]): one byte picks the
//! value limit from [`LIMITS`]; one byte `k` and `k` more bytes give chunk
//! lengths, used in turn until the stream is consumed (none: one chunk);
//! the rest is the stream.
//!
//! Properties, as the splitter's docs promise them (it finds boundaries, it
//! does not validate JSON):
//! - the frames do not depend on how the stream is chunked (it is a byte
//!   state machine): one chunk, the given chunks and one byte at a time agree;
//! - every value is a run of the stream's bytes, in order, starting with `{`,
//!   at most the limit long, with no NUL outside a string, whose braces and
//!   brackets (outside strings) do not close before its last byte; it is
//!   balanced, or else it was ended by a NUL that follows it in the stream;
//! - a `TooLarge` reports the configured limit;
//! - when nothing is partially buffered, a NUL produces no frame.

use arbitrary::Unstructured;
use gateway::protocol::framing::{Frame, FrameError, JsonSplitter};

/// Value limits: tiny ones reach the oversize paths; 64 KiB is the default.
pub const LIMITS: [usize; 8] = [1, 2, 3, 8, 16, 64, 1024, 64 * 1024];

#[derive(Debug)]
pub struct Case<'a> {
    pub max: usize,
    pub chunk_lengths: Vec<usize>,
    pub stream: &'a [u8],
}

pub fn decode(data: &[u8]) -> Case<'_> {
    let mut u = Unstructured::new(data);
    let max = LIMITS[usize::from(u.arbitrary::<u8>().unwrap_or(0)) % LIMITS.len()];
    let k = usize::from(u.arbitrary::<u8>().unwrap_or(0));
    let chunk_lengths = u.bytes(k.min(u.len())).unwrap_or(&[]);
    Case {
        max,
        chunk_lengths: chunk_lengths.iter().map(|&n| usize::from(n)).collect(),
        stream: u.take_rest(),
    }
}

/// The bytes of a case: the inverse of [`decode`] (for seeds).
pub fn encode(max_index: u8, chunk_lengths: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut out = vec![
        max_index,
        u8::try_from(chunk_lengths.len()).unwrap_or(u8::MAX),
    ];
    out.extend_from_slice(&chunk_lengths[..chunk_lengths.len().min(255)]);
    out.extend_from_slice(stream);
    out
}

pub fn check(data: &[u8]) {
    check_case(&decode(data));
}

fn split_in(
    chunks: impl Iterator<Item = impl AsRef<[u8]>>,
    max: usize,
) -> (Vec<Frame>, JsonSplitter) {
    let mut splitter = JsonSplitter::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        splitter.push(chunk.as_ref(), &mut out);
    }
    (out, splitter)
}

pub fn check_case(case: &Case<'_>) {
    let (whole, mut splitter) = split_in(std::iter::once(case.stream), case.max);

    let (chunked, _) = split_in(
        chunks(case.stream, &case.chunk_lengths).into_iter(),
        case.max,
    );
    assert_eq!(whole, chunked, "frames depend on the chunking");
    let (bytewise, _) = split_in(case.stream.chunks(1), case.max);
    assert_eq!(whole, bytewise, "frames differ when fed one byte at a time");

    let mut cursor = 0;
    for frame in &whole {
        match frame {
            Frame::Value(value) => cursor = check_value(value, case.max, case.stream, cursor),
            Frame::Invalid(FrameError::TooLarge { max }) => assert_eq!(*max, case.max),
            Frame::Invalid(FrameError::NotAnObject) => {}
            Frame::Heartbeat => panic!("the splitter made a heartbeat"),
        }
    }

    let partial = splitter.has_partial();
    let mut after = Vec::new();
    splitter.push(b"\0", &mut after);
    assert!(after.len() <= 1, "one NUL made {after:?}");
    if !partial {
        assert!(after.is_empty(), "a NUL between values made {after:?}");
    }
}

/// `stream` cut at `lengths`, used in turn (a zero length is an empty push).
fn chunks<'a>(stream: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
    if lengths.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    for &n in lengths.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        out.push(chunk);
        rest = tail;
        // Only empty lengths left would never finish.
        if lengths.iter().all(|&n| n == 0) {
            out.push(rest);
            break;
        }
    }
    out
}

/// Checks one value; returns where in the stream the next one may start.
fn check_value(value: &[u8], max: usize, stream: &[u8], cursor: usize) -> usize {
    assert_eq!(
        value.first(),
        Some(&b'{'),
        "a value starts with {{: {value:?}"
    );
    assert!(
        value.len() <= max,
        "a value of {} bytes, limit {max}",
        value.len()
    );

    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &byte) in value.iter().enumerate() {
        assert!(
            depth > 0 || i == 0,
            "the value closed before byte {i}: {value:?}"
        );
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            0 => panic!("a NUL outside a string inside a value: {value:?}"),
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let balanced = depth == 0;

    let needle: Vec<u8> = if balanced {
        value.to_vec()
    } else {
        [value, b"\0"].concat()
    };
    let at = find(&stream[cursor..], &needle).unwrap_or_else(|| {
        panic!("value {value:?} (balanced: {balanced}) is not in the stream after byte {cursor}")
    });
    cursor + at + value.len()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
