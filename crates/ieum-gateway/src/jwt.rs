//! Bearer JWTs for an `Api` whose `auth.jwt` is set: one [`JwtVerifier`] per `JwtAuth`.
//!
//! A token is checked in this order, and the first failure is the answer:
//!
//! 1. its shape (three base64url parts, a JSON header with `alg`, no `crit`);
//! 2. its algorithm: RS256, RS384, RS512, ES256, ES384 or PS256 only (never `none`, never
//!    HMAC, whose "key" would be public here);
//! 3. its key: the issuer's JWKS key named by `kid`, or the only key when it names none;
//!    the key's type (and `alg`, when the key has one) must fit the token's algorithm;
//! 4. its signature (by `jsonwebtoken`, no crypto of ours);
//! 5. its claims, at the `now` the caller gives: `exp` (required) and `nbf` within the clock
//!    skew, `iss`, then `aud` (a string or an array).
//!
//! Keys come inline (`jwks`) or from `jwksUrl`. Fetched keys are cached: fetched on first
//! use, again every [`REFRESH_EVERY`], and sooner when a token names a `kid` the cached set
//! lacks (the issuer rotated its keys), but never more than once per
//! [`REFETCH_AT_MOST_EVERY`], so tokens with made-up `kid`s cannot make the gateway hammer
//! the issuer. Concurrent fetches are one (a mutex held while fetching); requests whose key
//! is cached and fresh never wait for it. A failed fetch keeps the cached set.
//!
//! Errors say what is wrong in words a client may read ([`JwtError`]); why a fetch failed
//! is logged, never returned.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ieum_model::api::JwtAuth;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long fetched keys are used before they are fetched again.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// The least time between two fetches once keys were had: a token naming an unknown `kid`
/// fetches again only this long after the last fetch, and so does a failed refresh.
pub(crate) const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// The least time between two fetches while no key set was ever had (every token is
/// refused meanwhile, so this is shorter).
pub(crate) const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(5);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read (real ones are a few kilobytes).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Why a token is refused. The display is safe to return to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    /// Not three base64url parts with a JSON header, or a header we must not ignore.
    #[error("the token is not a JWT")]
    Malformed,
    /// `alg` is not one we accept, or does not fit the key.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// No key of the issuer has the token's `kid` (or it names none and there are several).
    #[error("the token's signing key is not known")]
    UnknownKey,
    /// The signature is not the key's.
    #[error("the token's signature does not verify")]
    Signature,
    /// The payload is not a JSON object, or a claim has the wrong type.
    #[error("the token's claims are malformed")]
    Claims,
    /// No `exp`.
    #[error("the token has no expiry")]
    NoExpiry,
    /// `exp` is past, beyond the clock skew.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead, beyond the clock skew.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the API's issuer.
    #[error("the token is from another issuer")]
    Issuer,
    /// No `aud` is one of the API's audiences.
    #[error("the token is for another audience")]
    Audience,
    /// The issuer's keys could not be fetched and none are cached.
    #[error("the issuer's keys cannot be fetched")]
    Unavailable,
}

impl JwtError {
    /// Whether the token could not be checked at all (answer 503), rather than was refused
    /// (answer 401).
    pub(crate) fn is_unavailable(self) -> bool {
        self == JwtError::Unavailable
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// `sub`: who the token is for, matched against `ApiConsumer.jwtSubjects`.
    pub(crate) sub: Option<String>,
    /// `exp`, in unix seconds.
    pub(crate) expires_at: u64,
}

/// Checks bearer tokens against one `JwtAuth`. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub(crate) struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audiences: Vec<String>,
    /// `clockSkew` in whole seconds.
    skew: u64,
    keys: Keys,
}

enum Keys {
    /// `jwks`: parsed once, never fetched.
    Inline(Arc<KeySet>),
    /// `jwksUrl`.
    Remote(Remote),
}

struct Remote {
    url: String,
    http: reqwest::Client,
    /// The last set fetched, readable without waiting while a fetch is in progress.
    current: RwLock<Option<Arc<Fetched>>>,
    /// When the last fetch started; held for the whole fetch, so concurrent ones are one.
    last_attempt: Mutex<Option<Instant>>,
}

struct Fetched {
    keys: Arc<KeySet>,
    at: Instant,
}

