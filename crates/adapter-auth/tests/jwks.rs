//! The JWKS verifier against a key set served by a local wiremock server:
//! RS256 and ES256 by `kid`, rotation without a restart, bounded refetches,
//! issuer and audience, algorithm confusion, and an endpoint that is down at
//! start.
//!
//! Time: the refetch limit, the refresher and the fetch timeout run on
//! tokio's clock, and token lifetimes on a `ManualClock`. Every test runs on
//! a paused tokio clock held still ([`hold_clock`]): it moves only when the
//! test advances it ([`pass`]), never while a fetch waits on its socket.
//! Waiting for a background fetch means waiting for the verifier's signal
//! ([`until_fetched`]); nothing here sleeps to let an interval elapse.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use adapter_auth::{
    ClaimsConfig, JwksConfig, JwksConfigError, JwksFetchError, JwksSource, JwksVerifier,
    KeyReadiness,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{AuthContext, AuthError, Caller, Clock, CustomerId, ManualClock};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const RSA2_PRIVATE: &[u8] = include_bytes!("fixtures/rsa2_private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec_p256_private.pem");
const RSA_JWK: &str = include_str!("fixtures/rsa_public.jwk.json");
const RSA2_JWK: &str = include_str!("fixtures/rsa2_public.jwk.json");
const EC_JWK: &str = include_str!("fixtures/ec_p256_public.jwk.json");

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "maestro";
const MIN_REFETCH: Duration = Duration::from_secs(30);
const REFRESH: Duration = Duration::from_secs(300);

// ---- Keys and tokens ------------------------------------------------------

/// The public JWK of a fixture, with `kid` and any other members added.
fn jwk(fixture: &str, kid: &str, extra: Value) -> Value {
    let mut key: Value = serde_json::from_str(fixture).expect("fixture JSON");
    key["kid"] = json!(kid);
    for (name, value) in extra.as_object().expect("an object") {
        key[name] = value.clone();
    }
    key
}

fn set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// The verifiers' time, 2024-12-18T10:30:00Z: tokens are minted around it,
/// whatever today's date.
const NOW: u64 = 1_734_517_800;

fn now() -> u64 {
    NOW
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::at_epoch_seconds(NOW as i64))
}

/// A valid token's claims: customer, subject, issuer, audience, an hour.
fn claims() -> Value {
    json!({
        "customer_id": "acme",
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 3600,
    })
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("an object").remove(name);
    claims
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("signed")
}

fn rsa_token(kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA key");
    sign(Algorithm::RS256, &key, Some(kid), claims)
}

fn rsa2_token(kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA2_PRIVATE).expect("second RSA key");
    sign(Algorithm::RS256, &key, Some(kid), claims)
}

fn ec_token(kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC key");
    sign(Algorithm::ES256, &key, Some(kid), claims)
}

/// An HS256 token keyed with `secret`, as an attacker who knows a public key
/// would make it.
fn hs_token(secret: &[u8], kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret).expect("HMAC key");
    sign(Algorithm::HS256, &key, Some(kid), claims)
}

fn acme() -> Caller {
    Caller::new(CustomerId::parse("acme").expect("valid id")).with_subject("user-1")
}

// ---- The identity provider and the verifier --------------------------------

/// A local identity provider serving a key set at `/jwks`.
struct Idp {
    server: MockServer,
}

impl Idp {
    async fn serving(keys: Value) -> Self {
        let idp = Self {
            server: MockServer::start().await,
        };
        idp.serve(keys).await;
        idp
    }

    /// Replaces whatever was served by `keys`.
    async fn serve(&self, keys: Value) {
        self.answer(ResponseTemplate::new(200).set_body_json(keys))
            .await;
    }

    /// Replaces whatever was served by `response`.
    async fn answer(&self, response: ResponseTemplate) {
        self.server.reset().await;
        mount(&self.server, "/jwks", response).await;
    }

