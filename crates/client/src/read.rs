//! `client read FILE`: decodes a file written by the server's `file` sink
//! (every frame as received: header, payload, CRC trailer, one after the
//! other), checks every frame's CRC and prints one line per frame, as text or
//! JSON, on stdout. Notes and the summary go to stderr.
//!
//! The file is read through a bounded buffer, one frame at a time: memory
//! holds one frame (at most [`MAX_BODY_SIZE`], the largest `max_frame_size`
//! the server accepts), never the file. A frame's bytes are allocated only
//! once the file's length shows they are there, so a header announcing a
//! large body at the end of a short file allocates nothing.
//!
//! Without `--follow` the bytes after the last complete frame are a torn
//! tail: a header or a frame cut short, or a header that can never start a
//! frame. With `--follow` a frame cut short is a frame still being written:
//! reading waits for the file to grow (its length polled every
//! [`POLL_INTERVAL`]) and prints the frame once it is whole.

use std::{
    borrow::Cow,
    convert::Infallible,
    io::{SeekFrom, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use proto::{Decoded, FrameRef, HEADER_LEN, Limits, decode_frame, decode_header};
use serde::Serialize;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt, BufReader},
};

use crate::cli::ReadArgs;

/// The largest `body_size` read: the server's bound on `max_frame_size`
/// (1 GiB). A header announcing more cannot start a frame a sink wrote.
pub(crate) const MAX_BODY_SIZE: u32 = 1 << 30;

/// How often `--follow` looks at the file's length once it has read it all.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The read buffer.
const BUFFER_LEN: usize = 256 * 1024;

/// After a frame larger than this, the frame buffer gives its memory back.
const KEPT_FRAME_BUFFER: usize = 4 * 1024 * 1024;

/// How a read ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every frame's CRC matched and nothing followed the last frame: 0.
    Intact,
    /// A frame's CRC did not match, or a torn tail followed the last frame: 3.
    Damaged,
}

impl Outcome {
    /// The exit status: 0 intact, 3 damaged (1 is an error, 2 a usage error).
    pub(crate) fn exit_code(self) -> ExitCode {
        match self {
            Self::Intact => ExitCode::SUCCESS,
            Self::Damaged => ExitCode::from(3),
        }
    }
}

/// Reads `args.file` and prints its frames.
///
/// # Errors
///
/// When the file cannot be opened or read, or stdout cannot be written.
pub(crate) async fn run(args: ReadArgs) -> Result<Outcome> {
    let shown = args.file.display().to_string();
    let file = File::open(&args.file)
        .await
        .with_context(|| format!("cannot open {shown}"))?;
    let mut state = State {
        reader: Reader::new(file),
        out: Output {
            stdout: std::io::BufWriter::new(std::io::stdout()),
            json: args.json,
            preview: args.preview,
        },
        counts: Counts::default(),
    };
    match read(&mut state, &args).await {
        Ok(()) => {}
        // A reader that has seen enough (`client read FILE | head`).
        Err(error) if is_io(&error, std::io::ErrorKind::BrokenPipe) => {}
        Err(error) => return Err(error),
    }
    let counts = &state.counts;
    eprintln!(
        "summary: frames={} ok={} bad_crc={} torn_bytes={}",
        counts.frames, counts.ok, counts.bad_crc, counts.torn_bytes
    );
    Ok(if counts.bad_crc == 0 && counts.torn_bytes == 0 {
        Outcome::Intact
    } else {
        Outcome::Damaged
    })
}

/// Reads the file: once, or with `--follow` until Ctrl-C.
async fn read(state: &mut State, args: &ReadArgs) -> Result<()> {
    if args.follow {
        // `biased`: the Ctrl-C handler is installed before the first read.
        tokio::select! {
            biased;
            signal = tokio::signal::ctrl_c() => signal.context("cannot listen for Ctrl-C")?,
            result = follow(state, &args.file) => match result? {},
        }
    } else {
        let len = state.reader.len(&args.file).await?;
        if let Some(tail) = state.read_available(len).await? {
            state.counts.torn_bytes = tail.bytes;
            eprintln!(
                "torn tail: {} bytes at offset {} after the last complete frame: {}",
                tail.bytes, tail.offset, tail.reason
            );
        }
    }
    state.out.flush()
}

