//! Keeps `docs/PROTOCOL.md` true: every row of its test vector tables and of
//! its status code table is checked against this crate, both ways.

use proto::{
    ACK_FRAME_LEN, Ack, AckStatus, CrcSize, DEFAULT_MAX_BODY_SIZE, Decoded, HEADER_LEN, Limits,
    Version, decode_ack, decode_frame, decode_header, encode_ack, encode_frame,
};

const DOC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/PROTOCOL.md"
));

const FRAMES: &str = "| vector | version | crc_size | payload | frame (hex) |";
const ACKS: &str = "| vector | status | seq | ack (hex) |";
const VERDICTS: &str = "| vector | bytes sent (hex) | listener | status | then |";
const STATUSES: &str = "| status | name | sent when | after it |";

/// The rows of the table whose header line is `header`, as trimmed cells.
/// Panics unless the table is there exactly once and has rows.
fn table(header: &str) -> Vec<Vec<String>> {
    assert_eq!(
        DOC.lines().filter(|line| line.trim() == header).count(),
        1,
        "docs/PROTOCOL.md must hold exactly one table headed {header:?}"
    );
    let rows: Vec<Vec<String>> = DOC
        .lines()
        .skip_while(|line| line.trim() != header)
        .skip(2) // the header and the |---| line
        .take_while(|line| line.trim_start().starts_with('|'))
        .map(|line| {
            let cells: Vec<String> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect();
            let columns = header.trim_matches('|').split('|').count();
            assert_eq!(cells.len(), columns, "row {line:?} of table {header:?}");
            cells
        })
        .collect();
    assert!(!rows.is_empty(), "table {header:?} has no rows");
    rows
}

/// The bytes of a hex cell such as `` `00000001 61 10` ``.
fn unhex(cell: &str) -> Vec<u8> {
    let text = cell
        .strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or_else(|| panic!("hex cell {cell:?} is not in backticks"));
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2) && digits.chars().all(|c| c.is_ascii_hexdigit()),
        "bad hex {cell:?}"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// A payload cell: `` `text` ``, `(empty)` or `bytes HEX`.
fn payload(cell: &str) -> Vec<u8> {
    if cell == "(empty)" {
        Vec::new()
    } else if let Some(hex) = cell.strip_prefix("bytes ") {
        unhex(&format!("`{hex}`"))
    } else {
        cell.strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("payload cell {cell:?}"))
            .as_bytes()
            .to_vec()
    }
}

fn version(cell: &str) -> Version {
    Version::try_from(cell.parse::<u32>().unwrap()).unwrap()
}

fn crc_size(cell: &str) -> CrcSize {
    CrcSize::try_from(cell.parse::<u32>().unwrap()).unwrap()
}

fn status(cell: &str) -> AckStatus {
    AckStatus::try_from(cell.parse::<u8>().unwrap()).unwrap()
}

/// `closes` or `goes on`: whether the connection closes.
fn closes(cell: &str) -> bool {
    match cell {
        "closes" => true,
        "goes on" => false,
        other => panic!("expected `closes` or `goes on`, found {other:?}"),
    }
}

/// A listener cell: `defaults`, or `key = value` of `max_frame_size` or `allow_no_crc`.
fn limits(cell: &str) -> Limits {
    let mut limits = Limits::default();
    if cell == "defaults" {
        return limits;
    }
    for setting in cell.split(',') {
        let (key, value) = setting.split_once('=').expect("key = value");
        match key.trim() {
            "max_frame_size" => limits.max_body_size = value.trim().parse().unwrap(),
            "allow_no_crc" => limits.allow_no_crc = value.trim().parse().unwrap(),
            other => panic!("unknown listener setting {other:?}"),
        }
    }
    limits
}

