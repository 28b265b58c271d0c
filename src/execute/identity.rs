//! Who a person is, for approvals: per-person API tokens, a trusted proxy's user header, and the
//! CLI's `--as` checked against the OS user when `approvals.identity: strict`.
//!
//! - **Tokens** (`salvage token add NAME`) are `slv_` + 64 hex digits of randomness, shown once
//!   and kept only as their SHA-256 in the state document `auth/tokens/<id>`, whose id is the
//!   first 12 hex digits of that hash: authenticating looks the token up by the id its own hash
//!   gives (no scan over stored hashes) and compares the whole hash in constant time. A revoked
//!   token never authenticates.
//! - **Trusted proxy** (`web.trusted_proxies`, `web.user_header`): a user header is believed only
//!   from a configured proxy address; from any other peer it is refused, naming the address.
//! - **Strict CLI identity** ([`resolve_cli_actor`]): `--as NAME` must be the OS user (from the
//!   real uid and /etc/passwd, never `$USER`, which anyone can set) or the name of the token
//!   given with `--token` / `$SALVAGE_TOKEN`.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{ApprovalSettings, IdentityMode};
use super::engine::Decision;
use super::record::{JournalEntry, Origin};
use crate::limits::{ApproverNameError, validate_approver_name};
use crate::store::{ExecutionStore, Expected, StateStore, StoreError};

/// Every token starts with this, so that a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "slv_";

/// Where token records are kept: `auth/tokens/<id>`.
pub const TOKENS_PREFIX: &str = "auth/tokens";

/// Hex digits of the token's hash that make its public id.
const TOKEN_ID_HEX: usize = 12;

/// Hex digits of randomness after the prefix (32 bytes).
const TOKEN_SECRET_HEX: usize = 64;

/// The password database the OS user's name is read from.
const PASSWD: &str = "/etc/passwd";

/// /etc/passwd is small; a larger one is not a password file.
const MAX_PASSWD_BYTES: u64 = 64 * 1024 * 1024;

/// How a person was identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// An API token (its public id).
    Token { id: String },
    /// A trusted proxy's user header.
    TrustedProxy,
    /// The OS account running the command (`approvals.identity: strict`).
    OsUser,
    /// Taken at its word: `--as`, `$SALVAGE_ACTOR` or `$USER` (`approvals.identity: local`).
    Local,
}

/// A person acting on salvage, and how that is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub via: Via,
}

