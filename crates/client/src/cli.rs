//! The command line: `client send`, `client bench`, `client read` and
//! `client consume` (clap derive).
//!
//! The option names are part of the interface: the xtask scenarios and the
//! README call them.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use proto::{CrcSize, Version};

/// Sends CRC frames (docs/PROTOCOL.md) to a listener, directly or through a
/// SOCKS5 proxy, and benchmarks it.
#[derive(Debug, Parser)]
#[command(name = "client", about, version)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send frames: one per MESSAGE, the whole of --file, or one per line of stdin.
    Send(SendArgs),
    /// Send many frames of one size over several connections and report the rate.
    Bench(BenchArgs),
    /// Print the frames of a file written by the server's `file` sink,
    /// checking every CRC. Exit status: 0 every frame intact, 1 an error,
    /// 2 a usage error, 3 a frame with a bad CRC or a torn tail.
    Read(ReadArgs),
    /// Print (or count, --count) the messages of a NATS JetStream stream
    /// that the server's `nats` handler filled, with their headers: from the
    /// start to the stream's last message as of the start, then exit.
    Consume(ConsumeArgs),
}

/// `client consume`.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// A NATS server, as nats://HOST:PORT (or HOST:PORT, tls://...); repeat
    /// it for the other servers of a cluster.
    #[arg(long = "nats", value_name = "URL", required = true)]
    pub(crate) servers: Vec<String>,
    /// The JetStream stream.
    #[arg(long, value_name = "NAME")]
    pub(crate) stream: String,
    /// Only the messages whose subject matches this (wildcards allowed).
    #[arg(long, value_name = "SUBJECT")]
    pub(crate) subject: Option<String>,
    /// The user name (with --password).
    #[arg(long, value_name = "USER", requires = "password",
          conflicts_with_all = ["token", "creds"])]
    pub(crate) user: Option<String>,
    /// The password (with --user).
    #[arg(long, value_name = "PASS", requires = "user")]
    pub(crate) password: Option<String>,
    /// A token instead of a user and password.
    #[arg(long, value_name = "TOKEN", conflicts_with = "creds")]
    pub(crate) token: Option<String>,
    /// A .creds file (a JWT and an NKey seed) instead.
    #[arg(long, value_name = "FILE")]
    pub(crate) creds: Option<PathBuf>,
    /// Print a summary instead of the messages: how many, how many distinct
    /// Nats-Msg-Id values (and so duplicates), and per client stream the
    /// lowest and highest frame number and the numbers below it never seen.
    #[arg(long)]
    pub(crate) count: bool,
    /// JSON: one object per message, or the --count summary as one object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Payload bytes shown per message, escaped in text, as text or hex in
    /// JSON (0: none).
    #[arg(long, value_name = "N", default_value_t = 32, conflicts_with = "count")]
    pub(crate) preview: usize,
    /// Give up (exit 1) when the stream's last message (as of the start)
    /// has not been read within this; it also bounds connecting.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
}

/// `client read`.
#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The file a `file` sink wrote (or a `PATH.torn-OFFSET` file it kept).
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Print one JSON object per frame instead of a line of text; the
    /// payload is UTF-8 text when valid, hex otherwise ("encoding" says which).
    #[arg(long)]
    pub(crate) json: bool,
    /// Payload bytes shown, escaped, at the end of each text line (0: none).
    #[arg(long, value_name = "N", default_value_t = 32, conflicts_with = "json")]
    pub(crate) preview: usize,
    /// After the end, wait for the file to grow and print new frames as they
    /// complete, like `tail -f`, until Ctrl-C. A frame cut short at the end
    /// is one still being written, not a torn tail.
    #[arg(long)]
    pub(crate) follow: bool,
}

/// `client send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The frames' format.
    #[command(flatten)]
    pub(crate) format: FormatArgs,
    /// Read an ack for every frame and fail on the first one that is not ok.
    /// Without it, anything the listener sends is discarded, and the client
    /// exits once the listener closes after reading every frame.
    #[arg(long)]
    pub(crate) wait_ack: bool,
    /// Survive broken connections (implies --wait-ack): start every
    /// connection with a session frame (a random stream id, and the number of
    /// the next frame), keep each frame until it is acked ok (at most 1024 at
    /// once), and when a connection breaks (EOF, reset, --timeout, status 5)
    /// connect again (the next of --servers first) and resend every frame
    /// without an ok ack, with its old number. Status 1 (crc mismatch) gives
    /// the frame up. Exit status: 0 every frame acked ok, 4 some given up,
    /// 1 an error (e.g. a server that does not know session frames).
    #[arg(long)]
    pub(crate) resend: bool,
    /// With --resend: open no connection after this long from the start;
    /// the frames not acked ok by then are given up.
    #[arg(long, value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, requires = "resend")]
    pub(crate) resend_deadline: Duration,
    /// With --resend: print the summary as one JSON object on stdout.
    #[arg(long, requires = "resend")]
    pub(crate) json: bool,
    /// What to send.
    #[command(flatten)]
    pub(crate) input: Input,
}

