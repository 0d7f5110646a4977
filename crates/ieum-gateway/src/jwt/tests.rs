//! The verifier against keys made here: ES256 keys from ring, a fixed RSA test key, tokens
//! signed by jsonwebtoken, and a JWKS endpoint on 127.0.0.1:0 that counts its fetches.
//! Time between fetches is moved with tokio's clock (`jump`); token times are the `now`
//! passed to `verify`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ieum_model::api::JwtAuth;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::*;

/// The `now` every token is checked at.
const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://id.shop.example";
const AUDIENCE: &str = "shop-api";
const SKEW: u64 = 60;

/// A 2048-bit RSA key (PKCS#1 DER) made for these tests only; it signs nothing else.
const RSA_TEST_KEY: &str = concat!(
    "MIIEowIBAAKCAQEA08QUNQopW8ot2KGzZV7DjvnpqteQshKmNqpAzFtJoh6Zqwhu3L/reu1AxQBdBag4HnVpgyUK",
    "T1ZX9LFURHqPi28G9qETAEyYryMfaqkHIR1G165s2INo/KmRU0vP+eWd45FVkxI47UdRZztHuS6utccmOSTSeQEA",
    "RMe8TGJPvX62m/r2ET/aoXR8KNRBmJ9yooZkI1/fn/6netUumMgsO6/3dj4sqe/VyGmdywtf6s4nJnflNmUuL9bE",
    "I66UILtSom+qR9TiNtcgu4O4KWDBhJSyuSpJbts/HJuvnsAViEnVdBLDllZLEPe9p7j8dVJGYLoEim7mzrEEXovZ",
    "lktjzwIDAQABAoIBAGnXSTA/TW+Sq/pny2WhiQVndDoOtsPB3XBaBLv+7l0IhU5+DwbnJ3dPqH0uEtA2hSH4Fg3V",
    "kAMaSSjEDrWROjh6/BR9aiVOo0t5twSUybrrypIXHFDU0T7jM37Z1+9zK8hnRcmVpH03lYCOmOj945V4HWsXM9kF",
    "vpAh8kONKYSwLMB3Z0INWedYshNRKZMa3JTavGeur/NxwOhLFWuXt3YlsPla7JHvtIdlnjhvncJJuf34d7jUPUGm",
    "AFh81kMNVoqvFLYfisVzedCEgosMnj8d05hRslxbkItCAUnlM40XKgHkeAzFXdOPM3hM620tIeyVf6GtfZAebSKD",
    "AlifvNECgYEA93MVE7m0ktM95+cmTGgDoPHnFk+KOTQj5I4dwwC1/4mVhjpIWX5Goh3y38yJY60VH4U1sO9YX3+o",
    "CLsdgoWaI/nBYMJ1BIsWe7TDIMteIKnIHq3/qk+YP7NTI47aiRO9vuUPrC911/I2GGJ1rEAFdLNmHY4A2wpBSb2v",
    "yU913B8CgYEA2xVXqgEhn5NjotATY0/T/s2Yf6Tc4NxMVU/rIDdbdL5pVrJGlTTjjW8GpM/ww6tjxL5VH71zcopo",
    "hxB6Gd0obi3XC7XuGcWirZGZgG2m1Uxzh+yxD+QqYDQXQSfH5qrF9AOGhFoJXOu8m7hTxVyMiLLElo85Ix5/i6pl",
    "tQCnglECgYB3Skl86ue8aI3NgEecSgCF1FhdDxdJoHM1ObXrTipu+HrW7L34NsICYYG2ljodjVFDksphc+EcmMP/",
    "AYWmaJX4hezNorEa8ZpzJJ907dWA1ZieAa/hAOIaw25vE+0SbCvrHS5DCdY7to6RjtW/plV6/wlZch3Detwimoll",
    "+SKObQKBgQDC1YEnzGfFjYM/aQLFAFpNMTRc2BYi12f/OtqkxPZNpYTyuArzaJyxzDpBWjgJG6PXdVkoqAhCpfp9",
    "m1arJ7Zr/dJQNNRyEQQyjdjQkTOcX6gjCokQ094nvkusAx/Q8LCo6HW5wISxIWiTp+LAEyVb8HfKWcb7h4TwhXJ7",
    "/P/7cQKBgAj3lMDOKUUvHGkRas0ChWRSdlxGfyvO8QlL+yqnQ8tEx51ys0pSDOteyGQ7rR38RjYxOid8RyGHr+Dn",
    "yaZYju0F9+9G9Xf5izLV3iU3Eu02YK57vZVRsmy0l72GNNzqsozgLN+kbPenFxeOGNI4kCl6qzzN8n7IXnZPgHUR",
    "FW3i",
);