/// Why an identity is refused.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum IdentityError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Name(#[from] ApproverNameError),

    #[error("this is not a salvage token: a token is `{TOKEN_PREFIX}` followed by {TOKEN_SECRET_HEX} hex digits")]
    #[diagnostic(
        code(salvage::identity::malformed_token),
        help("`salvage token add NAME` creates one; pass it with --token or $SALVAGE_TOKEN")
    )]
    MalformedToken,

    #[error("the token is not known to this store")]
    #[diagnostic(
        code(salvage::identity::unknown_token),
        help("`salvage token list` shows the tokens of this store (by id); `salvage token add NAME` creates one")
    )]
    UnknownToken,

    #[error("token {id} of {name} was revoked at {at}")]
    #[diagnostic(code(salvage::identity::revoked_token), help("ask for a new one: `salvage token add {name}`"))]
    RevokedToken { id: String, name: String, at: String },

    #[error("no token has the id {id:?}")]
    #[diagnostic(code(salvage::identity::no_such_token), help("`salvage token list` shows the tokens' ids"))]
    NoSuchToken { id: String },

    #[error("a {header} header came from {peer}, which is not a trusted proxy")]
    #[diagnostic(
        code(salvage::identity::untrusted_proxy),
        help(
            "only the addresses under `web.trusted_proxies` in salvage.yaml may say who the user is; list the \
             proxy there, or authenticate with a token"
        )
    )]
    UntrustedProxy { peer: IpAddr, header: String },

    #[error("--as {claimed} is not who runs this command: approvals.identity is strict and this is OS user {os_user}")]
    #[diagnostic(
        code(salvage::identity::not_you),
        help(
            "act as yourself (--as {os_user}, or leave --as out), or prove you are {claimed} with their token: \
             --token TOKEN or $SALVAGE_TOKEN (`salvage token add {claimed}` creates one)"
        )
    )]
    NotTheOsUser { claimed: String, os_user: String },

    #[error("--as {claimed} does not match the token given, which is {token_name}'s (token {id})")]
    #[diagnostic(
        code(salvage::identity::token_mismatch),
        help("leave --as out (the token says who you are), or give {claimed}'s own token")
    )]
    TokenNameMismatch { claimed: String, token_name: String, id: String },

    #[error("the OS user (uid {uid}) has no entry in {PASSWD}")]
    #[diagnostic(
        code(salvage::identity::no_os_user),
        help(
            "approvals.identity: strict takes the user from /etc/passwd (accounts from LDAP or SSSD are not \
             there): authenticate with a token instead (--token or $SALVAGE_TOKEN)"
        )
    )]
    NoOsUser { uid: u32 },

    #[error("cannot read {PASSWD} to find the OS user: {message}")]
    #[diagnostic(code(salvage::identity::passwd_unreadable), help("authenticate with a token instead"))]
    PasswdUnreadable { message: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// What is known of a token, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Public: the first hex digits of the token's SHA-256.
    pub id: String,
    /// The person the token authenticates.
    pub name: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

/// The stored record: the info and the token's hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRecord {
    #[serde(flatten)]
    info: TokenInfo,
    /// `sha256:` + hex.
    hash: String,
}

/// The hex SHA-256 of a token's text.
pub fn token_hash(secret: &str) -> String {
    crate::policy::hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether two byte strings are equal, in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

/// A fresh token: the prefix and [`random_hex`].
fn new_secret() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// 32 bytes of OS randomness in hex (tokens, the inbox's sessions). The bytes are two v4 UUIDs
/// (getrandom underneath), of which 244 bits are random (each fixes 6 version/variant bits).
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    crate::policy::hex(&bytes)
}

/// The hash of a well-formed token; a malformed one is refused before hashing.
fn checked_hash(secret: &str) -> Result<String, IdentityError> {
    let digits = secret.strip_prefix(TOKEN_PREFIX).ok_or(IdentityError::MalformedToken)?;
    if digits.len() != TOKEN_SECRET_HEX || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(IdentityError::MalformedToken);
    }
    Ok(token_hash(secret))
}

fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}/{id}")
}

fn parse_record(key: &str, body: &serde_json::Value) -> Result<TokenRecord, StoreError> {
    TokenRecord::deserialize(body).map_err(|error| StoreError::corrupt(format!("state {key}"), &error))
}

/// The store's tokens: create, list, revoke, authenticate.
#[derive(Debug, Clone)]
pub struct TokenRegistry {
    store: Arc<dyn StateStore>,
}

impl TokenRegistry {
    pub fn new(store: Arc<dyn StateStore>) -> TokenRegistry {
        TokenRegistry { store }
    }

