//! `server`'s config loader on arbitrary text.

/// Parts of a path that name special files (`/dev/zero`, `/proc/self/mem`,
/// `/dev/stdin`): reading one as a `users_file` could block or never end, and
/// that is the operating system's file, not the parser under test.
const SPECIAL_FILES: [&str; 4] = ["dev/", "proc/", "sys/", "fd/"];

/// [`server::Config::parse`] never panics, whatever the text; an error names
/// its origin. Inputs that are not UTF-8 are skipped (the loader reads a
/// `String`), and so are texts that could point `users_file` at a special file.
pub fn parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("users_file") && SPECIAL_FILES.iter().any(|p| text.contains(p)) {
        return;
    }
    if let Err(error) = server::Config::parse(text, "fuzz.toml") {
        let message = format!("{error:#}");
        assert!(message.starts_with("fuzz.toml"), "{message}");
    }
}
