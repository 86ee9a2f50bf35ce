//! The TOML configuration, parsed in two steps: raw serde structs that reject
//! unknown keys and modes, then a validation pass (`Config::parse`), which fills defaults,
//! checks values against each other and names the listener and key at fault.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::bounds::format_duration;
pub use crate::bounds::{
    InvalidValue, MAX_CONNECTIONS, MAX_DURATION, MAX_FILE_LEN, MAX_WORKERS, MIN_STATS_INTERVAL,
    MIN_TIMEOUT, check_count, check_duration, invalid, read_bounded,
};
use crate::registry::{ListenerConfig, Prepared};

/// The config the server runs when given no `--config`: loopback only.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the process as a whole.
    #[serde(default)]
    pub server: ServerSection,
    /// The admin endpoint (`/metrics`, `/healthz`, `/readyz`); absent: off.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
    /// The listeners, each in a registered mode.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Every listener validated and ready to run, in `listeners` order: filled by
    /// [`Config::parse`], the one validation that `--check-config`, the start and a reload
    /// share.
    #[serde(skip)]
    pub(crate) prepared: Vec<Prepared>,
}

/// The `[server]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// How long shutdown waits for connections to finish before it exits.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often each listener logs its counters (`0s`: only at shutdown).
    #[serde(default = "default_stats_interval", with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Single-threaded runtimes that serve the connections, handed out round-robin
    /// (`0`: the connections share the work-stealing runtime); absent: one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
            stats_interval: default_stats_interval(),
            workers: None,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_stats_interval() -> Duration {
    Duration::from_secs(60)
}

