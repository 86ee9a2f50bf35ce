//! The property every sans-IO decoder of the project promises: it decides
//! from the bytes it has, so a prefix of the input never decides differently
//! from the whole.
//!
//! - whole input `Done(m, used)`: each shorter prefix asks for at least one
//!   and at most `used - k` more bytes (a reader may read exactly that much
//!   without eating into what follows), and `input[..used]` gives `Done(m, used)`;
//! - whole input `NeedMore(n)`: `n >= 1`, and every prefix needs more too;
//! - whole input `Err(e)`: no prefix is `Done`, and once a prefix fails it
//!   fails with `e` (an error is reported as soon as its byte is there and
//!   never changes as more bytes arrive).

use std::fmt::Debug;

/// A decoder's answer, the same for the `Decoded` of `proto` and of `socks5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T, E> {
    /// At least this many more bytes are needed.
    NeedMore(usize),
    /// A value and the bytes it used.
    Done(T, usize),
    /// The error (or, where errors cannot be compared, its kind).
    Error(E),
}

impl<T, E> From<Result<::proto::Decoded<T>, E>> for Outcome<T, E> {
    fn from(result: Result<::proto::Decoded<T>, E>) -> Self {
        match result {
            Ok(::proto::Decoded::NeedMore(n)) => Outcome::NeedMore(n),
            Ok(::proto::Decoded::Done(value, used)) => Outcome::Done(value, used),
            Err(error) => Outcome::Error(error),
        }
    }
}

/// The kind of a `socks5` error (which is not `PartialEq`): the byte some
/// kinds carry is the input's byte at a fixed offset, so the kind is enough.
pub type Socks5ErrorKind = std::mem::Discriminant<::socks5::Error>;

impl<T> From<Result<::socks5::wire::Decoded<T>, ::socks5::Error>> for Outcome<T, Socks5ErrorKind> {
    fn from(result: Result<::socks5::wire::Decoded<T>, ::socks5::Error>) -> Self {
        match result {
            Ok(::socks5::wire::Decoded::NeedMore(n)) => Outcome::NeedMore(n),
            Ok(::socks5::wire::Decoded::Done(value, used)) => Outcome::Done(value, used),
            Err(error) => Outcome::Error(std::mem::discriminant(&error)),
        }
    }
}

/// The prefix lengths checked for an input of `len` bytes: the first 16, the
/// last 8 and the powers of two, so that a 4 KiB input costs about 35
/// decodes rather than 4,096 (each run of the fuzzer picks other lengths as
/// the input changes, and every length is covered by some input).
fn lengths(len: usize) -> impl Iterator<Item = usize> {
    (0..len).filter(move |&k| k < 16 || k + 8 >= len || k.is_power_of_two())
}

/// Checks the property above for `decode` on `input` and returns the
/// outcome of the whole input.
///
/// # Panics
///
/// When the property fails.
pub fn check<'a, T: Debug + PartialEq, E: Debug + PartialEq>(
    input: &'a [u8],
    decode: impl Fn(&'a [u8]) -> Outcome<T, E>,
) -> Outcome<T, E> {
    let whole = decode(input);
    match &whole {
        Outcome::Done(_, used) => {
            let used = *used;
            assert!(
                (1..=input.len()).contains(&used),
                "used {used} of {}",
                input.len()
            );
            for k in lengths(used) {
                match decode(&input[..k]) {
                    Outcome::NeedMore(n) => assert!(
                        n >= 1 && n <= used - k,
                        "prefix of {k} asks for {n}, the message has {used}"
                    ),
                    other => panic!("prefix of {k} gave {other:?}, the whole {whole:?}"),
                }
            }
            assert_eq!(decode(&input[..used]), whole, "the message alone");
        }
        Outcome::NeedMore(n) => {
            assert!(*n >= 1, "NeedMore(0)");
            for k in lengths(input.len()) {
                match decode(&input[..k]) {
                    Outcome::NeedMore(m) => assert!(m >= 1, "prefix of {k}: NeedMore(0)"),
                    other => panic!("prefix of {k} gave {other:?}, the whole {whole:?}"),
                }
            }
        }
        Outcome::Error(error) => {
            let mut failed_at = None;
            for k in lengths(input.len()) {
                match decode(&input[..k]) {
                    Outcome::NeedMore(_) => assert!(
                        failed_at.is_none(),
                        "prefix of {k} needs more after a failure at {failed_at:?}"
                    ),
                    Outcome::Error(e) => {
                        assert_eq!(&e, error, "prefix of {k}");
                        failed_at.get_or_insert(k);
                    }
                    done @ Outcome::Done(..) => {
                        panic!("prefix of {k} gave {done:?}, the whole {whole:?}")
                    }
                }
            }
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder of one length-prefixed message: `[len, bytes...]`, and 0xff
    /// is an error.
    fn good(b: &[u8]) -> Outcome<usize, ()> {
        match b.first() {
            None => Outcome::NeedMore(1),
            Some(0xff) => Outcome::Error(()),
            Some(&len) => {
                let total = 1 + usize::from(len);
                if b.len() < total {
                    Outcome::NeedMore(total - b.len())
                } else {
                    Outcome::Done(usize::from(len), total)
                }
            }
        }
    }

    fn fails(input: &[u8], decode: fn(&[u8]) -> Outcome<usize, ()>) -> bool {
        std::panic::catch_unwind(|| check(input, decode)).is_err()
    }

    #[test]
    fn a_consistent_decoder_passes() {
        for input in [&b""[..], b"\x03ab", b"\x03abc", b"\x03abcdef", b"\xff\x01"] {
            assert!(!fails(input, good), "{input:?}");
        }
    }

    #[test]
    fn asking_past_the_message_fails() {
        let greedy = |b: &[u8]| match good(b) {
            Outcome::NeedMore(n) => Outcome::NeedMore(n + 1),
            other => other,
        };
        assert!(fails(b"\x03abc", greedy));
    }

    #[test]
    fn a_prefix_that_decides_otherwise_fails() {
        // Done on a short prefix, an error once more bytes arrive.
        let late_error = |b: &[u8]| match b.get(1) {
            Some(b'!') => Outcome::Error(()),
            _ => good(b),
        };
        assert!(fails(b"\x00!", late_error));
        // An error that goes away once more bytes arrive.
        let early_error = |b: &[u8]| {
            if b.len() == 1 {
                Outcome::Error(())
            } else {
                good(b)
            }
        };
        assert!(fails(b"\x02ab", early_error));
    }
}
