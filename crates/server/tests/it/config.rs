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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn socks(extra: &str) -> String {
    format!("[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\n{extra}\n")
}

#[test]
fn refuses_an_open_proxy_on_a_public_address_and_says_how_to_allow_it() {
    let (ok, stderr) = check(&socks("bind = \"0.0.0.0:1080\""));
    assert!(!ok);
    assert!(
        stderr.contains("open proxy") && stderr.contains("allow_open_proxy = true"),
        "{stderr}"
    );
}

#[test]
fn an_open_proxy_starts_when_allowed_on_purpose_or_limited() {
    for extra in [
        "bind = \"0.0.0.0:1080\"\nallow_open_proxy = true",
        "bind = \"0.0.0.0:1080\"\nauth = \"password\"\nusers = [{ username = \"u\", password = \"p\" }]",
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\n\
         [[listener.rules]]\naction = \"deny\"",
        "bind = \"127.0.0.1:1080\"",
    ] {
        let (ok, stderr) = check(&socks(extra));
        assert!(ok, "{extra}: {stderr}");
    }
}

#[test]
fn a_password_for_everyone_through_no_auth_networks_is_still_open() {
    let (ok, stderr) = check(&socks(
        "bind = \"0.0.0.0:1080\"\nauth = \"password\"\nusers = [{ username = \"u\", password = \"p\" }]\n\
         no_auth_networks = [\"0.0.0.0/0\"]",
    ));
    assert!(!ok && stderr.contains("open proxy"), "{stderr}");
}

