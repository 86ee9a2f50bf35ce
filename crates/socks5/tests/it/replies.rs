//! Every failure reply code, provoked on loopback, followed by the close.

use std::time::Duration;

use socks5::{Action, DomainPattern, Error, Reply, Rule, Rules, ServerOptions};
use tokio::io::AsyncWriteExt;

use crate::harness::{
    LIMIT, Proxy, assert_closed, builder, connect_v4, echo_server, greeted, options, read_reply_v4,
    within,
};

/// Sends `request` after a no-auth greeting; asserts the reply code, the unspecified BND and
/// the close; returns the session's report.
async fn expect_failure(options: ServerOptions, request: &[u8], code: u8) -> socks5::SessionReport {
    let mut proxy = Proxy::start(options).await;
    let mut stream = greeted(proxy.address).await;
    within(LIMIT, stream.write_all(request))
        .await
        .expect("request");
    let (reply, bound) = read_reply_v4(&mut stream).await;
    assert_eq!(reply, code, "REP");
    assert_eq!(bound.to_string(), "0.0.0.0:0", "BND of a failure");
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert_eq!(report.reply.map(u8::from), Some(code));
    report
}

fn connect_domain(name: &str, port: u16) -> Vec<u8> {
    let mut request = vec![5, 1, 0, 3, u8::try_from(name.len()).expect("short name")];
    request.extend_from_slice(name.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    request
}

#[tokio::test]
async fn refused_connection_gets_0x05() {
    // Nothing listens there.
    let closed = testkit::free_loopback_port().expect("a free port");
    let report = expect_failure(options(), &connect_v4(closed), 0x05).await;
    assert!(
        matches!(report.error, Some(Error::Connect { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn unknown_name_gets_0x04() {
    let report = expect_failure(options(), &connect_domain("nowhere.test", 80), 0x04).await;
    assert!(
        matches!(report.error, Some(Error::Resolve { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn connect_timeout_gets_0x04() {
    // slow.test never resolves; resolving counts against connect_timeout.
    let options = builder()
        .connect_timeout(Duration::from_millis(300))
        .build();
    let report = expect_failure(options, &connect_domain("slow.test", 80), 0x04).await;
    assert!(
        matches!(report.error, Some(Error::ConnectTimeout { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn multicast_destinations_get_0x02_before_any_connect() {
    // This test used to provoke 0x03 with a multicast target (Linux refuses the connect with
    // ENETUNREACH); multicast is now refused by the built-in rule, with no rule at all, before
    // anything is tried. The 0x03 mapping itself is covered by `Error::reply`'s unit test: no
    // other loopback-only way makes the kernel answer ENETUNREACH.
    let target = "224.0.0.1:80".parse().expect("valid");
    let report = expect_failure(options(), &connect_v4(target), 0x02).await;
    assert!(
        matches!(report.error, Some(Error::Denied { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn other_failures_get_0x01() {
    // An IPv6 outbound address cannot bind the IPv4 socket of an IPv4 target.
    let options = builder()
        .outbound_bind(Some("::1".parse().expect("valid")))
        .build();
    let echo = echo_server("127.0.0.1:0").await;
    expect_failure(options, &connect_v4(echo), 0x01).await;
}

#[tokio::test]
async fn denied_destinations_get_0x02() {
    let echo = echo_server("127.0.0.1:0").await;
    let deny_echo = Rules {
        rules: vec![Rule {
            destinations: vec!["127.0.0.1/32".parse().expect("valid")],
            ..Rule::new(Action::Deny)
        }],
        default: Action::Allow,
    };
    let with_rules = |rules| builder().rules(rules).build();
    let report = expect_failure(with_rules(deny_echo.clone()), &connect_v4(echo), 0x02).await;
    assert!(
        matches!(report.error, Some(Error::Denied { .. })),
        "{:?}",
        report.error
    );
    // The resolved address of a name is checked too.
    expect_failure(
        with_rules(deny_echo),
        &connect_domain("echo.test", echo.port()),
        0x02,
    )
    .await;
    // A denied name is refused before resolving: slow.test would otherwise time out.
    let deny_names = Rules {
        rules: vec![Rule {
            domains: vec![DomainPattern::new("*.test").expect("valid")],
            ..Rule::new(Action::Deny)
        }],
        default: Action::Allow,
    };
    expect_failure(
        with_rules(deny_names),
        &connect_domain("slow.test", 80),
        0x02,
    )
    .await;
}

#[tokio::test]
async fn unknown_command_gets_0x07() {
    let report = expect_failure(options(), &[5, 9, 0, 1, 127, 0, 0, 1, 0, 80], 0x07).await;
    assert!(
        matches!(report.error, Some(Error::Command(9))),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn disabled_command_gets_0x07() {
    let mut options = options();
    options.commands.bind = false;
    let report = expect_failure(options, &[5, 2, 0, 1, 127, 0, 0, 1, 0, 0], 0x07).await;
    assert!(
        matches!(report.error, Some(Error::CommandDisabled(_))),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn unknown_address_type_gets_0x08() {
    let report = expect_failure(options(), &[5, 1, 0, 2, 127, 0, 0, 1, 0, 80], 0x08).await;
    assert!(
        matches!(report.error, Some(Error::AddressType(2))),
        "{:?}",
        report.error
    );
    assert_eq!(
        Reply::AddressTypeNotSupported,
        Reply::try_from(8).expect("assigned")
    );
}
