//! Handshake authentication: where a token is found in the upgrade request,
//! how it is verified, and the identity and permissions it grants.
//!
//! Tokens are never logged; only the reason a token was rejected is.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sockeye_protocol::{TopicFilter, TopicName};

use crate::config::{Algorithm, AuthConfig};

/// Prefix of a token carried as a `Sec-WebSocket-Protocol` entry.
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// The shortest HS* secret accepted, inline or in a file: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// File in the data directory holding the generated development secret.
pub const DEV_SECRET_FILE: &str = "dev-secret";

/// The latest expiry the broker represents, in unix seconds: 2^53 - 1
/// milliseconds after the epoch, rounded down to a second (in the year
/// 287396), so `welcome.token_expires_at` always fits a JavaScript number.
/// A token whose `exp` is later counts as expiring then.
pub const MAX_EXPIRY_SECS: u64 = ((1 << 53) - 1) / 1000;

/// The claims Sockeye reads from (and writes into) a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the client is.
    pub sub: String,
    /// Expiry, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Filters the holder may subscribe to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Filters of the topics the holder may publish to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Grants access to the admin API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub subject: String,
    /// `exp`, if the token has one.
    pub expires_at: Option<SystemTime>,
    /// Topic permissions.
    pub permissions: Permissions,
    /// Whether the token grants admin access.
    pub admin: bool,
}

/// Topic permissions of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    subscribe: Vec<TopicFilter>,
    publish: Vec<TopicFilter>,
}

impl Permissions {
    /// True if a subscription with `filter` is allowed: some permission
    /// covers every topic the filter matches.
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        self.subscribe.iter().any(|allowed| allowed.covers(filter))
    }

    /// True if publishing to `topic` is allowed.
    pub fn may_publish(&self, topic: &TopicName) -> bool {
        self.publish.iter().any(|allowed| allowed.matches(topic))
    }
}

/// Why a token was rejected. [`AuthError::code`] is the stable `code` of the
/// HTTP 401 body and the label of the auth-failure metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in any carrier.
    #[error(
        "no token: send `Authorization: Bearer <jwt>`, a `bearer.<jwt>` subprotocol, or `?token=<jwt>`"
    )]
    Missing,
    /// Not a well-formed JWT.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `alg` is not the configured algorithm.
    #[error("token algorithm is not the one this broker accepts")]
    WrongAlgorithm,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` does not match.
    #[error("token issuer is not accepted")]
    BadIssuer,
    /// `aud` does not match.
    #[error("token audience is not accepted")]
    BadAudience,
    /// A required claim is absent.
    #[error("token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// Any other validation failure.
    #[error("token is invalid: {0}")]
    Invalid(String),
}

impl AuthError {
    /// Every stable code, for metrics.
    pub const CODES: [&'static str; 10] = [
        "token_missing",
        "token_malformed",
        "token_bad_signature",
        "token_wrong_algorithm",
        "token_expired",
        "token_not_yet_valid",
        "token_bad_issuer",
        "token_bad_audience",
        "token_missing_claim",
        "token_invalid",
    ];

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        Self::CODES[self.index()]
    }

    /// Index into [`AuthError::CODES`].
    pub fn index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::Malformed => 1,
            AuthError::BadSignature => 2,
            AuthError::WrongAlgorithm => 3,
            AuthError::Expired => 4,
            AuthError::NotYetValid => 5,
            AuthError::BadIssuer => 6,
            AuthError::BadAudience => 7,
            AuthError::MissingClaim(_) => 8,
            AuthError::Invalid(_) => 9,
        }
    }
}

/// Why the signing keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key or secret file could not be read or written.
    #[error("cannot access key file {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file did not hold a usable key.
    #[error("key file {path} does not hold a usable {algorithm:?} key: {reason}")]
    BadKey {
        /// The file.
        path: String,
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What the parser said.
        reason: String,
    },
    /// `sockeye token` was asked to sign without a private key.
    #[error("minting {0:?} tokens needs auth.private_key_file")]
    NoSigningKey(Algorithm),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Verifies tokens (and mints them, when it has the signing key).
pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
    /// Whether a token must carry `exp` (`auth.require_exp`).
    require_exp: bool,
    default_subscribe: Vec<TopicFilter>,
    default_publish: Vec<TopicFilter>,
    max_topic_length: usize,
    /// True when the secret was generated for development.
    generated_secret: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .field("can_mint", &self.encoding.is_some())
            .finish_non_exhaustive()
    }
}

fn jwt_algorithm(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
        Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
        Algorithm::HS384 => jsonwebtoken::Algorithm::HS384,
        Algorithm::HS512 => jsonwebtoken::Algorithm::HS512,
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Loads the development secret from `data_dir`, generating and persisting
/// it (mode 0600) on first use. Returns the secret and whether it was new.
fn dev_secret(data_dir: &Path) -> Result<(Vec<u8>, bool), KeyError> {
    let path = data_dir.join(DEV_SECRET_FILE);
    let io_error = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => return Ok((secret, false)),
        Ok(_) => {
            return Err(KeyError::BadKey {
                path: path.display().to_string(),
                algorithm: Algorithm::HS256,
                reason: "development secret is shorter than 32 bytes".into(),
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(err)),
    }
    std::fs::create_dir_all(data_dir).map_err(io_error)?;
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    };
    // Write the secret to a private temporary file first and then link it
    // into place, so a concurrent reader (`sockeye token` next to `sockeye
    // serve`) sees either no secret or a whole one, never a partial file.
    let temporary = data_dir.join(format!(
        "{DEV_SECRET_FILE}.{:016x}.tmp",
        rand::Rng::random::<u64>(&mut rand::rng())
    ));
    let temp_error = |source| KeyError::Io {
        path: temporary.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        use std::io::Write;
        let mut file = options.open(&temporary).map_err(temp_error)?;
        file.write_all(secret.as_bytes()).map_err(temp_error)?;
        file.sync_all().map_err(temp_error)?;
    }
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok((secret.into_bytes(), true)),
        // Another process won the race: its secret is complete, use it.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(&path).map(|s| (s, false)).map_err(io_error)
        }
        Err(err) => Err(io_error(err)),
    }
}