    /// Serves, beside the key set, the discovery document of the issuer at
    /// `/realms/acme`, naming `named` as its issuer and this key set.
    async fn serve_discovery(&self, named: Value) {
        let document = "/realms/acme/.well-known/openid-configuration";
        serve_discovery(&self.server, document, named, json!(self.url())).await;
    }

    fn url(&self) -> String {
        format!("{}/jwks", self.server.uri())
    }

    /// The key-set requests the server has seen since the last reset.
    async fn fetches(&self) -> usize {
        self.server
            .received_requests()
            .await
            .expect("recording is on")
            .iter()
            .filter(|request| request.url.path() == "/jwks")
            .count()
    }
}

/// Answers GETs of `at` on `server` with `response`, beside what it already
/// answers.
async fn mount(server: &MockServer, at: &str, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(response)
        .mount(server)
        .await;
}

/// Serves at `at` on `server` an OIDC discovery document naming `issuer` and
/// the key set at `jwks_uri`.
async fn serve_discovery(server: &MockServer, at: &str, issuer: Value, jwks_uri: Value) {
    let document = json!({ "issuer": issuer, "jwks_uri": jwks_uri });
    mount(
        server,
        at,
        ResponseTemplate::new(200).set_body_json(document),
    )
    .await;
}

fn config(url: String) -> JwksConfig {
    JwksConfig {
        refresh_interval: REFRESH,
        min_refetch_interval: MIN_REFETCH,
        timeout: Duration::from_secs(5),
        ..JwksConfig::new(JwksSource::Url(url))
    }
}

/// The claim rules of these tests: our issuer and audience.
fn claim_rules() -> ClaimsConfig {
    ClaimsConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        ..ClaimsConfig::new()
    }
}

fn verifier(url: String) -> JwksVerifier {
    JwksVerifier::new(config(url), claim_rules(), clock()).expect("valid configuration")
}

/// Asserts that `auth` refuses `token` for want of keys, for a reason that
/// mentions `cause`.
async fn assert_keys_unavailable(auth: &JwksVerifier, token: &str, cause: &str) {
    match auth.authenticate(token).await {
        Err(AuthError::KeysUnavailable(reason)) => {
            assert!(reason.contains(cause), "{reason}");
        }
        other => panic!("expected KeysUnavailable, got {other:?}"),
    }
}

/// Asserts that `auth` takes `token` as acme's user-1.
async fn assert_accepted(auth: &JwksVerifier, token: &str) {
    assert_eq!(auth.authenticate(token).await, Ok(acme()));
}

/// Asserts, for each case's claims, what `auth` makes of a token `mint` signs
/// with them under `kid`, saying why when that differs.
async fn assert_verdicts<const N: usize>(
    auth: &JwksVerifier,
    mint: fn(&str, &Value) -> String,
    kid: &str,
    cases: [(Value, Result<Caller, AuthError>, &str); N],
) {
    for (claims, verdict, why) in cases {
        let token = mint(kid, &claims);
        assert_eq!(auth.authenticate(&token).await, verdict, "{why}: {claims}");
    }
}

/// A test's start: the clock held, a provider serving `keys` and a verifier
/// that has fetched them once.
async fn started(keys: Value) -> (HeldClock, Idp, JwksVerifier) {
    let clock = hold_clock();
    let idp = Idp::serving(keys).await;
    let auth = loaded(&idp).await;
    (clock, idp, auth)
}

/// A verifier that has fetched the set once.
async fn loaded(idp: &Idp) -> JwksVerifier {
    let auth = verifier(idp.url());
    auth.refresh_now().await.expect("the set is served");
    auth
}

// ---- Time -------------------------------------------------------------------

/// Keeps tokio's paused clock from moving on its own while it lives.
///
/// A paused clock jumps to the next timer whenever the runtime has nothing
/// else to do, and waiting for the wiremock server (on its own thread) to
/// answer is nothing to do: the fetch timeout would fire at random. Tokio
/// does not jump while a blocking task runs, so one runs until this is
/// dropped, at the end of the test.
struct HeldClock {
    _release: mpsc::Sender<()>,
}