impl ServerSection {
    /// How many worker runtimes serve the connections (see [`ServerSection::workers`]).
    #[must_use]
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(crate::workers::default_count)
    }

    /// Checks `workers` (0 to [`MAX_WORKERS`]), `drain_timeout` (0s to [`MAX_DURATION`]) and `stats_interval` (`0s`, or
    /// [`MIN_STATS_INTERVAL`] to [`MAX_DURATION`]).
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(workers) = self.workers.filter(|&w| w > MAX_WORKERS) {
            return Err(invalid(
                "workers",
                format!(
                    "{workers} is out of range: it must be 0 (the shared runtime) to {MAX_WORKERS}"
                ),
            ));
        }
        check_duration(
            "drain_timeout",
            self.drain_timeout,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        let stats = self.stats_interval;
        if !stats.is_zero() && !(MIN_STATS_INTERVAL..=MAX_DURATION).contains(&stats) {
            return Err(invalid(
                "stats_interval",
                format!(
                    "{} is out of range: it must be \"0s\" (only at shutdown) or {} to {}",
                    format_duration(stats),
                    format_duration(MIN_STATS_INTERVAL),
                    format_duration(MAX_DURATION)
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates `text`, read from `origin` (used in messages).
    ///
    /// # Errors
    ///
    /// A message that names `origin`, the listener and the key at fault.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut config: Self = match toml::from_str(text) {
            Ok(config) => config,
            Err(error) => {
                let line = error
                    .span()
                    .and_then(|span| text.get(..span.start))
                    .map(|before| format!(":{}", before.matches('\n').count() + 1))
                    .unwrap_or_default();
                let at = failing_listener(text).unwrap_or_default();
                bail!(
                    "{origin}{line}: invalid configuration: {at}{}",
                    error.message().trim_end()
                );
            }
        };
        config.prepared = config
            .prepare()
            .with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not a valid configuration.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = read_bounded(path, MAX_FILE_LEN)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    ///
    /// # Errors
    ///
    /// Never in a released build: a unit test checks the embedded text.
    pub fn embedded_default() -> anyhow::Result<Self> {
        Self::parse(DEFAULT_CONFIG, "embedded default config")
    }

    /// Checks every listener before any binds and turns each into its ready-to-run settings.
    pub(crate) fn prepare(&self) -> anyhow::Result<Vec<Prepared>> {
        if self.listeners.is_empty() {
            bail!(
                "no [[listener]]: add at least one, e.g. mode = \"crc-tcp\", bind = \"127.0.0.1:51314\""
            );
        }
        self.server.validate().context("[server]")?;
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        if let Some(admin) = &self.admin
            && admin.bind.port() != 0
        {
            binds.insert(admin.bind);
        }
        let mut paths: HashSet<PathBuf> = HashSet::new();
        let proxies: Vec<_> = self
            .listeners
            .iter()
            .filter_map(ListenerConfig::proxy_bind)
            .collect();
        let worker_fds =
            crate::workers::descriptors(self.server.worker_count(), self.listeners.len());
        let mut prepared = Vec::with_capacity(self.listeners.len());
        for (index, listener) in self.listeners.iter().enumerate() {
            let name = listener.name(index);
            let at = format!("listener[{index}] ({name})");
            if !names.insert(name.clone()) {
                bail!("{at}: name: another listener is already called {name:?}");
            }
            let bind = listener.bind();
            if bind.port() != 0 && !binds.insert(bind) {
                bail!("{at}: bind: {bind} is already used by another listener or [admin]");
            }
            prepared.push(
                listener
                    .prepare(index, &proxies, worker_fds)
                    .with_context(|| at.clone())?,
            );
            if let Some(path) = listener.sink_path()
                && !paths.insert(path.to_path_buf())
            {
                bail!(
                    "{at}: handler.path: {} is already the file sink of another listener",
                    path.display()
                );
            }
        }
        // An access log written into a frame file would corrupt it.
        for (index, listener) in prepared.iter().enumerate() {
            if let Some(path) = &listener.common.access_log
                && paths.contains(path)
            {
                bail!(
                    "listener[{index}] ({}): access_log: {} is the file sink of a listener",
                    listener.common.name,
                    path.display()
                );
            }
        }
        Ok(prepared)
    }

    /// The ready-to-run settings: those [`Config::parse`] made, or made now for a config
    /// deserialized some other way.
    pub(crate) fn ready(&self) -> anyhow::Result<std::borrow::Cow<'_, [Prepared]>> {
        if self.prepared.len() == self.listeners.len() {
            Ok(std::borrow::Cow::Borrowed(&self.prepared))
        } else {
            Ok(std::borrow::Cow::Owned(self.prepare()?))
        }
    }
}

/// `listener[I] (NAME): ` for the first listener table that does not
/// deserialize on its own, so a serde error names the listener at fault.
fn failing_listener(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let listeners = table.get("listener")?.as_array()?;
    listeners.iter().enumerate().find_map(|(index, value)| {
        ListenerConfig::deserialize(value.clone()).err()?;
        let mode = value
            .get("mode")
            .and_then(toml::Value::as_str)
            .unwrap_or("listener");
        let name = value
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("{mode}[{index}]"), str::to_owned);
        Some(format!("listener[{index}] ({name}): "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        format!("{:#}", Config::parse(text, "test.toml").unwrap_err())
    }

    #[test]
    fn embedded_default_is_valid_and_loopback_only() {
        let config = Config::embedded_default().unwrap();
        assert!(!config.listeners.is_empty());
        let admin = config.admin.as_ref().expect("the default has [admin]");
        assert!(admin.bind.ip().is_loopback(), "admin binds {}", admin.bind);
        for listener in &config.listeners {
            assert!(
                listener.bind().ip().is_loopback(),
                "{:?} binds {}",
                listener.mode(),
                listener.bind()
            );
        }
    }

    #[test]
    fn admin_is_optional_checked_and_its_address_is_not_a_listener_s() {
        let listener = "[[listener]]\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:7000\"\n";
        assert!(Config::parse(listener, "t").unwrap().admin.is_none());
        let on = format!("[admin]\nbind = \"127.0.0.1:9464\"\n{listener}");
        assert_eq!(
            Config::parse(&on, "t").unwrap().admin.unwrap().bind,
            "127.0.0.1:9464".parse().unwrap()
        );
        let message = error_of(&format!("[admin]\nbind = \"127.0.0.1:7000\"\n{listener}"));
        assert!(
            message.contains("127.0.0.1:7000") && message.contains("[admin]"),
            "{message}"
        );
        let message = error_of(&format!(
            "[admin]\nbind = \"127.0.0.1:1\"\npath = \"/m\"\n{listener}"
        ));
        assert!(message.contains("path"), "{message}");
        let message = error_of(&format!("[admin]\nbind = \"localhost\"\n{listener}"));
        assert!(
            message.contains("bind") || message.contains("address"),
            "{message}"
        );
    }

    #[test]
    fn rejects_an_unknown_mode_and_lists_the_valid_ones() {
        let message = error_of("[[listener]]\nmode = \"udp\"\nbind = \"127.0.0.1:1\"\n");
        assert!(message.contains("test.toml"), "{message}");
        assert!(
            message.contains("udp") && message.contains("crc-tcp") && message.contains("socks5"),
            "{message}"
        );
    }

    #[test]
    fn rejects_an_unknown_key_and_names_it() {
        let message =
            error_of("[[listener]]\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:1\"\nmax_frame = 5\n");
        assert!(
            message.contains("max_frame") && message.contains("max_frame_size"),
            "{message}"
        );
    }

    #[test]
    fn rejects_a_bad_address() {
        let message = error_of("[[listener]]\nmode = \"crc-tcp\"\nbind = \"localhost\"\n");
        assert!(
            message.contains("bind") || message.contains("socket address"),
            "{message}"
        );
    }

    #[test]
    fn rejects_a_bad_value_and_names_listener_and_key() {
        let message = error_of(
            "[[listener]]\nname = \"ingest\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:1\"\nmax_frame_size = 3\n",
        );
        assert!(
            message.contains("listener[0] (ingest)") && message.contains("max_frame_size"),
            "{message}"
        );
    }

    #[test]
    fn rejects_an_access_log_on_a_file_sink() {
        let text = "[[listener]]\nname = \"a\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:1\"\n\
                    handler = { type = \"file\", path = \"/tmp/f\" }\n\
                    [[listener]]\nname = \"b\"\nmode = \"socks5\"\nbind = \"127.0.0.1:2\"\naccess_log = \"/tmp/f\"\n";
        assert!(
            error_of(text).contains("listener[1] (b): access_log: /tmp/f is the file sink"),
            "{}",
            error_of(text)
        );
    }

    #[test]
    fn rejects_two_listeners_with_one_name() {
        let text = "[[listener]]\nname = \"a\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:1\"\n\
                    [[listener]]\nname = \"a\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:2\"\n";
        assert!(error_of(text).contains("listener[1] (a): name"));
    }

    /// Where a key is written: a config with `key = value` in the right table.
    type Place = fn(&str, &str) -> String;

    fn server_key(key: &str, value: &str) -> String {
        format!(
            "[server]\n{key} = {value}\n[[listener]]\nname = \"l\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n"
        )
    }
    fn crc_key(key: &str, value: &str) -> String {
        format!(
            "[[listener]]\nname = \"l\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n{key} = {value}\n"
        )
    }
    fn log_key(key: &str, value: &str) -> String {
        let key = key.trim_start_matches("handler.");
        crc_key("handler", &format!("{{ type = \"log\", {key} = {value} }}"))
    }
    fn file_key(sync: &str, key: &str, value: &str) -> String {
        let key = key.trim_start_matches("handler.");
        crc_key(
            "handler",
            &format!(
                "{{ type = \"file\", path = \"/nonexistent/f\", sync = \"{sync}\", {key} = {value} }}"
            ),
        )
    }
    fn nats_key(key: &str, value: &str) -> String {
        let key = key.trim_start_matches("handler.");
        let setting = match key.strip_prefix("create_stream.") {
            Some(key) => format!("create_stream = {{ {key} = {value} }}"),
            None => format!("{key} = {value}"),
        };
        crc_key(
            "handler",
            &format!("{{ type = \"nats\", servers = [\"nats://127.0.0.1:4222\"], {setting} }}"),
        )
    }
    fn socks_key(key: &str, value: &str) -> String {
        format!(
            "[[listener]]\nname = \"l\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n{key} = {value}\n"
        )
    }

    const UNDER_1MS: &str = "\"999us 999ns\"";
    const MS: &str = "\"1ms\"";
    const DAYS: &str = "\"30days\"";
    const OVER_DAYS: &str = "\"30days 1ns\"";

    type Row = (
        Place,
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static str,
    );

    /// Every bounded key (README, "Bounds"): where it is written, then the value just below
    /// the lower bound (`None` when the type has nothing below it), the lower bound, the
    /// upper bound and the value just above it.
    const BOUNDS: &[Row] = &[
        (server_key, "drain_timeout", None, "\"0s\"", DAYS, OVER_DAYS),
        (
            server_key,
            "stats_interval",
            Some("\"999ms 999us 999ns\""),
            "\"1s\"",
            DAYS,
            OVER_DAYS,
        ),
        (
            crc_key,
            "max_frame_size",
            Some("4"),
            "5",
            "1073741824",
            "1073741825",
        ),
        (
            crc_key,
            "max_connections",
            Some("0"),
            "1",
            "1000000",
            "1000001",
        ),
        (
            crc_key,
            "idle_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            crc_key,
            "frame_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            crc_key,
            "write_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            crc_key,
            "first_byte_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            crc_key,
            "max_connections_per_ip",
            Some("0"),
            "1",
            "1000000",
            "1000001",
        ),
        (
            socks_key,
            "max_connections_per_ip",
            Some("0"),
            "1",
            "1000000",
            "1000001",
        ),
        // With the default max_frame_size (16 MiB): 16 MiB + 12 - 64 KiB at least, 1 TiB at most.
        (
            crc_key,
            "max_buffered_bytes",
            Some("16711691"),
            "16711692",
            "1099511627776",
            "1099511627777",
        ),
        (log_key, "handler.preview_len", None, "0", "4096", "4097"),
        (
            |k, v| file_key("always", k, v),
            "handler.sync_interval",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            |k, v| file_key("interval", k, v),
            "handler.sync_interval",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            |k, v| file_key("never", k, v),
            "handler.sync_interval",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            nats_key,
            "handler.max_in_flight",
            Some("0"),
            "1",
            "65536",
            "65537",
        ),
        (
            nats_key,
            "handler.publish_timeout",
            Some(UNDER_1MS),
            MS,
            "\"1h\"",
            "\"1h 1ns\"",
        ),
        (
            nats_key,
            "handler.create_stream.replicas",
            Some("0"),
            "1",
            "5",
            "6",
        ),
        (
            nats_key,
            "handler.create_stream.duplicate_window",
            Some("\"999ms\""),
            "\"1s\"",
            DAYS,
            OVER_DAYS,
        ),
        (
            socks_key,
            "max_connections",
            Some("0"),
            "1",
            "1000000",
            "1000001",
        ),
        (
            socks_key,
            "handshake_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            socks_key,
            "connect_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            socks_key,
            "idle_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
        (
            socks_key,
            "bind_timeout",
            Some(UNDER_1MS),
            MS,
            DAYS,
            OVER_DAYS,
        ),
    ];

    #[test]
    fn every_bound_is_inclusive_and_one_step_past_it_is_rejected_naming_the_key() {
        for &(place, key, below, low, high, above) in BOUNDS {
            for value in [low, high] {
                let text = place(key, value);
                if let Err(error) = Config::parse(&text, "test.toml") {
                    panic!("{key} = {value} is rejected: {error:#}\n{text}");
                }
            }
            let at = if place(key, "0").starts_with("[server]") {
                format!("[server]: {key}: ")
            } else {
                format!("listener[0] (l): {key}: ")
            };
            for (value, bound) in below
                .map(|v| (v, "at least"))
                .into_iter()
                .chain([(above, "at most")])
            {
                let text = place(key, value);
                let message = error_of(&text);
                let bound = if key == "stats_interval" {
                    "or 1s to 30days"
                } else {
                    bound
                };
                assert!(
                    message.contains(&at) && message.contains(bound),
                    "{key} = {value}: {message}"
                );
            }
        }
    }

    #[test]
    fn bound_messages_say_the_value_and_the_bound() {
        assert!(
            error_of(&crc_key("idle_timeout", OVER_DAYS)).ends_with(
                "listener[0] (l): idle_timeout: 30days 1ns is too long: it must be at most 30days"
            ),
            "{}",
            error_of(&crc_key("idle_timeout", OVER_DAYS))
        );
        assert!(
            error_of(&file_key("always", "sync_interval", "\"0s\"")).ends_with(
                "listener[0] (l): handler.sync_interval: 0s is too short: it must be at least 1ms"
            )
        );
        assert!(error_of(&socks_key("max_connections", "9223372036854775807")).ends_with(
            "listener[0] (l): max_connections: 9223372036854775807 is too large: it must be at most 1000000"
        ));
        assert!(error_of(&server_key("stats_interval", "\"1ns\"")).ends_with(
            "[server]: stats_interval: 1ns is out of range: it must be \"0s\" (only at shutdown) or 1s to 30days"
        ));
    }

    #[test]
    fn zero_stats_interval_still_means_only_at_shutdown() {
        let config = Config::parse(&server_key("stats_interval", "\"0s\""), "test.toml").unwrap();
        assert!(config.server.stats_interval.is_zero());
    }

    #[test]
    fn the_nats_handler_needs_servers_that_parse_and_one_way_to_log_in() {
        let nats = |keys: &str| {
            crc_key(
                "handler",
                &format!("{{ type = \"nats\", servers = [\"nats://127.0.0.1:4222\"]{keys} }}"),
            )
        };
        let config = Config::parse(&nats(""), "test.toml").unwrap();
        let crate::registry::ListenerConfig::CrcTcp(crc) = &config.listeners[0] else {
            panic!("not crc-tcp");
        };
        let crate::modes::crc_tcp::HandlerConfig::Nats(handler) = &crc.handler else {
            panic!("not nats");
        };
        assert_eq!(
            (
                handler.subject.as_str(),
                handler.stream.as_str(),
                handler.max_in_flight
            ),
            ("frames.{listener}", "FRAMES", 1024)
        );
        assert_eq!(handler.publish_timeout, Duration::from_secs(5));
        assert!(handler.create_stream.is_none() && !handler.tls_required);
        assert_eq!(handler.headers, crate::sinks::nats::HeaderFormat::Compact);
        for (value, format) in [
            ("compact", crate::sinks::nats::HeaderFormat::Compact),
            ("split", crate::sinks::nats::HeaderFormat::Split),
        ] {
            let config =
                Config::parse(&nats(&format!(", headers = \"{value}\"")), "test.toml").unwrap();
            let crate::registry::ListenerConfig::CrcTcp(crc) = &config.listeners[0] else {
                panic!("not crc-tcp");
            };
            let crate::modes::crc_tcp::HandlerConfig::Nats(handler) = &crc.handler else {
                panic!("not nats");
            };
            assert_eq!(handler.headers, format);
        }
        let empty = crc_key("handler", "{ type = \"nats\", servers = [] }");
        for (text, expected) in [
            (
                empty,
                "listener[0] (l): handler.servers: must name at least one server",
            ),
            (
                crc_key(
                    "handler",
                    "{ type = \"nats\", servers = [\"nats://[::1\"] }",
                ),
                "listener[0] (l): handler.servers: \"nats://[::1\" is not a NATS URL",
            ),
            (
                nats(", user = \"u\""),
                "handler.user: needs handler.password",
            ),
            (
                nats(", password = \"p\""),
                "handler.password: needs handler.user",
            ),
            (
                nats(", user = \"u\", password = \"p\", token = \"t\""),
                "set one of user and password, token, or creds_file",
            ),
            (
                nats(", tls_cert_file = \"/c.pem\""),
                "handler.tls_cert_file: needs handler.tls_key_file",
            ),
            (
                nats(", subject = \"frames.*\""),
                "handler.subject: \"frames.*\" has an empty token or a wildcard",
            ),
            (nats(", subject = \"frames..x\""), "handler.subject"),
            (
                nats(", subject = \"\""),
                "handler.subject: must not be empty",
            ),
            (nats(", stream = \"A.B\""), "handler.stream: \"A.B\""),
            (nats(", create_stream = { storage = \"disk\" }"), "disk"),
            (nats(", servers2 = 1"), "servers2"),
            (nats(", headers = \"each\""), "each"),
            (nats(", headers = \"Compact\""), "Compact"),
            (nats(", headers = 1"), "invalid type: integer `1`"),
        ] {
            let message = error_of(&text);
            assert!(message.contains(expected), "{text}: {message}");
        }
        // The listener's name goes into the subject, and must fit there.
        let named = "[[listener]]\nname = \"in gest\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
                     handler = { type = \"nats\", servers = [\"nats://127.0.0.1:4222\"] }\n";
        assert!(error_of(named).contains("handler.subject: \"frames.in gest\" has white space"));
        let fixed = named.replace("servers", "subject = \"frames\", servers");
        assert!(Config::parse(&fixed, "test.toml").is_ok());
    }

    #[test]
    fn rejects_a_config_without_listeners() {
        assert!(error_of("listener = []\n").contains("no [[listener]]"));
    }
}
