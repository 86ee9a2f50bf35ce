//! `client consume`: the messages of a JetStream stream that the server's
//! `nats` handler filled, printed one per line (text or JSON) or counted.
//!
//! It reads with an ordered consumer (ephemeral, no acks, one replica,
//! recreated by `async-nats` when it sees a gap) from the stream's first
//! message until the last one as of the start (or until the server says no
//! message is pending for the filter), so a stream that keeps growing still
//! ends the run. Everything is bounded by `--timeout`.
//!
//! `--count` reads a message's client stream and frame number from the
//! compact headers (`Netkit-Source` `stream=`, `Netkit-Frame` `seq=`, read
//! by `proto::pairs`), else from the split ones (`Netkit-Stream`,
//! `Netkit-Seq`), else from the two halves of its `Nats-Msg-Id`, each on its
//! own. Printing shows every header as it came, pairs and all.
//!
//! `--count` keeps every distinct `Nats-Msg-Id` and every (stream, seq) seen,
//! so its memory grows with the stream's distinct messages (a few dozen
//! bytes each); printing keeps one message at a time.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashSet},
    io::{BufWriter, Write},
    process::ExitCode,
    str::FromStr,
};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::{
    ConnectOptions, HeaderMap, ServerAddr,
    jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig},
};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::{Instant, timeout_at};

use proto::pairs::find_pair;

use crate::{cli::ConsumeArgs, resend::hex};

/// The header that names a message (`{stream hex}-{seq}`).
const MSG_ID: &str = "Nats-Msg-Id";
/// The compact header about the frame (`v=..;crc=..;seq=..;received=..`).
const FRAME: &str = "Netkit-Frame";
/// Its pair with the frame's number in its stream.
const FRAME_SEQ: &str = "seq";
/// The compact header about where the frame came from
/// (`client=..;listener=..;conn=..;stream=..`).
const SOURCE: &str = "Netkit-Source";
/// Its pair with the client's stream id, in hex.
const SOURCE_STREAM: &str = "stream";
/// The split header with the client's stream id, in hex.
const STREAM: &str = "Netkit-Stream";
/// The split header with the frame's number in its stream.
const SEQ: &str = "Netkit-Seq";