fn hold_clock() -> HeldClock {
    let (release, released) = mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        // Returns once the sender is dropped.
        let _ = released.recv();
    });
    HeldClock { _release: release }
}

/// Moves the held clock forward by `duration`: every timer due by then
/// fires, and nothing else moves it. When this returns, the tasks those
/// timers woke (the refresher) have run up to their next wait: the test's
/// own future is polled before spawned tasks, so it yields once more to let
/// them go first.
async fn pass(duration: Duration) {
    tokio::time::advance(duration).await;
    tokio::task::yield_now().await;
}

/// How long, in real time, a test waits for a socket round trip before it
/// fails rather than hangs. The held clock cannot time this.
const PATIENCE: Duration = Duration::from_secs(10);

/// `future`'s output, or a failure naming `what` if it takes longer than
/// [`PATIENCE`] in real time.
async fn soon<T>(what: &str, future: impl Future<Output = T>) -> T {
    let (give_up, gave_up) = tokio::sync::oneshot::channel::<()>();
    let (_done, done) = mpsc::channel::<()>();
    // A watchdog thread, woken early when `_done` is dropped on return.
    std::thread::spawn(move || {
        if done.recv_timeout(PATIENCE) == Err(RecvTimeoutError::Timeout) {
            let _ = give_up.send(());
        }
    });
    tokio::select! {
        output = future => output,
        _ = gave_up => panic!("{what} did not happen within {PATIENCE:?}"),
    }
}

/// Waits for the verifier's signal that `count` fetches have finished: a
/// background fetch talks to the server over a socket, so it takes however
/// long the socket takes.
async fn until_fetched(auth: &JwksVerifier, count: u64) {
    soon(&format!("fetch {count}"), auth.fetched(count)).await;
}

// ---- Acceptance ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn rs256_and_es256_tokens_are_verified_with_the_key_their_kid_names() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[
        jwk(RSA_JWK, "rsa-1", json!({"alg": "RS256", "use": "sig"})),
        jwk(EC_JWK, "ec-1", json!({})),
        jwk(RSA2_JWK, "rsa-2", json!({})),
    ]))
    .await;
    let auth = loaded(&idp).await;
    assert_eq!(auth.key_count(), 3);

    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
    assert_accepted(&auth, &ec_token("ec-1", &claims())).await;
    assert_accepted(&auth, &rsa2_token("rsa-2", &claims())).await;
    // The right algorithm under another key's kid: the kid decides the key.
    assert_eq!(
        auth.authenticate(&rsa2_token("rsa-1", &claims())).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(auth.fetch_count(), 1, "known kids need no fetch");
}

