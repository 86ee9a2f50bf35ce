//! Who must log in, and with what: the [`Authenticator`] trait and its default, the server's
//! authentication policy [`AuthPolicy`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

use crate::wire::Method;

/// The future [`Authenticator::authenticate`] returns: the user's name on success.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<String, LoginFailure>> + Send + 'a>>;

/// Decides who must log in and checks logins: the session's extension point for
/// authentication (the default is [`AuthPolicy`]).
///
/// The session calls [`Authenticator::choose`] with the methods a client offers, and, when it
/// picked X'02', [`Authenticator::authenticate`] with the RFC 1929 credentials, all within the
/// handshake deadline (a slow answer times out like a slow client). The user returned is the
/// session's user: it goes in the [`crate::SessionReport`] and to the proxy core with the
/// request. A refusal is logged by the session in the fail2ban format of the README (client,
/// reason, user; never the password) and the client learns only RFC 1929's failure status.
///
/// ```
/// use std::net::IpAddr;
/// use socks5::wire::Method;
/// use socks5::{AuthFuture, Authenticator, LoginFailure};
///
/// /// Everyone logs in; the password is the user name backwards.
/// struct Backwards;
///
/// impl Authenticator for Backwards {
///     fn choose(&self, _client: IpAddr, offered: &[Method]) -> Method {
///         if offered.contains(&Method::UsernamePassword) {
///             Method::UsernamePassword
///         } else {
///             Method::NoAcceptable
///         }
///     }
///
///     fn authenticate<'a>(
///         &'a self,
///         _client: IpAddr,
///         username: &'a [u8],
///         password: &'a [u8],
///     ) -> AuthFuture<'a> {
///         Box::pin(async move {
///             let reversed: Vec<u8> = username.iter().rev().copied().collect();
///             match std::str::from_utf8(username) {
///                 Ok(name) if reversed == password => Ok(name.to_owned()),
///                 Ok(_) => Err(LoginFailure::WrongPassword),
///                 Err(_) => Err(LoginFailure::UnknownUser),
///             }
///         })
///     }
/// }
///
/// let options = socks5::ServerOptions::builder().authenticator(Backwards).build();
/// # let _ = options;
/// ```
pub trait Authenticator: Send + Sync {
    /// The method to select from the client's offer, or [`Method::NoAcceptable`] (the session
    /// then answers X'FF' and closes). Only X'00' and X'02' are carried out.
    fn choose(&self, client: IpAddr, offered: &[Method]) -> Method;

    /// Checks an RFC 1929 login from `client` (IPv4-mapped addresses as IPv4).
    ///
    /// # Errors
    ///
    /// [`LoginFailure`]: why the login is refused, for the log.
    fn authenticate<'a>(
        &'a self,
        client: IpAddr,
        username: &'a [u8],
        password: &'a [u8],
    ) -> AuthFuture<'a>;
}

impl Authenticator for AuthPolicy {
    fn choose(&self, client: IpAddr, offered: &[Method]) -> Method {
        AuthPolicy::choose(self, client, offered)
    }

    fn authenticate<'a>(
        &'a self,
        _client: IpAddr,
        username: &'a [u8],
        password: &'a [u8],
    ) -> AuthFuture<'a> {
        let verdict = self
            .check(username, password)
            .map(|()| String::from_utf8_lossy(username).into_owned());
        Box::pin(std::future::ready(verdict))
    }
}

/// RFC 1929 fields are at most 255 bytes: a secret is stored as its length followed by the
/// bytes, zero-padded to a fixed size, so that comparing two never depends on their lengths.
const SECRET_LEN: usize = 1 + 255;

/// The authentication policy of a server.
///
/// - [`AuthPolicy::none`]: every client uses method X'00' (no authentication).
/// - [`AuthPolicy::password`]: clients whose IP is in `no_auth_networks` may use X'00';
///   everybody else must use X'02' (RFC 1929 username/password) with one of `users`.
///
/// If no offered method is acceptable the server answers X'FF' and closes. Passwords are
/// compared in constant time; `Debug` shows user names only.
#[derive(Clone)]
pub struct AuthPolicy {
    users: HashMap<String, Option<[u8; SECRET_LEN]>>,
    no_auth_networks: Vec<IpNet>,
    password_required: bool,
}

