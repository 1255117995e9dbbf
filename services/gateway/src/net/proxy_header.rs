//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a load
//! balancer sends before the client's bytes, naming the real client.
//!
//! Only connections from a trusted proxy are looked at; from anyone else a
//! header would be a client lying about its address, and its bytes go to the
//! request parser like any others. From a trusted proxy the header is
//! optional: a direct connection (a probe, a test) starts with `{` or `GET`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::{io::AsyncReadExt as _, net::TcpStream};

const V1_PREFIX: &[u8] = b"PROXY ";
/// A version 1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Address block and TLVs we accept after the 16 fixed bytes of version 2.
const V2_MAX_BODY: usize = 512;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes do not start a PROXY header.
    NotProxy,
    /// The start of a header: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; `source` is the client, when the
    /// header names one (not for `UNKNOWN`, `LOCAL` or non-IP families).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid PROXY protocol header: {0}")]
pub struct Invalid(&'static str);

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    if starts_like(buf, V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    if starts_like(buf, V2_SIGNATURE) {
        return if buf.len() < 16 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    Ok(Parsed::NotProxy)
}

/// Whether `buf` and `prefix` agree on their common length (and `buf` is
/// not empty).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    n > 0 && buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Invalid("version 1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| Invalid("version 1 line is not text"))?;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(_dst), Some(sport), Some(_dport), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(Invalid("version 1 line needs 4 address fields"));
            };
            let ip: IpAddr = src
                .parse()
                .map_err(|_| Invalid("version 1 source address"))?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(Invalid("version 1 address does not match its family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| Invalid("version 1 source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(Invalid("version 1 family must be TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Header {
        len: end + 2,
        source,
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(Invalid("version 2 signature with another version"));
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body > V2_MAX_BODY {
        return Err(Invalid("version 2 header too long"));
    }
    let len = 16 + body;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let addresses = &buf[16..len];
    let source = match (version_command & 0x0f, buf[13] >> 4) {
        // LOCAL: the proxy's own connection (a health check): no client.
        (0, _) => None,
        (1, 1) if addresses.len() >= 12 => {
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(ip.into(), port))
        }
        (1, 2) if addresses.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        (1, 1 | 2) => return Err(Invalid("version 2 address block too short")),
        // UNSPEC or UNIX: no IP client to name.
        (1, _) => None,
        _ => return Err(Invalid("version 2 command must be LOCAL or PROXY")),
    };
    Ok(Parsed::Header { len, source })
}

/// What [`read_header`] found.
#[derive(Debug)]
pub enum Outcome {
    /// A header was read (and consumed); the client it names, if any.
    Header(Option<SocketAddr>),
    /// The connection does not start with a header; nothing was consumed.
    None,
    /// The peer closed before sending anything.
    Closed,
}

/// Reads a PROXY header from the start of `stream` if there is one,
/// consuming exactly its bytes (peeking first, so a connection without one
/// loses nothing). Waits for the first bytes: bound it with a timeout. A
/// header that has begun must be whole within `rest_within`.
pub async fn read_header(
    stream: &mut TcpStream,
    rest_within: std::time::Duration,
) -> io::Result<Result<Outcome, Invalid>> {
    // An idle connection holds no buffer while it waits.
    stream.readable().await?;
    let mut buf = vec![0u8; 16 + V2_MAX_BODY];
    let mut seen = 0;
    let rest_due = tokio::time::Instant::now() + rest_within;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Ok(Outcome::Closed));
        }
        match parse(&buf[..n]) {
            Ok(Parsed::NotProxy) => return Ok(Ok(Outcome::None)),
            Ok(Parsed::Header { len, source }) => {
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(Ok(Outcome::Header(source)));
            }
            Ok(Parsed::Incomplete) if n == buf.len() => {
                return Ok(Err(Invalid("header does not end")));
            }
            Ok(Parsed::Incomplete) => {
                if tokio::time::Instant::now() >= rest_due {
                    return Ok(Err(Invalid("header not finished in time")));
                }
                // A header arrives in one segment from a real proxy; a split
                // one is rare: look again shortly (peek would return at once).
                if n == seen {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                seen = n;
            }
            Err(invalid) => return Ok(Err(invalid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn version_1_names_the_client() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8000\r\n{\"msgid\":1}";
        assert_eq!(
            parse(line),
            Ok(Parsed::Header {
                len: 44,
                source: Some("203.0.113.7:51234".parse().expect("addr"))
            })
        );
        let six = b"PROXY TCP6 2001:db8::1 ::1 4000 8000\r\n";
        assert_eq!(
            parse(six),
            Ok(Parsed::Header {
                len: six.len(),
                source: Some("[2001:db8::1]:4000".parse().expect("addr"))
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Header {
                len: 15,
                source: None
            })
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8000\r\n";
        for n in 1..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
        let header = v2(1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        for n in 1..header.len() {
            assert_eq!(parse(&header[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn version_2_names_the_client() {
        let header = v2(1, 0x11, &[203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        assert_eq!(
            parse(&header),
            Ok(Parsed::Header {
                len: 28,
                source: Some("203.0.113.7:8080".parse().expect("addr"))
            })
        );
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body)),
            Ok(Parsed::Header {
                len: 52,
                source: Some("[::1]:443".parse().expect("addr"))
            })
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Ok(Parsed::Header {
                len: 16,
                source: None
            }),
            "LOCAL names nobody"
        );
    }

    #[test]
    fn requests_are_not_headers() {
        for start in [&b"{\"msgid\":1}"[..], b"GET /ws HTTP/1.1\r\n", b"PROXIMA"] {
            assert_eq!(parse(start), Ok(Parsed::NotProxy));
        }
        assert_eq!(parse(b"PROX"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn broken_headers_are_refused() {
        assert!(parse(b"PROXY TCP4 nonsense 1.2.3.4 1 2\r\n").is_err());
        assert!(
            parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err(),
            "family mismatch"
        );
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n").is_err());
        assert!(parse(b"PROXY SCTP x\r\n").is_err());
        assert!(parse(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat()).is_err());
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err(), "short address");
        assert!(parse(&v2(5, 0x11, &[0; 12])).is_err(), "unknown command");
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&long).is_err(), "too long");
    }
}