/// A key that signs tokens, and its public JWK.
struct Signer {
    kid: Option<String>,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn es256(kid: &str) -> Signer {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        Signer::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
    }

    fn rsa(kid: &str, alg: Algorithm) -> Signer {
        let der = STANDARD.decode(RSA_TEST_KEY).unwrap();
        Signer::new(kid, alg, EncodingKey::from_rsa_der(&der))
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> Signer {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Signer {
            kid: Some(kid.to_owned()),
            alg,
            key,
            jwk: serde_json::to_value(&jwk).unwrap(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.kid.as_deref(), claims)
    }

    /// A token by this key that names `kid` (whatever its JWK says).
    fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// Claims that pass at `NOW`.
fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": NOW + 300, "iat": NOW - 10})
}

/// `claims()` with `changes` applied (`null` removes a claim).
fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn jwks(signers: &[&Signer]) -> Value {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()})
}

fn auth(jwks_url: Option<String>, jwks: Option<Value>) -> JwtAuth {
    JwtAuth {
        issuer: ISSUER.to_owned(),
        audiences: vec!["other-api".to_owned(), AUDIENCE.to_owned()],
        jwks_url,
        jwks,
        clock_skew: ieum_model::Duration::from_secs(SKEW),
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No pooled connections: `jump` moves the clock past idle timeouts.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn inline(signers: &[&Signer]) -> JwtVerifier {
    JwtVerifier::new(&auth(None, Some(jwks(signers))), client())
}

/// The JWKS endpoint's state.
struct Issuer {
    jwks: Value,
    up: bool,
    fetches: usize,
}

type Shared = Arc<Mutex<Issuer>>;

async fn jwks_endpoint(State(issuer): State<Shared>) -> (StatusCode, axum::Json<Value>) {
    let mut issuer = issuer.lock().unwrap();
    issuer.fetches += 1;
    if issuer.up {
        (StatusCode::OK, axum::Json(issuer.jwks.clone()))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})))
    }
}

/// Serves `jwks` on 127.0.0.1:0; the URL and the endpoint's state.
async fn serve(jwks: Value) -> (String, Shared) {
    let issuer = Arc::new(Mutex::new(Issuer {
        jwks,
        up: true,
        fetches: 0,
    }));
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks_endpoint))
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/.well-known/jwks.json"), issuer)
}

async fn remote(signers: &[&Signer]) -> (JwtVerifier, Shared) {
    let (url, issuer) = serve(jwks(signers)).await;
    (JwtVerifier::new(&auth(Some(url), None), client()), issuer)
}

fn fetches(issuer: &Shared) -> usize {
    issuer.lock().unwrap().fetches
}

/// Moves tokio's clock `by` at once (the JWKS endpoint keeps running on real time).
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A token with `header` and `payload` as given, and `signature` as the third part.
fn forged(header: &Value, payload: &Value, signature: &str) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.{signature}", part(header), part(payload))
}

#[tokio::test]
async fn a_valid_token_gives_its_subject() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let got = v.verify(&key.sign(&claims()), NOW).await.unwrap();
    assert_eq!(
        got,
        Claims {
            sub: Some("alice".to_owned()),
            expires_at: NOW + 300
        }
    );
    // No `sub` is no subject, not an error.
    let got = v
        .verify(&key.sign(&claims_with(json!({"sub": null}))), NOW)
        .await
        .unwrap();
    assert_eq!(got.sub, None);
}

