//! Scenarios 1 and 2: frames from the Python reference client into the file
//! sink, and from our client through the SOCKS5 listeners.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use proto::{CrcSize, Decoded, Limits, Version, decode_frame, encode_frame};

use super::{Ctx, LOG, PASSWORD, PROXY, PROXY_AUTH, USER, arg, in_root, require_python_module};
use crate::{
    harness::message,
    process::{Proc, Stdout, require},
};

/// Scenario 1: the Python 3 port of the reference client sends frames of each CRC
/// size, reads and checks every ack; the file sink then holds exactly those
/// frames, in order.
pub(crate) fn reference_client(ctx: &mut Ctx) -> anyhow::Result<String> {
    let python = require("python3", "apt-get install python3")?;
    require_python_module(
        "crcmod",
        "apt-get install python3-crcmod (for Debian's python3), or python3 -m pip install crcmod",
    )?;
    let script = in_root(&ctx.root, "tests/interop/reference_client.py");
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let addr = ctx.addr(super::FRAMES);
    let long = "x".repeat(3000);
    let tag = format!("nonce-{}", ctx.nonce);
    let payloads = [
        "a",
        "hello",
        "{\"name\": \"李满满\", \"age\": 27}",
        "",
        long.as_str(),
        tag.as_str(),
    ];
    let start = ctx.sink_len()?;
    let mut expected = Vec::new();
    for (crc_size, crc) in [(1, CrcSize::Crc8), (2, CrcSize::Crc16), (4, CrcSize::Crc32)] {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--crc-size", &crc_size.to_string(), "--wait-ack"])
            .args(payloads);
        let done = Proc::spawn(
            "reference_client.py",
            &mut cmd,
            Stdio::null(),
            Stdout::Capture,
        )?
        .wait(Duration::from_secs(30))?;
        let acks = done
            .stdout_text()
            .lines()
            .filter(|l| l.starts_with("ack ") && l.contains("status=0"))
            .count();
        if !done.status.success() || acks != payloads.len() {
            bail!(
                "reference client (crc-size {crc_size}) exited {} with {acks} ok acks of {}: {} {}",
                done.status,
                payloads.len(),
                crate::process::tail(&done.stdout, 4),
                done.stderr_tail()
            );
        }
        for payload in payloads {
            encode_frame(Version::V1, crc, payload.as_bytes(), &mut expected)?;
        }
    }
    let file = std::fs::read(&ctx.sink_path)
        .with_context(|| format!("cannot read {}", ctx.sink_path.display()))?;
    let stored = file.get(start as usize..).unwrap_or_default();
    let got = split_frames(stored)?;
    let want = split_frames(&expected)?;
    if got.trailing != 0 {
        bail!(
            "the file sink ends with {} bytes of an incomplete frame",
            got.trailing
        );
    }
    for (index, (g, w)) in got.frames.iter().zip(&want.frames).enumerate() {
        if g != w {
            bail!(
                "frame {index} in the file sink differs: stored {} bytes starting {:02x?}, sent {} bytes starting {:02x?}",
                g.len(),
                g.get(..16.min(g.len())).unwrap_or_default(),
                w.len(),
                w.get(..16.min(w.len())).unwrap_or_default()
            );
        }
    }
    if got.frames.len() != want.frames.len() {
        bail!(
            "the file sink holds {} new frames, the reference client sent {}",
            got.frames.len(),
            want.frames.len()
        );
    }
    Ok(format!(
        "{} frames (crc 1/2/4) acked ok and stored byte for byte ({} bytes)",
        want.frames.len(),
        expected.len()
    ))
}

/// Whole frames cut from a byte stream, and the bytes left after the last.
#[derive(Debug)]
pub(crate) struct Frames<'a> {
    /// Each frame's bytes: header, payload, CRC.
    pub(crate) frames: Vec<&'a [u8]>,
    /// Bytes of an incomplete last frame.
    pub(crate) trailing: usize,
}

/// Splits `bytes` into frames (any size, CRC checked).
pub(crate) fn split_frames(bytes: &[u8]) -> anyhow::Result<Frames<'_>> {
    let limits = Limits {
        max_body_size: u32::MAX,
        allow_no_crc: true,
    };
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        match decode_frame(rest, &limits) {
            Ok(Decoded::Done(frame, used)) => {
                if !frame.crc_ok() {
                    bail!("frame {} at byte {at} has a bad CRC", frames.len());
                }
                frames.push(frame.raw);
                at += used;
            }
            Ok(Decoded::NeedMore(_)) => {
                return Ok(Frames {
                    frames,
                    trailing: rest.len(),
                });
            }
            Err(error) => bail!("byte {at}: not a frame header: {error}"),
        }
    }
}

/// Scenario 2: `client send --socks5` reaches the `log` listener through each socks5
/// listener: without auth, with the password; a wrong or missing password fails.
pub(crate) fn client_via_socks5(ctx: &mut Ctx) -> anyhow::Result<String> {
    let target = arg(ctx.addr(LOG));
    let cases: [(&str, &str, Option<&str>, bool); 4] = [
        ("no-auth", PROXY, None, true),
        ("password", PROXY_AUTH, Some(PASSWORD), true),
        (
            "wrong-password",
            PROXY_AUTH,
            Some("not-the-password"),
            false,
        ),
        ("no-credentials", PROXY_AUTH, None, false),
    ];
    let mut report = Vec::new();
    for (tag, listener, password, should_pass) in cases {
        let text = format!("via-{tag}-{}", ctx.nonce);
        let mark = ctx.server.events().mark();
        let mut args = vec![
            "send".to_owned(),
            "--addr".to_owned(),
            target.clone(),
            "--socks5".to_owned(),
            arg(ctx.addr(listener)),
            "--wait-ack".to_owned(),
            "--timeout".to_owned(),
            "5s".to_owned(),
        ];
        if let Some(password) = password {
            args.extend(["--proxy-user", USER, "--proxy-password", password].map(String::from));
        }
        args.push(text.clone());
        let done = ctx.client(&args, Duration::from_secs(20))?;
        let wait = if should_pass {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(300)
        };
        let logged = ctx
            .server
            .events()
            .wait_for(mark, wait, |e| {
                message(e) == "frame" && e["preview"].as_str() == Some(text.as_str())
            })
            .is_some();
        match (should_pass, done.status.success(), logged) {
            (true, true, true) | (false, false, false) => {
                report.push(format!(
                    "{tag} {}",
                    if should_pass { "ok" } else { "refused" }
                ));
            }
            (true, true, false) => {
                bail!("{tag}: the client succeeded but the log listener logged no frame {text:?}")
            }
            (true, false, _) => bail!(
                "{tag}: client send through {listener} failed ({}): {}",
                done.status,
                done.stderr_tail()
            ),
            (false, true, _) | (false, false, true) => bail!(
                "{tag}: the frame went through {listener} ({}, logged: {logged}) but must be refused",
                done.status
            ),
        }
    }
    Ok(report.join(", "))
}