#[tokio::test(start_paused = true)]
async fn the_first_token_fetches_the_set_when_no_refresh_has_run() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    let auth = verifier(idp.url());
    assert_eq!(auth.fetch_count(), 0, "nothing is fetched at construction");

    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
    assert_eq!(auth.fetch_count(), 1);
    assert_eq!(idp.fetches().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_without_a_kid_is_refused_as_malformed_without_a_fetch() {
    let (_clock, idp, auth) = started(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    for token in [
        sign(Algorithm::RS256, &key, None, &claims()),
        sign(Algorithm::RS256, &key, Some(""), &claims()),
    ] {
        assert!(matches!(
            auth.authenticate(&token).await,
            Err(AuthError::Malformed(_))
        ));
    }
    assert_eq!(idp.fetches().await, 1);
}

#[tokio::test(start_paused = true)]
async fn the_customer_claim_and_token_lifetime_rules_apply() {
    let (_clock, _idp, auth) = started(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    let verdicts = [
        (
            without(claims(), "customer_id"),
            Err(AuthError::MissingCustomer),
            "",
        ),
        (
            with(claims(), "exp", json!(now() - 3600)),
            Err(AuthError::Expired),
            "",
        ),
        (
            with(claims(), "nbf", json!(now() + 3600)),
            Err(AuthError::NotYetValid),
            "",
        ),
        (
            with(claims(), "exp", json!(now() - 10)),
            Ok(acme()),
            "within the default 30 s leeway, for clock skew",
        ),
    ];
    assert_verdicts(&auth, rsa_token, "rsa-1", verdicts).await;
}

// ---- Issuer and audience ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_wrong_or_missing_issuer_or_audience_is_refused() {
    let (_clock, _idp, auth) = started(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    let verdicts = [
        (
            with(claims(), "iss", json!("https://evil.example")),
            Err(AuthError::WrongIssuer),
            "",
        ),
        (without(claims(), "iss"), Err(AuthError::WrongIssuer), ""),
        (
            with(claims(), "aud", json!("another-service")),
            Err(AuthError::WrongAudience),
            "",
        ),
        (
            without(claims(), "aud"),
            Err(AuthError::WrongAudience),
            "aud is required once an audience is configured",
        ),
        (
            with(claims(), "aud", json!(["another-service", AUDIENCE])),
            Ok(acme()),
            "an aud array naming us is fine",
        ),
    ];
    assert_verdicts(&auth, ec_token, "ec-1", verdicts).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_configured_audience_aud_is_not_looked_at() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    let auth = JwksVerifier::new(
        config(idp.url()),
        ClaimsConfig {
            audience: None,
            ..claim_rules()
        },
        clock(),
    )
    .unwrap();
    for claims in [
        without(claims(), "aud"),
        with(claims(), "aud", json!("anyone")),
    ] {
        assert_accepted(&auth, &ec_token("ec-1", &claims)).await;
    }
}

// ---- Algorithm confusion ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn hs256_tokens_keyed_with_public_key_bytes_are_refused_without_a_fetch() {
    let _clock = hold_clock();
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(rsa["n"].as_str().unwrap())
        .expect("n is base64url");
    let idp = Idp::serving(set(&[
        jwk(RSA_JWK, "rsa-1", json!({})),
        // A symmetric key published in the set, with its own kid: never used.
        json!({"kty": "oct", "kid": "hmac", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(RSA_PUBLIC)}),
    ]))
    .await;
    let auth = loaded(&idp).await;
    assert_eq!(auth.key_count(), 1, "the oct key is skipped");

    for secret in [RSA_PUBLIC, n.as_slice(), RSA_JWK.as_bytes()] {
        for kid in ["rsa-1", "hmac", "made-up"] {
            assert_eq!(
                auth.authenticate(&hs_token(secret, kid, &claims())).await,
                Err(AuthError::RefusedAlgorithm),
                "kid {kid}"
            );
        }
    }
    // alg none and other algorithms are refused before any key lookup.
    let b64 = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
    for alg in ["none", "RS512", "PS256", "ES384", "EdDSA"] {
        let token = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "kid": "rsa-1"})),
            b64(claims())
        );
        assert_eq!(
            auth.authenticate(&token).await,
            Err(AuthError::RefusedAlgorithm),
            "{alg}"
        );
    }
    assert_eq!(idp.fetches().await, 1, "refused algorithms cause no fetch");
}

#[tokio::test(start_paused = true)]
async fn a_token_whose_alg_differs_from_its_keys_is_refused() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[
        jwk(RSA_JWK, "rsa-1", json!({})),
        jwk(EC_JWK, "ec-1", json!({})),
    ]))
    .await;
    let auth = loaded(&idp).await;

    // RS256 with the kid of an EC key, ES256 with the kid of an RSA key.
    assert_eq!(
        auth.authenticate(&rsa_token("ec-1", &claims())).await,
        Err(AuthError::RefusedAlgorithm)
    );
    assert_eq!(
        auth.authenticate(&ec_token("rsa-1", &claims())).await,
        Err(AuthError::RefusedAlgorithm)
    );
}

