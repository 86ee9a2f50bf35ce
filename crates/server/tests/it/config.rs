//! `server --check-config` and `--print-default-config`, run as a process.

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_server"))
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listeners.toml");
    std::fs::write(&path, text).unwrap();
    let output = server().arg("--check-config").arg(&path).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_printed_default() {
    let output = server().arg("--print-default-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("mode = \"crc-tcp\"") && text.contains("mode = \"socks5\""));
    let (ok, stderr) = check(&text);
    assert!(ok, "{stderr}");
}

#[test]
fn check_config_names_file_listener_and_key() {
    let (ok, stderr) = check(
        "[[listener]]\nname = \"ingest\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\nidle_timeout = \"0s\"\n",
    );
    assert!(!ok);
    assert!(stderr.contains("listeners.toml"), "{stderr}");
    assert!(
        stderr.contains("listener[0] (ingest)") && stderr.contains("idle_timeout"),
        "{stderr}"
    );
}

#[test]
fn check_config_lists_the_valid_modes() {
    let (ok, stderr) = check("[[listener]]\nmode = \"crc_tcp\"\nbind = \"127.0.0.1:0\"\n");
    assert!(!ok);
    assert!(
        stderr.contains("crc-tcp") && stderr.contains("socks5"),
        "{stderr}"
    );
}

#[test]
fn check_config_rejects_a_bad_handler_and_lists_the_handlers() {
    let (ok, stderr) = check(
        "[[listener]]\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\nhandler = { type = \"print\" }\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("print") && stderr.contains("file") && stderr.contains("echo"),
        "{stderr}"
    );
}

#[test]
fn help_lists_the_modes() {
    let output = server().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("crc-tcp") && help.contains("socks5"),
        "{help}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/server.toml");
    let output = server().arg("--check-config").arg(path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
