//! The Python 3 port of the reference client (tests/interop/) against the
//! real server. Needs python3 with crcmod, which `.ci/run` installs.

use std::{path::PathBuf, process::Command};

use crate::common::{Running, within};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/reference_client.py")
}

fn python_with_crcmod() {
    let found = Command::new("python3")
        .args(["-c", "import crcmod"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "python3 with crcmod is needed: pip install crcmod (.ci/run installs it)"
    );
}

#[tokio::test]
async fn reference_client_frames_of_every_crc_size_are_acked() {
    python_with_crcmod();
    let server = Running::start(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\nhandler = { type = \"discard\" }\n",
    )
    .await;
    let port = server.addr("frames").port().to_string();
    for crc_size in ["1", "2", "4"] {
        let mut command = tokio::process::Command::new("python3");
        command
            .arg(script())
            .args(["--port", &port, "--crc-size", crc_size, "--wait-ack"]);
        command.args(["a", "hello", "{\"name\": \"李满满\", \"age\": 27}", ""]);
        let output = within(std::time::Duration::from_secs(30), command.output())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "crc {crc_size}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.matches("status=0 (ok)").count(), 4, "{stdout}");
    }
    server.stop().await;
}