fn parse_filters(filters: &[String], max: usize) -> Result<Vec<TopicFilter>, String> {
    filters
        .iter()
        .map(|text| TopicFilter::parse(text, max).map_err(|err| format!("`{text}`: {err}")))
        .collect()
}

/// The claims of a token whose signature verified, each of its type.
struct SignedClaims {
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    audiences: Vec<String>,
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    admin: bool,
}

/// What a time claim must be, in the words of [`AuthError::Invalid`].
const NUMERIC_DATE: &str = "a number of seconds from 0 to 2^64";

fn wrong_type(claim: &str, expected: &str) -> AuthError {
    AuthError::Invalid(format!("claim `{claim}` must be {expected}"))
}

/// A JWT NumericDate as the verifier reads one: an unsigned integer, or a
/// finite non-negative number below 2^64, rounded.
fn numeric_date(value: &serde_json::Value) -> Option<u64> {
    if let Some(seconds) = value.as_u64() {
        return Some(seconds);
    }
    let seconds = value.as_f64()?;
    // The same rule as jsonwebtoken's, so a token reads the same here as
    // in other verifiers built on it.
    (seconds.is_finite() && (0.0..u64::MAX as f64).contains(&seconds))
        .then(|| seconds.round() as u64)
}

/// The wall-clock time of an `exp` claim, saturated at [`MAX_EXPIRY_SECS`]
/// so that no later arithmetic on it can overflow.
fn expiry_time(exp: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(exp.min(MAX_EXPIRY_SECS))
}