    /// Creates a token for `name`, made by `by`. Returns its info and the secret, which is not
    /// kept anywhere: the caller shows it once.
    pub async fn add(&self, name: &str, by: &str) -> Result<(TokenInfo, String), IdentityError> {
        validate_approver_name(name)?;
        validate_approver_name(by)?;
        // Two tokens with the same id are astronomically unlikely, but the create is
        // compare-and-set: a collision draws again rather than replacing a token.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let secret = new_secret();
            let hash = token_hash(&secret);
            let info = TokenInfo {
                id: hash[..TOKEN_ID_HEX].to_owned(),
                name: name.to_owned(),
                created_at: crate::model::json::iso_millis(time::OffsetDateTime::now_utc()),
                created_by: by.to_owned(),
                revoked_at: None,
                revoked_by: None,
            };
            let record = TokenRecord { info: info.clone(), hash: format!("sha256:{hash}") };
            let body = serde_json::to_value(&record).unwrap_or_default();
            match self.store.put_state(&token_key(&info.id), &body, Expected::Absent).await {
                Ok(_) => {
                    tracing::info!(token = %info.id, name, by, "API token created.");
                    return Ok((info, secret));
                }
                Err(StoreError::Conflict { .. }) if attempts < 3 => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, IdentityError> {
        let mut tokens = Vec::new();
        for stored in self.store.list_state(TOKENS_PREFIX).await? {
            tokens.push(parse_record(&stored.key, &stored.body)?.info);
        }
        tokens.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(tokens)
    }

    /// Revokes a token. Returns its info and whether this call revoked it (false: it already
    /// was, and its record is unchanged).
    pub async fn revoke(&self, id: &str, by: &str) -> Result<(TokenInfo, bool), IdentityError> {
        validate_approver_name(by)?;
        let key = token_key(id);
        // An id that cannot be a state key cannot be a token's.
        if crate::store::state::validate_state_key(&key).is_err() {
            return Err(IdentityError::NoSuchToken { id: id.to_owned() });
        }
        loop {
            let Some(stored) = self.store.get_state(&key).await? else {
                return Err(IdentityError::NoSuchToken { id: id.to_owned() });
            };
            let mut record = parse_record(&key, &stored.body)?;
            if record.info.revoked_at.is_some() {
                return Ok((record.info, false));
            }
            record.info.revoked_at = Some(crate::model::json::iso_millis(time::OffsetDateTime::now_utc()));
            record.info.revoked_by = Some(by.to_owned());
            let body = serde_json::to_value(&record).unwrap_or_default();
            match self.store.put_state(&key, &body, Expected::Revision(stored.revision)).await {
                Ok(_) => {
                    tracing::info!(token = %id, name = %record.info.name, by, "API token revoked.");
                    return Ok((record.info, true));
                }
                // Revoked (or changed) by someone else meanwhile: look again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The person a token belongs to. Unknown, malformed and revoked tokens are refused.
    pub async fn authenticate(&self, secret: &str) -> Result<Person, IdentityError> {
        let hash = checked_hash(secret)?;
        let id = &hash[..TOKEN_ID_HEX];
        let key = token_key(id);
        let Some(stored) = self.store.get_state(&key).await? else { return Err(IdentityError::UnknownToken) };
        let record = parse_record(&key, &stored.body)?;
        let stored_hash = record.hash.strip_prefix("sha256:").unwrap_or_default();
        if !constant_time_eq(stored_hash.as_bytes(), hash.as_bytes()) {
            return Err(IdentityError::UnknownToken);
        }
        if let Some(at) = record.info.revoked_at {
            return Err(IdentityError::RevokedToken { id: record.info.id, name: record.info.name, at });
        }
        validate_approver_name(&record.info.name)?;
        Ok(Person { name: record.info.name, via: Via::Token { id: record.info.id } })
    }
}

// ---------------------------------------------------------------------------------------------
// Trusted proxy
// ---------------------------------------------------------------------------------------------

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

/// Why an address range cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("the prefix length {prefix:?} is not a number from 0 to {max}")]
    BadPrefix { prefix: String, max: u8 },
    #[error("{given} has bits set after the first {prefix}; the range is {network}/{prefix}")]
    HostBits { given: String, network: IpAddr, prefix: u8 },
}

impl IpNet {
    /// Whether `address` is in the range. An IPv4 address seen as IPv6 (`::ffff:10.1.2.3`, as
    /// a dual-stack listener reports it) is taken as the IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_ipv4() == self.network.is_ipv4() && first_bits(address, self.prefix) == self.network
    }
}

/// `address` with every bit after the first `prefix` cleared.
fn first_bits(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = IpAddr::from_str(address).map_err(|_| IpNetError::NotAnAddress(address.to_owned()))?;
        let max: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(digits) => digits
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max && !digits.starts_with('+'))
                .ok_or_else(|| IpNetError::BadPrefix { prefix: digits.to_owned(), max })?,
        };
        let net = IpNet { network, prefix };
        // `10.0.0.1/8` is ambiguous (one host or the range?): say which range it would be.
        let masked = first_bits(network, prefix);
        if masked != network {
            return Err(IpNetError::HostBits { given: text.to_owned(), network: masked, prefix });
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == full { write!(f, "{}", self.network) } else { write!(f, "{}/{}", self.network, self.prefix) }
    }
}

/// Who a request is from, when a reverse proxy (SSO) in front of salvage says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxy {
    proxies: Vec<IpNet>,
    header: String,
}

