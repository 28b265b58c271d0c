//! Who is asking: a person's API token (`Authorization: Bearer`), a login session made from a
//! token (the inbox's cookie), or a user named by a trusted proxy's header — believed only from
//! the proxy addresses `salvage.yaml` lists. Nobody is anonymous: every route but the OpenAPI
//! document and the login page needs one of the three.
//!
//! Sessions are kept in the store (`web/sessions/<sha256 of the cookie>`), so that every
//! `serve` replica and a restart know them; the cookie itself is never stored. Forms carry a
//! CSRF token derived from the session secret (HMAC), so a page from another site cannot post.

use std::net::IpAddr;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::WebState;
use super::problem::Problem;
use crate::execute::identity::{self, IdentityError, TokenRegistry, constant_time_eq, random_hex};
use crate::model::json::{now_iso, parse_iso};
use crate::policy::hex;
use crate::store::Expected;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "salvage_session";
/// The login form's double-submit cookie (CSRF before there is a session).
pub const LOGIN_COOKIE: &str = "salvage_login";
/// Where sessions are kept in the store.
pub const SESSION_PREFIX: &str = "web/sessions/";
/// How long a login lasts.
const SESSION_HOURS: i64 = 12;

/// How a person proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Token { token_id: String },
    Session { token_id: String, secret: String },
    TrustedProxy,
}

/// An authenticated person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub via: Via,
}

impl Person {
    /// The CSRF token of this person's forms: bound to the session (or, behind a trusted proxy,
    /// to the person and this process's key).
    pub fn csrf(&self, state: &WebState) -> String {
        match &self.via {
            Via::Session { secret, .. } => hmac_hex(secret.as_bytes(), b"salvage-csrf"),
            Via::Token { .. } | Via::TrustedProxy => {
                hmac_hex(&state.inner.process_key, format!("salvage-csrf:{}", self.name).as_bytes())
            }
        }
    }

    /// Whether a form's CSRF token is this person's (compared in constant time).
    pub fn csrf_matches(&self, state: &WebState, given: &str) -> bool {
        constant_time_eq(self.csrf(state).as_bytes(), given.as_bytes())
    }
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC-SHA256 accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn session_key(secret: &str) -> String {
    format!("{SESSION_PREFIX}{}", hex(&Sha256::digest(secret.as_bytes())))
}

/// Who sent the request, if anyone: the trusted proxy's header first (refused from any other
/// address), then a bearer token, then the session cookie.
pub async fn person(state: &WebState, headers: &HeaderMap, peer: IpAddr) -> Result<Option<Person>, Problem> {
    let header_name = state.inner.proxy.header();
    if let Some(value) = headers.get(header_name) {
        let value = value.to_str().map_err(|_| {
            Problem::bad_request("salvage::web::bad_user_header", format!("the {header_name} header is not text"))
        })?;
        return match state.inner.proxy.user_from(peer, Some(value)) {
            Ok(Some(person)) => Ok(Some(Person { name: person.name, via: Via::TrustedProxy })),
            Ok(None) => Ok(None),
            Err(error) => Err(identity_problem(error)),
        };
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let secret = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Problem::unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        let person = tokens(state).authenticate(secret.trim()).await.map_err(identity_problem)?;
        let token_id = token_id(&person);
        return Ok(Some(Person { name: person.name, via: Via::Token { token_id } }));
    }
    if let Some(secret) = cookie(headers, SESSION_COOKIE) {
        return session(state, secret).await;
    }
    Ok(None)
}

fn tokens(state: &WebState) -> TokenRegistry {
    TokenRegistry::new(state.inner.store.clone())
}

fn token_id(person: &identity::Person) -> String {
    match &person.via {
        identity::Via::Token { id } => id.clone(),
        _ => String::new(),
    }
}

/// Whether token `id` exists and is not revoked (a revoked token's sessions end with it).
async fn token_is_live(state: &WebState, id: &str) -> Result<bool, IdentityError> {
    Ok(tokens(state).list().await?.iter().any(|token| token.id == id && token.revoked_at.is_none()))
}

fn identity_problem(error: IdentityError) -> Problem {
    let status = match &error {
        IdentityError::UntrustedProxy { .. } => axum::http::StatusCode::FORBIDDEN,
        IdentityError::Store(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        IdentityError::Name(_) => axum::http::StatusCode::BAD_REQUEST,
        _ => axum::http::StatusCode::UNAUTHORIZED,
    };
    Problem::of(status, &error)
}

/// The person of a live session (its token not revoked since).
async fn session(state: &WebState, secret: &str) -> Result<Option<Person>, Problem> {
    let Some(stored) = state.inner.store.get_state(&session_key(secret)).await? else {
        return Ok(None);
    };
    let body = &stored.body;
    let live = body["loggedOutAt"].is_null()
        && body["expiresAt"]
            .as_str()
            .and_then(parse_iso)
            .is_some_and(|expires| expires > time::OffsetDateTime::now_utc());
    let (Some(name), Some(token_id)) = (body["name"].as_str(), body["tokenId"].as_str()) else {
        return Ok(None);
    };
    if !live || !token_is_live(state, token_id).await.map_err(identity_problem)? {
        return Ok(None);
    }
    Ok(Some(Person {
        name: name.to_owned(),
        via: Via::Session { token_id: token_id.to_owned(), secret: secret.to_owned() },
    }))
}

/// Logs in with a token: a new session (its secret goes in the cookie only).
pub async fn log_in(state: &WebState, token: &str) -> Result<(Person, String), Problem> {
    let person = tokens(state).authenticate(token.trim()).await.map_err(identity_problem)?;
    let token_id = token_id(&person);
    let secret = random_hex();
    let now = time::OffsetDateTime::now_utc();
    let expires = crate::model::json::iso_millis(now + time::Duration::hours(SESSION_HOURS));
    let body = json!({"name": person.name, "tokenId": token_id, "createdAt": now_iso(), "expiresAt": expires,
                      "loggedOutAt": Value::Null});
    state.inner.store.put_state(&session_key(&secret), &body, Expected::Absent).await?;
    tracing::info!(person = %person.name, token_id, "Logged in to the approval inbox.");
    Ok((Person { name: person.name, via: Via::Session { token_id, secret: secret.clone() } }, secret))
}

/// Ends a session.
pub async fn log_out(state: &WebState, secret: &str) -> Result<(), Problem> {
    let key = session_key(secret);
    if let Some(stored) = state.inner.store.get_state(&key).await? {
        let mut body = stored.body;
        body["loggedOutAt"] = json!(now_iso());
        state.inner.store.put_state(&key, &body, Expected::Revision(stored.revision)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; salvage_session_x=no"));
        headers.append(COOKIE, HeaderValue::from_static("theme=dark;salvage_session=s3cret"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("s3cret"));
        assert_eq!(cookie(&headers, "a"), Some("1"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn secrets_are_random_and_compared_in_constant_time() {
        let (one, two) = (random_hex(), random_hex());
        assert_eq!(one.len(), 64);
        assert_ne!(one, two);
        assert!(constant_time_eq(one.as_bytes(), one.clone().as_bytes()));
        assert!(!constant_time_eq(one.as_bytes(), two.as_bytes()));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        // Sessions are stored under the secret's hash, never the secret.
        assert!(!session_key(&one).contains(&one));
        assert_eq!(session_key(&one), session_key(&one));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session_secret() {
        assert_eq!(hmac_hex(b"key", b"salvage-csrf"), hmac_hex(b"key", b"salvage-csrf"));
        assert_ne!(hmac_hex(b"key", b"salvage-csrf"), hmac_hex(b"other", b"salvage-csrf"));
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