impl JwtVerifier {
    /// A verifier for `auth`, fetching `jwksUrl` (if that is where the keys are) with
    /// `http` on first use. With both `jwks` and `jwksUrl` set (validation refuses that),
    /// the inline keys are used.
    pub(crate) fn new(auth: &JwtAuth, http: reqwest::Client) -> JwtVerifier {
        let keys = match (&auth.jwks, &auth.jwks_url) {
            (Some(doc), _) => {
                let set = KeySet::parse(doc).unwrap_or_default();
                if set.0.is_empty() {
                    tracing::warn!(issuer = %auth.issuer, "the inline JWKS has no usable signing key: every token will be refused");
                }
                Keys::Inline(Arc::new(set))
            }
            (None, Some(url)) => Keys::Remote(Remote {
                url: url.clone(),
                http,
                current: RwLock::new(None),
                last_attempt: Mutex::new(None),
            }),
            (None, None) => Keys::Inline(Arc::default()),
        };
        JwtVerifier {
            inner: Arc::new(Inner {
                issuer: auth.issuer.clone(),
                audiences: auth.audiences.clone(),
                skew: auth.clock_skew.get().as_secs(),
                keys,
            }),
        }
    }

    /// Verifies a compact JWT at `now` (unix seconds): see the module doc for what is
    /// checked, in which order.
    pub(crate) async fn verify(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let header = Header::parse(token)?;
        let alg = accepted(&header.alg).ok_or(JwtError::Algorithm)?;
        let kid = header.kid.as_deref();
        let set = match &self.inner.keys {
            Keys::Inline(set) => set.clone(),
            Keys::Remote(remote) => remote.keys(kid).await?,
        };
        let key = set.find(kid).ok_or(JwtError::UnknownKey)?;
        if !key.fits(alg) {
            return Err(JwtError::Algorithm);
        }
        let mut validation = Validation::new(alg);
        // Only the signature here: claims are checked below, at the caller's `now`.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let payload = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => JwtError::Malformed,
                ErrorKind::InvalidAlgorithm => JwtError::Algorithm,
                ErrorKind::InvalidSignature => JwtError::Signature,
                other => {
                    // A key of the issuer's that does not load: the token cannot verify.
                    tracing::debug!(issuer = %self.inner.issuer, error = ?other, "a JWT failed to verify");
                    JwtError::Signature
                }
            })?
            .claims;
        self.inner.check(payload, now)
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("JwtVerifier");
        d.field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences);
        match &self.inner.keys {
            Keys::Inline(set) => d.field("inline_keys", &set.0.len()),
            Keys::Remote(r) => d.field("jwks_url", &r.url),
        };
        d.finish_non_exhaustive()
    }
}

impl Inner {
    /// The claims of a token whose signature verified.
    fn check(&self, payload: Value, now: u64) -> Result<Claims, JwtError> {
        let Value::Object(claims) = payload else {
            return Err(JwtError::Claims);
        };
        let expires_at = match claims.get("exp") {
            None => return Err(JwtError::NoExpiry),
            Some(v) => numeric_date(v).ok_or(JwtError::Claims)?,
        };
        if expires_at.saturating_add(self.skew) <= now {
            return Err(JwtError::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or(JwtError::Claims)?;
            if nbf > now.saturating_add(self.skew) {
                return Err(JwtError::NotYetValid);
            }
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let ours = |a: &str| self.audiences.iter().any(|ok| ok == a);
        let audience_ok = match claims.get("aud") {
            Some(Value::String(a)) => ours(a),
            Some(Value::Array(list)) => {
                let mut any = false;
                for a in list {
                    any |= ours(a.as_str().ok_or(JwtError::Claims)?);
                }
                any
            }
            None => false,
            Some(_) => return Err(JwtError::Claims),
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(JwtError::Claims),
        };
        Ok(Claims { sub, expires_at })
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly with a fraction (dropped).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The algorithms a token may be signed with.
fn accepted(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        _ => return None,
    })
}

/// What is read of a token's header before a key is chosen.
struct Header {
    alg: String,
    kid: Option<String>,
}

impl Header {
    fn parse(token: &str) -> Result<Header, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed)?;
        let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(JwtError::Malformed);
        };
        // RFC 7515 §4.1.11: extensions named in `crit` must be understood; we know none.
        if h.contains_key("crit") {
            return Err(JwtError::Malformed);
        }
        let Some(Value::String(alg)) = h.get("alg") else {
            return Err(JwtError::Malformed);
        };
        let kid = match h.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::Malformed),
        };
        Ok(Header {
            alg: alg.clone(),
            kid,
        })
    }
}

/// The usable signing keys of a JWKS document.
#[derive(Default)]
struct KeySet(Vec<Key>);

struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The key's own `alg`, when it states one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeySet {
    /// The keys of `{"keys": [...]}` that can verify an accepted algorithm; the others
    /// (encryption keys, HMAC secrets, other curves, short RSA keys) are skipped. `None`
    /// when the document has no `keys` array.
    fn parse(doc: &Value) -> Option<KeySet> {
        let keys = doc.get("keys")?.as_array()?;
        Some(KeySet(keys.iter().filter_map(Key::parse).collect()))
    }

    /// The key named `kid`, or the only key when the token names none.
    fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.0.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.0.len() == 1 => self.0.first(),
            None => None,
        }
    }

    /// Whether the token names a key this set does not have (so the issuer may have
    /// rotated its keys since this set was fetched).
    fn lacks(&self, kid: Option<&str>) -> bool {
        kid.is_some() && self.find(kid).is_none()
    }
}

impl Key {
    fn parse(v: &Value) -> Option<Key> {
        let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return None;
        }
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return None;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(accepted(&a.to_string())?),
        };
        let (kind, decoding) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = URL_SAFE_NO_PAD.decode(&p.n).ok()?;
                if rsa_bits(&n) < MIN_RSA_BITS {
                    return None;
                }
                (
                    KeyKind::Rsa,
                    DecodingKey::from_rsa_components(&p.n, &p.e).ok()?,
                )
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let kind = match p.curve {
                    EllipticCurve::P256 => KeyKind::P256,
                    EllipticCurve::P384 => KeyKind::P384,
                    _ => return None,
                };
                (kind, DecodingKey::from_ec_components(&p.x, &p.y).ok()?)
            }
            _ => return None,
        };
        let key = Key {
            kid: jwk.common.key_id,
            kind,
            alg,
            decoding,
        };
        // A key whose own `alg` does not fit its type can verify nothing.
        key.alg.is_none_or(|a| key.fits(a)).then_some(key)
    }

    /// Whether this key may verify a token signed with `alg`.
    fn fits(&self, alg: Algorithm) -> bool {
        let kind = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                KeyKind::Rsa
            }
            Algorithm::ES256 => KeyKind::P256,
            Algorithm::ES384 => KeyKind::P384,
            _ => return false,
        };
        self.kind == kind && self.alg.is_none_or(|a| a == alg)
    }
}

/// The size of a big-endian modulus, in bits.
fn rsa_bits(n: &[u8]) -> usize {
    let n = &n[n.iter().take_while(|b| **b == 0).count()..];
    n.first()
        .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize)
}

impl Remote {
    /// The key set to look for `kid` in, fetched first when there is none yet, when it is
    /// older than [`REFRESH_EVERY`], or when it lacks `kid` — each only if the last fetch
    /// is long enough ago.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwtError> {
        if let Some(f) = self.current()
            && Instant::now() < f.at + REFRESH_EVERY
            && !f.keys.lacks(kid)
        {
            return Ok(f.keys.clone());
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Another request may have fetched while this one waited.
        let current = self.current();
        let now = Instant::now();
        let wanted = current
            .as_ref()
            .is_none_or(|f| now >= f.at + REFRESH_EVERY || f.keys.lacks(kid));
        let gap = if current.is_some() {
            REFETCH_AT_MOST_EVERY
        } else {
            RETRY_WITHOUT_KEYS
        };
        if wanted && last_attempt.is_none_or(|at| now >= at + gap) {
            *last_attempt = Some(now);
            match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
                Ok(Ok(keys)) => {
                    let fetched = Arc::new(Fetched {
                        keys: Arc::new(keys),
                        at: Instant::now(),
                    });
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                        Some(fetched.clone());
                    return Ok(fetched.keys.clone());
                }
                Ok(Err(why)) => {
                    tracing::warn!(url = %self.url, error = %why, cached = current.is_some(), "cannot fetch the issuer's JWKS");
                }
                Err(_) => {
                    tracing::warn!(url = %self.url, cached = current.is_some(), "fetching the issuer's JWKS timed out");
                }
            }
        }
        current.map(|f| f.keys.clone()).ok_or(JwtError::Unavailable)
    }

    fn current(&self) -> Option<Arc<Fetched>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One GET of the JWKS document; a document without a usable key is a failure (and
    /// keeps the cached set), not a set that refuses every token.
    async fn fetch(&self) -> Result<KeySet, String> {
        let mut res = self
            .http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("the issuer answered {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "the document is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let set = KeySet::parse(&doc).ok_or("not a JWKS document (no `keys` array)")?;
        if set.0.is_empty() {
            return Err("the JWKS has no usable signing key".into());
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests;