#[tokio::test]
async fn expiry_is_checked_within_the_clock_skew() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let at = |exp: u64| key.sign(&claims_with(json!({ "exp": exp })));
    assert_eq!(
        v.verify(&at(NOW - SKEW - 1), NOW).await,
        Err(JwtError::Expired)
    );
    assert_eq!(v.verify(&at(NOW - SKEW), NOW).await, Err(JwtError::Expired));
    // Expired by our clock, but within the skew.
    assert!(v.verify(&at(NOW - SKEW + 1), NOW).await.is_ok());
    assert!(v.verify(&at(NOW - 1), NOW).await.is_ok());
    // A fractional NumericDate is read too.
    let frac = key.sign(&claims_with(json!({"exp": (NOW - SKEW - 1) as f64 + 0.5})));
    assert_eq!(v.verify(&frac, NOW).await, Err(JwtError::Expired));
    // `exp` is required, and must be a number.
    assert_eq!(
        v.verify(&key.sign(&claims_with(json!({"exp": null}))), NOW)
            .await,
        Err(JwtError::NoExpiry)
    );
    assert_eq!(
        v.verify(&key.sign(&claims_with(json!({"exp": "tomorrow"}))), NOW)
            .await,
        Err(JwtError::Claims)
    );
}

#[tokio::test]
async fn not_before_is_checked_within_the_clock_skew() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let nbf = |nbf: u64| key.sign(&claims_with(json!({ "nbf": nbf })));
    assert_eq!(
        v.verify(&nbf(NOW + SKEW + 1), NOW).await,
        Err(JwtError::NotYetValid)
    );
    assert!(v.verify(&nbf(NOW + SKEW), NOW).await.is_ok());
    assert!(v.verify(&nbf(NOW - 100), NOW).await.is_ok());
}

#[tokio::test]
async fn the_issuer_must_be_the_apis() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    for iss in [json!("https://evil.example"), json!(null), json!([ISSUER])] {
        let token = key.sign(&claims_with(json!({ "iss": iss })));
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::Issuer), "{iss}");
    }
}

#[tokio::test]
async fn the_audience_must_be_one_of_the_apis() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let aud = |aud: Value| key.sign(&claims_with(json!({ "aud": aud })));
    assert_eq!(
        v.verify(&aud(json!("billing-api")), NOW).await,
        Err(JwtError::Audience)
    );
    assert_eq!(
        v.verify(&aud(json!(null)), NOW).await,
        Err(JwtError::Audience)
    );
    assert_eq!(
        v.verify(&aud(json!(["billing-api", "crm"])), NOW).await,
        Err(JwtError::Audience)
    );
    assert_eq!(
        v.verify(&aud(json!([])), NOW).await,
        Err(JwtError::Audience)
    );
    // An array holding one of ours is enough; so is our second audience alone.
    assert!(
        v.verify(&aud(json!(["billing-api", AUDIENCE])), NOW)
            .await
            .is_ok()
    );
    assert!(v.verify(&aud(json!("other-api")), NOW).await.is_ok());
    assert_eq!(v.verify(&aud(json!(7)), NOW).await, Err(JwtError::Claims));
}

#[tokio::test]
async fn a_tampered_token_does_not_verify() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let token = key.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();

    // Another subject under the original signature.
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mallory = forged(&header, &claims_with(json!({"sub": "mallory"})), parts[2]);
    assert_eq!(v.verify(&mallory, NOW).await, Err(JwtError::Signature));

    // One signature byte changed.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(v.verify(&flipped, NOW).await, Err(JwtError::Signature));

    // Signed by another key that claims the same `kid`.
    let impostor = Signer::es256("k1");
    assert_eq!(
        v.verify(&impostor.sign(&claims()), NOW).await,
        Err(JwtError::Signature)
    );
}

#[tokio::test]
async fn none_and_hmac_are_refused() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let none = forged(&json!({"alg": "none", "kid": "k1"}), &claims(), "");
    assert_eq!(v.verify(&none, NOW).await, Err(JwtError::Algorithm));
    let none = forged(&json!({"alg": "none"}), &claims(), "");
    assert_eq!(v.verify(&none, NOW).await, Err(JwtError::Algorithm));

    // HS256 keyed with what is public: the key's own JWK.
    let secret = serde_json::to_vec(&key.jwk).unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS512] {
        let hmac = Signer {
            kid: Some("k1".to_owned()),
            alg,
            key: EncodingKey::from_secret(&secret),
            jwk: json!({}),
        };
        assert_eq!(
            v.verify(&hmac.sign(&claims()), NOW).await,
            Err(JwtError::Algorithm)
        );
    }

    // An HMAC secret published in the JWKS is no key of ours either.
    let oct = json!({"keys": [{"kty": "oct", "kid": "s1", "k": URL_SAFE_NO_PAD.encode(b"0123456789abcdef0123456789abcdef")}, key.jwk]});
    let v = JwtVerifier::new(&auth(None, Some(oct)), client());
    let hmac = Signer {
        kid: Some("s1".to_owned()),
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        jwk: json!({}),
    };
    assert_eq!(
        v.verify(&hmac.sign(&claims()), NOW).await,
        Err(JwtError::Algorithm)
    );
    // Forcing an accepted `alg` onto it finds no such key.
    let forced = forged(&json!({"alg": "RS256", "kid": "s1"}), &claims(), "AAAA");
    assert_eq!(v.verify(&forced, NOW).await, Err(JwtError::UnknownKey));
}