/// Prints or counts the stream's messages.
///
/// # Errors
///
/// When the servers cannot be reached, the stream does not exist, reading
/// fails, or the last message is not read within `--timeout`.
pub(crate) async fn run(args: ConsumeArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + args.timeout;
    let late = || {
        anyhow!(
            "timed out after {}",
            humantime::format_duration(args.timeout)
        )
    };
    let client = timeout_at(deadline, connect(&args))
        .await
        .map_err(|_| late())
        .and_then(|connected| connected)
        .with_context(|| format!("connecting to {}", args.servers.join(",")))?;
    let context = jetstream::new(client);
    let name = &args.stream;
    let mut stream = timeout_at(deadline, context.get_stream(name))
        .await
        .map_err(|_| late())?
        .with_context(|| format!("opening the stream {name}"))?;
    let (last, stored) = {
        let info = timeout_at(deadline, stream.info())
            .await
            .map_err(|_| late())?
            .with_context(|| format!("reading the state of the stream {name}"))?;
        (info.state.last_sequence, info.state.messages)
    };
    let mut output = Output::new(&args);
    if stored > 0 {
        let config = OrderedConfig {
            filter_subject: args.subject.clone().unwrap_or_default(),
            deliver_policy: DeliverPolicy::All,
            ..OrderedConfig::default()
        };
        let consumer = timeout_at(deadline, stream.create_consumer(config))
            .await
            .map_err(|_| late())?
            .with_context(|| format!("creating a consumer on the stream {name}"))?;
        if consumer.cached_info().num_pending > 0 {
            let mut messages = timeout_at(deadline, consumer.messages())
                .await
                .map_err(|_| late())?
                .context("reading the stream")?;
            let mut read = 0u64;
            loop {
                let next = timeout_at(deadline, messages.next()).await.map_err(|_| {
                    anyhow!(
                        "timed out after {} having read {read} messages, before sequence {last}",
                        humantime::format_duration(args.timeout)
                    )
                })?;
                let Some(message) = next else {
                    bail!("the consumer ended after {read} messages, before sequence {last}");
                };
                let message = message.context("reading the stream")?;
                let info = message.info().map_err(|error| anyhow!("{error}"))?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                read += 1;
                if !output.message(seq, &message)? {
                    return Ok(ExitCode::SUCCESS);
                }
                if seq >= last || pending == 0 {
                    break;
                }
            }
        }
    }
    output.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Connects with the credentials given, to any of the servers.
async fn connect(args: &ConsumeArgs) -> Result<async_nats::Client> {
    let servers = args
        .servers
        .iter()
        .map(|url| ServerAddr::from_str(url).with_context(|| format!("--nats {url:?}")))
        .collect::<Result<Vec<_>>>()?;
    let mut options = ConnectOptions::new()
        .name("netkit client consume")
        .connection_timeout(args.timeout);
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &args.creds {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(options.connect(servers).await?)
}

/// Where the messages (or the count) go.
struct Output {
    stdout: BufWriter<std::io::Stdout>,
    json: bool,
    preview: usize,
    count: Option<Count>,
}

impl Output {
    fn new(args: &ConsumeArgs) -> Self {
        Self {
            stdout: BufWriter::new(std::io::stdout()),
            json: args.json,
            preview: args.preview,
            count: args.count.then(Count::default),
        }
    }

    /// Prints or counts one message; false when stdout is closed (a reader
    /// that stopped early, as `| head` does, is not an error).
    fn message(&mut self, seq: u64, message: &jetstream::Message) -> Result<bool> {
        if let Some(count) = &mut self.count {
            count.add_message(message.headers.as_ref());
            return Ok(true);
        }
        let headers = headers(message.headers.as_ref());
        let payload = &message.payload;
        let shown = payload.get(..self.preview).unwrap_or(payload);
        let written = if self.json {
            let (encoding, text) = match std::str::from_utf8(shown) {
                Ok(text) => ("utf-8", text.to_owned()),
                Err(_) => ("hex", hex(shown)),
            };
            let line = JsonMessage {
                seq,
                subject: message.subject.as_str(),
                headers: &headers,
                len: payload.len(),
                encoding,
                payload: text,
            };
            serde_json::to_writer(&mut self.stdout, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(self.stdout))
        } else {
            let mut line = format!("{seq} {}", message.subject);
            for (name, value) in &headers {
                line.push_str(&format!(" {name}={}", value.escape_debug()));
            }
            line.push_str(&format!(" len={}", payload.len()));
            if self.preview > 0 {
                let more = if shown.len() < payload.len() {
                    "..."
                } else {
                    ""
                };
                line.push_str(&format!(" \"{}\"{more}", shown.escape_ascii()));
            }
            writeln!(self.stdout, "{line}")
        };
        match written {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(error).context("cannot write stdout"),
        }
    }

    /// Prints the count, if counting, and flushes.
    fn finish(mut self) -> Result<()> {
        if let Some(count) = &self.count {
            let summary = count.summary();
            if self.json {
                serde_json::to_writer(&mut self.stdout, &summary).context("cannot write stdout")?;
                writeln!(self.stdout).context("cannot write stdout")?;
            } else {
                write!(self.stdout, "{}", summary.human()).context("cannot write stdout")?;
            }
        }
        match self.stdout.flush() {
            Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(error).context("cannot write stdout")
            }
            _ => Ok(()),
        }
    }
}

/// One message as a JSON line.
#[derive(Serialize)]
struct JsonMessage<'a> {
    /// The stream sequence.
    seq: u64,
    subject: &'a str,
    headers: &'a BTreeMap<String, String>,
    /// The payload's whole length.
    len: usize,
    /// `"utf-8"` when the shown payload is valid UTF-8 (and `payload` is
    /// that text), `"hex"` otherwise.
    encoding: &'static str,
    /// The first `--preview` bytes of the payload.
    payload: String,
}