impl AuthPolicy {
    /// No authentication for anybody.
    #[must_use]
    pub fn none() -> Self {
        AuthPolicy {
            users: HashMap::new(),
            no_auth_networks: vec![],
            password_required: false,
        }
    }

    /// Username/password for everybody outside `no_auth_networks`.
    ///
    /// A password longer than 255 bytes cannot be sent in RFC 1929 and so never matches.
    #[must_use]
    pub fn password(
        users: impl IntoIterator<Item = (String, String)>,
        no_auth_networks: Vec<IpNet>,
    ) -> Self {
        let users = users
            .into_iter()
            .map(|(user, pass)| (user, padded(pass.as_bytes())))
            .collect();
        AuthPolicy {
            users,
            no_auth_networks,
            password_required: true,
        }
    }

    /// Whether some clients must log in.
    #[must_use]
    pub fn password_required(&self) -> bool {
        self.password_required
    }

    /// Whether `client` may skip the login.
    #[must_use]
    pub fn exempt(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        !self.password_required
            || self
                .no_auth_networks
                .iter()
                .any(|net| net.contains(&client))
    }

    /// The method to select from the client's offer, or [`Method::NoAcceptable`].
    ///
    /// A client allowed to skip the login gets X'00' when it offers it, even if it offers X'02'
    /// too (as curl does when given credentials); without a password policy X'02' is never
    /// chosen.
    #[must_use]
    pub fn choose(&self, client: IpAddr, offered: &[Method]) -> Method {
        if self.exempt(client) && offered.contains(&Method::NoAuth) {
            Method::NoAuth
        } else if self.password_required && offered.contains(&Method::UsernamePassword) {
            Method::UsernamePassword
        } else {
            Method::NoAcceptable
        }
    }

    /// Whether the credentials are those of a configured user. The password comparison takes
    /// the same time whatever the password, and an unknown user costs a comparison too.
    #[must_use]
    pub fn verify(&self, username: &[u8], password: &[u8]) -> bool {
        self.check(username, password).is_ok()
    }

    /// As [`AuthPolicy::verify`], saying why a login is refused (for the server's log; the
    /// client only ever learns RFC 1929's failure status). Takes the same time either way.
    ///
    /// # Errors
    ///
    /// [`LoginFailure::UnknownUser`] when no configured user has this name (always, under
    /// [`AuthPolicy::none`]); [`LoginFailure::WrongPassword`] when the password is not theirs.
    pub fn check(&self, username: &[u8], password: &[u8]) -> Result<(), LoginFailure> {
        let offered = padded(password);
        let stored = std::str::from_utf8(username)
            .ok()
            .and_then(|name| self.users.get(name));
        let dummy = [0xFF; SECRET_LEN]; // its length byte (255) with 255 bytes of 0xFF
        // A user whose configured password is too long to send exists, but never matches.
        let (expected, matchable) = match stored {
            Some(Some(secret)) => (secret, true),
            Some(None) | None => (&dummy, false),
        };
        let offered = offered.as_ref().unwrap_or(&dummy);
        let equal: bool = expected.ct_eq(offered).into();
        match (stored.is_some(), matchable && equal) {
            (true, true) => Ok(()),
            (true, false) => Err(LoginFailure::WrongPassword),
            (false, _) => Err(LoginFailure::UnknownUser),
        }
    }
}

/// Why [`AuthPolicy::check`] refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginFailure {
    /// No configured user has this name (or the name is not UTF-8).
    UnknownUser,
    /// The user exists; the password is not theirs.
    WrongPassword,
}

impl LoginFailure {
    /// The reason as logged: `unknown user` or `wrong password`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::UnknownUser => "unknown user",
            LoginFailure::WrongPassword => "wrong password",
        }
    }
}

impl fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("AuthPolicy")
            .field("users", &users)
            .field("no_auth_networks", &self.no_auth_networks)
            .field("password_required", &self.password_required)
            .finish()
    }
}