/// The payloads of `client send`: exactly one of the three sources.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Input {
    /// Payloads, one frame each (the argument's bytes, as given).
    #[arg(value_name = "MESSAGE")]
    pub(crate) messages: Vec<OsString>,
    /// Send the whole file as one frame.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Send one frame per line of stdin, without the line ending ("\n" or
    /// "\r\n"), as the lines come (`tail -f log | client send --stdin-lines`);
    /// a last line without a newline is sent too.
    #[arg(long)]
    pub(crate) stdin_lines: bool,
}

/// `client bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Where and how to connect.
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The frames' format.
    #[command(flatten)]
    pub(crate) format: FormatArgs,
    /// Frames to send in all, split evenly over the connections.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) frames: u64,
    /// Payload bytes per frame.
    #[arg(long, value_name = "BYTES")]
    pub(crate) size: usize,
    /// Connections to open, each with its own task.
    #[arg(long, value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS))]
    pub(crate) connections: u64,
    /// Read the acks and report their latency; fail on the first one that is not ok.
    #[arg(long)]
    pub(crate) wait_ack: bool,
    /// With --wait-ack: at most N frames per connection sent and not yet
    /// acked (1 is ping-pong). Without it the client sends as fast as it can,
    /// and the ack latency is mostly time spent queued behind earlier frames.
    #[arg(long, value_name = "N", requires = "wait_ack",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) window: Option<u32>,
    /// Survive broken connections (needs --wait-ack): each connection task
    /// is a stream with a random id, sends a session frame first on every
    /// connection, keeps its frames until acked ok (at most --window, 1024
    /// without it), and when a connection breaks (EOF, reset, --timeout,
    /// status 5) connects again (the next of --servers first) and resends
    /// every frame without an ok ack. Exit status: 0 every frame acked ok,
    /// 4 some given up, 1 an error.
    #[arg(long, requires = "wait_ack")]
    pub(crate) resend: bool,
    /// With --resend: open no connection after this long from the start;
    /// the frames not acked ok by then are given up.
    #[arg(long, value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, requires = "resend")]
    pub(crate) resend_deadline: Duration,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The most connections `bench` opens.
const MAX_CONNECTIONS: u64 = 10_000;

/// The target, the optional SOCKS5 proxy, and the deadline of every wait.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The listener, as HOST:PORT (exactly one of --addr and --servers).
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "servers",
        conflicts_with = "servers"
    )]
    pub(crate) addr: Option<String>,
    /// Listeners to try in turn, as HOST:PORT,HOST:PORT,... (instead of
    /// --addr): a connection tries them from the first (bench: connection i
    /// from the i-th) until one takes it; with --resend, a connection after
    /// a break starts with the one after the listener that broke.
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub(crate) servers: Vec<String>,
    /// The deadline of every network wait: connect, proxy handshake, each
    /// write, each ack, the final read to EOF (humantime: 10s, 500ms, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Connect through this SOCKS5 proxy (RFC 1928), which then connects to
    /// --addr (or each of --servers).
    #[arg(long, value_name = "PROXY_HOST:PORT")]
    pub(crate) socks5: Option<String>,
    /// The user name for the proxy (RFC 1929); without it, no authentication.
    #[arg(long, value_name = "USER", requires_all = ["socks5", "proxy_password"])]
    pub(crate) proxy_user: Option<String>,
    /// The password for the proxy; needs --proxy-user.
    #[arg(long, value_name = "PASS", requires = "proxy_user")]
    pub(crate) proxy_password: Option<String>,
}

impl ConnectArgs {
    /// The listeners: `--addr`, or every address of `--servers`, in order.
    pub(crate) fn targets(&self) -> Vec<String> {
        match &self.addr {
            Some(addr) => vec![addr.clone()],
            None => self.servers.clone(),
        }
    }
}