#[tokio::test]
async fn rsa_keys_verify_rs256_and_ps256_and_only_with_their_type() {
    let rsa = Signer::rsa("r1", Algorithm::RS256);
    let ec = Signer::es256("e1");
    let v = inline(&[&rsa, &ec]);
    assert_eq!(
        v.verify(&rsa.sign(&claims()), NOW)
            .await
            .unwrap()
            .sub
            .as_deref(),
        Some("alice")
    );

    // The JWK says `alg: RS256`: a PS256 token by the same key is refused.
    let pss = Signer::rsa("r1", Algorithm::PS256);
    assert_eq!(
        v.verify(&pss.sign(&claims()), NOW).await,
        Err(JwtError::Algorithm)
    );
    // Without `alg` in the JWK, PS256 by an RSA key is fine.
    let mut open = pss.jwk.clone();
    open.as_object_mut().unwrap().remove("alg");
    let v2 = JwtVerifier::new(&auth(None, Some(json!({ "keys": [open] }))), client());
    assert!(v2.verify(&pss.sign(&claims()), NOW).await.is_ok());

    // An RSA signature naming the EC key, and an EC signature naming the RSA key.
    let crossed = rsa.sign_as(Some("e1"), &claims());
    assert_eq!(v.verify(&crossed, NOW).await, Err(JwtError::Algorithm));
    let crossed = ec.sign_as(Some("r1"), &claims());
    assert_eq!(v.verify(&crossed, NOW).await, Err(JwtError::Algorithm));

    // A modulus under 2048 bits is no key.
    let mut short = rsa.jwk.clone();
    let n = URL_SAFE_NO_PAD
        .decode(short["n"].as_str().unwrap())
        .unwrap();
    short["n"] = json!(URL_SAFE_NO_PAD.encode(&n[..128]));
    let v3 = JwtVerifier::new(&auth(None, Some(json!({ "keys": [short] }))), client());
    assert_eq!(
        v3.verify(&rsa.sign(&claims()), NOW).await,
        Err(JwtError::UnknownKey)
    );
}

#[tokio::test]
async fn a_token_without_kid_needs_a_single_key() {
    let one = Signer::es256("k1");
    let other = Signer::es256("k2");
    let token = one.sign_as(None, &claims());
    assert!(inline(&[&one]).verify(&token, NOW).await.is_ok());
    assert_eq!(
        inline(&[&one, &other]).verify(&token, NOW).await,
        Err(JwtError::UnknownKey)
    );
}

#[tokio::test]
async fn what_is_not_a_jwt_says_so() {
    let key = Signer::es256("k1");
    let v = inline(&[&key]);
    let good = key.sign(&claims());
    let five = format!("{good}.x.y");
    let crit = forged(
        &json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
        &claims(),
        good.rsplit('.').next().unwrap(),
    );
    let kid_number = forged(&json!({"alg": "ES256", "kid": 1}), &claims(), "AAAA");
    for token in [
        "",
        "abc",
        "a.b",
        five.as_str(),
        "!!!.e30.AAAA",
        "e30.e30.AAAA", // a header without `alg`
        crit.as_str(),
        kid_number.as_str(),
    ] {
        assert_eq!(
            v.verify(token, NOW).await,
            Err(JwtError::Malformed),
            "{token}"
        );
    }
    // A payload that is not a claims object, under a good signature.
    let array = key.sign(&json!([1, 2]));
    assert!(matches!(
        v.verify(&array, NOW).await,
        Err(JwtError::Claims | JwtError::Malformed)
    ));
}