fn padded(secret: &[u8]) -> Option<[u8; SECRET_LEN]> {
    let len = u8::try_from(secret.len()).ok()?;
    let mut out = [0; SECRET_LEN];
    let (head, tail) = out.split_first_mut()?;
    *head = len;
    tail.get_mut(..secret.len())?.copy_from_slice(secret);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AuthPolicy {
        AuthPolicy::password(
            [
                ("alice".to_owned(), "wonderland".to_owned()),
                ("long".to_owned(), "x".repeat(300)),
            ],
            vec!["127.0.0.0/8".parse().expect("valid network")],
        )
    }

    #[test]
    fn verifies_only_exact_credentials() {
        let policy = policy();
        let long = "x".repeat(255);
        let table: [(&[u8], &[u8], bool); 8] = [
            (b"alice", b"wonderland", true),
            (b"alice", b"wonderlan", false),
            (b"alice", b"wonderland!", false),
            (b"alice", b"", false),
            (b"bob", b"wonderland", false),
            (b"\xff", b"wonderland", false),
            (b"long", long.as_bytes(), false),
            (b"alice", &[0xFF; 255], false),
        ];
        for (user, pass, expected) in table {
            assert_eq!(policy.verify(user, pass), expected, "{user:?}");
        }
        assert!(!AuthPolicy::none().verify(b"alice", b"wonderland"));
    }

    #[test]
    fn says_why_a_login_is_refused() {
        type Case<'a> = (&'a [u8], &'a [u8], Result<(), LoginFailure>);
        let policy = policy();
        let long = "x".repeat(255);
        let table: [Case<'_>; 6] = [
            (b"alice", b"wonderland", Ok(())),
            (b"alice", b"wonderlan", Err(LoginFailure::WrongPassword)),
            (b"bob", b"wonderland", Err(LoginFailure::UnknownUser)),
            (b"\xff", b"wonderland", Err(LoginFailure::UnknownUser)),
            // Configured with a password no client can send.
            (b"long", long.as_bytes(), Err(LoginFailure::WrongPassword)),
            (b"alice", &[0xFF; 255], Err(LoginFailure::WrongPassword)),
        ];
        for (user, pass, expected) in table {
            assert_eq!(policy.check(user, pass), expected, "{user:?}");
        }
        assert_eq!(
            AuthPolicy::none().check(b"alice", b"wonderland"),
            Err(LoginFailure::UnknownUser)
        );
        assert_eq!(LoginFailure::WrongPassword.to_string(), "wrong password");
    }

    #[test]
    fn chooses_a_method_by_policy_and_client() {
        let (lan, wan) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([203, 0, 113, 5]));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("valid IP");
        let both = [Method::NoAuth, Method::UsernamePassword];
        let table = [
            (AuthPolicy::none(), wan, &both[..], Method::NoAuth),
            (
                AuthPolicy::none(),
                wan,
                &[Method::UsernamePassword][..],
                Method::NoAcceptable,
            ),
            (AuthPolicy::none(), wan, &[][..], Method::NoAcceptable),
            (policy(), wan, &both[..], Method::UsernamePassword),
            (policy(), wan, &[Method::NoAuth][..], Method::NoAcceptable),
            (policy(), lan, &both[..], Method::NoAuth),
            (policy(), mapped, &[Method::NoAuth][..], Method::NoAuth),
            (
                policy(),
                lan,
                &[Method::UsernamePassword][..],
                Method::UsernamePassword,
            ),
            (
                policy(),
                wan,
                &[Method::Gssapi, Method::Other(0x80)][..],
                Method::NoAcceptable,
            ),
        ];
        for (policy, client, offered, expected) in table {
            assert_eq!(
                policy.choose(client, offered),
                expected,
                "{client} {offered:?}"
            );
        }
    }

    #[test]
    fn debug_shows_no_password() {
        let shown = format!("{:?}", policy());
        assert!(
            shown.contains("alice") && !shown.contains("wonderland"),
            "{shown}"
        );
    }
}
