//! The `socks5` mode as configured in TOML: frames through the proxy,
//! passwords, rules and disabled commands, with our SOCKS5 client.

use std::{net::SocketAddr, time::Duration};

use socks5::{Address, Error, Reply, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    admin::{Admin, wait_for_sample},
    common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, within},
};

const FRAMES: &str =
    "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n";

fn proxy(extra: &str) -> String {
    format!(
        "{FRAMES}[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n{extra}\n"
    )
}

async fn frame_through(
    proxy: SocketAddr,
    frames: SocketAddr,
    credentials: client::Credentials<'_>,
) -> Result<(), Error> {
    let (mut stream, _bound) =
        client::connect(proxy, &Address::Ip(frames), credentials, STEP).await?;
    within(STEP, stream.write_all(&REFERENCE_FRAME)).await?;
    let mut ack = [0u8; 25];
    within(STEP, stream.read_exact(&mut ack)).await?;
    assert_eq!(ack, ACK_OK_0);
    Ok(())
}

#[tokio::test]
async fn frames_reach_the_crc_tcp_listener_through_the_socks5_listener() {
    let server = Running::start(&proxy("")).await;
    frame_through(server.addr("proxy"), server.addr("frames"), None)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn password_listener_lets_users_in_and_keeps_others_out() {
    let server = Running::start(&proxy(
        "auth = \"password\"\nusers = [{ username = \"alice\", password = \"s3cret\" }]",
    ))
    .await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    frame_through(proxy, frames, Some(("alice", "s3cret")))
        .await
        .unwrap();
    let wrong = frame_through(proxy, frames, Some(("alice", "guess"))).await;
    assert!(matches!(wrong, Err(Error::AuthFailed)), "{wrong:?}");
    let anonymous = frame_through(proxy, frames, None).await;
    assert!(
        matches!(anonymous, Err(Error::NoAcceptableMethod)),
        "{anonymous:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn no_auth_networks_skip_the_password() {
    let server = Running::start(&proxy(
        "auth = \"password\"\nusers = [{ username = \"alice\", password = \"s3cret\" }]\nno_auth_networks = [\"127.0.0.0/8\"]",
    ))
    .await;
    frame_through(server.addr("proxy"), server.addr("frames"), None)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_deny_rule_from_the_config_gets_reply_2() {
    let server = Running::start(&proxy(
        "[[listener.rules]]\naction = \"deny\"\ndestinations = [\"127.0.0.0/8\"]",
    ))
    .await;
    let denied = frame_through(server.addr("proxy"), server.addr("frames"), None).await;
    assert!(
        matches!(denied, Err(Error::Rejected(Reply::NotAllowed))),
        "{denied:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connect_to_the_listeners_own_address_is_refused() {
    let server = Running::start(&proxy("")).await;
    let own = server.addr("proxy");
    let refused = client::connect(own, &Address::Ip(own), None, STEP).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::NotAllowed))),
        "{refused:?}"
    );
    server.stop().await;
}

/// A loop through two proxy listeners of one server is a loop too: a CONNECT from one to the
/// other is refused. (The other listener's port must be known before binding, so it is taken
/// from a socket bound and closed just before.)
#[tokio::test]
async fn a_connect_to_another_proxy_listener_of_the_server_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Running::start(&proxy(&format!(
        "[[listener]]\nname = \"second\"\nmode = \"socks5\"\nbind = \"127.0.0.1:{port}\"\n"
    )))
    .await;
    let second = server.addr("second");
    let refused = client::connect(server.addr("proxy"), &Address::Ip(second), None, STEP).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::NotAllowed))),
        "{refused:?}"
    );
    // The crc-tcp listener is a destination like any other.
    frame_through(server.addr("proxy"), server.addr("frames"), None)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_disabled_command_gets_reply_7() {
    let server = Running::start(&proxy("commands = [\"bind\"]")).await;
    let refused = frame_through(server.addr("proxy"), server.addr("frames"), None).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::CommandNotSupported))),
        "{refused:?}"
    );
    let pending = client::bind(
        server.addr("proxy"),
        &Address::Ip("127.0.0.1:0".parse().unwrap()),
        None,
        STEP,
    )
    .await;
    assert!(pending.is_ok(), "{pending:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_sessions_still_in_their_handshake() {
    let server = Admin::start(&proxy("handshake_timeout = \"60s\"")).await;
    let mut silent = within(STEP, tokio::net::TcpStream::connect(server.addr("proxy")))
        .await
        .unwrap();
    within(STEP, silent.write_all(&[5])).await.unwrap();
    // The server has accepted the connection: its session is in the handshake.
    wait_for_sample(
        &server,
        "netkit_connections_active{listener=\"proxy\",mode=\"socks5\"}",
        1.0,
    )
    .await;
    // Stop returns well before the handshake timeout: the session was ended.
    within(Duration::from_secs(5), server.stop()).await;
    let mut rest = Vec::new();
    assert_eq!(
        within(STEP, silent.read_to_end(&mut rest))
            .await
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn survives_garbage_and_keeps_serving() {
    // Garbage could, however unlikely, spell a valid request to an outside
    // address or name: the rules refuse every name before it is resolved and
    // every address off loopback.
    let server = Running::start(&proxy(
        "handshake_timeout = \"300ms\"\nrules = [\n\
         { action = \"deny\", domains = [\"*\"] },\n\
         { action = \"allow\", destinations = [\"127.0.0.0/8\"] },\n\
         { action = \"deny\" },\n]",
    ))
    .await;
    let addr = server.addr("proxy");
    let peers: Vec<_> = (0..100u64)
        .map(|seed| {
            tokio::spawn(async move {
                let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
                let len = 1 + (seed as usize * 31) % 300;
                let mut bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (state >> 33) as u8
                    })
                    .collect();
                // Half of the peers get past the version byte, into the method list and request.
                if seed % 2 == 0 {
                    bytes[0] = 5;
                }
                let mut stream = within(STEP, tokio::net::TcpStream::connect(addr))
                    .await
                    .unwrap();
                // The server may close before it read everything: a reset is an answer too.
                let _ = within(STEP, stream.write_all(&bytes)).await;
                let mut rest = Vec::new();
                let _ = within(STEP, stream.read_to_end(&mut rest)).await;
                assert!(rest.len() <= 64, "peer {seed}: {} bytes back", rest.len());
            })
        })
        .collect();
    for peer in peers {
        within(STEP, peer).await.unwrap();
    }
    frame_through(server.addr("proxy"), server.addr("frames"), None)
        .await
        .unwrap();
    server.stop().await;
}