#[tokio::test]
async fn errors_read_safely_and_only_fetching_is_unavailable() {
    assert_eq!(JwtError::Expired.to_string(), "the token has expired");
    assert_eq!(
        JwtError::Audience.to_string(),
        "the token is for another audience"
    );
    assert_eq!(
        JwtError::Signature.to_string(),
        "the token's signature does not verify"
    );
    assert_eq!(JwtError::Malformed.to_string(), "the token is not a JWT");
    assert_eq!(
        JwtError::Unavailable.to_string(),
        "the issuer's keys cannot be fetched"
    );
    assert!(JwtError::Unavailable.is_unavailable());
    for e in [
        JwtError::Malformed,
        JwtError::Algorithm,
        JwtError::UnknownKey,
        JwtError::Signature,
        JwtError::Claims,
        JwtError::NoExpiry,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::Issuer,
        JwtError::Audience,
    ] {
        assert!(!e.is_unavailable(), "{e}");
    }
}

#[tokio::test]
async fn remote_keys_are_fetched_once_on_first_use_and_shared() {
    let key = Signer::es256("k1");
    let (v, issuer) = remote(&[&key]).await;
    assert_eq!(
        fetches(&issuer),
        0,
        "nothing is fetched before a token comes"
    );
    let token = key.sign(&claims());
    let mut all = JoinSet::new();
    for _ in 0..8 {
        let (v, token) = (v.clone(), token.clone());
        all.spawn(async move { v.verify(&token, NOW).await });
    }
    while let Some(r) = all.join_next().await {
        assert_eq!(r.unwrap().unwrap().sub.as_deref(), Some("alice"));
    }
    assert_eq!(fetches(&issuer), 1, "concurrent first uses fetch once");
    for _ in 0..5 {
        v.verify(&token, NOW).await.unwrap();
    }
    assert_eq!(fetches(&issuer), 1, "cached");
    // Claims are still checked with remote keys.
    assert_eq!(
        v.verify(
            &key.sign(&claims_with(json!({"iss": "https://evil.example"}))),
            NOW
        )
        .await,
        Err(JwtError::Issuer)
    );
}