#[tokio::test(start_paused = true)]
async fn keys_whose_declared_alg_or_curve_disagrees_with_them_are_never_used() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[
        jwk(RSA_JWK, "pss", json!({"alg": "PS256"})),
        jwk(RSA_JWK, "enc", json!({"use": "enc"})),
        jwk(EC_JWK, "ec-as-rsa", json!({"alg": "RS256"})),
        // The P-256 point labelled P-384: the label is obeyed, not guessed.
        jwk(EC_JWK, "p384", json!({"crv": "P-384"})),
        jwk(EC_JWK, "ec-1", json!({})),
    ]))
    .await;
    let auth = loaded(&idp).await;
    assert_eq!(auth.key_count(), 1);

    for token in [
        rsa_token("pss", &claims()),
        rsa_token("enc", &claims()),
        ec_token("ec-as-rsa", &claims()),
        ec_token("p384", &claims()),
    ] {
        assert_eq!(
            auth.authenticate(&token).await,
            Err(AuthError::BadSignature)
        );
    }
    assert_accepted(&auth, &ec_token("ec-1", &claims())).await;
}

// ---- Rotation --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_rotated_in_key_is_accepted_after_an_unknown_kid_refetch() {
    let (_clock, idp, auth) = started(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;

    // The provider publishes its next key alongside the current one.
    idp.serve(set(&[
        jwk(RSA_JWK, "rsa-1", json!({})),
        jwk(RSA2_JWK, "rsa-2", json!({})),
    ]))
    .await;
    let rotated = rsa2_token("rsa-2", &claims());

    // Within the minimum interval of the last fetch, nothing is fetched.
    assert_eq!(
        auth.authenticate(&rotated).await,
        Err(AuthError::BadSignature)
    );
    assert_eq!(idp.fetches().await, 0);

    pass(MIN_REFETCH).await;
    assert_accepted(&auth, &rotated).await;
    assert_eq!(idp.fetches().await, 1);
    assert_eq!(auth.fetch_count(), 2);
    // The old key still works while it is published.
    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_key_is_refused_after_the_background_refresh() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[
        jwk(RSA_JWK, "rsa-1", json!({})),
        jwk(RSA2_JWK, "rsa-2", json!({})),
    ]))
    .await;
    let auth = verifier(idp.url());
    let refresher = auth.spawn_refresher();
    until_fetched(&auth, 1).await;
    let old = rsa_token("rsa-1", &claims());
    let new = rsa2_token("rsa-2", &claims());
    assert_accepted(&auth, &old).await;

    idp.serve(set(&[jwk(RSA2_JWK, "rsa-2", json!({}))])).await;
    // Cached until the refresh: the refresher has not run again yet.
    assert_accepted(&auth, &old).await;
    assert_eq!(auth.fetch_count(), 1);

    pass(REFRESH).await;
    until_fetched(&auth, 2).await;
    assert_eq!(auth.authenticate(&old).await, Err(AuthError::BadSignature));
    assert_accepted(&auth, &new).await;
    assert_eq!(auth.fetch_count(), 2, "the refused kid did not refetch");
    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn the_refresher_ends_when_the_verifier_is_dropped() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    let auth = verifier(idp.url());
    let refresher = auth.spawn_refresher();
    until_fetched(&auth, 1).await;
    drop(auth);
    pass(REFRESH).await;
    soon("the refresher's end", refresher)
        .await
        .expect("the refresher ended without a panic");
    assert_eq!(idp.fetches().await, 1);
}