impl TrustedProxy {
    /// Believes `header` from the `proxies` only.
    pub fn new(proxies: Vec<IpNet>, header: impl Into<String>) -> TrustedProxy {
        TrustedProxy { proxies, header: header.into() }
    }

    /// From salvage.yaml's `web:` section.
    pub fn from_config(web: &super::config::WebConfig) -> TrustedProxy {
        TrustedProxy::new(web.trusted_proxies.clone(), web.user_header.clone())
    }

    /// The header's name, as configured.
    pub fn header(&self) -> &str {
        &self.header
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(peer))
    }

    /// The person the proxy names: `None` without the header; the header from any address not
    /// listed is refused (the web layer answers 403), and so is a name
    /// [`validate_approver_name`] refuses.
    pub fn user_from(&self, peer: IpAddr, header_value: Option<&str>) -> Result<Option<Person>, IdentityError> {
        let Some(name) = header_value else { return Ok(None) };
        if !self.is_trusted(peer) {
            tracing::warn!(%peer, header = %self.header, "A user header from an address that is not a trusted proxy was refused.");
            return Err(IdentityError::UntrustedProxy { peer: peer.to_canonical(), header: self.header.clone() });
        }
        validate_approver_name(name)?;
        Ok(Some(Person { name: name.to_owned(), via: Via::TrustedProxy }))
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI's identity
// ---------------------------------------------------------------------------------------------

/// The name of uid `uid` in a passwd file's text (`name:x:uid:gid:...`); the first entry wins,
/// NIS compat lines (`+`, `-`) and comments are skipped.
pub fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        if line.starts_with(['#', '+', '-']) {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let found: u32 = fields.next()?.parse().ok()?;
        (found == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// The account running this process: its real uid's name in /etc/passwd.
pub fn os_user() -> Result<String, IdentityError> {
    let uid = rustix::process::getuid().as_raw();
    let bytes = crate::limits::read_regular_file(Path::new(PASSWD), MAX_PASSWD_BYTES)
        .map_err(|refused| IdentityError::PasswdUnreadable { message: refused.into_io_error().to_string() })?;
    passwd_name(&String::from_utf8_lossy(&bytes), uid).ok_or(IdentityError::NoOsUser { uid })
}

/// A name from the environment, when it is a usable one.
fn env_name(variable: &str) -> Option<String> {
    std::env::var(variable).ok().filter(|name| validate_approver_name(name).is_ok())
}

/// Who runs a CLI command that acts as a person (approve, deny, confirm, abandon, apply,
/// resume, reload --accept), from `--as` (`given_as`) and `--token` / `$SALVAGE_TOKEN`:
///
/// - a token: its person; `--as` (or `$SALVAGE_ACTOR`), when given, must be that name;
/// - `approvals.identity: strict`: the OS user; `--as` (or `$SALVAGE_ACTOR`) must be that name;
/// - `approvals.identity: local`: `--as`, else `$SALVAGE_ACTOR`, else `$USER`, taken at their word.
pub async fn resolve_cli_actor(
    settings: &ApprovalSettings,
    given_as: Option<&str>,
    token: Option<&str>,
    store: Arc<dyn StateStore>,
) -> Result<Person, IdentityError> {
    let claimed = given_as.map(str::to_owned).or_else(|| env_name("SALVAGE_ACTOR"));
    if let Some(claimed) = &claimed {
        validate_approver_name(claimed)?;
    }
    if let Some(token) = token.filter(|token| !token.is_empty()) {
        let person = TokenRegistry::new(store).authenticate(token).await?;
        return match claimed {
            Some(claimed) if claimed != person.name => {
                let id = match &person.via {
                    Via::Token { id } => id.clone(),
                    _ => String::new(),
                };
                Err(IdentityError::TokenNameMismatch { claimed, token_name: person.name, id })
            }
            _ => Ok(person),
        };
    }
    match settings.identity {
        IdentityMode::Strict => {
            let os_user = os_user()?;
            match claimed {
                Some(claimed) if claimed != os_user => Err(IdentityError::NotTheOsUser { claimed, os_user }),
                _ => Ok(Person { name: os_user, via: Via::OsUser }),
            }
        }
        IdentityMode::Local => {
            let name = claimed.or_else(|| env_name("USER")).unwrap_or_else(|| "unknown".to_owned());
            Ok(Person { name, via: Via::Local })
        }
    }
}

/// Records in an execution's journal that an answer was refused before it reached the runner
/// (an identity that could not be established), for the audit log, like the runner's own
/// refusals. Returns false, writing nothing, when there is no such execution.
pub async fn refuse_answer(
    store: &dyn ExecutionStore,
    execution_id: &str,
    step_id: &str,
    decision: Decision,
    actor: &str,
    refusal: &str,
    origin: Origin,
) -> Result<bool, StoreError> {
    if store.get_execution(execution_id).await?.is_none() {
        return Ok(false);
    }
    // The entry goes at the journal's next position; a writer getting there first (the runner,
    // another answer) means reading the journal again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let next_seq = store.journal(execution_id).await?.last().map_or(1, |record| record.seq + 1);
        let entry = JournalEntry::AnswerRefused {
            at: crate::model::json::iso_millis(time::OffsetDateTime::now_utc()),
            step_id: step_id.to_owned(),
            decision: decision.as_str().to_owned(),
            actor: actor.to_owned(),
            refusal: refusal.to_owned(),
            origin: Some(origin.clone()),
        };
        match store.append_journal(&entry.record(execution_id, next_seq)).await {
            Ok(()) => return Ok(true),
            Err(StoreError::Conflict { .. }) if attempts < 10 => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn cidr_ranges_match_v4_and_v6_addresses_and_v4_mapped_peers() {
        let private = net("10.0.0.0/8");
        assert!(private.contains(ip("10.0.0.0")) && private.contains(ip("10.255.255.255")));
        assert!(!private.contains(ip("11.0.0.0")) && !private.contains(ip("9.255.255.255")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "a v4 peer seen by a dual-stack listener");
        assert!(!private.contains(ip("::a01:203")), "an IPv6 address is not an IPv4 one");
        let host = net("127.0.0.1");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        let ula = net("fd00::/8");
        assert!(ula.contains(ip("fd12:3456::1")) && !ula.contains(ip("fe80::1")));
        assert!(net("::1").contains(ip("::1")) && !net("::1").contains(ip("::2")));
        assert!(
            net("2001:db8::/127").contains(ip("2001:db8::1")) && !net("2001:db8::/127").contains(ip("2001:db8::2"))
        );
        assert!(net("::/0").contains(ip("2001:db8::1")) && !net("::/0").contains(ip("10.0.0.1")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("::1/128").to_string(), "::1");
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        assert_eq!("localhost".parse::<IpNet>(), Err(IpNetError::NotAnAddress("localhost".into())));
        assert_eq!("10.0.0.0/33".parse::<IpNet>(), Err(IpNetError::BadPrefix { prefix: "33".into(), max: 32 }));
        assert_eq!("::/129".parse::<IpNet>(), Err(IpNetError::BadPrefix { prefix: "129".into(), max: 128 }));
        assert!(matches!("10.0.0.0/x".parse::<IpNet>(), Err(IpNetError::BadPrefix { .. })));
        assert!(matches!("10.0.0.0/+8".parse::<IpNet>(), Err(IpNetError::BadPrefix { .. })));
        let error = "10.0.0.1/8".parse::<IpNet>().expect_err("host bits");
        assert_eq!(error.to_string(), "10.0.0.1/8 has bits set after the first 8; the range is 10.0.0.0/8");
    }

    #[test]
    fn a_user_header_is_believed_only_from_a_trusted_proxy() {
        let proxy = TrustedProxy::new(vec![net("127.0.0.1"), net("10.0.0.0/8")], "X-Forwarded-User");
        let person = proxy.user_from(ip("10.2.3.4"), Some("alice")).expect("trusted");
        assert_eq!(person, Some(Person { name: "alice".into(), via: Via::TrustedProxy }));
        assert_eq!(proxy.user_from(ip("10.2.3.4"), None).expect("no header"), None);
        assert_eq!(proxy.user_from(ip("192.0.2.7"), None).expect("no header, any peer"), None);
        let refused = proxy.user_from(ip("192.0.2.7"), Some("alice")).expect_err("untrusted");
        assert_eq!(refused.to_string(), "a X-Forwarded-User header came from 192.0.2.7, which is not a trusted proxy");
        let refused = proxy.user_from(ip("::ffff:192.0.2.7"), Some("alice")).expect_err("untrusted");
        assert!(refused.to_string().contains(" 192.0.2.7,"), "{refused}");
        assert!(matches!(proxy.user_from(ip("127.0.0.1"), Some(" alice")), Err(IdentityError::Name(_))));
        assert!(matches!(proxy.user_from(ip("127.0.0.1"), Some("")), Err(IdentityError::Name(_))));
        let nobody = TrustedProxy::new(Vec::new(), "X-Forwarded-User");
        assert!(nobody.user_from(ip("127.0.0.1"), Some("alice")).is_err(), "no proxies: no header is believed");
    }

    #[test]
    fn hashes_and_constant_time_comparison() {
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"samE"));
        assert!(!constant_time_eq(b"same", b"sam"));
        assert!(constant_time_eq(b"", b""));
        let secret = new_secret();
        assert!(secret.starts_with(TOKEN_PREFIX) && secret.len() == TOKEN_PREFIX.len() + TOKEN_SECRET_HEX);
        assert_ne!(secret, new_secret());
        assert!(checked_hash(&secret).is_ok());
        for bad in ["", "slv_", "slv_xyz", &secret[..secret.len() - 1], &secret.to_uppercase(), &secret[4..]] {
            assert!(matches!(checked_hash(bad), Err(IdentityError::MalformedToken)), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn tokens_authenticate_their_person_until_revoked_and_only_their_hash_is_stored() {
        let store = Arc::new(MemoryStore::new());
        let tokens = TokenRegistry::new(store.clone());
        let (info, secret) = tokens.add("alice", "root").await.expect("add");
        assert_eq!(info.id, token_hash(&secret)[..TOKEN_ID_HEX]);
        let person = tokens.authenticate(&secret).await.expect("authenticates");
        assert_eq!(person, Person { name: "alice".into(), via: Via::Token { id: info.id.clone() } });

        let stored = store.get_state(&token_key(&info.id)).await.expect("get").expect("stored");
        let text = stored.body.to_string();
        assert!(!text.contains(&secret) && !text.contains(&secret[TOKEN_PREFIX.len()..]), "{text}");
        assert_eq!(stored.body["hash"], format!("sha256:{}", token_hash(&secret)));

        // Another well-formed token, unknown to the store; and one whose id matches a stored
        // token's but whose hash does not.
        let stranger = new_secret();
        assert!(matches!(tokens.authenticate(&stranger).await, Err(IdentityError::UnknownToken)));
        let mut forged = stored.body.clone();
        forged["hash"] = serde_json::json!(format!("sha256:{}", token_hash(&stranger)));
        store.put_state(&token_key(&info.id), &forged, Expected::Any).await.expect("put");
        assert!(matches!(tokens.authenticate(&secret).await, Err(IdentityError::UnknownToken)));
        store.put_state(&token_key(&info.id), &stored.body, Expected::Any).await.expect("put back");

        let (revoked, newly) = tokens.revoke(&info.id, "bob").await.expect("revoke");
        assert!(newly && revoked.revoked_at.is_some() && revoked.revoked_by.as_deref() == Some("bob"));
        let refused = tokens.authenticate(&secret).await.expect_err("revoked");
        assert!(matches!(refused, IdentityError::RevokedToken { ref name, .. } if name == "alice"), "{refused}");
        let (again, newly) = tokens.revoke(&info.id, "carol").await.expect("revoke again");
        assert!(!newly && again.revoked_by.as_deref() == Some("bob"), "the first revocation stays");
        assert!(matches!(tokens.revoke("nope", "bob").await, Err(IdentityError::NoSuchToken { .. })));
        assert!(matches!(tokens.revoke("../x", "bob").await, Err(IdentityError::NoSuchToken { .. })));

        let (second, _) = tokens.add("bob", "root").await.expect("add");
        let listed = tokens.list().await.expect("list");
        let mut ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        let mut expected = [info.id.as_str(), second.id.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        assert!(listed.windows(2).all(|pair| pair[0].created_at <= pair[1].created_at), "oldest first: {listed:?}");
        assert!(matches!(tokens.add(" alice", "root").await, Err(IdentityError::Name(_))));
    }

    #[test]
    fn the_os_user_is_read_from_passwd_by_uid() {
        let passwd = "# comment\n+nis::0:0::/:\nroot:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nmallory:x:1000:1000::/:/bin/sh\nbroken\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"), "the first entry wins");
        assert_eq!(passwd_name(passwd, 4242), None);
    }

    #[tokio::test]
    async fn strict_identity_takes_the_os_user_or_a_token_never_a_claimed_name() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let me = os_user().expect("the user running the tests has an /etc/passwd entry");
        let strict = ApprovalSettings { identity: IdentityMode::Strict, ..ApprovalSettings::default() };
        let resolved = resolve_cli_actor(&strict, Some(&me), None, store.clone()).await.expect("myself");
        assert_eq!(resolved, Person { name: me.clone(), via: Via::OsUser });
        let other = format!("{me}-not");
        let refused = resolve_cli_actor(&strict, Some(&other), None, store.clone()).await.expect_err("not me");
        assert!(matches!(refused, IdentityError::NotTheOsUser { ref os_user, .. } if *os_user == me), "{refused}");

        let (info, secret) = TokenRegistry::new(store.clone()).add(&other, "root").await.expect("add");
        let by_token = resolve_cli_actor(&strict, Some(&other), Some(&secret), store.clone()).await.expect("token");
        assert_eq!(by_token, Person { name: other.clone(), via: Via::Token { id: info.id } });
        let mismatch = resolve_cli_actor(&strict, Some(&me), Some(&secret), store.clone()).await.expect_err("mismatch");
        assert!(matches!(mismatch, IdentityError::TokenNameMismatch { .. }), "{mismatch}");

        let local = ApprovalSettings::default();
        let taken = resolve_cli_actor(&local, Some(&other), None, store).await.expect("local");
        assert_eq!(taken, Person { name: other, via: Via::Local });
    }
}
