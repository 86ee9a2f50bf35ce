//! Real clients: curl and PySocks. They are required: a missing one fails the test with the
//! command that installs it.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;

use socks5::{AuthPolicy, ServerOptions};
use tokio::process::Command;

use crate::harness::{HTTP_BODY, LIMIT, Proxy, echo_server, http_server, options, within};

async fn curl(args: &[&str]) -> Output {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args);
    for variable in [
        "ALL_PROXY",
        "all_proxy",
        "http_proxy",
        "HTTP_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(variable);
    }
    match within(LIMIT * 2, command.output()).await {
        Ok(output) => output,
        Err(error) => panic!("cannot run curl ({error}); install it: apt-get install -y curl"),
    }
}

fn assert_body(output: &Output) {
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), HTTP_BODY);
}

#[tokio::test]
async fn curl_fetches_through_socks5_by_ip() {
    let proxy = Proxy::start(options()).await;
    let web = http_server().await;
    let output = curl(&[
        "--socks5",
        &proxy.address.to_string(),
        &format!("http://{web}/"),
    ])
    .await;
    assert_body(&output);
}

#[tokio::test]
async fn curl_fetches_through_socks5_by_hostname() {
    // web.test exists only in the proxy's test resolver: curl must hand the name over.
    let proxy = Proxy::start(options()).await;
    let web = http_server().await;
    let url = format!("http://web.test:{}/", web.port());
    let output = curl(&["--socks5-hostname", &proxy.address.to_string(), &url]).await;
    assert_body(&output);
}

#[tokio::test]
async fn curl_logs_in_with_proxy_user() {
    let users = [("curl-user".to_owned(), "p4ss:word".to_owned())];
    let options = ServerOptions {
        auth: Arc::new(AuthPolicy::password(users, vec![])),
        ..options()
    };
    let mut proxy = Proxy::start(options).await;
    let web = http_server().await;
    let (address, url) = (proxy.address.to_string(), format!("http://{web}/"));
    let output = curl(&[
        "--socks5",
        &address,
        "--proxy-user",
        "curl-user:p4ss:word",
        &url,
    ])
    .await;
    assert_body(&output);
    assert_eq!(proxy.report().await.user.as_deref(), Some("curl-user"));

    let output = curl(&[
        "--socks5",
        &address,
        "--proxy-user",
        "curl-user:wrong",
        &url,
    ])
    .await;
    assert!(!output.status.success(), "a wrong password must fail");
}

const PYSOCKS_SCRIPT: &str = r#"
import sys
try:
    import socks
except ImportError:
    sys.exit("PySocks is missing; install it: pip install PySocks")
proxy_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socks.socksocket()
s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port, rdns=True)
s.settimeout(10)
s.connect((host, port))
s.sendall(b"pysocks")
got = b""
while len(got) < 7:
    chunk = s.recv(7 - len(got))
    if not chunk:
        break
    got += chunk
s.close()
sys.stdout.write(got.decode())
"#;

async fn pysocks(proxy: SocketAddr, host: &str, port: u16) -> Output {
    let mut command = Command::new("python3");
    command.args([
        "-c",
        PYSOCKS_SCRIPT,
        &proxy.port().to_string(),
        host,
        &port.to_string(),
    ]);
    match within(LIMIT * 2, command.output()).await {
        Ok(output) => output,
        Err(error) => panic!("cannot run python3 ({error}); install it, then: pip install PySocks"),
    }
}

#[tokio::test]
async fn pysocks_connects_by_ip_and_by_name() {
    let proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    for host in ["127.0.0.1", "echo.test"] {
        let output = pysocks(proxy.address, host, echo.port()).await;
        assert!(
            output.status.success(),
            "PySocks via {host} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), "pysocks");
    }
}
