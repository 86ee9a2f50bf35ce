//! `client read`: files in the `file` sink's format (frames as received, one
//! after the other).

use std::{io::Write, path::Path};

use proto::{CrcSize, Version, encode_frame};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines},
    process::{Child, ChildStdout},
};

use crate::support::{client, interrupt, spawn_client, within};

const VERSIONS: [Version; 2] = [Version::V1, Version::V2];
const CRC_SIZES: [CrcSize; 4] = [CrcSize::None, CrcSize::Crc8, CrcSize::Crc16, CrcSize::Crc32];

/// Sends Ctrl-C to a `read --follow` that has printed every frame: it must
/// exit 0, end its stdout, report no torn tail and log `summary`.
async fn ctrl_c_exits_0_with(
    child: &mut Child,
    lines: &mut Lines<BufReader<ChildStdout>>,
    summary: &str,
) {
    let status = interrupt(child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(within(lines.next_line()).await.unwrap(), None);
    let mut stderr = String::new();
    within(child.stderr.take().unwrap().read_to_string(&mut stderr))
        .await
        .unwrap();
    assert!(!stderr.contains("torn tail"), "{stderr}");
    assert!(stderr.contains(summary), "{stderr}");
}

/// One frame as the test wrote it.
struct Written {
    version: u32,
    crc_size: usize,
    payload: Vec<u8>,
    offset: usize,
}

/// A file holding one frame of every version and CRC size, with payloads
/// that need escaping and one that is not UTF-8.
fn every_format() -> (Vec<u8>, Vec<Written>) {
    let mut bytes = Vec::new();
    let mut written = Vec::new();
    for (v, version) in VERSIONS.into_iter().enumerate() {
        for (c, crc_size) in CRC_SIZES.into_iter().enumerate() {
            let payload = match (v, c) {
                (0, 1) => b"quote \" and\nnewline".to_vec(),
                (1, 2) => vec![0xff, 0x00, 0x41],
                (1, 3) => Vec::new(),
                _ => format!("v{} crc{}", u32::from(version), crc_size.len()).into_bytes(),
            };
            written.push(Written {
                version: version.into(),
                crc_size: crc_size.len(),
                payload: payload.clone(),
                offset: bytes.len(),
            });
            encode_frame(version, crc_size, &payload, &mut bytes).unwrap();
        }
    }
    (bytes, written)
}

fn frame(version: Version, crc_size: CrcSize, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_frame(version, crc_size, payload, &mut bytes).unwrap();
    bytes
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    file
}

fn path(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().unwrap()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

#[tokio::test]
async fn prints_every_frame_in_order_as_text() {
    let (bytes, written) = every_format();
    let file = file_with(&bytes);
    let run = client(&["read", path(&file)], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), written.len(), "{run:?}");
    for (index, (line, frame)) in lines.iter().zip(&written).enumerate() {
        let expected = format!(
            "{index} offset={} version={} crc_size={} len={} crc=ok \"{}\"",
            frame.offset,
            frame.version,
            frame.crc_size,
            frame.payload.len(),
            frame.payload.escape_ascii()
        );
        assert_eq!(*line, expected);
    }
    assert!(lines[1].ends_with(r#""quote \" and\nnewline""#), "{run:?}");
    assert!(lines[6].ends_with(r#""\xff\x00A""#), "{run:?}");
    assert!(
        run.stderr
            .contains("summary: frames=8 ok=8 bad_crc=0 torn_bytes=0"),
        "{run:?}"
    );
}

#[tokio::test]
async fn prints_every_frame_in_order_as_json() {
    let (bytes, written) = every_format();
    let file = file_with(&bytes);
    let run = client(&["read", "--json", path(&file)], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), written.len(), "{run:?}");
    for (index, (line, frame)) in lines.iter().zip(&written).enumerate() {
        assert_eq!(line["index"], index, "{line}");
        assert_eq!(line["offset"], frame.offset, "{line}");
        assert_eq!(line["version"], frame.version, "{line}");
        assert_eq!(line["crc_size"], frame.crc_size, "{line}");
        assert_eq!(line["len"], frame.payload.len(), "{line}");
        assert_eq!(line["crc_ok"], true, "{line}");
        assert_eq!(line["crc_stored"], line["crc_computed"], "{line}");
        match std::str::from_utf8(&frame.payload) {
            Ok(text) => {
                assert_eq!(line["encoding"], "utf-8", "{line}");
                assert_eq!(line["payload"], text, "{line}");
            }
            Err(_) => {
                assert_eq!(line["encoding"], "hex", "{line}");
                assert_eq!(line["payload"], "ff0041", "{line}");
            }
        }
    }
}

#[tokio::test]
async fn preview_shows_at_most_n_bytes() {
    let file = file_with(&frame(Version::V2, CrcSize::Crc32, b"abcdefgh"));
    let run = client(&["read", "--preview", "3", path(&file)], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.ends_with(" len=8 crc=ok \"abc\"...\n"),
        "{run:?}"
    );
    let run = client(&["read", "--preview", "0", path(&file)], None).await;
    assert!(run.stdout.ends_with(" len=8 crc=ok\n"), "{run:?}");
}

#[tokio::test]
async fn a_bad_crc_is_reported_and_exits_3() {
    let mut bytes = frame(Version::V1, CrcSize::Crc8, b"first");
    let second = bytes.len();
    let mut bad = frame(Version::V2, CrcSize::Crc32, b"second");
    let crc = u32::from_be_bytes(bad[bad.len() - 4..].try_into().unwrap());
    *bad.last_mut().unwrap() ^= 0x01;
    bytes.extend_from_slice(&bad);
    bytes.extend_from_slice(&frame(Version::V1, CrcSize::Crc16, b"third"));
    let file = file_with(&bytes);
    let run = client(&["read", path(&file)], None).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert!(lines[0].contains(" crc=ok "), "{run:?}");
    let expected = format!(
        "1 offset={second} version=2 crc_size=4 len=6 \
         crc=BAD (stored {:#010x}, computed {crc:#010x}) \"second\"",
        crc ^ 1
    );
    assert_eq!(lines[1], expected, "{run:?}");
    assert!(lines[2].starts_with("2 offset=") && lines[2].contains(" crc=ok "));
    assert!(
        run.stderr
            .contains("summary: frames=3 ok=2 bad_crc=1 torn_bytes=0"),
        "{run:?}"
    );

    let run = client(&["read", "--json", path(&file)], None).await;
    assert_eq!(run.code, Some(3), "{run:?}");
    let second: Value = serde_json::from_str(run.stdout.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["crc_ok"], false, "{run:?}");
    assert_ne!(second["crc_stored"], second["crc_computed"], "{run:?}");
}

#[tokio::test]
async fn a_torn_tail_is_reported_with_its_offset_and_length() {
    let whole = frame(Version::V2, CrcSize::Crc8, b"whole");
    let next = frame(Version::V1, CrcSize::Crc32, b"cut short");
    let garbage = [0u8; 16]; // version 0: cannot start a frame
    let tails: [(&[u8], &str); 3] = [
        (&next[..5], "a header cut short (5 of 12 bytes)"),
        (&next[..17], "a frame cut short (17 of 25 bytes)"),
        (&garbage, "a header that cannot start a frame"),
    ];
    for (tail, reason) in tails {
        let mut bytes = whole.clone();
        bytes.extend_from_slice(tail);
        let file = file_with(&bytes);
        let run = client(&["read", path(&file)], None).await;
        assert_eq!(run.code, Some(3), "{run:?}");
        assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
        let note = format!(
            "torn tail: {} bytes at offset {} after the last complete frame: {reason}",
            tail.len(),
            whole.len()
        );
        assert!(run.stderr.contains(&note), "{run:?}");
        let summary = format!("summary: frames=1 ok=1 bad_crc=0 torn_bytes={}", tail.len());
        assert!(run.stderr.contains(&summary), "{run:?}");
    }
}

#[tokio::test]
async fn an_empty_file_has_no_frames() {
    let file = file_with(&[]);
    let run = client(&["read", path(&file)], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains("summary: frames=0 ok=0 bad_crc=0 torn_bytes=0"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_missing_file_exits_1_and_bad_usage_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let run = client(&["read", missing.to_str().unwrap()], None).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("cannot open"), "{run:?}");
    let run = client(&["read"], None).await;
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[tokio::test]
async fn follow_prints_frames_as_they_complete_and_exits_0_on_ctrl_c() {
    let first = frame(Version::V1, CrcSize::Crc8, b"first");
    let file = file_with(&first);
    let mut child = spawn_client(&["read", "--follow", path(&file)]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || within(lines.next_line()).await.unwrap().unwrap();

    let line = next_line().await;
    assert_eq!(
        line,
        "0 offset=0 version=1 crc_size=1 len=5 crc=ok \"first\""
    );

    let second = frame(Version::V2, CrcSize::Crc32, b"second");
    append(file.path(), &second);
    let line = next_line().await;
    let offset = first.len();
    assert_eq!(
        line,
        format!("1 offset={offset} version=2 crc_size=4 len=6 crc=ok \"second\"")
    );

    // Half a frame, then the rest: printed once, when whole.
    let third = frame(Version::V1, CrcSize::Crc16, b"third, in two writes");
    let (head, rest) = third.split_at(third.len() / 2);
    append(file.path(), head);
    append(file.path(), rest);
    let line = next_line().await;
    let offset = first.len() + second.len();
    assert_eq!(
        line,
        format!("2 offset={offset} version=1 crc_size=2 len=20 crc=ok \"third, in two writes\"")
    );

    ctrl_c_exits_0_with(
        &mut child,
        &mut lines,
        "summary: frames=3 ok=3 bad_crc=0 torn_bytes=0",
    )
    .await;
}

#[tokio::test]
async fn follow_reads_on_from_the_last_frame_left_when_the_file_shrinks() {
    // Two frames kept (the walk back over them steps through the read
    // buffer), one rolled back.
    let kept = [
        frame(Version::V2, CrcSize::Crc8, b"kept"),
        frame(Version::V1, CrcSize::Crc32, b"kept too"),
    ]
    .concat();
    let second = frame(Version::V2, CrcSize::Crc8, b"rolled back");
    let file = file_with(&[kept.clone(), second.clone()].concat());
    let mut child = spawn_client(&["read", "--follow", path(&file)]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut notes = BufReader::new(child.stderr.take().unwrap()).lines();
    for index in 0..3 {
        let line = within(lines.next_line()).await.unwrap().unwrap();
        assert!(line.starts_with(&format!("{index} offset=")), "{line}");
    }

    // As a sink rolling back a failed write: cut to the end of the kept frames.
    std::fs::OpenOptions::new()
        .write(true)
        .open(file.path())
        .unwrap()
        .set_len(kept.len() as u64)
        .unwrap();
    let note = within(notes.next_line()).await.unwrap().unwrap();
    let shrank = format!(
        "note: the file shrank to {} bytes, below offset {} already read",
        kept.len(),
        kept.len() + second.len()
    );
    assert!(note.starts_with(&shrank), "{note}");
    let from = format!("reading on from frame 2 at offset {}", kept.len());
    assert!(note.ends_with(&from), "{note}");

    append(
        file.path(),
        &frame(Version::V1, CrcSize::Crc32, b"rewritten"),
    );
    let line = within(lines.next_line()).await.unwrap().unwrap();
    assert_eq!(
        line,
        format!(
            "2 offset={} version=1 crc_size=4 len=9 crc=ok \"rewritten\"",
            kept.len()
        )
    );

    let status = interrupt(&mut child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn follow_waits_for_a_frame_cut_short_instead_of_calling_it_torn() {
    let first = frame(Version::V1, CrcSize::Crc8, b"first");
    let second = frame(Version::V2, CrcSize::Crc16, b"being written");
    let (head, rest) = second.split_at(15);
    // The first pass reads the whole first frame and finds the second cut short.
    let file = file_with(&[first.as_slice(), head].concat());
    let mut child = spawn_client(&["read", "--follow", "--json", path(&file)]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within(lines.next_line()).await.unwrap().unwrap();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["payload"], "first", "{line}");

    append(file.path(), rest);
    let line = within(lines.next_line()).await.unwrap().unwrap();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["index"], 1, "{line}");
    assert_eq!(line["offset"], first.len(), "{line}");
    assert_eq!(line["payload"], "being written", "{line}");
    assert_eq!(line["crc_ok"], true, "{line}");

    ctrl_c_exits_0_with(
        &mut child,
        &mut lines,
        "summary: frames=2 ok=2 bad_crc=0 torn_bytes=0",
    )
    .await;
}

#[tokio::test]
async fn frames_larger_than_the_read_buffer_are_read_whole() {
    // 1 MiB payloads, four times the read buffer, with a small frame between.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut bytes = frame(Version::V2, CrcSize::Crc32, &big);
    bytes.extend_from_slice(&frame(Version::V1, CrcSize::Crc8, b"small"));
    bytes.extend_from_slice(&frame(Version::V1, CrcSize::Crc32, &big));
    let file = file_with(&bytes);
    let run = client(&["read", "--preview", "2", path(&file)], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let big_frame = 12 + (1 << 20) + 4;
    assert_eq!(
        lines,
        [
            "0 offset=0 version=2 crc_size=4 len=1048576 crc=ok \"\\x00\\x01\"...".to_owned(),
            format!("1 offset={big_frame} version=1 crc_size=1 len=5 crc=ok \"sm\"..."),
            format!(
                "2 offset={} version=1 crc_size=4 len=1048576 crc=ok \"\\x00\\x01\"...",
                big_frame + 18
            ),
        ]
    );
}

#[tokio::test]
async fn a_header_announcing_a_huge_body_is_a_tail_not_an_allocation() {
    let whole = frame(Version::V2, CrcSize::Crc8, b"whole");
    let header = |body_size: u32| -> Vec<u8> {
        [2, body_size, 4]
            .iter()
            .flat_map(|v: &u32| v.to_be_bytes())
            .collect()
    };
    let cases = [
        // The largest body a sink can hold (1 GiB), 8 bytes of it present.
        (1 << 30, "a frame cut short (20 of 1073741836 bytes)"),
        (
            (1 << 30) + 1,
            "a header that cannot start a frame: frame too large",
        ),
    ];
    for (body_size, reason) in cases {
        let bytes = [whole.clone(), header(body_size), vec![7; 8]].concat();
        let file = file_with(&bytes);
        let run = client(&["read", path(&file)], None).await;
        assert_eq!(run.code, Some(3), "{run:?}");
        let note = format!(
            "torn tail: 20 bytes at offset {} after the last complete frame: {reason}",
            whole.len()
        );
        assert!(run.stderr.contains(&note), "{run:?}");
    }
}

#[tokio::test]
async fn follow_notes_bytes_that_cannot_start_a_frame_and_ctrl_c_exits_3_after_a_bad_crc() {
    let mut bad = frame(Version::V2, CrcSize::Crc8, b"bad");
    *bad.last_mut().unwrap() ^= 0x01;
    let file = file_with(&[bad.clone(), vec![0; 16]].concat());
    let mut child = spawn_client(&["read", "--follow", path(&file)]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut notes = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = within(lines.next_line()).await.unwrap().unwrap();
    assert!(
        line.starts_with("0 offset=0 version=2 crc_size=1 len=3 crc=BAD"),
        "{line}"
    );
    let note = within(notes.next_line()).await.unwrap().unwrap();
    let expected = format!(
        "note: the bytes at offset {} are not a frame (a header that cannot start a frame: \
         unsupported version 0",
        bad.len()
    );
    assert!(note.starts_with(&expected), "{note}");
    assert!(
        note.ends_with("); waiting for the file to change"),
        "{note}"
    );

    let status = interrupt(&mut child).await;
    assert_eq!(status.code(), Some(3), "{status:?}");
    let summary = within(notes.next_line()).await.unwrap().unwrap();
    assert_eq!(summary, "summary: frames=1 ok=0 bad_crc=1 torn_bytes=0");
}

#[tokio::test]
async fn a_reader_that_stops_early_is_not_an_error() {
    let mut bytes = Vec::new();
    for i in 0..20_000u32 {
        encode_frame(
            Version::V2,
            CrcSize::Crc8,
            format!("frame {i}").as_bytes(),
            &mut bytes,
        )
        .unwrap();
    }
    let file = file_with(&bytes);
    for format in ["--preview=32", "--json"] {
        let mut child = spawn_client(&["read", format, path(&file)]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(lines.next_line()).await.unwrap().unwrap();
        assert!(line.starts_with("0 offset=0") || line.starts_with("{\"index\":0,"));
        // As `client read FILE | head -1` does.
        drop(lines);
        let output = within(child.wait_with_output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{format}: {stderr}");
        assert!(!stderr.contains("error"), "{format}: {stderr}");
        assert!(stderr.contains("summary: frames="), "{format}: {stderr}");
    }
}
