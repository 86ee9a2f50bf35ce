//! Method negotiation (RFC 1928 §3) and the username/password sub-negotiation (RFC 1929 §2).

use std::fmt;

use bytes::BufMut;

use super::address::need;
use super::{Decoded, Method, consts};
use crate::Error;

/// The client's first message: the methods it supports, RFC 1928 §3.
///
/// ```text
/// +-----+----------+----------+
/// | VER | NMETHODS | METHODS  |      VER = X'05'
/// +-----+----------+----------+      one octet per method
/// |  1  |    1     | 1 to 255 |
/// +-----+----------+----------+
/// ```
///
/// Decoding also accepts NMETHODS = 0; a server finds no acceptable method in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The offered methods, in the client's order.
    pub methods: Vec<Method>,
}

/// The server's choice of method, RFC 1928 §3.
///
/// ```text
/// +-----+--------+
/// | VER | METHOD |      VER = X'05'; METHOD X'FF' = no acceptable method
/// +-----+--------+
/// |  1  |   1    |
/// +-----+--------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSelection {
    /// The chosen method, or [`Method::NoAcceptable`].
    pub method: Method,
}

/// The client's credentials, RFC 1929 §2.
///
/// ```text
/// +-----+------+----------+------+----------+
/// | VER | ULEN |  UNAME   | PLEN |  PASSWD  |      VER = X'01'
/// +-----+------+----------+------+----------+
/// |  1  |  1   | 1 to 255 |  1   | 1 to 255 |
/// +-----+------+----------+------+----------+
/// ```
///
/// The fields are raw bytes, since RFC 1929 gives them no encoding; decoding also accepts
/// empty ones (they simply fail to log in). `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordRequest {
    /// UNAME.
    pub username: Vec<u8>,
    /// PASSWD.
    pub password: Vec<u8>,
}

impl fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordRequest")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The server's verdict on the credentials, RFC 1929 §2.
///
/// ```text
/// +-----+--------+
/// | VER | STATUS |      VER = X'01'; STATUS X'00' = success, anything else = failure
/// +-----+--------+
/// |  1  |   1    |
/// +-----+--------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordStatus {
    /// STATUS as sent.
    pub status: u8,
}

impl PasswordStatus {
    /// STATUS X'00'.
    pub const SUCCESS: PasswordStatus = PasswordStatus {
        status: consts::PASSWORD_SUCCESS,
    };
    /// STATUS X'01', the failure this crate sends.
    pub const FAILURE: PasswordStatus = PasswordStatus {
        status: consts::PASSWORD_FAILURE,
    };

    /// Whether STATUS is X'00'.
    #[must_use]
    pub fn is_success(self) -> bool {
        self.status == consts::PASSWORD_SUCCESS
    }
}

/// Decodes a [`Greeting`].
///
/// # Errors
///
/// [`Error::Version`] if the first byte is not 5.
pub fn decode_greeting(buf: &[u8]) -> Result<Decoded<Greeting>, Error> {
    check_version(buf, consts::SOCKS_VERSION, Error::Version)?;
    let Some(&[_, count]) = buf.first_chunk::<2>() else {
        return Ok(need(2, buf.len()));
    };
    let total = 2 + usize::from(count);
    let Some(methods) = buf.get(2..total) else {
        return Ok(need(total, buf.len()));
    };
    let methods = methods.iter().copied().map(Method::from).collect();
    Ok(Decoded::Done(Greeting { methods }, total))
}

/// Encodes a [`Greeting`].
///
/// # Errors
///
/// [`Error::TooLong`] if there are more than 255 methods; nothing is written then.
pub fn encode_greeting(greeting: &Greeting, out: &mut impl BufMut) -> Result<(), Error> {
    let count = length_byte("method list", greeting.methods.len())?;
    out.put_u8(consts::SOCKS_VERSION);
    out.put_u8(count);
    for &method in &greeting.methods {
        out.put_u8(method.into());
    }
    Ok(())
}

/// Decodes a [`MethodSelection`].
///
/// # Errors
///
/// [`Error::Version`] if the first byte is not 5.
pub fn decode_method_selection(buf: &[u8]) -> Result<Decoded<MethodSelection>, Error> {
    check_version(buf, consts::SOCKS_VERSION, Error::Version)?;
    let Some(&[_, method]) = buf.first_chunk::<2>() else {
        return Ok(need(2, buf.len()));
    };
    Ok(Decoded::Done(
        MethodSelection {
            method: method.into(),
        },
        2,
    ))
}

/// Encodes a [`MethodSelection`].
pub fn encode_method_selection(selection: &MethodSelection, out: &mut impl BufMut) {
    out.put_u8(consts::SOCKS_VERSION);
    out.put_u8(selection.method.into());
}

