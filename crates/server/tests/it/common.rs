//! Starting the server in-process and bounded waits.

use std::{net::SocketAddr, time::Duration};

use server::{Config, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// The most any single network step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

pub use testkit::within;

/// A server started in-process from a config text.
pub struct Running {
    pub addrs: Vec<(String, SocketAddr)>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(config: &str) -> Self {
        let config = Config::parse(config, "test config").expect("test config is valid");
        let server = Server::bind(&config).await.expect("server binds");
        let addrs = server.local_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addrs,
            shutdown,
            task,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("listener exists")
    }

    /// Fires shutdown and waits for the server to finish draining.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within(STEP, self.task)
            .await
            .expect("server task")
            .expect("server ran");
    }
}

/// Reads until the peer closes; returns what came.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    within(STEP, stream.read_to_end(&mut rest))
        .await
        .expect("read to close");
    rest
}

/// Connects to `addr`, writes `bytes`, and returns the stream.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = within(STEP, TcpStream::connect(addr))
        .await
        .expect("connect");
    within(STEP, stream.write_all(bytes)).await.expect("write");
    stream
}

/// `00000001 00000002 00000001 61 10`: what the reference client sends.
pub const REFERENCE_FRAME: [u8; 14] = [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x61, 0x10];

/// Status 0 for seq 0 (docs/PROTOCOL.md, vector A1).
pub const ACK_OK_0: [u8; 25] = [
    0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbb, 0xe5, 0x68, 0xa3,
];
