//! `client send`: frames from arguments, a file or the lines of stdin,
//! written in batches, with the acks optionally read and checked.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use indicatif::ProgressBar;
use proto::encode_frame;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    net::tcp::OwnedWriteHalf,
    sync::watch,
    time::Instant,
};

use crate::{
    ack::{
        AckFailure, Sent, discarding_input, drain_to_eof, read_acks, read_acks_streaming,
        with_ack_reader,
    },
    cli::{FormatArgs, Input, SendArgs},
    connect::Dialer,
    deadline::within,
    output,
    resend::{self, Settings, Source, Summary},
};

/// Frames are encoded into one buffer and written once it holds this much:
/// one `write` per batch, not per frame.
const BATCH_LEN: usize = 256 * 1024;

/// Payload bytes shown of a rejected frame.
const PREVIEW_LEN: usize = 32;

/// Sends the frames, then shuts the write side down. With `--wait-ack` it
/// also reads an ack per frame and fails on the first that is not ok, and
/// returns after the last ack. Without, it discards whatever the listener
/// sends and returns when the listener closes (which it does once it has read
/// every frame). Prints a one-line summary to stderr.
///
/// # Errors
///
/// When the input cannot be read, the connection fails or times out, or
/// (with `--wait-ack`) an ack is missing, out of order or not ok.
pub(crate) async fn run(args: SendArgs) -> Result<ExitCode> {
    if args.resend {
        return send_resending(&args).await;
    }
    if args.input.stdin_lines {
        return send_lines(&args).await.map(|()| ExitCode::SUCCESS);
    }
    let payloads = read_payloads(&args.input).await?;
    check_lengths(&payloads, args.format)?;
    let dialer = Dialer::new(&args.connect).await?;
    let timeout = dialer.timeout();
    let (used, stream) = dialer.connect_from(0).await?;
    let (mut reader, mut writer) = stream.into_split();
    let writing = write_frames(&mut writer, &payloads, args.format, timeout);
    let frames = payloads.len() as u64;
    let addr = dialer.name(used);
    let wire_len = if args.wait_ack {
        let acks = async {
            read_acks(&mut reader, frames, timeout, |_| {})
                .await
                .map_err(|failure| explain(failure, &payloads))
                .with_context(|| format!("waiting for acks from {addr}"))
        };
        with_ack_reader(writing, acks).await?.0
    } else {
        let written = discarding_input(&mut reader, writing).await?;
        // Closing while the listener still sends (acks nobody asked for)
        // makes the kernel reset the connection and drop whatever of ours is
        // still unsent: the tail of the frames would be lost. Waiting for the
        // listener's close avoids that, and it means every frame was read.
        drain_to_eof(&mut reader, timeout)
            .await
            .context("waiting for the server to close after the last frame")?;
        written
    };
    let acked = if args.wait_ack {
        format!(", {frames} acked ok")
    } else {
        String::new()
    };
    eprintln!("sent {frames} frames ({wire_len} bytes){acked}");
    Ok(ExitCode::SUCCESS)
}

/// Fails when a payload does not fit in one frame.
fn check_lengths(payloads: &[Vec<u8>], format: FormatArgs) -> Result<()> {
    let too_long = u32::MAX as usize - format.crc_size.len();
    if let Some((index, payload)) = payloads
        .iter()
        .enumerate()
        .find(|(_, p)| p.len() > too_long)
    {
        bail!(
            "frame {index}: a payload of {} bytes does not fit in one frame",
            payload.len()
        );
    }
    Ok(())
}

