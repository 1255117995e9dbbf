//! Just enough RESP2 for a subscriber connection: commands out, replies
//! and pushed messages in.

/// One reply or pushed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Frame>>),
}

impl Frame {
    /// The frame as text, when it is a string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Simple(s) => Some(s),
            Self::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A bulk string longer than this ends the connection (Redis's own
/// default limit for one value).
const MAX_BULK: usize = 512 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Parses one frame from the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the frame and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, Malformed> {
    let Some(end) = find_crlf(buf) else {
        return Ok(None);
    };
    let (&kind, line) = buf[..end].split_first().ok_or(Malformed)?;
    let line = std::str::from_utf8(line).map_err(|_| Malformed)?;
    let after = end + 2;
    match kind {
        b'+' => Ok(Some((Frame::Simple(line.to_owned()), after))),
        b'-' => Ok(Some((Frame::Error(line.to_owned()), after))),
        b':' => Ok(Some((
            Frame::Int(line.parse().map_err(|_| Malformed)?),
            after,
        ))),
        b'$' => {
            let len: i64 = line.parse().map_err(|_| Malformed)?;
            if len < 0 {
                return Ok(Some((Frame::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| Malformed)?;
            if len > MAX_BULK {
                return Err(Malformed);
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(Malformed);
            }
            Ok(Some((
                Frame::Bulk(Some(buf[after..after + len].to_vec())),
                after + len + 2,
            )))
        }
        b'*' => {
            let len: i64 = line.parse().map_err(|_| Malformed)?;
            if len < 0 {
                return Ok(Some((Frame::Array(None), after)));
            }
            let mut items = Vec::with_capacity(usize::try_from(len.min(16)).unwrap_or(0));
            let mut at = after;
            for _ in 0..len {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Frame::Array(Some(items)), at)))
        }
        _ => Err(Malformed),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Encodes a command.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushed_messages_whole_or_in_pieces() {
        let wire = b"*3\r\n$8\r\nsmessage\r\n$7\r\n{u:1}x\n\r\n$5\r\na\r\nb!\r\n:3\r\n";
        let (frame, used) = parse(wire).expect("valid").expect("whole");
        assert_eq!(
            frame,
            Frame::Array(Some(vec![
                Frame::Bulk(Some(b"smessage".to_vec())),
                Frame::Bulk(Some(b"{u:1}x\n".to_vec())),
                Frame::Bulk(Some(b"a\r\nb!".to_vec())),
            ]))
        );
        assert_eq!(parse(&wire[used..]), Ok(Some((Frame::Int(3), 4))));
        for cut in 0..used {
            assert_eq!(parse(&wire[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn errors_and_nils_and_garbage() {
        assert_eq!(
            parse(b"-MOVED 12 127.0.0.1:7000\r\n"),
            Ok(Some((Frame::Error("MOVED 12 127.0.0.1:7000".into()), 26)))
        );
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Frame::Bulk(None), 5))));
        assert_eq!(parse(b"?what\r\n"), Err(Malformed));
        assert_eq!(parse(b"$3\r\nabcd\r\n"), Err(Malformed));
        assert_eq!(parse(b"$99999999999\r\n"), Err(Malformed));
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            command(&[b"SSUBSCRIBE", b"{u:1}"]),
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$5\r\n{u:1}\r\n"
        );
    }
}