#[test]
fn frame_vectors_decode_to_their_fields_and_encode_to_their_bytes() {
    let rows = table(FRAMES);
    for row in &rows {
        let [name, v, c, p, hex] = row.as_slice() else {
            unreachable!("table() checked the width")
        };
        let (version, crc_size, payload, bytes) = (version(v), crc_size(c), payload(p), unhex(hex));

        let mut encoded = Vec::new();
        encode_frame(version, crc_size, &payload, &mut encoded).unwrap();
        assert_eq!(encoded, bytes, "{name}: encoding the fields");

        let limits = Limits {
            allow_no_crc: crc_size == CrcSize::None,
            ..Limits::default()
        };
        let Ok(Decoded::Done(frame, used)) = decode_frame(&bytes, &limits) else {
            panic!("{name}: does not decode to a frame");
        };
        assert_eq!(used, bytes.len(), "{name}: frame length");
        assert_eq!(frame.header.version, version, "{name}: version");
        assert_eq!(frame.header.crc_size, crc_size, "{name}: crc_size");
        assert_eq!(
            frame.header.body_size as usize,
            payload.len() + crc_size.len(),
            "{name}: body_size"
        );
        assert_eq!(frame.payload, payload.as_slice(), "{name}: payload");
        assert!(frame.crc_ok(), "{name}: the trailer does not match");
    }
    assert!(rows.len() >= 10, "only {} frame vectors", rows.len());
}

#[test]
fn ack_vectors_decode_to_their_fields_and_encode_to_their_bytes() {
    let rows = table(ACKS);
    for row in &rows {
        let [name, s, q, hex] = row.as_slice() else {
            unreachable!("table() checked the width")
        };
        let ack = Ack {
            status: status(s),
            seq: q.parse().unwrap(),
        };
        let bytes = unhex(hex);
        let mut encoded = Vec::new();
        encode_ack(&ack, &mut encoded);
        assert_eq!(encoded, bytes, "{name}: encoding the fields");
        assert_eq!(
            decode_ack(&bytes),
            Ok(Decoded::Done(ack, ACK_FRAME_LEN)),
            "{name}: decoding the bytes"
        );
    }
    assert!(!rows.is_empty());
}

#[test]
fn verdict_vectors_get_the_stated_status() {
    let rows = table(VERDICTS);
    for row in &rows {
        let [name, hex, listener, s, then] = row.as_slice() else {
            unreachable!("table() checked the width")
        };
        let (bytes, limits, expected, closes) =
            (unhex(hex), limits(listener), status(s), closes(then));
        assert!(bytes.len() >= HEADER_LEN, "{name}: shorter than a header");
        let verdict = match decode_frame(&bytes, &limits) {
            Ok(Decoded::Done(frame, used)) => {
                assert_eq!(used, bytes.len(), "{name}: a whole frame and nothing more");
                if frame.crc_ok() {
                    AckStatus::Ok
                } else {
                    AckStatus::CrcMismatch
                }
            }
            Ok(Decoded::NeedMore(n)) => panic!("{name}: the server would wait for {n} more bytes"),
            Err(error) => {
                // The header alone decides, before any body byte.
                let head = bytes.get(..HEADER_LEN).unwrap();
                assert_eq!(decode_header(head, &limits), Err(error.clone()), "{name}");
                error.ack_status()
            }
        };
        assert_eq!(verdict, expected, "{name}: status");
        assert_eq!(
            verdict.closes(),
            closes,
            "{name}: whether the connection closes"
        );
        // The answer, when it is the connection's first frame.
        let mut answer = Vec::new();
        encode_ack(
            &Ack {
                status: verdict,
                seq: 0,
            },
            &mut answer,
        );
        assert_eq!(
            decode_ack(&answer),
            Ok(Decoded::Done(
                Ack {
                    status: expected,
                    seq: 0
                },
                ACK_FRAME_LEN
            ))
        );
    }
    assert!(rows.len() >= 7, "only {} verdict vectors", rows.len());
}

#[test]
fn status_table_lists_every_status_with_its_name_and_close_rule() {
    let rows = table(STATUSES);
    let mut codes = Vec::new();
    for row in &rows {
        let [code, name, _when, after] = row.as_slice() else {
            unreachable!("table() checked the width")
        };
        let status = status(code);
        assert_eq!(&status.to_string(), name, "status {code}: name");
        assert_eq!(status.closes(), closes(after), "status {code}: close rule");
        codes.push(u8::from(status));
    }
    let known: Vec<u8> = (0..=u8::MAX)
        .filter(|&raw| AckStatus::try_from(raw).is_ok())
        .collect();
    assert_eq!(codes, known, "the table lists every status once, in order");
}

#[test]
fn the_default_limit_is_the_documented_one() {
    assert!(
        DOC.contains(&format!(
            "`max_frame_size` (default {DEFAULT_MAX_BODY_SIZE}, 16 MiB)"
        )),
        "docs/PROTOCOL.md states a different default max_frame_size"
    );
    assert_eq!(DEFAULT_MAX_BODY_SIZE, 16 * 1024 * 1024);
}
