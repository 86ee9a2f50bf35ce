//! `Proxy-Authorization: Basic` (RFC 9110 §11.7.2, RFC 7617): the [`BasicAuth`] trait that
//! checks a user and password, and the pure parsing of the header.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::header::HeaderValue;

pub use socks5::LoginFailure;

/// The future [`BasicAuth::check`] returns: the user's name, or why the login failed.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<String, LoginFailure>> + Send + 'a>>;

/// Who must log in, and whether a user and password are right.
///
/// [`socks5::AuthPolicy`] implements it, so the HTTP door checks the same users, and lets the
/// same `no_auth_networks` in without a password, as the SOCKS5 door.
pub trait BasicAuth: Send + Sync {
    /// Whether `client` must log in. The default: everybody.
    fn required(&self, client: IpAddr) -> bool {
        let _ = client;
        true
    }

    /// The user's name if `password` is `user`'s, else why not (for the log; the client only
    /// ever gets a 407). An implementation should take the same time either way.
    fn check<'a>(&'a self, user: &'a str, password: &'a str) -> AuthFuture<'a>;
}

impl BasicAuth for socks5::AuthPolicy {
    fn required(&self, client: IpAddr) -> bool {
        !self.exempt(client)
    }

    fn check<'a>(&'a self, user: &'a str, password: &'a str) -> AuthFuture<'a> {
        let verdict = socks5::AuthPolicy::check(self, user.as_bytes(), password.as_bytes());
        Box::pin(std::future::ready(verdict.map(|()| user.to_owned())))
    }
}

/// The user and password of a `Basic` credential.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The longest `Proxy-Authorization` value parsed: a 255-byte user and password (the SOCKS5
/// bounds) in base64, with room to spare. Longer values are refused unparsed.
const MAX_CREDENTIALS_LEN: usize = 1024;

/// Parses `Basic <base64(user ":" password)>` (the scheme case-insensitive, RFC 9110 §11.1).
/// `None` for another scheme, bad base64, no colon, text that is not UTF-8 (RFC 7617 §2.1:
/// the charset is UTF-8), or a value over [`MAX_CREDENTIALS_LEN`].
pub(crate) fn parse_basic(value: &HeaderValue) -> Option<Credentials> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_CREDENTIALS_LEN {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(token.trim_start()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Option<(String, String)> {
        let value = HeaderValue::from_bytes(text).expect("a valid header value");
        parse_basic(&value).map(|c| (c.user, c.password))
    }

    fn pair(user: &str, password: &str) -> Option<(String, String)> {
        Some((user.to_owned(), password.to_owned()))
    }

    #[test]
    fn parses_basic_credentials() {
        // RFC 7617 §2's example.
        assert_eq!(
            parse(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            pair("Aladdin", "open sesame")
        );
        assert_eq!(
            parse(b"basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            pair("Aladdin", "open sesame")
        );
        assert_eq!(
            parse(b"BASIC  QWxhZGRpbjpvcGVuIHNlc2FtZQ== "),
            pair("Aladdin", "open sesame")
        );
        // The first colon splits: a password may hold colons, a user may be empty.
        let token = STANDARD.encode("u:p:q");
        assert_eq!(parse(format!("Basic {token}").as_bytes()), pair("u", "p:q"));
        let token = STANDARD.encode(":p");
        assert_eq!(parse(format!("Basic {token}").as_bytes()), pair("", "p"));
        // RFC 7617 §2.1: UTF-8.
        let token = STANDARD.encode("jöran:pässword");
        assert_eq!(
            parse(format!("Basic {token}").as_bytes()),
            pair("jöran", "pässword")
        );
    }

    #[test]
    fn refuses_what_is_not_a_basic_credential() {
        let no_colon = format!("Basic {}", STANDARD.encode("user"));
        let latin1 = format!("Basic {}", STANDARD.encode(b"j\xf6ran:x"));
        let huge = format!("Basic {}", STANDARD.encode("u:".repeat(600)));
        let table: [&[u8]; 8] = [
            b"Bearer abc",
            b"Basic",
            b"Basic !!!not base64",
            b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ",
            no_colon.as_bytes(),
            latin1.as_bytes(),
            huge.as_bytes(),
            b"Digest username=\"a\"",
        ];
        for text in table {
            assert_eq!(parse(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let credentials = Credentials {
            user: "alice".into(),
            password: "secret".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("alice") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn the_socks5_policy_checks_the_same_users() {
        let policy = socks5::AuthPolicy::password(
            [("alice".to_owned(), "pw".to_owned())],
            vec!["10.0.0.0/8".parse().expect("valid")],
        );
        assert_eq!(
            BasicAuth::check(&policy, "alice", "pw").await,
            Ok("alice".into())
        );
        assert_eq!(
            BasicAuth::check(&policy, "alice", "nope").await,
            Err(LoginFailure::WrongPassword)
        );
        assert_eq!(
            BasicAuth::check(&policy, "bob", "pw").await,
            Err(LoginFailure::UnknownUser)
        );
        assert!(BasicAuth::required(
            &policy,
            "192.0.2.1".parse().expect("valid")
        ));
        assert!(!BasicAuth::required(
            &policy,
            "10.1.2.3".parse().expect("valid")
        ));
    }
}
