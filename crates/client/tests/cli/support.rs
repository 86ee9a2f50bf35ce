//! The peers and helpers the tests share.

use std::{
    future::Future,
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use proto::{Ack, AckStatus, Frame, FrameCodec, Limits, encode_ack};
use rustix::process::{Pid, Signal, kill_process};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_util::codec::FramedRead;

/// No test step may take longer.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// Awaits `future` for at most [`LIMIT`].
pub(crate) async fn within<T>(future: impl Future<Output = T>) -> T {
    testkit::within(LIMIT, future).await
}

/// How the client exited and what it printed.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) success: bool,
    /// The exit status (`None` when a signal ended the client).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Starts the client with `args`: stdin empty, stdout and stderr piped, killed
/// if the test drops it.
pub(crate) fn spawn_client(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the client starts")
}

/// Sends SIGINT (the user's Ctrl-C) to a running `child` and waits, bounded by
/// [`LIMIT`], for its exit status.
pub(crate) async fn interrupt(child: &mut Child) -> ExitStatus {
    let pid = child.id().expect("the client is still running");
    let pid = Pid::from_raw(pid.try_into().expect("a PID fits")).expect("a PID is not 0");
    kill_process(pid, Signal::INT).expect("SIGINT is sent");
    within(child.wait()).await.expect("the client is reaped")
}

/// Runs the client with `args`, feeding it `stdin` (empty when `None`).
pub(crate) async fn client(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the client starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(bytes) = stdin {
        within(input.write_all(bytes))
            .await
            .expect("stdin takes the input");
    }
    drop(input);
    let output = within(child.wait_with_output())
        .await
        .expect("the client runs");
    Run {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What the frame server does after frame `seq`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reply {
    /// Send this ack (and close after it when the status says so).
    Ack(AckStatus),
    /// Send nothing.
    Silent,
    /// Close the connection without an ack.
    Close,
    /// Stop reading and answering, but keep the connection open.
    Stall,
}

/// A frame server on loopback that accepts `connections` connections, reads
/// frames on each until EOF and answers each frame as `reply` says. The
/// handle yields the frames of each connection, in accept order.
pub(crate) async fn frame_server(
    connections: usize,
    reply: fn(u64) -> Reply,
) -> (SocketAddr, JoinHandle<Vec<Vec<Frame>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..connections {
            let (stream, _) = within(listener.accept()).await.unwrap();
            handlers.push(tokio::spawn(serve_frames(stream, reply)));
        }
        let mut received = Vec::new();
        for handler in handlers {
            received.push(within(handler).await.unwrap());
        }
        received
    });
    (addr, server)
}

async fn serve_frames(stream: TcpStream, reply: fn(u64) -> Reply) -> Vec<Frame> {
    let (reader, mut writer) = stream.into_split();
    let limits = Limits {
        allow_no_crc: true,
        ..Limits::default()
    };
    let mut frames = FramedRead::new(reader, FrameCodec::new(limits));
    let mut received = Vec::new();
    // A read or write error is the client closing early, as a client that
    // does not wait for acks does: the frames read until then count.
    let mut acking = true;
    while let Some(Ok(frame)) = within(frames.next()).await {
        let seq = received.len() as u64;
        received.push(frame);
        match reply(seq) {
            Reply::Silent => {}
            Reply::Close => break,
            Reply::Stall => std::future::pending().await,
            Reply::Ack(status) => {
                let mut ack = Vec::new();
                encode_ack(&Ack { status, seq }, &mut ack);
                if acking {
                    acking = within(writer.write_all(&ack)).await.is_ok();
                }
                if status.closes() {
                    break;
                }
            }
        }
    }
    received
}

/// A server that records every byte of one connection until EOF.
pub(crate) async fn byte_recorder() -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = tokio::spawn(async move {
        let (mut stream, _) = within(listener.accept()).await.unwrap();
        let mut bytes = Vec::new();
        within(stream.read_to_end(&mut bytes)).await.unwrap();
        bytes
    });
    (addr, recorder)
}

/// The payloads of `frames`, as text.
pub(crate) fn payloads(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|frame| String::from_utf8(frame.payload().to_vec()).unwrap())
        .collect()
}
