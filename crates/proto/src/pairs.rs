//! The values of the `nats` handler's compact headers (`Netkit-Frame`,
//! `Netkit-Source`): `key=value` pairs separated by `;`, with no spaces, for
//! example `v=2;crc=4;seq=10;received=2026-12-01T13:34:35.968589123Z`.
//!
//! In a value, every byte that is not printable ASCII (`!`..=`~`), and every
//! `%`, `;` and `=`, is written `%XX`: two hex digits of the byte (uppercase
//! from [`escape_value`]; lowercase is read too), UTF-8 bytes one by one.
//! Readers do not rely on the order of the pairs and ignore keys they do not
//! know.
//!
//! The writer ([`escape_value`], the server's) and the reader ([`find_pair`],
//! `client consume`'s) live together so that one property test covers both.
//! Pure, and neither panics: a pair that breaks the grammar is read as
//! absent, and only that pair.

use std::borrow::Cow;

/// The percent-decoded value of `key` in `header`, a value of `key=value`
/// pairs separated by `;`.
///
/// `None` when:
/// - no pair has this key (an empty header, `;;`, a pair without `=` have
///   none);
/// - the key is given more than once: the order of the pairs means nothing,
///   so neither can win;
/// - its pair is malformed: a raw byte outside `!`..=`~`, a raw `=` in the
///   value, or a `%` not followed by two hex digits (`a=%`, `a=%zz`);
/// - the decoded bytes are not UTF-8: a lossy replacement would make two
///   different values read the same (two client streams counted as one).
///
/// A malformed pair with another key does not matter. An empty value
/// (`key=`) is `Some("")`. The value is borrowed from `header` unless it
/// had an escape.
pub fn find_pair<'a>(header: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let mut found = None;
    for pair in header.split(';') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if name != key {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(decode_value(value));
    }
    found.flatten()
}