/// The version and CRC size of the frames sent.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct FormatArgs {
    /// Frame version: 1 is the reference Python client's format, 2 the native one.
    #[arg(long, value_name = "1|2", default_value = "1", value_parser = parse_version)]
    pub(crate) version: Version,
    /// CRC trailer size in bytes (0 means no checksum, which listeners refuse
    /// unless configured to allow it); 1 matches the reference client's CRC-8.
    #[arg(long, value_name = "0|1|2|4", default_value = "1", value_parser = parse_crc_size)]
    pub(crate) crc_size: CrcSize,
}

fn parse_version(text: &str) -> Result<Version, String> {
    let raw: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not 1 or 2"))?;
    Version::try_from(raw).map_err(|error| error.to_string())
}

fn parse_crc_size(text: &str) -> Result<CrcSize, String> {
    let raw: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not 0, 1, 2 or 4"))?;
    CrcSize::try_from(raw).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("client").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_defaults_to_the_reference_format() {
        let Command::Send(send) = parse(&["send", "--addr", "h:1", "a", "b"]).unwrap().command
        else {
            panic!("expected send");
        };
        assert_eq!(send.format.version, Version::V1);
        assert_eq!(send.format.crc_size, CrcSize::Crc8);
        assert_eq!(send.connect.timeout, Duration::from_secs(10));
        assert_eq!(send.input.messages, ["a", "b"]);
        assert!(!send.wait_ack);
    }

    #[test]
    fn send_takes_exactly_one_input() {
        assert!(parse(&["send", "--addr", "h:1"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--stdin-lines", "a"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--file", "f", "--stdin-lines"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--stdin-lines"]).is_ok());
    }

    #[test]
    fn takes_exactly_one_of_addr_and_servers() {
        assert!(parse(&["send", "a"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--servers", "h:2", "a"]).is_err());
        let Command::Send(send) = parse(&["send", "--servers", "h:1,h:2", "--servers", "h:3", "a"])
            .unwrap()
            .command
        else {
            panic!("expected send");
        };
        assert_eq!(send.connect.targets(), ["h:1", "h:2", "h:3"]);
        assert_eq!(send.input.messages, ["a"]);
        let Command::Send(send) = parse(&["send", "--addr", "h:1", "a"]).unwrap().command else {
            panic!("expected send");
        };
        assert_eq!(send.connect.targets(), ["h:1"]);
        let bench = ["bench", "--frames", "1", "--size", "1"];
        assert!(parse(&[&bench[..], &["--servers", "h:1,h:2"]].concat()).is_ok());
        assert!(parse(&bench).is_err());
    }

    #[test]
    fn resend_options_need_resend_and_bench_needs_wait_ack() {
        let Command::Send(send) = parse(&["send", "--addr", "h:1", "a"]).unwrap().command else {
            panic!("expected send");
        };
        assert!(!send.resend && !send.json);
        assert_eq!(send.resend_deadline, Duration::from_secs(60));
        let Command::Send(send) = parse(&[
            "send",
            "--addr",
            "h:1",
            "--resend",
            "--resend-deadline",
            "2s",
            "--json",
            "a",
        ])
        .unwrap()
        .command
        else {
            panic!("expected send");
        };
        assert!(send.resend && send.json);
        assert_eq!(send.resend_deadline, Duration::from_secs(2));
        assert!(parse(&["send", "--addr", "h:1", "--resend-deadline", "2s", "a"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--json", "a"]).is_err());
        let bench = ["bench", "--addr", "h:1", "--frames", "1", "--size", "1"];
        assert!(parse(&[&bench[..], &["--resend"]].concat()).is_err());
        let Command::Bench(bench) = parse(&[&bench[..], &["--resend", "--wait-ack"]].concat())
            .unwrap()
            .command
        else {
            panic!("expected bench");
        };
        assert!(bench.resend && bench.wait_ack);
        assert_eq!(bench.resend_deadline, Duration::from_secs(60));
    }

    #[test]
    fn consume_parses_its_options() {
        let Command::Consume(consume) = parse(&[
            "consume",
            "--nats",
            "nats://a:4222",
            "--nats",
            "b:4222",
            "--stream",
            "FRAMES",
        ])
        .unwrap()
        .command
        else {
            panic!("expected consume");
        };
        assert_eq!(consume.servers, ["nats://a:4222", "b:4222"]);
        assert_eq!(consume.stream, "FRAMES");
        assert_eq!(consume.subject, None);
        assert!(!consume.count && !consume.json);
        assert_eq!(consume.preview, 32);
        assert_eq!(consume.timeout, Duration::from_secs(30));
        let Command::Consume(consume) = parse(&[
            "consume",
            "--nats",
            "n:1",
            "--stream",
            "S",
            "--subject",
            "frames.>",
            "--user",
            "u",
            "--password",
            "p",
            "--count",
            "--json",
            "--timeout",
            "5s",
        ])
        .unwrap()
        .command
        else {
            panic!("expected consume");
        };
        assert_eq!(consume.subject.as_deref(), Some("frames.>"));
        assert_eq!(consume.user.as_deref(), Some("u"));
        assert_eq!(consume.password.as_deref(), Some("p"));
        assert!(consume.count && consume.json);
        assert_eq!(consume.timeout, Duration::from_secs(5));
    }

    #[test]
    fn consume_takes_one_kind_of_credentials() {
        let base = ["consume", "--nats", "n:1", "--stream", "S"];
        let with = |more: &[&str]| parse(&[&base[..], more].concat());
        assert!(parse(&["consume", "--stream", "S"]).is_err());
        assert!(parse(&["consume", "--nats", "n:1"]).is_err());
        assert!(with(&["--user", "u"]).is_err());
        assert!(with(&["--password", "p"]).is_err());
        assert!(with(&["--user", "u", "--password", "p", "--token", "t"]).is_err());
        assert!(with(&["--token", "t", "--creds", "f"]).is_err());
        assert!(with(&["--user", "u", "--password", "p", "--creds", "f"]).is_err());
        assert!(with(&["--token", "t"]).is_ok());
        assert!(with(&["--creds", "f"]).is_ok());
        assert!(with(&["--count", "--preview", "4"]).is_err());
    }

    #[test]
    fn rejects_unknown_versions_and_crc_sizes() {
        assert!(parse(&["send", "--addr", "h:1", "--version", "3", "a"]).is_err());
        assert!(parse(&["send", "--addr", "h:1", "--crc-size", "3", "a"]).is_err());
        let Command::Send(send) = parse(&[
            "send",
            "--addr",
            "h:1",
            "--version",
            "2",
            "--crc-size",
            "0",
            "a",
        ])
        .unwrap()
        .command
        else {
            panic!("expected send");
        };
        assert_eq!(send.format.version, Version::V2);
        assert_eq!(send.format.crc_size, CrcSize::None);
    }

    #[test]
    fn proxy_credentials_come_in_pairs_and_need_a_proxy() {
        let base = ["send", "--addr", "h:1", "--socks5", "p:1080"];
        assert!(parse(&[&base[..], &["--proxy-user", "u", "a"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--proxy-password", "p", "a"]].concat()).is_err());
        let both = ["--proxy-user", "u", "--proxy-password", "p", "a"];
        assert!(parse(&[&base[..], &both[..]].concat()).is_ok());
        let no_proxy = ["send", "--addr", "h:1"];
        assert!(parse(&[&no_proxy[..], &both[..]].concat()).is_err());
    }

    #[test]
    fn bench_parses_its_options() {
        let Command::Bench(bench) = parse(&[
            "bench",
            "--addr",
            "h:1",
            "--frames",
            "100",
            "--size",
            "64",
            "--connections",
            "4",
            "--wait-ack",
            "--json",
            "--timeout",
            "500ms",
        ])
        .unwrap()
        .command
        else {
            panic!("expected bench");
        };
        assert_eq!((bench.frames, bench.size, bench.connections), (100, 64, 4));
        assert!(bench.wait_ack && bench.json);
        assert_eq!(bench.connect.timeout, Duration::from_millis(500));
        assert!(parse(&["bench", "--addr", "h:1", "--frames", "0", "--size", "1"]).is_err());
    }

    #[test]
    fn read_parses_its_options() {
        let Command::Read(read) = parse(&["read", "f"]).unwrap().command else {
            panic!("expected read");
        };
        assert_eq!(read.file, PathBuf::from("f"));
        assert_eq!(read.preview, 32);
        assert!(!read.json && !read.follow);
        let Command::Read(read) = parse(&["read", "--json", "--follow", "f"]).unwrap().command
        else {
            panic!("expected read");
        };
        assert!(read.json && read.follow);
        assert!(parse(&["read"]).is_err());
        assert!(parse(&["read", "--json", "--preview", "3", "f"]).is_err());
    }
}