/// Decodes a [`PasswordRequest`].
///
/// # Errors
///
/// [`Error::AuthVersion`] if the first byte is not 1.
pub fn decode_password_request(buf: &[u8]) -> Result<Decoded<PasswordRequest>, Error> {
    check_version(buf, consts::PASSWORD_VERSION, Error::AuthVersion)?;
    // The shortest request (both fields empty) is 3 bytes, so asking for 2 is safe.
    let Some(&[_, username_len]) = buf.first_chunk::<2>() else {
        return Ok(need(2, buf.len()));
    };
    let username_end = 2 + usize::from(username_len);
    let Some((username, &password_len)) = buf.get(2..username_end).zip(buf.get(username_end))
    else {
        return Ok(need(username_end + 1, buf.len()));
    };
    let total = username_end + 1 + usize::from(password_len);
    let Some(password) = buf.get(username_end + 1..total) else {
        return Ok(need(total, buf.len()));
    };
    let request = PasswordRequest {
        username: username.to_vec(),
        password: password.to_vec(),
    };
    Ok(Decoded::Done(request, total))
}

/// Encodes a [`PasswordRequest`].
///
/// # Errors
///
/// [`Error::TooLong`] if the username or the password is longer than 255 bytes; nothing is
/// written then.
pub fn encode_password_request(
    request: &PasswordRequest,
    out: &mut impl BufMut,
) -> Result<(), Error> {
    let username_len = length_byte("username", request.username.len())?;
    let password_len = length_byte("password", request.password.len())?;
    out.put_u8(consts::PASSWORD_VERSION);
    out.put_u8(username_len);
    out.put_slice(&request.username);
    out.put_u8(password_len);
    out.put_slice(&request.password);
    Ok(())
}

/// Decodes a [`PasswordStatus`].
///
/// # Errors
///
/// [`Error::AuthVersion`] if the first byte is not 1.
pub fn decode_password_status(buf: &[u8]) -> Result<Decoded<PasswordStatus>, Error> {
    check_version(buf, consts::PASSWORD_VERSION, Error::AuthVersion)?;
    let Some(&[_, status]) = buf.first_chunk::<2>() else {
        return Ok(need(2, buf.len()));
    };
    Ok(Decoded::Done(PasswordStatus { status }, 2))
}

/// Encodes a [`PasswordStatus`].
pub fn encode_password_status(status: &PasswordStatus, out: &mut impl BufMut) {
    out.put_u8(consts::PASSWORD_VERSION);
    out.put_u8(status.status);
}

/// Fails as soon as the first byte is there and is not `version`.
pub(super) fn check_version(
    buf: &[u8],
    version: u8,
    error: impl FnOnce(u8) -> Error,
) -> Result<(), Error> {
    match buf.first() {
        Some(&first) if first != version => Err(error(first)),
        _ => Ok(()),
    }
}