/// Appends `text` as the value of a pair: every byte that is not printable
/// ASCII, and `%`, `;` and `=`, as `%XX` (uppercase hex), so that no text can
/// break the pairs (or the header's line) apart. [`find_pair`] gives `text`
/// back.
pub fn escape_value(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in text.as_bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            for nibble in [byte >> 4, byte & 0x0f] {
                out.push(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
    }
}

/// One value, percent-decoded; `None` when it breaks the grammar or is not
/// UTF-8 once decoded.
fn decode_value(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return raw.bytes().all(is_plain).then_some(Cow::Borrowed(raw));
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = if byte == b'%' {
            let [high, low, tail @ ..] = tail else {
                return None;
            };
            decoded.push(hex_digit(*high)? << 4 | hex_digit(*low)?);
            tail
        } else if is_plain(byte) {
            decoded.push(byte);
            tail
        } else {
            return None;
        };
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

/// A byte that may stand for itself in a value.
fn is_plain(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~') && !matches!(byte, b'%' | b';' | b'=')
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The writer's value of `value`.
    fn encode_value(value: &[u8]) -> String {
        let mut out = String::new();
        escape_value(&mut out, &String::from_utf8_lossy(value));
        out
    }

    #[test]
    fn escapes_what_the_grammar_reserves_in_uppercase() {
        let escaped = encode_value("in;gest=1% é\r\n[fe80::1%2]:9".as_bytes());
        assert_eq!(escaped, "in%3Bgest%3D1%25%20%C3%A9%0D%0A[fe80::1%252]:9");
        assert!(escaped.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(encode_value(b"plain-127.0.0.1:9"), "plain-127.0.0.1:9");
    }

    #[test]
    fn reads_the_documented_examples() {
        let frame = "v=2;crc=4;seq=10;received=2026-12-01T13:34:35.968589123Z";
        assert_eq!(find_pair(frame, "v").as_deref(), Some("2"));
        assert_eq!(find_pair(frame, "crc").as_deref(), Some("4"));
        assert_eq!(find_pair(frame, "seq").as_deref(), Some("10"));
        assert_eq!(
            find_pair(frame, "received").as_deref(),
            Some("2026-12-01T13:34:35.968589123Z")
        );
        let source = "client=127.0.0.1:5000;listener=in%3Bgest;conn=3;stream=abababababababababababababababab";
        assert_eq!(
            find_pair(source, "client").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(find_pair(source, "listener").as_deref(), Some("in;gest"));
        assert_eq!(find_pair(source, "conn").as_deref(), Some("3"));
        assert_eq!(
            find_pair(source, "stream").as_deref(),
            Some("ab".repeat(16).as_str())
        );
        assert_eq!(find_pair(source, "seq"), None);
    }

    #[test]
    fn an_unescaped_value_is_borrowed() {
        assert!(matches!(
            find_pair("a=b;c=d", "c"),
            Some(Cow::Borrowed("d"))
        ));
        assert!(matches!(find_pair("a=%41", "a"), Some(Cow::Owned(v)) if v == "A"));
    }

    #[test]
    fn decodes_escapes_in_either_case_and_utf8_byte_by_byte() {
        assert_eq!(
            find_pair("name=%25%3B%3d%20x", "name").as_deref(),
            Some("%;= x")
        );
        assert_eq!(
            find_pair("name=%C3%A9t%C3%A9", "name").as_deref(),
            Some("été")
        );
    }

    #[test]
    fn order_and_unknown_keys_do_not_matter() {
        let shuffled = "later=%7E;seq=7;junk;v=2;=x;crc=%zz";
        assert_eq!(find_pair(shuffled, "seq").as_deref(), Some("7"));
        assert_eq!(find_pair(shuffled, "v").as_deref(), Some("2"));
    }

    #[test]
    fn hostile_input_is_absent_never_a_panic() {
        let absent = [
            ("", "a"),
            (";", "a"),
            (";;", "a"),
            ("=", "a"),
            ("a", "a"),
            ("a;", "a"),
            ("a=%", "a"),
            ("a=%4", "a"),
            ("a=%zz", "a"),
            ("a=%4g", "a"),
            ("a=%%41", "a"),
            ("a=b=c", "a"),
            ("a=b c", "a"),
            ("a=b\tc", "a"),
            ("a=é", "a"),
            ("a=\u{7f}", "a"),
            // Not UTF-8 once decoded: absent rather than lossy.
            ("a=%FF", "a"),
            ("a=%C3", "a"),
            // Twice, even with the same value: which one wins is undefined.
            ("a=1;a=2", "a"),
            ("a=1;a=1", "a"),
            ("a=%zz;a=1", "a"),
            // A key is compared as written: no spaces, no escapes.
            (" a=1", "a"),
            ("%61=1", "a"),
        ];
        for (header, key) in absent {
            assert_eq!(find_pair(header, key), None, "{header:?} {key:?}");
        }
        assert_eq!(find_pair("a=", "a").as_deref(), Some(""));
        assert_eq!(find_pair("a=;b=%zz", "a").as_deref(), Some(""));
        // The key `=` splits at the first `=`: its name is empty.
        assert_eq!(find_pair("==1", "").as_deref(), None);
        assert_eq!(find_pair("=1", "").as_deref(), Some("1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the server writes for any UTF-8 value reads back
        /// exactly, among other pairs in any order.
        #[test]
        fn what_is_written_reads_back(
            values in proptest::collection::btree_map("[a-z]{1,8}", any::<String>(), 1..6),
            rotate in 0usize..6,
        ) {
            let mut pairs: Vec<String> = values
                .iter()
                .map(|(key, value)| format!("{key}={}", encode_value(value.as_bytes())))
                .collect();
            let len = pairs.len();
            pairs.rotate_left(rotate % len);
            let header = pairs.join(";");
            prop_assert!(header.bytes().all(|b| matches!(b, b'!'..=b'~')));
            for (key, value) in &values {
                let found = find_pair(&header, key);
                prop_assert_eq!(found.as_deref(), Some(value.as_str()));
            }
        }

        /// Any text at all: no panic, and a value found is one that
        /// writes back to exactly its pair's text when that had no escape.
        #[test]
        fn any_text_never_panics(header in "[a-c=;%0-9A-Fz \u{e9}]{0,40}", key in "[a-c]{0,2}") {
            if let Some(value) = find_pair(&header, &key) {
                let written = format!("{key}={}", encode_value(value.as_bytes()));
                if !header.contains('%') {
                    prop_assert!(header.split(';').any(|pair| pair == written));
                }
            }
        }

        /// Arbitrary bytes (made text by lossy UTF-8) never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let header = String::from_utf8_lossy(&bytes);
            let _ = find_pair(&header, "a");
            let _ = find_pair(&header, "");
        }
    }
}
