//! `access_log`: one JSON line per finished socks5 session or crc-tcp connection, and the
//! file reopened at its path on reload (logrotate).

use std::{path::Path, time::Duration};

use serde_json::Value;
use socks5::{Address, Error, Reply, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, read_to_close, within};

/// The JSON lines of `path` once there are `count`, within `STEP`.
async fn lines(path: &Path, count: usize) -> Vec<Value> {
    within(STEP, async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= count {
                return text
                    .lines()
                    .map(|line| serde_json::from_str(line).expect("a JSON line"))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test]
async fn a_socks5_session_writes_one_line_with_who_what_and_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = Running::start(&format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\naccess_log = {}\n\
         auth = \"password\"\nusers = [{{ username = \"alice\", password = \"pw\" }}]\n\
         [[listener.rules]]\naction = \"deny\"\ndomains = [\"denied.example\"]\n",
        quoted(&log)
    ))
    .await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let (mut stream, _) = client::connect(proxy, &Address::Ip(frames), Some(("alice", "pw")), STEP)
        .await
        .unwrap();
    within(STEP, stream.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    let mut ack = [0u8; 25];
    within(STEP, stream.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(stream);
    let denied = client::connect(
        proxy,
        &Address::Domain("denied.example".into(), 80),
        Some(("alice", "pw")),
        STEP,
    )
    .await;
    assert!(
        matches!(denied, Err(Error::Rejected(Reply::NotAllowed))),
        "{denied:?}"
    );
    let lines = lines(&log, 2).await;
    let ok = lines
        .iter()
        .find(|l| l["reply"] == "succeeded")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(ok["listener"], "proxy");
    assert_eq!(ok["mode"], "socks5");
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["command"], "connect");
    assert_eq!(ok["destination"], frames.to_string());
    assert_eq!(ok["bytes_in"], 14);
    assert_eq!(ok["bytes_out"], 25);
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    // RFC 3339 in UTC: 2026-12-01T10:58:00.123Z
    let time = ok["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    let no = lines
        .iter()
        .find(|l| l["reply"] == "not_allowed")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(no["destination"], "denied.example:80");
    assert_eq!(
        (no["bytes_in"].as_u64(), no["bytes_out"].as_u64()),
        (Some(0), Some(0))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_crc_tcp_connection_writes_its_frames_and_bytes_with_the_proxy_protocol_client() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("frames.log");
    let server = Running::start(&format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\naccess_log = {}\n\
         proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\n",
        quoted(&log)
    ))
    .await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    let mut bad = REFERENCE_FRAME;
    bad[13] ^= 1;
    let mut bytes = b"PROXY TCP4 127.0.0.3 127.0.0.1 50000 1080\r\n".to_vec();
    bytes.extend_from_slice(&REFERENCE_FRAME);
    bytes.extend_from_slice(&REFERENCE_FRAME);
    bytes.extend_from_slice(&bad);
    within(STEP, stream.write_all(&bytes)).await.unwrap();
    stream.shutdown().await.unwrap();
    let acks = read_to_close(&mut stream).await;
    assert_eq!(acks.len(), 3 * 25);
    let lines = lines(&log, 1).await;
    let line = &lines[0];
    assert_eq!(line["client"], "127.0.0.3:50000", "{line}");
    assert_eq!(line["mode"], "crc-tcp");
    assert_eq!(
        (line["frames"].as_u64(), line["frames_ok"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(line["bytes_in"], 3 * 14);
    assert_eq!(line["bytes_out"], 3 * 25);
    assert_eq!(line["end"], "peer closed");
    server.stop().await;
}

#[tokio::test]
async fn every_door_writes_its_protocol_and_http_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = Running::start(&format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\naccess_log = {}\n\
         protocols = [\"socks4\", \"http\"]\n",
        quoted(&log)
    ))
    .await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let (stream, cd) = crate::doors::socks4_connect(proxy, Address::Ip(frames)).await;
    assert_eq!(cd, 90);
    crate::doors::frame_through(stream).await;
    let (stream, status, _) = crate::doors::http_connect(proxy, &frames.to_string(), None).await;
    assert_eq!(status, 200);
    crate::doors::frame_through(stream).await;
    let lines = lines(&log, 2).await;
    let socks4 = lines
        .iter()
        .find(|l| l["protocol"] == "socks4")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(socks4["command"], "connect");
    assert_eq!(socks4["reply"], "succeeded");
    assert_eq!(socks4["destination"], frames.to_string());
    assert!(socks4.get("status").is_none(), "{socks4}");
    let http = lines
        .iter()
        .find(|l| l["protocol"] == "http")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(http["mode"], "socks5");
    assert_eq!(http["command"], "connect");
    assert_eq!(http["status"], 200);
    assert_eq!(http["destination"], frames.to_string());
    assert_eq!(
        http["bytes_out"].as_u64().map(|n| n >= 25),
        Some(true),
        "{http}"
    );
    server.stop().await;
}