/// The headers, by name (the first value of each).
fn headers(map: Option<&HeaderMap>) -> BTreeMap<String, String> {
    map.map(|map| {
        map.iter()
            .filter_map(|(name, values)| {
                values
                    .first()
                    .map(|value| (name.to_string(), value.to_string()))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// What `--count` keeps: the ids, and the numbers seen per client stream.
#[derive(Debug, Default)]
struct Count {
    messages: u64,
    ids: HashSet<String>,
    /// Messages without a `Nats-Msg-Id`: each counts as distinct.
    without_id: u64,
    streams: BTreeMap<String, Seqs>,
}

/// The numbers seen of one client stream.
#[derive(Debug, Default)]
struct Seqs {
    messages: u64,
    seen: HashSet<u64>,
    min_seq: u64,
    max_seq: u64,
}

/// The `--count` summary (`--json` prints exactly this).
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Summary {
    messages: u64,
    distinct_ids: u64,
    /// `messages - distinct_ids`.
    duplicates: u64,
    streams: BTreeMap<String, StreamCount>,
}

/// One client stream in the summary.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct StreamCount {
    messages: u64,
    min_seq: u64,
    max_seq: u64,
    /// Numbers in `0..=max_seq` never seen.
    missing: u64,
}

impl Count {
    /// Counts a message by its headers: see [`Count::add`], with the client
    /// stream from `Netkit-Source`'s `stream=` pair, else `Netkit-Stream`,
    /// and the number from `Netkit-Frame`'s `seq=` pair, else `Netkit-Seq`
    /// (a malformed pair, or a `seq=` that is not a number, counts as
    /// absent).
    fn add_message(&mut self, headers: Option<&HeaderMap>) {
        // Only the headers it needs, read in place (a pair without escapes
        // is borrowed): counting a large stream should cost little per
        // message.
        let get = |name: &str| {
            headers
                .and_then(|map| map.get(name))
                .map(|value| value.as_str())
        };
        let pair = |name: &str, key: &str| get(name).and_then(|value| find_pair(value, key));
        let stream = pair(SOURCE, SOURCE_STREAM).or_else(|| get(STREAM).map(Cow::Borrowed));
        let seq = pair(FRAME, FRAME_SEQ)
            .filter(|seq| seq.parse::<u64>().is_ok())
            .or_else(|| get(SEQ).map(Cow::Borrowed));
        self.add(get(MSG_ID), stream.as_deref(), seq.as_deref());
    }

    /// Counts a message by its id and the client stream and number its
    /// other headers gave, else (each on its own, and for the number also
    /// when the one given is not a number) the two halves of the id
    /// (`{stream}-{seq}`); a message with neither is counted only in the
    /// totals.
    fn add(&mut self, id: Option<&str>, stream: Option<&str>, seq: Option<&str>) {
        self.messages += 1;
        match id {
            Some(id) => {
                if !self.ids.contains(id) {
                    self.ids.insert(id.to_owned());
                }
            }
            None => self.without_id += 1,
        }
        let from_id = id.and_then(|id| id.rsplit_once('-'));
        let stream = stream.or(from_id.map(|(stream, _)| stream));
        let number = |seq: &str| seq.parse::<u64>().ok();
        let seq = seq
            .and_then(number)
            .or_else(|| from_id.and_then(|(_, seq)| number(seq)));
        let (Some(stream), Some(seq)) = (stream, seq) else {
            return;
        };
        let seqs = self.streams.entry(stream.to_owned()).or_default();
        if seqs.messages == 0 {
            (seqs.min_seq, seqs.max_seq) = (seq, seq);
        }
        seqs.messages += 1;
        seqs.min_seq = seqs.min_seq.min(seq);
        seqs.max_seq = seqs.max_seq.max(seq);
        seqs.seen.insert(seq);
    }

    fn summary(&self) -> Summary {
        let distinct_ids = self.ids.len() as u64 + self.without_id;
        Summary {
            messages: self.messages,
            distinct_ids,
            duplicates: self.messages.saturating_sub(distinct_ids),
            streams: self
                .streams
                .iter()
                .map(|(id, seqs)| {
                    let count = StreamCount {
                        messages: seqs.messages,
                        min_seq: seqs.min_seq,
                        max_seq: seqs.max_seq,
                        missing: (seqs.max_seq + 1).saturating_sub(seqs.seen.len() as u64),
                    };
                    (id.clone(), count)
                })
                .collect(),
        }
    }
}

impl Summary {
    /// The summary for people: totals, then a line per client stream.
    fn human(&self) -> String {
        let missing: u64 = self.streams.values().map(|stream| stream.missing).sum();
        let mut text = format!(
            "messages={} distinct_ids={} duplicates={} streams={} missing={missing}\n",
            self.messages,
            self.distinct_ids,
            self.duplicates,
            self.streams.len()
        );
        for (id, stream) in &self.streams {
            text.push_str(&format!(
                "stream {id} messages={} min_seq={} max_seq={} missing={}\n",
                stream.messages, stream.min_seq, stream.max_seq, stream.missing
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_id(ids: &[&str]) -> Summary {
        let mut count = Count::default();
        for id in ids {
            count.add(Some(id), None, None);
        }
        count.summary()
    }

    #[test]
    fn counts_duplicates_and_missing_numbers_per_stream() {
        let summary = by_id(&["aa-0", "aa-1", "aa-1", "aa-3", "bb-2", "bb-2", "bb-2"]);
        assert_eq!(summary.messages, 7);
        assert_eq!(summary.distinct_ids, 4);
        assert_eq!(summary.duplicates, 3);
        assert_eq!(
            summary.streams["aa"],
            StreamCount {
                messages: 4,
                min_seq: 0,
                max_seq: 3,
                missing: 1
            }
        );
        // 0 and 1 were never seen.
        assert_eq!(
            summary.streams["bb"],
            StreamCount {
                messages: 3,
                min_seq: 2,
                max_seq: 2,
                missing: 2
            }
        );
    }

    #[test]
    fn a_complete_stream_has_nothing_missing() {
        let ids: Vec<String> = (0..100)
            .rev()
            .map(|seq| format!("{}-{seq}", "ab".repeat(16)))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let summary = by_id(&ids);
        assert_eq!((summary.messages, summary.duplicates), (100, 0));
        let stream = &summary.streams[&"ab".repeat(16)];
        assert_eq!((stream.min_seq, stream.max_seq, stream.missing), (0, 99, 0));
        assert_eq!(
            summary.human().lines().next(),
            Some("messages=100 distinct_ids=100 duplicates=0 streams=1 missing=0")
        );
    }

    #[test]
    fn the_netkit_headers_win_over_the_id() {
        let mut count = Count::default();
        count.add(Some("x-1"), Some("cc"), Some("5"));
        count.add(None, Some("cc"), Some("4"));
        count.add(None, None, None);
        count.add(Some("no dash"), None, None);
        let summary = count.summary();
        assert_eq!(summary.messages, 4);
        // Two without an id count as distinct, with "x-1" and "no dash".
        assert_eq!((summary.distinct_ids, summary.duplicates), (4, 0));
        assert_eq!(summary.streams.len(), 1);
        assert_eq!(
            summary.streams["cc"],
            StreamCount {
                messages: 2,
                min_seq: 4,
                max_seq: 5,
                missing: 4
            }
        );
    }

    const HEX: &str = "abababababababababababababababab";
    const OTHER: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        map
    }

    /// The one (stream, seqs) `--count` made of these messages.
    fn counted(messages: &[HeaderMap]) -> (u64, BTreeMap<String, StreamCount>) {
        let mut count = Count::default();
        for message in messages {
            count.add_message(Some(message));
        }
        let summary = count.summary();
        (summary.messages, summary.streams)
    }

    fn one(
        stream: &str,
        min_seq: u64,
        max_seq: u64,
        messages: u64,
    ) -> BTreeMap<String, StreamCount> {
        let missing = max_seq + 1 - messages;
        BTreeMap::from([(
            stream.to_owned(),
            StreamCount {
                messages,
                min_seq,
                max_seq,
                missing,
            },
        )])
    }

    /// The compact form, as the handler writes it by default: the stream
    /// and number come from the pairs (here the id disagrees, to tell).
    #[test]
    fn counts_by_the_compact_headers() {
        let messages: Vec<HeaderMap> = (0..3)
            .map(|seq| {
                map(&[
                    (MSG_ID, &format!("{OTHER}-{}", seq + 10)),
                    (
                        FRAME,
                        &format!("v=2;crc=4;seq={seq};received=2026-12-01T13:34:35.968589123Z"),
                    ),
                    (
                        SOURCE,
                        &format!("client=127.0.0.1:5000;listener=in%3Bgest;conn=3;stream={HEX}"),
                    ),
                ])
            })
            .collect();
        assert_eq!(counted(&messages), (3, one(HEX, 0, 2, 3)));
    }

    /// Pairs in another order, unknown keys, an escape: read all the same.
    #[test]
    fn the_compact_pairs_may_come_in_any_order_with_more_keys() {
        let message = map(&[
            (FRAME, "later=x%3Dy;seq=4;v=2"),
            (SOURCE, &format!("stream=%61b{};new=1", &HEX[2..])),
        ]);
        assert_eq!(counted(&[message]), (1, one(HEX, 4, 4, 1)));
    }

    #[test]
    fn the_compact_headers_win_over_the_split_ones() {
        let message = map(&[
            (FRAME, "seq=1"),
            (SOURCE, &format!("stream={HEX}")),
            (STREAM, OTHER),
            (SEQ, "9"),
        ]);
        assert_eq!(counted(&[message]), (1, one(HEX, 1, 1, 1)));
    }

    /// The split form (`headers = "split"`, and servers before it).
    #[test]
    fn counts_by_the_split_headers() {
        let message = map(&[(MSG_ID, &format!("{OTHER}-7")), (STREAM, HEX), (SEQ, "2")]);
        assert_eq!(counted(&[message]), (1, one(HEX, 2, 2, 1)));
    }

    #[test]
    fn counts_by_the_id_alone() {
        let message = map(&[(MSG_ID, &format!("{HEX}-5"))]);
        assert_eq!(counted(&[message]), (1, one(HEX, 5, 5, 1)));
    }

    /// A malformed pair is absent: each half falls back on its own, to the
    /// split header, then to the id.
    #[test]
    fn a_malformed_pair_falls_back() {
        let id = format!("{OTHER}-6");
        let bad_stream = map(&[
            (MSG_ID, &id),
            (FRAME, "seq=3"),
            (SOURCE, "stream=%zz"),
            (STREAM, HEX),
        ]);
        assert_eq!(counted(&[bad_stream]), (1, one(HEX, 3, 3, 1)));
        let bad_seq = map(&[
            (MSG_ID, &id),
            (FRAME, "seq=3;seq=4"),
            (SOURCE, &format!("stream={HEX}")),
        ]);
        assert_eq!(counted(&[bad_seq]), (1, one(HEX, 6, 6, 1)));
        let not_a_number = map(&[
            (MSG_ID, &id),
            (FRAME, "seq=three"),
            (SOURCE, &format!("stream={HEX}")),
            (SEQ, "8"),
        ]);
        assert_eq!(counted(&[not_a_number]), (1, one(HEX, 8, 8, 1)));
        // And a split number that is not one: the id's.
        let split_not_a_number = map(&[(MSG_ID, &id), (STREAM, HEX), (SEQ, "x")]);
        assert_eq!(counted(&[split_not_a_number]), (1, one(HEX, 6, 6, 1)));
        let nothing_usable = map(&[(FRAME, "seq="), (SOURCE, "stream")]);
        assert_eq!(counted(&[nothing_usable]), (1, BTreeMap::new()));
    }

    /// Printing keeps every header as it came, the pairs unexpanded.
    #[test]
    fn printing_keeps_the_compact_headers_whole() {
        let frame = "v=2;crc=4;seq=0;received=2026-12-01T13:34:35.968589123Z";
        let headers = headers(Some(&map(&[(FRAME, frame), (MSG_ID, "ab-0")])));
        assert_eq!(
            headers,
            BTreeMap::from([
                (MSG_ID.to_owned(), "ab-0".to_owned()),
                (FRAME.to_owned(), frame.to_owned()),
            ])
        );
    }

    #[test]
    fn the_json_summary_has_the_documented_fields() {
        let json = serde_json::to_value(by_id(&["aa-0", "aa-0"])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "messages": 2, "distinct_ids": 1, "duplicates": 1,
                "streams": {"aa": {"messages": 2, "min_seq": 0, "max_seq": 0, "missing": 0}}
            })
        );
    }
}
