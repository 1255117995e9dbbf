//! The seed corpus: the frames the unit and e2e tests use, as input files
//! of each target. `fuzz/corpus/<target>/seed-*` are these, written by the
//! replay test when `FUZZ_WRITE_SEEDS=1` (and checked to be there otherwise).

use crate::{framing, websocket};
use websocket::SeedFrame;

/// Requests as the tests send them: every msgid, our additions, wrong types.
pub const FRAMES: &[(&str, &[u8])] = &[
    ("login", br#"{"msgid":1,"id":3,"password":"x","seq":4}"#),
    ("login-since", br#"{"msgid":1,"id":3,"password":"x","since":17}"#),
    ("login-acks", br#"{"msgid":1,"id":3,"password":"pw","acks":true}"#),
    ("login-minus-one", br#"{"msgid":1,"id":-1,"password":""}"#),
    ("login-sql", br#"{"msgid":1,"id":"1 OR 1=1","password":""}"#),
    ("login-huge-id", br#"{"msgid":1,"id":99999999999999999999,"password":""}"#),
    ("login-unfinished", br#"{"msgid":1,"id":}"#),
    ("login-ack", br#"{"errno":0,"id":22,"msgid":2,"name":"alice"}"#),
    ("logout", br#"{"msgid":3,"id":22}"#),
    ("logout-bad-seq", br#"{"msgid":3,"seq":"x"}"#),
    ("register", br#"{"msgid":4,"name":"zed","password":"pw"}"#),
    ("register-seq", br#"{"msgid":4,"name":"one","password":"pw","seq":1}"#),
    ("register-ack", br#"{"errno":0,"id":22,"msgid":5}"#),
    ("chat", br#"{"msgid":6,"id":1,"toid":2,"msg":"hi","time":"t"}"#),
    (
        "chat-spoofed",
        br#"{"msgid":6,"id":666,"name":"mallory","toid":2,"msg":"hi","time":"t","seq":1,"extra":true}"#,
    ),
    ("chat-cmid", br#"{"msgid":6,"toid":2,"msg":"m","cmid":"c-1_x"}"#),
    ("chat-cmid-space", br#"{"msgid":6,"toid":2,"msg":"m","cmid":"a b"}"#),
    ("chat-no-msg", br#"{"msgid":6,"toid":2}"#),
    ("chat-toid-string", br#"{"msgid":6,"toid":"two","msg":"x"}"#),
    ("chat-mid-rseq", br#"{"msgid":6,"toid":2,"msg":"x","mid":"fake","rseq":99}"#),
    (
        "chat-utf8",
        "{\"msgid\":6,\"toid\":2,\"msg\":\"h\u{e9}llo \u{1f600} \u{2028}\u{fffd} \\u0000 \\ud83d\\ude00 \\\" \\\\ }{\"}"
            .as_bytes(),
    ),
    ("chat-lone-surrogate", br#"{"msgid":6,"toid":2,"msg":"\ud800"}"#),
    ("chat-invalid-utf8", b"{\"msgid\":6,\"toid\":2,\"msg\":\"\xff\xfe\xc3\"}"),
    ("chat-nested", br#"{"msgid":6,"toid":2,"msg":"m","x":{"y":[1,2,{"z":null}]},"f":1.5e300}"#),
    ("add-friend", br#"{"msgid":7,"id":1,"friendid":2}"#),
    ("create-group", br#"{"msgid":8,"id":1,"groupname":"g","groupdesc":"d"}"#),
    ("add-group", br#"{"msgid":9,"id":1,"groupid":5}"#),
    ("group-chat", br#"{"msgid":10,"id":1,"groupid":2,"msg":"m","cmid":"c-1_x"}"#),
    ("group-chat-unknown", br#"{"msgid":10,"groupid":777,"msg":"x"}"#),
    ("reply", br#"{"errno":0,"groupid":4,"msgid":11,"seq":8}"#),
    ("ack", br#"{"msgid":12,"ack":5}"#),
    ("ack-negative", br#"{"msgid":12,"ack":-1}"#),
    ("ping", br#"{"msgid":13,"seq":2}"#),
    ("pong", br#"{"msgid":14}"#),
    ("unknown", br#"{"msgid":42}"#),
    ("no-msgid", br#"{"id":1}"#),
    ("array", b"[1,2]"),
    ("scalar", b"42"),
    ("garbage", b"this is not json"),
    ("empty", b""),
    ("empty-object", b"{}"),
];

/// Streams as the splitter tests and e2e tests send them.
const STREAMS: &[(&str, &[u8])] = &[
    ("separators", b"{\"a\":1}\0{\"b\":2}\n{\"c\":3}{\"d\":4}"),
    ("split-value", b"{\"msg\":\"hello }\",\"x\":{\"y\":[1,2]}}\0"),
    ("escapes", b"{\"a\":\"}\\\"{\"}\0{\"b\":1}"),
    ("braces-in-strings", b"{\"m\":\"{{{ ]]] \\\\\"}"),
    ("garbage", b"hello world\n{\"a\":1}garbage{\"b\":2}"),
    ("unbalanced-nul", b"{\"msgid\":1,\0{\"msgid\":4}\0"),
    ("arrays-scalars", b"[1,2]\n42\n{\"a\":1}"),
    ("crlf-tabs", b"\r\n\t {\"msgid\":13}\r\n"),
    ("nul-in-string", b"{\"msg\":\"a\0b\"}\0"),
    (
        "two-no-separator",
        b"{\"msgid\":4,\"name\":\"one\",\"password\":\"pw\",\"seq\":1}{\"msgid\":4,\"name\":\"two\",\"password\":\"pw\",\"seq\":2}",
    ),
    ("not-json-then-value", b"this is not json\n{\"msgid\":1,\"id\":}\0"),
    ("close-brackets-early", b"{]}{\"a\":[}]\0"),
];

/// One seed: target, file name (without the `seed-` prefix), contents.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, frame) in FRAMES {
        seeds.push(("classic", (*name).to_owned(), frame.to_vec()));
    }

    // Framing: the streams at the default limit in one chunk and in small
    // chunks, every request NUL-ended, and oversize at a tiny limit.
    let default_limit = 7; // framing::LIMITS[7] = 64 KiB
    for (name, stream) in STREAMS {
        seeds.push((
            "framing",
            (*name).to_owned(),
            framing::encode(default_limit, &[], stream),
        ));
        seeds.push((
            "framing",
            format!("{name}-chunked"),
            framing::encode(default_limit, &[3, 0, 1, 7], stream),
        ));
    }
    let requests: Vec<u8> = FRAMES
        .iter()
        .flat_map(|(_, frame)| frame.iter().copied().chain([0]))
        .collect();
    seeds.push((
        "framing",
        "every-request".into(),
        framing::encode(default_limit, &[5, 1], &requests),
    ));
    let big = format!("{{\"msg\":\"{}\"}}{{\"ok\":1}}", "x".repeat(100));
    seeds.push((
        "framing",
        "oversize".into(),
        framing::encode(5, &[], big.as_bytes()),
    ));
    seeds.push((
        "framing",
        "oversize-nul".into(),
        framing::encode(4, &[2], b"{\"msgid\":1,\"password\":\"long\"\0{}"),
    ));
    seeds.push((
        "framing",
        "limit-one".into(),
        framing::encode(0, &[], b"{\0{}\0{"),
    ));

    // WebSocket: every request as one text message (limit 1 KiB), then the
    // frames the gateway must refuse or tolerate.
    let ws_default = 2; // websocket::LIMITS[2] = 1 KiB
    for (name, frame) in FRAMES {
        seeds.push((
            "websocket",
            (*name).to_owned(),
            websocket::encode(ws_default, &[SeedFrame::text(frame)]),
        ));
    }
    let hello = br#"{"msgid":13}"#;
    let fragmented = websocket::encode(
        ws_default,
        &[
            SeedFrame {
                fin: false,
                ..SeedFrame::text(br#"{"msgid":6,"toid":2,"#)
            },
            SeedFrame::data(9, b"ping"),
            SeedFrame::data(0, br#""msg":"hi"}"#),
        ],
    );
    seeds.push(("websocket", "fragmented".into(), fragmented));
    seeds.push((
        "websocket",
        "control-frames".into(),
        websocket::encode(
            ws_default,
            &[
                SeedFrame::data(9, b"ping"),
                SeedFrame::data(10, b"pong"),
                SeedFrame::data(2, hello),
                SeedFrame::text(hello),
                SeedFrame::data(8, b"\x03\xe8bye"),
                SeedFrame::text(hello),
            ],
        ),
    ));
    seeds.push((
        "websocket",
        "protocol-errors".into(),
        websocket::encode(
            ws_default,
            &[
                SeedFrame {
                    masked: false,
                    ..SeedFrame::text(hello)
                },
                SeedFrame {
                    rsv1: true,
                    ..SeedFrame::text(hello)
                },
            ],
        ),
    ));
    seeds.push((
        "websocket",
        "reserved-opcode".into(),
        websocket::encode(ws_default, &[SeedFrame::data(3, hello)]),
    ));
    seeds.push((
        "websocket",
        "stray-continuation".into(),
        websocket::encode(ws_default, &[SeedFrame::data(0, hello)]),
    ));
    seeds.push((
        "websocket",
        "invalid-utf8".into(),
        websocket::encode(ws_default, &[SeedFrame::text(b"{\"msg\":\"\xff\"}")]),
    ));
    // Limit 16: a request of 17 bytes is too large but read; 33 bytes ends the socket.
    let mut limits = websocket::encode(
        0,
        &[
            SeedFrame::text(&[b' '; 16]),
            SeedFrame::text(&[b' '; 17]),
            SeedFrame::text(&[b' '; 32]),
        ],
    );
    limits.extend(
        websocket::encode(0, &[SeedFrame::text(&[b' '; 33])])
            .into_iter()
            .skip(1),
    );
    seeds.push(("websocket", "limits".into(), limits));
    let mut large = vec![3]; // 64 KiB requests: 128 KiB messages
    large.extend(websocket::encode_large(false, false, 0x4000, b'x'));
    large.extend(websocket::encode_large(true, true, 0x4001, b'x'));
    seeds.push(("websocket", "oversize-fragmented".into(), large));
    let mut large = vec![3];
    large.extend(websocket::encode_large(false, true, 0xffff, b'{'));
    seeds.push(("websocket", "oversize".into(), large));
    let mut raw = vec![ws_default];
    raw.extend(websocket::encode_raw(
        b"\x81\x7f\xff\xff\xff\xff\xff\xff\xff\xff",
    ));
    raw.extend(websocket::encode_raw(b"GET / HTTP/1.1\r\n\r\n"));
    seeds.push(("websocket", "raw".into(), raw));
    seeds
}