#[tokio::test]
async fn remote_keys_are_refreshed_every_ten_minutes() {
    let key = Signer::es256("k1");
    let (v, issuer) = remote(&[&key]).await;
    let token = key.sign(&claims());
    v.verify(&token, NOW).await.unwrap();
    jump(REFRESH_EVERY - Duration::from_secs(5)).await;
    v.verify(&token, NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 1);
    jump(Duration::from_secs(6)).await;
    v.verify(&token, NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 2);
    // A key the issuer dropped stops verifying after the refresh.
    let next = Signer::es256("k2");
    issuer.lock().unwrap().jwks = jwks(&[&next]);
    jump(REFRESH_EVERY).await;
    assert_eq!(v.verify(&token, NOW).await, Err(JwtError::UnknownKey));
    assert!(v.verify(&next.sign(&claims()), NOW).await.is_ok());
    assert_eq!(fetches(&issuer), 3);
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_once_per_interval() {
    let old = Signer::es256("old");
    let (v, issuer) = remote(&[&old]).await;
    v.verify(&old.sign(&claims()), NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 1);

    // The issuer rotates: a new key is published and tokens are signed with it.
    let new = Signer::es256("new");
    issuer.lock().unwrap().jwks = jwks(&[&old, &new]);
    let rotated = new.sign(&claims());
    jump(REFETCH_AT_MOST_EVERY).await;
    assert_eq!(
        v.verify(&rotated, NOW).await.unwrap().sub.as_deref(),
        Some("alice")
    );
    assert_eq!(
        fetches(&issuer),
        2,
        "the unknown kid fetched the keys again"
    );
    v.verify(&rotated, NOW).await.unwrap();
    v.verify(&old.sign(&claims()), NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 2);

    // A flood of made-up kids: refused without fetching again.
    let mut all = JoinSet::new();
    for i in 0..50 {
        let v = v.clone();
        let token = Signer::es256(&format!("bogus-{i}")).sign(&claims());
        all.spawn(async move { v.verify(&token, NOW).await });
    }
    while let Some(r) = all.join_next().await {
        assert_eq!(r.unwrap(), Err(JwtError::UnknownKey));
    }
    jump(REFETCH_AT_MOST_EVERY - Duration::from_secs(1)).await;
    let bogus = Signer::es256("bogus").sign(&claims());
    assert_eq!(v.verify(&bogus, NOW).await, Err(JwtError::UnknownKey));
    assert_eq!(fetches(&issuer), 2, "no refetch within the interval");

    // Once the interval has passed, one more.
    jump(Duration::from_secs(1)).await;
    for _ in 0..10 {
        assert_eq!(v.verify(&bogus, NOW).await, Err(JwtError::UnknownKey));
    }
    assert_eq!(fetches(&issuer), 3);
    // Known keys kept verifying all along.
    v.verify(&rotated, NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 3);
}

#[tokio::test]
async fn an_unknown_kid_right_after_a_fetch_waits_for_the_interval() {
    let old = Signer::es256("old");
    let (v, issuer) = remote(&[&old]).await;
    v.verify(&old.sign(&claims()), NOW).await.unwrap();
    let new = Signer::es256("new");
    issuer.lock().unwrap().jwks = jwks(&[&new]);
    let rotated = new.sign(&claims());
    assert_eq!(v.verify(&rotated, NOW).await, Err(JwtError::UnknownKey));
    assert_eq!(fetches(&issuer), 1);
    jump(REFETCH_AT_MOST_EVERY).await;
    assert!(v.verify(&rotated, NOW).await.is_ok());
    assert_eq!(fetches(&issuer), 2);
}

#[tokio::test]
async fn inline_keys_are_never_fetched() {
    let key = Signer::es256("k1");
    let (url, issuer) = serve(jwks(&[])).await;
    // Both set (validation refuses it): the inline keys win and nothing is fetched.
    let v = JwtVerifier::new(&auth(Some(url), Some(jwks(&[&key]))), client());
    assert!(v.verify(&key.sign(&claims()), NOW).await.is_ok());
    let stranger = Signer::es256("k9").sign(&claims());
    assert_eq!(v.verify(&stranger, NOW).await, Err(JwtError::UnknownKey));
    assert_eq!(fetches(&issuer), 0);
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let key = Signer::es256("k1");
    let v = JwtVerifier::new(
        &auth(Some(format!("http://{addr}/jwks.json")), None),
        client(),
    );
    let err = v.verify(&key.sign(&claims()), NOW).await.unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(err.to_string(), "the issuer's keys cannot be fetched");
    // A token that is not a JWT is refused before any fetch.
    assert_eq!(v.verify("abc", NOW).await, Err(JwtError::Malformed));
}

#[tokio::test]
async fn a_failing_issuer_is_retried_and_never_hammered() {
    let key = Signer::es256("k1");
    let (v, issuer) = remote(&[&key]).await;
    issuer.lock().unwrap().up = false;
    let token = key.sign(&claims());
    for _ in 0..5 {
        assert_eq!(v.verify(&token, NOW).await, Err(JwtError::Unavailable));
    }
    assert_eq!(fetches(&issuer), 1);
    // A JWKS without a usable key is a failure as well.
    issuer.lock().unwrap().up = true;
    issuer.lock().unwrap().jwks = json!({"keys": [{"kty": "oct", "k": "AAAA"}]});
    jump(RETRY_WITHOUT_KEYS).await;
    assert_eq!(v.verify(&token, NOW).await, Err(JwtError::Unavailable));
    assert_eq!(fetches(&issuer), 2);
    issuer.lock().unwrap().jwks = jwks(&[&key]);
    jump(RETRY_WITHOUT_KEYS).await;
    assert!(v.verify(&token, NOW).await.is_ok());
    assert_eq!(fetches(&issuer), 3);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_keys() {
    let key = Signer::es256("k1");
    let (v, issuer) = remote(&[&key]).await;
    let token = key.sign(&claims());
    v.verify(&token, NOW).await.unwrap();
    issuer.lock().unwrap().up = false;
    jump(REFRESH_EVERY).await;
    assert!(
        v.verify(&token, NOW).await.is_ok(),
        "stale keys still verify"
    );
    assert_eq!(fetches(&issuer), 2);
    for _ in 0..5 {
        assert!(v.verify(&token, NOW).await.is_ok());
    }
    assert_eq!(
        fetches(&issuer),
        2,
        "the failed refresh waits before trying again"
    );
    issuer.lock().unwrap().up = true;
    jump(REFETCH_AT_MOST_EVERY).await;
    v.verify(&token, NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 3);
    v.verify(&token, NOW).await.unwrap();
    assert_eq!(fetches(&issuer), 3, "fresh again");
}