/// Validate once: the users_file is read by the validation (`Config::parse`, what
/// `--check-config` runs), and the start runs what it read instead of reading it again.
#[tokio::test]
async fn the_users_file_is_read_once_by_the_validation_the_start_runs() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").unwrap();
    let config = server::Config::parse(
        &proxy(&format!(
            "auth = \"password\"\nusers_file = {:?}",
            users.display().to_string()
        )),
        "test config",
    )
    .unwrap();
    // Gone between the validation and the start: a second read would fail the start.
    std::fs::remove_file(&users).unwrap();
    let server = server::Server::bind(&config)
        .await
        .expect("the start runs the users the validation read");
    let addrs = server.local_addrs();
    let addr = |name: &str| addrs.iter().find(|(n, _)| n == name).unwrap().1;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    frame_through(addr("proxy"), addr("frames"), Some(("alice", "s3cret")))
        .await
        .unwrap();
    shutdown.cancel();
    within(STEP, task).await.unwrap().unwrap();
}

/// A listener with `via` chains through another (here: a second listener of the same server,
/// with a password): the frame arrives, and the upstream listener counts the tunnel. A wrong
/// upstream password answers the client X'01'.
#[tokio::test]
async fn a_listener_chains_through_an_upstream_socks5_listener() {
    let upstream = testkit::free_loopback_port().unwrap();
    let listeners = |password: &str| {
        format!(
            "{FRAMES}[[listener]]\nname = \"upstream\"\nmode = \"socks5\"\nbind = \"{upstream}\"\n\
             auth = \"password\"\nusers = [{{ username = \"alice\", password = \"s3cret\" }}]\n\
             [[listener]]\nname = \"front\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n\
             via = \"socks5://alice:{password}@{upstream}\"\n"
        )
    };
    let server = Admin::start(&listeners("s3cret")).await;
    frame_through(server.addr("front"), server.addr("frames"), None)
        .await
        .unwrap();
    wait_for_sample(
        &server,
        "netkit_socks5_requests_total{listener=\"upstream\",mode=\"socks5\",command=\"connect\",reply=\"succeeded\"}",
        1.0,
    )
    .await;
    server.stop().await;

    let server = Running::start(&listeners("guess")).await;
    let refused = frame_through(server.addr("front"), server.addr("frames"), None).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::GeneralFailure))),
        "{refused:?}"
    );
    server.stop().await;
}

/// A rule with `users` from the config applies to that user only.
#[tokio::test]
async fn a_rule_can_name_users() {
    let server = Running::start(&proxy(
        "auth = \"password\"\n\
         users = [{ username = \"alice\", password = \"a\" }, { username = \"bob\", password = \"b\" }]\n\
         [[listener.rules]]\naction = \"deny\"\nusers = [\"bob\"]",
    ))
    .await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    frame_through(proxy, frames, Some(("alice", "a")))
        .await
        .unwrap();
    let bob = frame_through(proxy, frames, Some(("bob", "b"))).await;
    assert!(
        matches!(bob, Err(Error::Rejected(Reply::NotAllowed))),
        "{bob:?}"
    );
    server.stop().await;
}