/// `--follow`: reads what is there, then waits for more, until cancelled.
async fn follow(state: &mut State, path: &Path) -> Result<Infallible> {
    // The offset of bytes that cannot start a frame, once noted (the sink
    // cuts them when it restarts, and frames follow from there).
    let mut noted: Option<u64> = None;
    loop {
        let len = state.reader.len(path).await?;
        if len < state.reader.pos {
            let read = state.reader.pos;
            state.reader.rewalk(len).await?;
            eprintln!(
                "note: the file shrank to {len} bytes, below offset {read} already read \
                 (the sink rolled back a failed write or cut a torn tail on restart): \
                 reading on from frame {} at offset {}",
                state.reader.index, state.reader.pos
            );
            noted = None;
        }
        match state.read_available(len).await {
            Ok(Some(tail)) if tail.unreadable && noted != Some(tail.offset) => {
                eprintln!(
                    "note: the bytes at offset {} are not a frame ({}); \
                     waiting for the file to change",
                    tail.offset, tail.reason
                );
                noted = Some(tail.offset);
            }
            Ok(_) => {}
            // The file shrank while being read: the next round sees it.
            Err(error) if is_io(&error, std::io::ErrorKind::UnexpectedEof) => {}
            Err(error) => return Err(error),
        }
        state.out.flush()?;
        // Drop whatever the buffer holds past the last frame: a sink that
        // rolls back a failed write rewrites those bytes.
        state.reader.seek_to_pos().await?;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `error` is an I/O error of this kind (or serde_json's wrapping one).
fn is_io(error: &anyhow::Error, kind: std::io::ErrorKind) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
        .or_else(|| {
            error
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
        })
        == Some(kind)
}

/// What one run has seen.
#[derive(Debug, Default)]
struct Counts {
    frames: u64,
    ok: u64,
    bad_crc: u64,
    torn_bytes: u64,
}

/// Bytes after the last complete frame.
#[derive(Debug)]
struct Tail {
    offset: u64,
    bytes: u64,
    reason: String,
    /// Whether the bytes can never become a frame (a bad header), as opposed
    /// to a header or frame cut short.
    unreadable: bool,
}

struct State {
    reader: Reader,
    out: Output,
    counts: Counts,
}

impl State {
    /// Prints every complete frame in the first `len` bytes of the file from
    /// the current position, and returns what follows the last one, if
    /// anything does.
    async fn read_available(&mut self, len: u64) -> Result<Option<Tail>> {
        loop {
            match self.reader.next(len).await? {
                Next::Frame => {
                    let frame = self.reader.frame()?;
                    self.out.frame(self.reader.index, self.reader.pos, &frame)?;
                    self.counts.frames += 1;
                    if frame.crc_ok() {
                        self.counts.ok += 1;
                    } else {
                        self.counts.bad_crc += 1;
                    }
                    self.reader.advance();
                }
                Next::End => return Ok(None),
                Next::Tail { reason, unreadable } => {
                    return Ok(Some(Tail {
                        offset: self.reader.pos,
                        bytes: len - self.reader.pos,
                        reason,
                        unreadable,
                    }));
                }
            }
        }
    }
}

/// What [`Reader::next`] found.
enum Next {
    /// A whole frame, in the reader's frame buffer.
    Frame,
    /// The end of the file, right after the last frame.
    End,
    /// Bytes that are not (or not yet) a whole frame.
    Tail { reason: String, unreadable: bool },
}

/// Reads frames off the file, one at a time.
struct Reader {
    file: BufReader<File>,
    /// The offset of the next frame (the end of the last one read).
    pos: u64,
    /// The index of the next frame.
    index: u64,
    /// The frame read by the last [`Reader::next`], header included.
    frame: Vec<u8>,
    limits: Limits,
}

impl Reader {
    fn new(file: File) -> Self {
        Self {
            file: BufReader::with_capacity(BUFFER_LEN, file),
            pos: 0,
            index: 0,
            frame: Vec::new(),
            limits: Limits {
                max_body_size: MAX_BODY_SIZE,
                allow_no_crc: true,
            },
        }
    }

    /// The file's length now.
    async fn len(&self, path: &Path) -> Result<u64> {
        let metadata = self
            .file
            .get_ref()
            .metadata()
            .await
            .with_context(|| format!("cannot read the length of {}", path.display()))?;
        Ok(metadata.len())
    }

    /// Reads the frame at `pos` if the first `len` bytes of the file hold it
    /// whole. The file's read position must be `pos`; after anything but
    /// [`Next::Frame`] it is somewhere after it (see [`Reader::seek_to_pos`]).
    async fn next(&mut self, len: u64) -> Result<Next> {
        let left = len.saturating_sub(self.pos);
        if left == 0 {
            return Ok(Next::End);
        }
        if left < HEADER_LEN as u64 {
            return Ok(cut_short(format!(
                "a header cut short ({left} of {HEADER_LEN} bytes)"
            )));
        }
        let mut head = [0u8; HEADER_LEN];
        self.file
            .read_exact(&mut head)
            .await
            .context("cannot read a frame header")?;
        let header = match decode_header(&head, &self.limits) {
            Ok(Decoded::Done(header, _)) => header,
            Ok(Decoded::NeedMore(_)) => return Ok(cut_short("a header cut short".to_owned())),
            Err(error) => {
                return Ok(Next::Tail {
                    reason: format!("a header that cannot start a frame: {error}"),
                    unreadable: true,
                });
            }
        };
        let frame_len = header.frame_len();
        if left < frame_len as u64 {
            return Ok(cut_short(format!(
                "a frame cut short ({left} of {frame_len} bytes)"
            )));
        }
        if self.frame.capacity() > KEPT_FRAME_BUFFER {
            self.frame = Vec::new();
        }
        self.frame.clear();
        self.frame.extend_from_slice(&head);
        // The file's length shows these bytes are there: the allocation is
        // no larger than the file (and at most 1 GiB and a header).
        self.frame.resize(frame_len, 0);
        self.file
            .read_exact(self.frame.get_mut(HEADER_LEN..).unwrap_or_default())
            .await
            .context("cannot read a frame")?;
        Ok(Next::Frame)
    }

    /// The frame [`Reader::next`] read, decoded.
    fn frame(&self) -> Result<FrameRef<'_>> {
        match decode_frame(&self.frame, &self.limits) {
            Ok(Decoded::Done(frame, _)) => Ok(frame),
            // `next` read a whole frame whose header it checked.
            Ok(Decoded::NeedMore(_)) => anyhow::bail!("internal error: a frame cut short"),
            Err(error) => Err(error).context("internal error: a frame that does not decode"),
        }
    }

    /// Moves past the frame [`Reader::next`] read.
    fn advance(&mut self) {
        self.pos += self.frame.len() as u64;
        self.index += 1;
    }

    /// Sets the file's read position back to `pos`, dropping the buffer.
    async fn seek_to_pos(&mut self) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(self.pos))
            .await
            .context("cannot seek in the file")?;
        Ok(())
    }

    /// After the file shrank below `pos`: walks the frame headers from the
    /// start to the last frame boundary within `len`, and goes on from there.
    async fn rewalk(&mut self, len: u64) -> Result<()> {
        self.pos = 0;
        self.index = 0;
        self.seek_to_pos().await?;
        let mut head = [0u8; HEADER_LEN];
        while len - self.pos >= HEADER_LEN as u64 {
            self.file
                .read_exact(&mut head)
                .await
                .context("cannot read a frame header")?;
            let Ok(Decoded::Done(header, _)) = decode_header(&head, &self.limits) else {
                break;
            };
            if len - self.pos < header.frame_len() as u64 {
                break;
            }
            self.file
                .seek(SeekFrom::Current(i64::from(header.body_size)))
                .await
                .context("cannot seek in the file")?;
            self.pos += header.frame_len() as u64;
            self.index += 1;
        }
        self.seek_to_pos().await
    }
}

