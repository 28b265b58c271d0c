//! `postgres://` URLs: parsed once, shown only without their password.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::Config;
use tokio_postgres::config::SslMode;

use crate::store::StoreError;

/// What a redacted password is replaced with.
const HIDDEN: &str = "***";

/// A `postgres://…` or `postgresql://…` URL (libpq's URL form, as tokio-postgres reads it).
///
/// Its `Display` and `Debug` never show a password, neither the one in the user part
/// (`postgres://user:PASSWORD@host/db`) nor a `password=` parameter; only
/// [`PostgresUrl::secret_url`] gives the URL as written.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    redacted: String,
}

impl PostgresUrl {
    /// Parses and checks a URL: the scheme, what tokio-postgres accepts, and no TLS demand
    /// (`sslmode=require`), which this build cannot meet.
    pub fn parse(url: &str) -> Result<PostgresUrl, StoreError> {
        let redacted = redact(url);
        let bad = |reason: String| StoreError::Spec { spec: redacted.clone(), reason };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("a PostgreSQL store is postgres://[user[:password]@]host[:port]/database".into()));
        }
        let config = Config::from_str(url).map_err(|error| bad(scrub(url, &describe_chain(&error))))?;
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host, e.g. postgres://user@127.0.0.1:5432/salvage".into()));
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(bad("sslmode=require: this build connects without TLS; use a local or tunnelled server with \
                 sslmode=disable or prefer"
                .into()));
        }
        Ok(PostgresUrl { url: url.to_owned(), redacted })
    }

    /// The URL as written, password included: for connecting, never for showing.
    pub fn secret_url(&self) -> &str {
        &self.url
    }

    /// The URL without its password (what `Display` shows).
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The connection settings. The URL was checked by [`PostgresUrl::parse`], so this only
    /// fails if that check was bypassed.
    pub(crate) fn config(&self) -> Result<Config, StoreError> {
        Config::from_str(&self.url).map_err(|error| StoreError::Spec {
            spec: self.redacted.clone(),
            reason: scrub(&self.url, &describe_chain(&error)),
        })
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.redacted).finish()
    }
}

/// `url` with its passwords replaced by `***`, reading it the way tokio-postgres does: the
/// credentials run up to the first `@` after the scheme, the password after their first `:`;
/// parameters are `&`-separated `key=value` pairs after the first `?` that follows them.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        // Not a URL: a libpq key=value string may still hold `password=...`.
        return redact_pairs(url, ' ');
    };
    let (scheme, mut rest) = url.split_at(scheme_end);
    let mut out = scheme.to_owned();
    if let Some(at) = rest.find('@') {
        let (credentials, after) = rest.split_at(at);
        match credentials.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
            }
            None => out.push_str(credentials),
        }
        rest = after;
    }
    match rest.split_once('?') {
        Some((location, query)) => {
            out.push_str(location);
            out.push('?');
            out.push_str(&redact_pairs(query, '&'));
        }
        None => out.push_str(rest),
    }
    out
}

/// `key=value` pairs separated by `separator`, with the value of every `password` key hidden.
fn redact_pairs(pairs: &str, separator: char) -> String {
    pairs
        .split(separator)
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}={HIDDEN}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// Whether a parameter name is `password` (percent-decoded, as tokio-postgres reads it).
fn is_password_key(key: &str) -> bool {
    percent_decoded(key).trim().eq_ignore_ascii_case("password")
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes any password of `url` that an error message might repeat.
pub(crate) fn scrub(url: &str, message: &str) -> String {
    let mut message = message.to_owned();
    for secret in secrets(url) {
        if secret.len() >= 2 {
            message = message.replace(&secret, HIDDEN);
        }
    }
    message
}

/// The passwords a URL holds, as written.
fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.find("://").map_or(url, |at| &url[at + 3..]);
    if let Some((credentials, _)) = rest.split_once('@')
        && let Some((_, password)) = credentials.split_once(':')
    {
        found.push(password.to_owned());
    }
    for pair in rest.split(['&', '?', ' ']) {
        if let Some((key, value)) = pair.split_once('=')
            && is_password_key(key)
        {
            found.push(value.to_owned());
        }
    }
    found
}

/// An error and its sources, `: `-separated (tokio-postgres keeps the detail in the sources).
pub(crate) fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_wherever_they_are_written() {
        let cases = [
            ("postgres://root@127.0.0.1:5432/test", "postgres://root@127.0.0.1:5432/test"),
            ("postgres://u:hunter2@db:5432/salvage", "postgres://u:***@db:5432/salvage"),
            ("postgresql://u:p%40ss@db/x?sslmode=disable", "postgresql://u:***@db/x?sslmode=disable"),
            // tokio-postgres takes the credentials up to the first `@`, slashes included.
            ("postgres://u:pa/ss?w@db/x", "postgres://u:***@db/x"),
            (
                "postgres://db/x?user=u&password=hunter2&sslmode=disable",
                "postgres://db/x?user=u&password=***&sslmode=disable",
            ),
            ("postgres://u:a@db/x?password=b", "postgres://u:***@db/x?password=***"),
            ("postgres://u:@db/x", "postgres://u:***@db/x"),
            ("postgres:///x?host=/run/postgresql", "postgres:///x?host=/run/postgresql"),
            ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
            ("postgres://db/x?pass%77ord=hunter2", "postgres://db/x?pass%77ord=***"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn a_url_parses_and_shows_no_password() {
        let url = PostgresUrl::parse("postgres://alice:s3cr3t-pw@127.0.0.1:5432/salvage?password=other-pw")
            .unwrap_or_else(|e| panic!("{e}"));
        for shown in [url.to_string(), format!("{url:?}"), url.redacted().to_owned()] {
            assert!(!shown.contains("s3cr3t-pw") && !shown.contains("other-pw"), "{shown}");
            assert!(shown.contains("alice:***@127.0.0.1:5432/salvage"), "{shown}");
        }
        assert!(url.secret_url().contains("s3cr3t-pw"));
        assert_eq!(url.config().ok().and_then(|c| c.get_password().map(<[u8]>::to_vec)), Some(b"other-pw".to_vec()));
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for url in [
            "postgres://alice:s3cr3t-pw@127.0.0.1:notaport/salvage",
            "postgres://alice:s3cr3t-pw@db/salvage?nosuchoption=1",
            "postgres://alice:s3cr3t-pw@db/salvage?sslmode=require",
            "postgres://alice:s3cr3t-pw@db/salvage?password",
            "mysql://alice:s3cr3t-pw@db/salvage",
        ] {
            match PostgresUrl::parse(url) {
                Err(error @ StoreError::Spec { .. }) => {
                    let text = format!("{error} {error:?}");
                    assert!(!text.contains("s3cr3t-pw"), "{text}");
                    assert!(text.contains("alice:***@"), "{text}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