fn length_byte(field: &'static str, len: usize) -> Result<u8, Error> {
    u8::try_from(len).map_err(|_| Error::TooLong { field, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_no_panic, check_prefixes};
    use proptest::prelude::*;

    #[test]
    fn decodes_greetings() {
        let table: [(&[u8], Decoded<Greeting>); 5] = [
            (&[], Decoded::NeedMore(2)),
            (&[5], Decoded::NeedMore(1)),
            (&[5, 2, 0], Decoded::NeedMore(1)),
            (&[5, 0], Decoded::Done(Greeting { methods: vec![] }, 2)),
            (
                &[5, 2, 0, 2, 0xEE],
                Decoded::Done(
                    Greeting {
                        methods: vec![Method::NoAuth, Method::UsernamePassword],
                    },
                    4,
                ),
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(
                decode_greeting(bytes).expect("valid"),
                expected,
                "{bytes:02x?}"
            );
        }
        assert!(matches!(
            decode_greeting(&[4, 1, 0]),
            Err(Error::Version(4))
        ));
        assert!(matches!(
            decode_greeting(b"GET / HTTP/1.1"),
            Err(Error::Version(b'G'))
        ));
    }

    #[test]
    fn decodes_method_selections() {
        let done = |method| Decoded::Done(MethodSelection { method }, 2);
        assert_eq!(
            decode_method_selection(&[5, 0]).expect("valid"),
            done(Method::NoAuth)
        );
        assert_eq!(
            decode_method_selection(&[5, 0xFF]).expect("valid"),
            done(Method::NoAcceptable)
        );
        assert_eq!(
            decode_method_selection(&[5]).expect("prefix"),
            Decoded::NeedMore(1)
        );
        assert!(matches!(
            decode_method_selection(&[1, 0]),
            Err(Error::Version(1))
        ));
    }

    #[test]
    fn decodes_password_requests() {
        let request = |user: &[u8], pass: &[u8]| PasswordRequest {
            username: user.to_vec(),
            password: pass.to_vec(),
        };
        let table: [(&[u8], Decoded<PasswordRequest>); 6] = [
            (&[], Decoded::NeedMore(2)),
            (&[1, 4, b'u'], Decoded::NeedMore(4)),
            (b"\x01\x04user", Decoded::NeedMore(1)),
            (b"\x01\x04user\x04pa", Decoded::NeedMore(2)),
            (
                b"\x01\x04user\x04pass!",
                Decoded::Done(request(b"user", b"pass"), 11),
            ),
            (&[1, 0, 0], Decoded::Done(request(b"", b""), 3)),
        ];
        for (bytes, expected) in table {
            assert_eq!(
                decode_password_request(bytes).expect("valid"),
                expected,
                "{bytes:02x?}"
            );
        }
        assert!(matches!(
            decode_password_request(&[5, 1, 0]),
            Err(Error::AuthVersion(5))
        ));
    }

    #[test]
    fn password_request_debug_hides_the_password() {
        let request = PasswordRequest {
            username: b"alice".to_vec(),
            password: b"s3cret".to_vec(),
        };
        let shown = format!("{request:?}");
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn decodes_password_statuses() {
        let status = decode_password_status(&[1, 0]).expect("valid");
        assert_eq!(status, Decoded::Done(PasswordStatus::SUCCESS, 2));
        let Decoded::Done(failure, _) = decode_password_status(&[1, 0x7F]).expect("valid") else {
            panic!("complete message");
        };
        assert!(!failure.is_success());
        assert!(matches!(
            decode_password_status(&[5, 0]),
            Err(Error::AuthVersion(5))
        ));
    }

    #[test]
    fn encodes_to_the_rfc_layouts() {
        let mut out = Vec::new();
        let greeting = Greeting {
            methods: vec![Method::NoAuth, Method::UsernamePassword],
        };
        encode_greeting(&greeting, &mut out).expect("fits");
        encode_method_selection(
            &MethodSelection {
                method: Method::NoAcceptable,
            },
            &mut out,
        );
        let request = PasswordRequest {
            username: b"u".to_vec(),
            password: b"pw".to_vec(),
        };
        encode_password_request(&request, &mut out).expect("fits");
        encode_password_status(&PasswordStatus::FAILURE, &mut out);
        assert_eq!(out, b"\x05\x02\x00\x02\x05\xff\x01\x01u\x02pw\x01\x01");
    }

    #[test]
    fn refuses_to_encode_fields_that_do_not_fit() {
        let mut out = Vec::new();
        let greeting = Greeting {
            methods: vec![Method::NoAuth; 256],
        };
        assert!(matches!(
            encode_greeting(&greeting, &mut out),
            Err(Error::TooLong {
                field: "method list",
                len: 256
            })
        ));
        let request = PasswordRequest {
            username: b"u".to_vec(),
            password: vec![b'p'; 300],
        };
        assert!(matches!(
            encode_password_request(&request, &mut out),
            Err(Error::TooLong {
                field: "password",
                len: 300
            })
        ));
        assert!(out.is_empty());
    }

    fn method() -> impl Strategy<Value = Method> {
        any::<u8>().prop_map(Method::from)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_no_panic(&bytes, decode_greeting(&bytes))?;
            check_no_panic(&bytes, decode_method_selection(&bytes))?;
            check_no_panic(&bytes, decode_password_request(&bytes))?;
            check_no_panic(&bytes, decode_password_status(&bytes))?;
        }

        #[test]
        fn greetings_round_trip(methods in proptest::collection::vec(method(), 0..=255)) {
            let greeting = Greeting { methods };
            let mut out = Vec::new();
            encode_greeting(&greeting, &mut out).expect("fits");
            check_prefixes(&out, decode_greeting)?;
            prop_assert_eq!(decode_greeting(&out).expect("valid"), Decoded::Done(greeting, out.len()));
        }

        #[test]
        fn method_selections_round_trip(method in method()) {
            let selection = MethodSelection { method };
            let mut out = Vec::new();
            encode_method_selection(&selection, &mut out);
            check_prefixes(&out, decode_method_selection)?;
            prop_assert_eq!(decode_method_selection(&out).expect("valid"), Decoded::Done(selection, 2));
        }

        #[test]
        fn password_requests_round_trip(
            username in proptest::collection::vec(any::<u8>(), 0..=255),
            password in proptest::collection::vec(any::<u8>(), 0..=255),
        ) {
            let request = PasswordRequest { username, password };
            let mut out = Vec::new();
            encode_password_request(&request, &mut out).expect("fits");
            check_prefixes(&out, decode_password_request)?;
            prop_assert_eq!(
                decode_password_request(&out).expect("valid"),
                Decoded::Done(request, out.len())
            );
        }

        #[test]
        fn password_statuses_round_trip(status in any::<u8>()) {
            let status = PasswordStatus { status };
            let mut out = Vec::new();
            encode_password_status(&status, &mut out);
            check_prefixes(&out, decode_password_status)?;
            prop_assert_eq!(decode_password_status(&out).expect("valid"), Decoded::Done(status, 2));
        }
    }
}