fn cut_short(reason: String) -> Next {
    Next::Tail {
        reason,
        unreadable: false,
    }
}

/// Where the frames go.
struct Output {
    stdout: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    preview: usize,
}

/// One frame as a JSON line.
#[derive(Serialize)]
struct JsonFrame<'a> {
    index: u64,
    offset: u64,
    version: u32,
    crc_size: usize,
    len: usize,
    crc_ok: bool,
    crc_stored: u32,
    crc_computed: u32,
    /// `"utf-8"` when the payload is valid UTF-8 (and `payload` is that
    /// text), `"hex"` otherwise (and `payload` is lowercase hex).
    encoding: &'static str,
    payload: Cow<'a, str>,
}

impl Output {
    fn frame(&mut self, index: u64, offset: u64, frame: &FrameRef<'_>) -> Result<()> {
        let version = u32::from(frame.header.version);
        let crc_size = frame.header.crc_size.len();
        let len = frame.payload.len();
        if self.json {
            let (encoding, payload) = match std::str::from_utf8(frame.payload) {
                Ok(text) => ("utf-8", Cow::Borrowed(text)),
                Err(_) => ("hex", Cow::Owned(hex(frame.payload))),
            };
            let line = JsonFrame {
                index,
                offset,
                version,
                crc_size,
                len,
                crc_ok: frame.crc_ok(),
                crc_stored: frame.received_crc,
                crc_computed: frame.computed_crc,
                encoding,
                payload,
            };
            serde_json::to_writer(&mut self.stdout, &line).context("cannot write stdout")?;
            writeln!(self.stdout).context("cannot write stdout")?;
            return Ok(());
        }
        let crc = if frame.crc_ok() {
            "ok".to_owned()
        } else {
            let width = 2 + 2 * crc_size;
            format!(
                "BAD (stored {:#0width$x}, computed {:#0width$x})",
                frame.received_crc, frame.computed_crc
            )
        };
        write!(
            self.stdout,
            "{index} offset={offset} version={version} crc_size={crc_size} len={len} crc={crc}"
        )
        .context("cannot write stdout")?;
        if self.preview > 0 {
            let shown = frame.payload.get(..self.preview).unwrap_or(frame.payload);
            let more = if shown.len() < len { "..." } else { "" };
            write!(self.stdout, " \"{}\"{more}", shown.escape_ascii())
                .context("cannot write stdout")?;
        }
        writeln!(self.stdout).context("cannot write stdout")
    }