// ---- Unknown kids ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_kids_causes_at_most_one_fetch_per_interval() {
    let (_clock, idp, auth) = started(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;

    // One real signature under made-up kids: what an attacker can send
    // cheaply, and signing three hundred RSA tokens would slow the test down.
    let signed = rsa_token("rsa-1", &claims());
    let (_header, rest) = signed.split_once('.').expect("a JWS");
    let flood = |round: u32| {
        let mut requests = JoinSet::new();
        for i in 0..100 {
            let auth = auth.clone();
            let header =
                json!({"alg": "RS256", "typ": "JWT", "kid": format!("made-up-{round}-{i}")});
            let token = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()));
            requests.spawn(async move { auth.authenticate(&token).await });
        }
        requests
    };

    // Within the interval of the first fetch: no fetch at all.
    for result in flood(1).join_all().await {
        assert_eq!(result, Err(AuthError::BadSignature));
    }
    assert_eq!(idp.fetches().await, 1);

    // After it: the concurrent requests share one fetch.
    pass(MIN_REFETCH).await;
    for result in flood(2).join_all().await {
        assert_eq!(result, Err(AuthError::BadSignature));
    }
    assert_eq!(idp.fetches().await, 2);
    assert_eq!(auth.fetch_count(), 2);

    // And the ones that follow it wait for the next interval.
    for result in flood(3).join_all().await {
        assert_eq!(result, Err(AuthError::BadSignature));
    }
    assert_eq!(idp.fetches().await, 2);
    // A known kid is still accepted throughout.
    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
}

// ---- The endpoint down at start ---------------------------------------------