/// `client send --resend`: the frames as one stream that survives broken
/// connections (see [`crate::resend`]). Prints the summary on stderr, or as
/// JSON on stdout with `--json`; exit status 4 when frames were given up.
async fn send_resending(args: &SendArgs) -> Result<ExitCode> {
    let source = if args.input.stdin_lines {
        Source::lines(args.format)
    } else {
        let payloads = read_payloads(&args.input).await?;
        check_lengths(&payloads, args.format)?;
        let mut frames = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            let mut frame = BytesMut::new();
            encode_frame(
                args.format.version,
                args.format.crc_size,
                payload,
                &mut frame,
            )
            .with_context(|| format!("encoding frame {index}"))?;
            frames.push(frame.freeze());
        }
        Source::List(frames.into_iter())
    };
    let settings = Settings {
        window: resend::DEFAULT_WINDOW,
        deadline: Instant::now() + args.resend_deadline,
    };
    let dialer = Dialer::new(&args.connect).await?;
    let progress = ProgressBar::hidden();
    let stream = resend::run_stream(&dialer, source, settings, None, 0, &progress).await?;
    let summary = Summary::new(&[stream]);
    if args.json {
        output::print_json(&summary)?;
    } else {
        eprintln!("{}", summary.human());
    }
    Ok(if summary.tally.given_up > 0 {
        ExitCode::from(resend::GAVE_UP_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

/// The payloads, one per frame.
async fn read_payloads(input: &Input) -> Result<Vec<Vec<u8>>> {
    if let Some(path) = &input.file {
        let payload = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(vec![payload]);
    }
    Ok(input
        .messages
        .iter()
        .map(|message| message.clone().into_encoded_bytes())
        .collect())
}

/// `client send --stdin-lines`: a frame per line of stdin, sent as the lines
/// come. A batch goes out when it is full or when stdin has nothing more
/// buffered, so a slow producer (`tail -f`) gets each line sent at once and
/// memory stays at one batch whatever the input's length.
async fn send_lines(args: &SendArgs) -> Result<()> {
    let dialer = Dialer::new(&args.connect).await?;
    let timeout = dialer.timeout();
    let (used, stream) = dialer.connect_from(0).await?;
    let (mut reader, mut writer) = stream.into_split();
    let (progress, sent) = watch::channel(Sent::default());
    let stdin = BufReader::with_capacity(BATCH_LEN, tokio::io::stdin());
    let writing = write_lines(stdin, &mut writer, args.format, timeout, &progress);
    let addr = dialer.name(used);
    let (wire_len, acked) = if args.wait_ack {
        let acks = async {
            read_acks_streaming(&mut reader, sent, timeout)
                .await
                .map_err(|failure| match failure {
                    AckFailure::Rejected { seq, status } => {
                        anyhow!("frame {seq} (line {}) was rejected: {status}", seq + 1)
                    }
                    other => other.into(),
                })
                .with_context(|| format!("waiting for acks from {addr}"))
        };
        let (wire_len, acked) = with_ack_reader(writing, acks).await?;
        (wire_len, Some(acked))
    } else {
        let written = discarding_input(&mut reader, writing).await?;
        drain_to_eof(&mut reader, timeout)
            .await
            .context("waiting for the server to close after the last frame")?;
        (written, None)
    };
    let frames = progress.borrow().frames;
    let acked = acked.map_or_else(String::new, |n| format!(", {n} acked ok"));
    eprintln!("sent {frames} frames ({wire_len} bytes){acked}");
    Ok(())
}

/// Reads lines (without "\n" or "\r\n"; a last line without a newline counts)
/// and writes a frame per line, publishing the count of frames written.
/// Returns the bytes written.
async fn write_lines<R: AsyncRead + Unpin>(
    mut input: BufReader<R>,
    io: &mut OwnedWriteHalf,
    format: FormatArgs,
    timeout: Duration,
    progress: &watch::Sender<Sent>,
) -> Result<u64> {
    let (mut batch, mut line) = (BytesMut::with_capacity(BATCH_LEN), Vec::new());
    let (mut written, mut frames, mut pending) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .await
            .context("reading stdin")?;
        if read > 0 {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            encode_frame(format.version, format.crc_size, text, &mut batch)
                .with_context(|| format!("encoding line {}", frames + pending + 1))?;
            pending += 1;
        }
        let flush = read == 0 || batch.len() >= BATCH_LEN || input.buffer().is_empty();
        if flush && !batch.is_empty() {
            within(timeout, io.write_all(&batch))
                .await
                .context("writing frames")?;
            written += batch.len() as u64;
            batch.clear();
            frames += pending;
            pending = 0;
            progress.send_modify(|sent| sent.frames = frames);
        }
        if read == 0 {
            break;
        }
    }
    within(timeout, io.shutdown())
        .await
        .context("shutting the connection down for writing")?;
    progress.send_modify(|sent| sent.done = true);
    Ok(written)
}

/// Encodes every frame, writes them in batches of about [`BATCH_LEN`] bytes,
/// and shuts the write side down. Returns the bytes written.
async fn write_frames(
    io: &mut OwnedWriteHalf,
    payloads: &[Vec<u8>],
    format: FormatArgs,
    timeout: Duration,
) -> Result<u64> {
    let mut batch = BytesMut::with_capacity(BATCH_LEN);
    let mut written = 0u64;
    for (index, payload) in payloads.iter().enumerate() {
        encode_frame(format.version, format.crc_size, payload, &mut batch)
            .with_context(|| format!("encoding frame {index}"))?;
        if batch.len() >= BATCH_LEN || index + 1 == payloads.len() {
            within(timeout, io.write_all(&batch))
                .await
                .context("writing frames")?;
            written += batch.len() as u64;
            batch.clear();
        }
    }
    within(timeout, io.shutdown())
        .await
        .context("shutting the connection down for writing")?;
    Ok(written)
}

/// Names the rejected frame by index and payload preview.
fn explain(failure: AckFailure, payloads: &[Vec<u8>]) -> anyhow::Error {
    match failure {
        AckFailure::Rejected { seq, status } => {
            let payload = usize::try_from(seq)
                .ok()
                .and_then(|index| payloads.get(index));
            let preview = payload.map_or_else(String::new, |payload| preview(payload));
            anyhow!("frame {seq} ({preview}) was rejected: {status}")
        }
        other => other.into(),
    }
}

/// The start of `payload` as quoted, escaped text, with "…" when cut.
fn preview(payload: &[u8]) -> String {
    let shown = payload.get(..PREVIEW_LEN).unwrap_or(payload);
    let text = String::from_utf8_lossy(shown);
    let more = if shown.len() < payload.len() {
        "…"
    } else {
        ""
    };
    format!("{:?}{more}, {} bytes", text, payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_short_and_quoted() {
        assert_eq!(preview(b"hi"), "\"hi\", 2 bytes");
        let long = preview(&[b'x'; 100]);
        assert!(
            long.starts_with(&format!("\"{}\"…", "x".repeat(PREVIEW_LEN))),
            "{long}"
        );
        assert!(long.ends_with(", 100 bytes"));
    }
}