/// Seconds since the unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// Builds the verifier from config. For HS* without a configured secret
    /// it uses (and creates, if needed) the development secret in `data_dir`.
    pub fn from_config(
        config: &AuthConfig,
        data_dir: &Path,
        max_topic_length: usize,
    ) -> Result<Self, KeyError> {
        let algorithm = config.algorithm;
        let bad_key = |path: &Path, reason: String| KeyError::BadKey {
            path: path.display().to_string(),
            algorithm,
            reason,
        };
        let mut generated_secret = false;
        let (decoding, encoding) = if algorithm.is_hmac() {
            let secret = match (&config.secret, &config.secret_file) {
                (Some(secret), _) => secret.as_bytes().to_vec(),
                (None, Some(path)) => {
                    let mut secret = read_file(path)?;
                    while secret.last().is_some_and(|byte| byte.is_ascii_whitespace()) {
                        secret.pop();
                    }
                    // The same floor as an inline `auth.secret`.
                    if secret.len() < MIN_SECRET_BYTES {
                        return Err(bad_key(
                            path,
                            format!("the secret is shorter than {MIN_SECRET_BYTES} bytes"),
                        ));
                    }
                    secret
                }
                (None, None) => {
                    let (secret, created) = dev_secret(data_dir)?;
                    generated_secret = created;
                    secret
                }
            };
            (
                DecodingKey::from_secret(&secret),
                Some(EncodingKey::from_secret(&secret)),
            )
        } else {
            let path = config
                .public_key_file
                .as_deref()
                .ok_or(KeyError::NoSigningKey(algorithm))?;
            let pem = read_file(path)?;
            let decoding = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                _ => DecodingKey::from_ec_pem(&pem),
            }
            .map_err(|err| bad_key(path, err.to_string()))?;
            let encoding = match &config.private_key_file {
                None => None,
                Some(path) => {
                    let pem = read_file(path)?;
                    Some(
                        match algorithm {
                            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                            _ => EncodingKey::from_ec_pem(&pem),
                        }
                        .map_err(|err| bad_key(path, err.to_string()))?,
                    )
                }
            };
            (decoding, encoding)
        };

        let defaults = |filters: &[String]| {
            parse_filters(filters, max_topic_length).map_err(|reason| KeyError::BadKey {
                path: "auth.default_*".into(),
                algorithm,
                reason,
            })
        };
        Ok(Self {
            algorithm,
            decoding,
            encoding,
            leeway: config.leeway.as_secs(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            require_exp: config.require_exp,
            default_subscribe: defaults(&config.default_subscribe)?,
            default_publish: defaults(&config.default_publish)?,
            max_topic_length,
            generated_secret,
        })
    }

    /// True if a development secret was generated when this was built.
    pub fn generated_secret(&self) -> bool {
        self.generated_secret
    }

    /// Verifies a token and returns the identity it grants.
    ///
    /// The checks run in this order, and the first failure is the answer:
    /// the token's shape and header, its algorithm, its signature, the type
    /// of every claim Sockeye knows, the presence of the required ones, then
    /// `exp`, `nbf`, `iss` and `aud`. Nothing about the claims is said for a
    /// token whose signature does not verify.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let mut parts = token.split('.');
        let (Some(_header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let algorithm = jwt_algorithm(self.algorithm);
        if header.alg != algorithm {
            return Err(AuthError::WrongAlgorithm);
        }
        // The signed message is `header.payload`, as sent.
        let message = &token[..token.len() - signature.len() - 1];
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.decoding, algorithm)
        {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadSignature),
            Err(_) => return Err(AuthError::Malformed),
        }
        let payload = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .map_err(|_| AuthError::Malformed)?
        };
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        let claims = self.read_claims(&claims)?;

        let now = unix_now();
        if claims
            .exp
            .is_some_and(|exp| exp.saturating_add(self.leeway) < now)
        {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(AuthError::BadIssuer);
        }
        if let Some(audience) = &self.audience
            && !claims.audiences.contains(audience)
        {
            return Err(AuthError::BadAudience);
        }

        let permissions = Permissions {
            subscribe: match &claims.subscribe {
                Some(filters) => parse_filters(filters, self.max_topic_length)
                    .map_err(|reason| AuthError::Invalid(format!("claim `subscribe`: {reason}")))?,
                None => self.default_subscribe.clone(),
            },
            publish: match &claims.publish {
                Some(filters) => parse_filters(filters, self.max_topic_length)
                    .map_err(|reason| AuthError::Invalid(format!("claim `publish`: {reason}")))?,
                None => self.default_publish.clone(),
            },
        };
        Ok(Identity {
            subject: claims.sub,
            expires_at: claims.exp.map(expiry_time),
            permissions,
            admin: claims.admin,
        })
    }

    /// Reads the claims of a token whose signature has verified: every claim
    /// Sockeye knows must have its documented type ([`AuthError::Invalid`]
    /// naming it otherwise), and the required ones must be present
    /// ([`AuthError::MissingClaim`]). A `null` claim counts as absent.
    fn read_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<SignedClaims, AuthError> {
        use serde_json::Value;
        let claim = |name: &str| claims.get(name).filter(|value| !value.is_null());
        let string = |name: &str| match claim(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(wrong_type(name, "a string")),
        };
        let number = |name: &str| match claim(name) {
            None => Ok(None),
            Some(value) => numeric_date(value)
                .map(Some)
                .ok_or_else(|| wrong_type(name, NUMERIC_DATE)),
        };
        let strings = |name: &str, items: &[Value]| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| wrong_type(name, "an array of strings"))
        };
        let filters = |name: &str| match claim(name) {
            None => Ok(None),
            Some(Value::Array(items)) => strings(name, items).map(Some),
            Some(_) => Err(wrong_type(name, "an array of strings")),
        };
        let sub = string("sub")?;
        let exp = number("exp")?;
        let nbf = number("nbf")?;
        // Read only to hold it to its type: nothing depends on `iat`.
        number("iat")?;
        let iss = string("iss")?;
        // One string or several (RFC 7519 section 4.1.3).
        let audiences = match claim("aud") {
            None => Vec::new(),
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) => strings("aud", items)
                .map_err(|_| wrong_type("aud", "a string or an array of strings"))?,
            Some(_) => return Err(wrong_type("aud", "a string or an array of strings")),
        };
        let subscribe = filters("subscribe")?;
        let publish = filters("publish")?;
        let admin = match claim("admin") {
            None => false,
            Some(Value::Bool(admin)) => *admin,
            Some(_) => return Err(wrong_type("admin", "true or false")),
        };
        let sub = sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        if self.require_exp && exp.is_none() {
            return Err(AuthError::MissingClaim("exp".into()));
        }
        if self.issuer.is_some() && iss.is_none() {
            return Err(AuthError::MissingClaim("iss".into()));
        }
        if self.audience.is_some() && audiences.is_empty() {
            return Err(AuthError::MissingClaim("aud".into()));
        }
        Ok(SignedClaims {
            sub,
            exp,
            nbf,
            iss,
            audiences,
            subscribe,
            publish,
            admin,
        })
    }

    /// Signs `claims`, filling in `iss` and `aud` from the configuration
    /// when they are not set.
    pub fn mint(&self, mut claims: Claims) -> Result<String, KeyError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or(KeyError::NoSigningKey(self.algorithm))?;
        if claims.iss.is_none() {
            claims.iss = self.issuer.clone();
        }
        if claims.aud.is_none() {
            claims.aud = self.audience.clone();
        }
        jsonwebtoken::encode(&Header::new(jwt_algorithm(self.algorithm)), &claims, key)
            .map_err(|err| KeyError::Sign(err.to_string()))
    }
}

/// Finds the token in an upgrade request: `Authorization: Bearer`, then a
/// `bearer.<jwt>` entry of `Sec-WebSocket-Protocol`, then `?token=`.
pub fn token_from_request<'a>(
    headers: &'a HeaderMap,
    query: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let subprotocol = || {
        headers
            .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .find_map(|entry| entry.strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))
    };
    bearer
        .or_else(subprotocol)
        .or_else(|| query.get("token").map(String::as_str))
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_uses_of_the_dev_secret_all_get_the_same_whole_secret() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("temp dir");
            let secrets: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| scope.spawn(|| dev_secret(dir.path()).expect("a secret").0))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("no panic"))
                    .collect()
            });
            assert_eq!(secrets[0].len(), 64);
            assert!(secrets.iter().all(|secret| *secret == secrets[0]));
            let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
            assert_eq!(leftovers, 1, "only dev-secret remains");
        }
    }
}