/// A test's start: the clock held, a provider answering 503, and a verifier
/// whose refresher has made its first try.
async fn refreshing_while_down() -> (HeldClock, Idp, JwksVerifier, JoinHandle<()>) {
    let clock = hold_clock();
    let idp = Idp::serving(set(&[])).await;
    idp.answer(ResponseTemplate::new(503)).await;
    let auth = verifier(idp.url());
    let refresher = auth.spawn_refresher();
    until_fetched(&auth, 1).await;
    (clock, idp, auth, refresher)
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_down_at_start_is_read_within_a_second_of_coming_up() {
    let (_clock, idp, auth, refresher) = refreshing_while_down().await;
    assert!(!auth.keys_loaded());

    let token = ec_token("ec-1", &claims());
    assert_keys_unavailable(&auth, &token, "503").await;

    // Down for the first second: the refresher tries at 0, 0.25 and 0.75 s.
    pass(Duration::from_millis(250)).await;
    until_fetched(&auth, 2).await;
    pass(Duration::from_millis(500)).await;
    until_fetched(&auth, 3).await;
    pass(Duration::from_millis(250)).await;

    // Up at 1 s; the next try, at 1.75 s, reads the set: not 30 s (the
    // refetch interval) later.
    idp.serve(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    let up = tokio::time::Instant::now();
    pass(Duration::from_millis(750)).await;
    until_fetched(&auth, 4).await;
    assert!(auth.keys_loaded());
    assert_accepted(&auth, &token).await;
    assert!(up.elapsed() <= Duration::from_secs(2), "{:?}", up.elapsed());
    assert_eq!(idp.fetches().await, 1);
    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn failed_fetches_are_retried_after_250_ms_then_twice_as_long_up_to_the_refetch_interval() {
    let (_clock, idp, auth, refresher) = refreshing_while_down().await;

    // Fetches finished so far: the refresher's, and the test's own.
    let mut fetches = 1;
    for wait in [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
        let wait = Duration::from_millis(wait);
        pass(wait - Duration::from_millis(1)).await;
        // A fetch of the test's own waits at the gate for any fetch in
        // flight, so after it every fetch started so far has finished: the
        // refresher's next try has not started a millisecond early.
        assert!(auth.refresh_now().await.is_err());
        fetches += 1;
        assert_eq!(auth.fetch_count(), fetches, "a try before {wait:?}");
        // And it starts on time.
        pass(Duration::from_millis(1)).await;
        fetches += 1;
        until_fetched(&auth, fetches).await;
    }
    assert_eq!(idp.fetches().await as u64, fetches);

    // A success ends the backoff: the next fetch is a refresh interval away.
    idp.serve(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    pass(MIN_REFETCH).await;
    until_fetched(&auth, fetches + 1).await;
    assert!(auth.keys_loaded());
    pass(REFRESH - Duration::from_millis(1)).await;
    assert_eq!(auth.refresh_now().await, Ok(1));
    assert_eq!(auth.fetch_count(), fetches + 2, "a refresh came early");
    pass(Duration::from_millis(1)).await;
    until_fetched(&auth, fetches + 3).await;
    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn tokens_are_refused_while_nothing_listens_and_accepted_once_a_server_does() {
    let _clock = hold_clock();
    // A bound socket that accepts nothing yet: connections wait in its
    // backlog, so the fetch runs into the timeout, until wiremock takes the
    // socket over.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let auth = JwksVerifier::new(
        JwksConfig {
            timeout: Duration::from_millis(200),
            ..config(url)
        },
        claim_rules(),
        clock(),
    )
    .expect("the verifier starts while the endpoint is down");

    let fetch = tokio::spawn({
        let auth = auth.clone();
        async move { auth.refresh_now().await }
    });
    // The request waits in the backlog until its timeout passes, on the
    // held clock; move the clock until it has.
    soon("the fetch timeout", async {
        while !fetch.is_finished() {
            pass(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        fetch.await.expect("the fetch ran"),
        Err(JwksFetchError::Timeout {
            endpoint: "JWKS endpoint"
        })
    );
    let token = rsa_token("rsa-1", &claims());
    assert_keys_unavailable(&auth, &token, "did not answer").await;

    let server = MockServer::builder().listener(listener).start().await;
    let keys = set(&[jwk(RSA_JWK, "rsa-1", json!({}))]);
    mount(
        &server,
        "/jwks",
        ResponseTemplate::new(200).set_body_json(keys),
    )
    .await;
    // The token's own unknown kid triggers the fetch once the interval is over.
    pass(MIN_REFETCH).await;
    assert_accepted(&auth, &token).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_leaves_the_verifier_without_keys() {
    let _clock = hold_clock();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().unwrap().port()
    };
    let auth = verifier(format!("http://127.0.0.1:{port}/jwks"));
    assert!(matches!(
        auth.refresh_now().await,
        Err(JwksFetchError::Unreachable { .. })
    ));
    assert!(matches!(
        auth.authenticate(&rsa_token("rsa-1", &claims())).await,
        Err(AuthError::KeysUnavailable(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_keys_already_fetched() {
    let (_clock, idp, auth) = started(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    for broken in [
        ResponseTemplate::new(500),
        ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"),
        ResponseTemplate::new(200).set_body_json(set(&[])),
        ResponseTemplate::new(200).set_body_bytes(vec![b' '; 2 * 1024 * 1024]),
    ] {
        idp.answer(broken).await;
        assert!(auth.refresh_now().await.is_err());
        assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
    }
    assert_eq!(auth.fetch_count(), 5);
}

// ---- OIDC discovery --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn discovery_finds_the_key_set_through_the_issuers_configuration() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    let issuer = format!("{}/realms/acme", idp.server.uri());
    idp.serve_discovery(json!(issuer)).await;
    let auth = discovering(&issuer);

    let token = ec_token("ec-1", &with(claims(), "iss", json!(issuer)));
    assert_accepted(&auth, &token).await;
    assert_eq!(auth.refresh_now().await, Ok(1));
    let requests = idp.server.received_requests().await.unwrap();
    let discoveries = requests
        .iter()
        .filter(|request| request.url.path().ends_with("openid-configuration"))
        .count();
    assert_eq!(discoveries, 1, "the jwks_uri is kept between fetches");
    assert_eq!(idp.fetches().await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_discovery_document_not_naming_exactly_the_configured_issuer_is_refused() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    let issuer = format!("{}/realms/acme", idp.server.uri());
    for (named, refusal) in [
        (json!("https://evil.example"), "names another issuer"),
        (json!(format!("{issuer}/")), "names another issuer"),
        (json!(issuer.to_uppercase()), "names another issuer"),
        (json!(null), "names no issuer"),
    ] {
        idp.serve(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
        idp.serve_discovery(named.clone()).await;
        let auth = discovering(&issuer);
        assert_eq!(
            auth.refresh_now().await,
            Err(JwksFetchError::BadDiscovery(refusal)),
            "{named}"
        );
        assert_eq!(idp.fetches().await, 0, "no key set fetched for {named}");
        assert!(!auth.keys_loaded());
    }
}

#[tokio::test(start_paused = true)]
async fn the_issuer_is_taken_as_configured_with_or_without_a_trailing_slash() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(EC_JWK, "ec-1", json!({}))])).await;
    // The document is under the issuer without its `/` (section 4.1), and
    // must name the issuer exactly as configured, `/` included.
    let issuer = format!("{}/realms/acme/", idp.server.uri());
    idp.serve_discovery(json!(issuer)).await;
    assert_eq!(discovering(&issuer).refresh_now().await, Ok(1));
}

// ---- Facing the internet ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_redirect_is_a_failed_fetch_and_is_not_followed() {
    let _clock = hold_clock();
    let idp = Idp::serving(set(&[jwk(RSA_JWK, "rsa-1", json!({}))])).await;
    let elsewhere = format!("{}/elsewhere", idp.server.uri());
    let keys = set(&[jwk(RSA_JWK, "rsa-1", json!({}))]);
    mount(
        &idp.server,
        "/elsewhere",
        ResponseTemplate::new(200).set_body_json(keys),
    )
    .await;
    let auth = loaded(&idp).await;

    for status in [301, 302, 303, 307, 308] {
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(ResponseTemplate::new(status).insert_header("Location", &*elsewhere))
            .with_priority(1)
            .up_to_n_times(1)
            .mount(&idp.server)
            .await;
        assert_eq!(
            auth.refresh_now().await,
            Err(JwksFetchError::Redirected {
                endpoint: "JWKS endpoint",
                status,
            })
        );
    }
    let requests = idp.server.received_requests().await.unwrap();
    assert!(
        requests.iter().all(|request| request.url.path() == "/jwks"),
        "a redirect was followed"
    );
    // The keys fetched before stay in use.
    assert_accepted(&auth, &rsa_token("rsa-1", &claims())).await;
}

#[tokio::test(start_paused = true)]
async fn a_redirect_from_the_discovery_endpoint_is_not_followed_either() {
    let _clock = hold_clock();
    let server = MockServer::start().await;
    let redirect =
        ResponseTemplate::new(302).insert_header("Location", "https://idp.example/elsewhere");
    mount(&server, "/.well-known/openid-configuration", redirect).await;
    let auth = discovering(&server.uri());
    assert_eq!(
        auth.refresh_now().await,
        Err(JwksFetchError::Redirected {
            endpoint: "OIDC discovery endpoint",
            status: 302,
        })
    );
}

/// A verifier that finds its key set through the discovery document of
/// `issuer`, expecting tokens from it.
fn discovering(issuer: &str) -> JwksVerifier {
    JwksVerifier::new(
        JwksConfig {
            source: JwksSource::Discovery(issuer.to_owned()),
            ..config(String::new())
        },
        ClaimsConfig {
            issuer: Some(issuer.to_owned()),
            ..claim_rules()
        },
        clock(),
    )
    .expect("valid configuration")
}

#[tokio::test(start_paused = true)]
async fn a_discovered_jwks_uri_must_be_https_unless_on_a_loopback_host() {
    let _clock = hold_clock();
    let server = MockServer::start().await;
    let document = "/.well-known/openid-configuration";
    serve_discovery(
        &server,
        document,
        json!(server.uri()),
        json!("http://idp.example/jwks"),
    )
    .await;
    assert_eq!(
        discovering(&server.uri()).refresh_now().await,
        Err(JwksFetchError::BadDiscovery(
            "has a jwks_uri that is not https (or http on a loopback host)"
        ))
    );
}

#[test]
fn plain_http_to_another_host_is_refused_at_start() {
    for source in [
        JwksSource::Url("http://idp.example/jwks".to_owned()),
        JwksSource::Discovery("http://idp.example/realms/a".to_owned()),
    ] {
        let refused = JwksVerifier::new(JwksConfig::new(source), claim_rules(), clock())
            .expect_err("plain http to another host");
        assert!(
            matches!(refused, JwksConfigError::InsecureUrl(_)),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("must be https"), "{refused}");
    }
}