#[test]
fn split_networks_that_cover_everybody_are_still_an_open_proxy() {
    const PASSWORD: &str = "auth = \"password\"\nusers = [{ username = \"u\", password = \"p\" }]";
    let open = [
        // no_auth_networks that together name every address.
        format!("bind = \"0.0.0.0:1080\"\n{PASSWORD}\nno_auth_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]"),
        format!(
            "bind = \"0.0.0.0:1080\"\n{PASSWORD}\n\
             no_auth_networks = [\"0.0.0.0/2\", \"64.0.0.0/2\", \"128.0.0.0/2\", \"192.0.0.0/2\"]"
        ),
        format!("bind = \"[::]:1080\"\n{PASSWORD}\nno_auth_networks = [\"::/1\", \"8000::/1\"]"),
        format!(
            "bind = \"0.0.0.0:1080\"\n{PASSWORD}\n\
             no_auth_networks = [\"10.0.0.0/8\", \"0.0.0.0/1\", \"64.0.0.0/3\", \"128.0.0.0/1\"]"
        ),
        // Networks that miss only addresses no TCP client can have (0/8, multicast,
        // reserved, ff00::/8) still name everybody.
        format!(
            "bind = \"0.0.0.0:1080\"\n{PASSWORD}\n\
             no_auth_networks = [\"0.0.0.0/1\", \"128.0.0.0/2\", \"192.0.0.0/3\"]"
        ),
        format!(
            "bind = \"0.0.0.0:1080\"\n{PASSWORD}\n\
             no_auth_networks = [\"1.0.0.0/8\", \"2.0.0.0/7\", \"4.0.0.0/6\", \"8.0.0.0/5\", \
             \"16.0.0.0/4\", \"32.0.0.0/3\", \"64.0.0.0/2\", \"128.0.0.0/2\", \"192.0.0.0/3\"]"
        ),
        format!(
            "bind = \"[::]:1080\"\n{PASSWORD}\n\
             no_auth_networks = [\"::/1\", \"8000::/2\", \"c000::/3\", \"e000::/4\", \"f000::/5\", \
             \"f800::/6\", \"fc00::/7\", \"fe00::/8\"]"
        ),
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\n\
         clients = [\"0.0.0.0/1\", \"128.0.0.0/2\", \"192.0.0.0/3\"]\n[[listener.rules]]\naction = \"deny\""
            .to_owned(),
        // Allow rules whose clients together name everybody, in one rule or in several.
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\n\
         clients = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n[[listener.rules]]\naction = \"deny\""
            .to_owned(),
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\nclients = [\"0.0.0.0/1\"]\n\
         [[listener.rules]]\naction = \"allow\"\nclients = [\"128.0.0.0/1\"]\n[[listener.rules]]\naction = \"deny\""
            .to_owned(),
        "bind = \"[::]:1080\"\n[[listener.rules]]\naction = \"allow\"\nclients = [\"::/1\", \"8000::/1\"]\n\
         [[listener.rules]]\naction = \"deny\""
            .to_owned(),
    ];
    for extra in &open {
        let (ok, stderr) = check(&socks(extra));
        assert!(!ok && stderr.contains("open proxy"), "{extra}: {stderr}");
    }
    let limited = [
        format!("bind = \"0.0.0.0:1080\"\n{PASSWORD}\nno_auth_networks = [\"0.0.0.0/1\", \"192.0.0.0/2\"]"),
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\n\
         clients = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n[[listener.rules]]\naction = \"deny\""
            .to_owned(),
        // Split deny rules shut everybody out like one catch-all deny.
        "bind = \"0.0.0.0:1080\"\n[[listener.rules]]\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\n\
         [[listener.rules]]\naction = \"deny\"\nclients = [\"0.0.0.0/1\", \"128.0.0.0/1\", \"::/0\"]"
            .to_owned(),
    ];
    for extra in &limited {
        let (ok, stderr) = check(&socks(extra));
        assert!(ok, "{extra}: {stderr}");
    }
}

#[test]
fn password_auth_needs_users_and_reads_a_users_file() {
    let (ok, stderr) = check(&socks("bind = \"127.0.0.1:1080\"\nauth = \"password\""));
    assert!(!ok && stderr.contains("users"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "# operators\nalice:secret\n\nbob:hunter2\n").unwrap();
    let text = socks(&format!(
        "bind = \"127.0.0.1:1080\"\nauth = \"password\"\nusers_file = {:?}",
        users.display().to_string()
    ));
    let (ok, stderr) = check(&text);
    assert!(ok, "{stderr}");
    std::fs::write(&users, "alice\n").unwrap();
    let (ok, stderr) = check(&text);
    assert!(
        !ok && stderr.contains("line 1") && stderr.contains("username:password"),
        "{stderr}"
    );
}

#[test]
fn rejects_bad_rules_and_commands() {
    let (ok, stderr) = check(&socks(
        "bind = \"127.0.0.1:1080\"\ncommands = [\"connect\", \"ping\"]",
    ));
    assert!(!ok && stderr.contains("udp-associate"), "{stderr}");
    let (ok, stderr) = check(&socks(
        "bind = \"127.0.0.1:1080\"\n[[listener.rules]]\naction = \"deny\"\nports = [\"90-80\"]",
    ));
    assert!(
        !ok && stderr.contains("rules") && stderr.contains("90-80"),
        "{stderr}"
    );
    let (ok, stderr) = check(&socks(
        "bind = \"127.0.0.1:1080\"\n[[listener.rules]]\naction = \"deny\"\nclients = [\"10.0.0.0/33\"]",
    ));
    assert!(!ok, "{stderr}");
}

/// Issue 7 item 5: each of these passed `--check-config` and then panicked at run time.
#[test]
fn check_config_rejects_values_that_would_panic_at_run_time() {
    let crc = "[[listener]]\nname = \"ingest\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n";
    for (extra, expected) in [
        (
            "handler = { type = \"file\", path = \"/tmp/frames\", sync = \"always\", sync_interval = \"0s\" }",
            "listener[0] (ingest): handler.sync_interval: 0s is too short: it must be at least 1ms",
        ),
        (
            "idle_timeout = \"300000000000y\"",
            "listener[0] (ingest): idle_timeout: 300000000000years is too long: it must be at most 30days",
        ),
        (
            "max_connections = 9223372036854775807",
            "listener[0] (ingest): max_connections: 9223372036854775807 is too large: it must be at most 1000000",
        ),
    ] {
        let (ok, stderr) = check(&format!("{crc}{extra}\n"));
        assert!(!ok && stderr.contains(expected), "{extra}: {stderr}");
    }
    let (ok, stderr) = check(&format!(
        "[server]\ndrain_timeout = \"300000000000y\"\n{}",
        socks("bind = \"127.0.0.1:0\"\nhandshake_timeout = \"300000000000y\"")
    ));
    assert!(
        !ok && stderr.contains("[server]: drain_timeout: 300000000000years is too long"),
        "{stderr}"
    );
}

/// A users_file (or config) that never ends is an error, not an endless read.
#[test]
fn an_endless_users_file_is_refused() {
    let (ok, stderr) = check(&socks(
        "bind = \"127.0.0.1:0\"\nauth = \"password\"\nusers_file = \"/dev/zero\"",
    ));
    assert!(
        !ok && stderr.contains("users_file: cannot read /dev/zero")
            && stderr.contains("longer than"),
        "{stderr}"
    );
}

/// Issue 10 §2: the PROXY protocol keys, on both modes.
#[test]
fn proxy_protocol_needs_its_trusted_networks_and_a_bounded_deadline() {
    for mode in ["crc-tcp", "socks5"] {
        let listener =
            format!("[[listener]]\nname = \"lb\"\nmode = \"{mode}\"\nbind = \"127.0.0.1:0\"\n");
        for (extra, expected) in [
            (
                "proxy_protocol = \"v2\"",
                "listener[0] (lb): proxy_protocol_from: is required when proxy_protocol is on",
            ),
            (
                "proxy_protocol_from = [\"10.0.0.0/8\"]",
                "listener[0] (lb): proxy_protocol_from: has no effect while proxy_protocol is \"off\"",
            ),
            (
                "proxy_protocol = \"any\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\nproxy_protocol_timeout = \"0s\"",
                "listener[0] (lb): proxy_protocol_timeout: 0s is too short: it must be at least 1ms",
            ),
            (
                "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\nproxy_protocol_timeout = \"300000000000y\"",
                "listener[0] (lb): proxy_protocol_timeout: 300000000000years is too long: it must be at most 30days",
            ),
            (
                "proxy_protocol = \"v3\"",
                "unknown variant `v3`, expected one of `off`, `v1`, `v2`, `any`",
            ),
            (
                "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.0.0.300/8\"]",
                "invalid IP address syntax",
            ),
        ] {
            let (ok, stderr) = check(&format!("{listener}{extra}\n"));
            assert!(
                !ok && stderr.contains(expected),
                "{mode}: {extra}: {stderr}"
            );
        }
        for extra in [
            "proxy_protocol = \"off\"",
            "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1/128\"]\nproxy_protocol_timeout = \"1ms\"",
            "proxy_protocol = \"any\"\nproxy_protocol_from = [\"192.0.2.7/32\"]\nproxy_protocol_timeout = \"30days\"",
        ] {
            let (ok, stderr) = check(&format!("{listener}{extra}\n"));
            assert!(ok, "{mode}: {extra}: {stderr}");
        }
    }
}

#[test]
fn check_config_validates_the_admin_table() {
    let listener = "[[listener]]\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:51314\"\n";
    let (ok, stderr) = check(&format!("[admin]\nbind = \"127.0.0.1:9464\"\n{listener}"));
    assert!(ok, "{stderr}");
    let (ok, stderr) = check(&format!("[admin]\nbind = \"127.0.0.1:51314\"\n{listener}"));
    assert!(!ok);
    assert!(
        stderr.contains("127.0.0.1:51314") && stderr.contains("[admin]"),
        "{stderr}"
    );
    let (ok, stderr) = check(&format!(
        "[admin]\nbind = \"127.0.0.1:9464\"\nport = 1\n{listener}"
    ));
    assert!(!ok);
    assert!(
        stderr.contains("listeners.toml:3") && stderr.contains("port"),
        "{stderr}"
    );
    let (ok, stderr) = check(&format!("[admin]\n{listener}"));
    assert!(!ok);
    assert!(stderr.contains("bind"), "{stderr}");
}

#[test]
fn workers_is_bounded_and_says_what_it_accepts() {
    let config = |workers: &str| {
        format!(
            "[server]\nworkers = {workers}\n[[listener]]\nname = \"p\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n"
        )
    };
    for ok in ["0", "1", "1024"] {
        let parsed = server::Config::parse(&config(ok), "test.toml").unwrap();
        assert_eq!(parsed.server.worker_count().to_string(), ok);
    }
    let error = format!(
        "{:#}",
        server::Config::parse(&config("1025"), "test.toml").unwrap_err()
    );
    assert!(
        error.contains("workers") && error.contains("0 (the shared runtime) to 1024"),
        "{error}"
    );
    for bad in ["-1", "\"2\"", "1.5"] {
        let error = format!(
            "{:#}",
            server::Config::parse(&config(bad), "test.toml").unwrap_err()
        );
        // serde's message, with the line of the key.
        assert!(error.contains("test.toml:2"), "{bad}: {error}");
    }
    // Absent: one per CPU.
    let parsed = server::Config::parse(&config("1").replace("workers = 1\n", ""), "t").unwrap();
    assert_eq!(
        parsed.server.worker_count(),
        std::thread::available_parallelism().unwrap().get()
    );
}
