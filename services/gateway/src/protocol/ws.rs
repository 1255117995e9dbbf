//! What a WebSocket message is to the request parser: one text message is
//! one request. Shared by the transport and the fuzz checks, so what is
//! fuzzed is what runs.

use super::framing::{Frame, FrameError};

/// A text message as a request: refused as too large past `max` bytes.
pub fn text_frame(text: &str, max: usize) -> Frame {
    if text.len() > max {
        Frame::Invalid(FrameError::TooLarge { max })
    } else {
        Frame::Value(text.as_bytes().to_vec())
    }
}

/// A binary message is not a request.
pub fn binary_frame() -> Frame {
    Frame::Invalid(FrameError::NotAnObject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_a_request_up_to_the_limit() {
        assert_eq!(text_frame("{}", 2), Frame::Value(b"{}".to_vec()));
        assert_eq!(
            text_frame("{ }", 2),
            Frame::Invalid(FrameError::TooLarge { max: 2 })
        );
        assert_eq!(binary_frame(), Frame::Invalid(FrameError::NotAnObject));
    }
}