    fn flush(&mut self) -> Result<()> {
        self.stdout.flush().context("cannot write stdout")
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{CrcSize, Version, encode_frame};

    /// A frame as [`read_bytes`] saw it.
    #[derive(Debug)]
    struct Seen {
        offset: u64,
        frame_len: u64,
        payload: Vec<u8>,
        crc_ok: bool,
    }

    /// What a [`Reader`] makes of `bytes`: its frames, and the tail after
    /// the last frame as (offset, bytes).
    fn read_bytes(bytes: &[u8]) -> (Vec<Seen>, Option<(u64, u64)>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut reader = Reader::new(File::open(file.path()).await.unwrap());
            let len = reader.len(file.path()).await.unwrap();
            let mut frames = Vec::new();
            loop {
                match reader.next(len).await.unwrap() {
                    Next::Frame => {
                        let frame = reader.frame().unwrap();
                        frames.push(Seen {
                            offset: reader.pos,
                            frame_len: frame.raw.len() as u64,
                            payload: frame.payload.to_vec(),
                            crc_ok: frame.crc_ok(),
                        });
                        reader.advance();
                    }
                    Next::End => return (frames, None),
                    Next::Tail { .. } => return (frames, Some((reader.pos, len - reader.pos))),
                }
            }
        })
    }

    fn version_and_crc() -> impl Strategy<Value = (Version, CrcSize)> {
        (
            prop_oneof![Just(Version::V1), Just(Version::V2)],
            prop_oneof![
                Just(CrcSize::None),
                Just(CrcSize::Crc8),
                Just(CrcSize::Crc16),
                Just(CrcSize::Crc32)
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A file cut anywhere reads as the frames wholly before the cut and
        /// a tail of exactly the bytes after them.
        #[test]
        fn a_cut_anywhere_leaves_the_frames_before_it(
            frames in proptest::collection::vec(
                (version_and_crc(), proptest::collection::vec(any::<u8>(), 0..600)),
                0..6,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for ((version, crc_size), payload) in &frames {
                encode_frame(*version, *crc_size, payload, &mut bytes).unwrap();
                ends.push(bytes.len() as u64);
            }
            let cut = cut.index(bytes.len() + 1);
            let (read, tail) = read_bytes(&bytes[..cut]);
            let whole = ends.iter().filter(|&&end| end <= cut as u64).count();
            prop_assert_eq!(read.len(), whole);
            for (index, seen) in read.iter().enumerate() {
                let start = if index == 0 { 0 } else { ends[index - 1] };
                prop_assert_eq!(seen.offset, start);
                prop_assert_eq!(&seen.payload, &frames[index].1);
                prop_assert!(seen.crc_ok);
            }
            let last = if whole == 0 { 0 } else { ends[whole - 1] };
            let expected = (cut as u64 > last).then(|| (last, cut as u64 - last));
            prop_assert_eq!(tail, expected);
        }

        /// Any bytes at all read without an error: some frames, then
        /// perhaps a tail, which together cover the file exactly. The bytes
        /// are headers with small, often impossible fields, each followed by
        /// a body of any length (too short, too long, a wrong CRC).
        #[test]
        fn any_bytes_read_as_frames_and_a_tail(
            chunks in proptest::collection::vec(
                (0u32..4, 0u32..24, 0u32..6, proptest::collection::vec(any::<u8>(), 0..30)),
                0..8,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            for (version, body_size, crc_size, body) in &chunks {
                for field in [version, body_size, crc_size] {
                    bytes.extend_from_slice(&field.to_be_bytes());
                }
                bytes.extend_from_slice(body);
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let (read, tail) = read_bytes(&bytes);
            let mut end = 0u64;
            for seen in &read {
                prop_assert_eq!(seen.offset, end);
                prop_assert_eq!(
                    seen.frame_len,
                    (HEADER_LEN + seen.payload.len()) as u64 + u64::from(u32::from_be_bytes(
                        bytes[seen.offset as usize + 8..][..4].try_into().unwrap()
                    ))
                );
                end += seen.frame_len;
            }
            match tail {
                Some((offset, len)) => {
                    prop_assert_eq!(offset, end);
                    prop_assert_eq!(offset + len, bytes.len() as u64);
                }
                None => prop_assert_eq!(end, bytes.len() as u64),
            }
        }
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
